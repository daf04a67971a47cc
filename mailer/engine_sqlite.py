"""The record in one SQLite file shared by every mailer process on one machine (the default engine).

WAL lets the web app and the CLI write unsubscribes while a send runs in another process; every write
transaction takes the write lock up front (BEGIN IMMEDIATE) and waits for it up to the busy timeout. What
only a file has lives here: its private mode, its identity (a file replaced while open), a read-only or full
file system, and the send lock as an flock next to it.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import resource
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import MailerError, SendRunning
from .private import FILE_MODE, make_folder, open_new, restrict

# What a send keeps free on the file system under the record, checked before its first message and at each
# look-up of the next readers in the record (campaign.LOOKUP_BATCH): more than the record grows meanwhile,
# its write-ahead log up to a checkpoint (wal_autocheckpoint: 1,000 pages of 4 KiB) and the pages that
# checkpoint adds to the file, twice over (measured: sends of 3,000 readers at 1 and 8 connections took at
# most 4.5 MiB, the log 4 MiB of it). Below it, a commit after a message's "." could fail for want of space,
# leaving that reader unrecorded, to be mailed again by the next run.
ROOM = 8 << 20

# The row of values in a one-row `INSERT ... VALUES (...) ...`
_VALUES = re.compile(r" VALUES (\([^)]*\))", re.I)


@functools.lru_cache(maxsize=64)
def _many_rows(sql: str, count: int) -> str:
    """A one-row `INSERT ... VALUES (...) ...` for `count` rows, written in their order."""
    found = _VALUES.search(sql)
    if found is None:
        raise ValueError(f"write_batch takes INSERT ... VALUES (...) ..., not {sql!r}")
    return sql[: found.start(1)] + ", ".join([found.group(1)] * count) + sql[found.end(1) :]


class SQLite:
    """One connection to the database file (see engine.Engine)."""

    writers = 1  # one write lock for the whole file
    skip_locked = ""  # BEGIN IMMEDIATE: no other writer can hold a row this transaction reads
    now = "((julianday('now') - 2440587.5) * 86400.0)"  # this host's clock, to the millisecond
    stamp = "strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-' || ? || ' seconds')"

    def __init__(self, path: Path, *, timeout: float, create: bool) -> None:
        """Open (with `create`, make) the file; create=False refuses a missing file instead."""
        self.where = self.path = path
        self._conn: sqlite3.Connection | None = None
        if create:
            try:
                make_folder(path.parent)
            except OSError as exc:
                raise MailerError(f"{path}: cannot create the folder: {exc.strerror}") from None
            _private_database(path)
        self._identity = _identity(path)  # taken before SQLite opens the file: see in_place()
        if self._identity is None and not create:
            raise MailerError(f"{path}: the database is missing (deleted or moved?)")
        # mode=rw: never create a file here (create=False, or one deleted since _private_database)
        uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode={'rwc' if create else 'rw'}"
        with self.errors():
            # isolation_level=None: no implicit transactions; begin() issues BEGIN IMMEDIATE itself
            self._conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        try:
            with self.errors():
                self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            self.close()
            raise

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise MailerError(f"{self.path}: the ledger is closed")
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def keyed(
        self,
        table: str,
        columns: Sequence[str],
        where: str,
        params: Sequence[Any],
        key: str,
        keys: Sequence[str],
    ) -> list[Any]:
        picked = "".join(f", {c}" for c in columns)
        marks = ",".join("?" * len(keys))
        sql = f"SELECT {key}{picked} FROM {table} WHERE {where} AND {key} IN ({marks})"
        return self._db.execute(sql, (*params, *keys)).fetchall()

    def write_batch(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        # The rows as one multi-row INSERT, its own transaction, locked for writing from its start like
        # BEGIN IMMEDIATE: one call into SQLite where BEGIN, a step per row and COMMIT made two more than
        # the rows, each of which gives up the GIL and, at 8 connections, waits to win it back from the
        # connection threads. Only past SQLite's limit of parameters is there more than one statement.
        if not rows:
            return
        per = max(1, self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(rows[0]))
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            self._db.execute(_many_rows(sql, len(chunk)), [value for row in chunk for value in row])

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def begin_rows(self) -> None:
        self.begin()  # one writer at a time whatever is written

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        self._db.rollback()

    @property
    def in_transaction(self) -> bool:
        return self._conn is not None and self._conn.in_transaction

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, version: int) -> None:
        self._db.execute(f"PRAGMA user_version = {int(version)}")

    def ddl(self, statement: str) -> str:
        return statement

    @contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise MailerError(f"{self.path}: {_explain(exc, self.path)}") from None

    def room(self) -> None:
        """Refuse to go on while the file system under the file has less than ROOM free (one statvfs)."""
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return  # the next write says what is wrong, in SQLite's words made plain (errors())
        free = fs.f_bavail * fs.f_frsize
        if free < ROOM:
            raise MailerError(
                f"{self.path}: {_size(free)} free in {self.path.parent} (its file system), less than the"
                f" {_size(ROOM)} a send keeps free so that the record can take every message it mails;"
                " stopped before the next message: free some space and run the same command again"
            )

    def in_place(self) -> bool:
        """Whether the file at the path is still the one this connection opened.

        A database deleted, or replaced by another file renamed over it, while open keeps taking writes
        into the old file, which no one will read again; a writer that must not lose its write (an
        unsubscribe) checks this after committing.
        """
        return self._identity is not None and _identity(self.path) == self._identity

    def senders(self) -> list[str]:
        """See engine.Engine: the lock files next to the file that another process holds."""
        try:
            locks = sorted(_locks(self.path).glob("*.lock"))
        except OSError:
            return []
        held = []
        for lock in locks:
            try:
                fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if (holder := _holder(fd)) != f"pid {os.getpid()}":
                    held.append(holder)
            finally:
                os.close(fd)
        return held

    def hold_worker(self, name: str) -> bool:
        return False  # see engine.Engine: a SQLite file has its senders on one host, where a pid tells

    def held_workers(self, names: Sequence[str]) -> set[str] | None:
        return None

    def lease_clock(self) -> float:
        return time.time()  # see engine.Engine

    def issue_locked(self, issue_id: str) -> bool | None:
        """See engine.Engine: whether a process holds the issue's lock file (issue_lock), looked at without
        creating it (a reader may not write the folder). The kernel lets go of an flock when its holder
        dies."""
        try:
            fd = os.open(_locks(self.path) / f"{issue_id}.lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # no send of the issue ever took it on this file
        except OSError:
            return None  # it cannot be read here: cannot tell
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def let_go_of_replaced(self) -> None:
        """Empty the WAL of a database file that was replaced while open (in_place() is False).

        SQLite finds the WAL by name and keeps it when the file it belongs to was unlinked; whatever opens
        the new file next would replay the old file's last writes into it. A TRUNCATE checkpoint copies them
        into the old file and leaves the WAL empty. If another process still has the old file open, the
        WAL cannot be emptied: an error, and the new file is not touched.
        """
        with self.errors():
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            raise MailerError(
                f"{self.path}: the database file was replaced while another mailer process had it open;"
                " stop every mailer process, then start them again"
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _size(count: int) -> str:
    """Bytes for a person, rounded down (so that what is short of ROOM never reads as ROOM)."""
    return f"{(count * 10 >> 20) / 10} MiB" if count >= 1 << 20 else f"{count >> 10} KiB"


def _private_database(path: Path) -> None:
    """Create the database file 0600 before SQLite does (its WAL and SHM files copy that mode)."""
    try:
        os.close(open_new(path))
    except FileExistsError:
        for suffix in ("", "-wal", "-shm"):
            restrict(Path(f"{path}{suffix}"))
    except OSError:
        pass  # SQLite's own open says what is wrong, in the usual words


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _size_limit(path: Path) -> int:
    """The file size limit (RLIMIT_FSIZE) if the database or its WAL reached it (within 64 KiB); else 0."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return 0
    for one in (path, path.with_name(path.name + "-wal")):
        with suppress(OSError):
            if one.stat().st_size >= limit - 64 * 1024:
                return limit
    return 0


def _no_space(path: Path) -> bool:
    try:
        fs = os.statvfs(path.parent)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < 64 * 1024


def _locks(db_path: Path) -> Path:
    """The folder of the send locks of a database file, next to it (issue_lock)."""
    return Path(os.path.realpath(db_path) + "-locks")


def _holder(fd: int) -> str:
    """Who holds the send lock open at `fd`, as its holder wrote it there."""
    return os.pread(fd, 100, 0).decode("utf-8", "replace").strip() or "another process"


@contextmanager
def issue_lock(db_path: Path, issue_id: str) -> Iterator[Callable[[], None]]:
    """Hold an exclusive lock on one issue of one database for a whole send; yield a check that it is still
    held (an flock is, for as long as its file stays open: the check has nothing to do).

    Two sends of one issue would mail people twice, so the lock sits next to the database it guards (not in
    a data folder: two data folders may share a database) and is taken on the resolved path. It is an flock,
    so the kernel releases it when a send dies (kill -9).
    """
    folder = _locks(db_path)
    try:
        make_folder(folder)
        fd = os.open(folder / f"{issue_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise MailerError(f"{folder}: cannot create the send lock: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SendRunning(issue_id, _holder(fd)) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        except OSError as exc:
            raise MailerError(f"{folder}: cannot write the send lock: {exc.strerror}") from None
        yield lambda: None
    finally:
        os.close(fd)  # releases the flock


def _explain(exc: sqlite3.Error, path: Path) -> str:
    """Say what a SQLite error means for the user."""
    text = str(exc)
    limit = _size_limit(path)
    if ("full" in text or "disk I/O" in text) and limit:  # EFBIG: a full disk in all but name
        return (
            f"a file size limit (ulimit -f, RLIMIT_FSIZE) of {limit:,} bytes stops it growing; raise the"
            " limit and run the same command again"
        )
    if "full" in text or ("disk I/O" in text and _no_space(path)):
        return "no space left on the file system that holds it; free some and run the same command again"
    if _read_only_fs(path):
        return "the file system that holds it is mounted read-only; mailer needs to write to it"
    if "locked" in text or "busy" in text:
        return "the database is locked by another mailer process; try again when it has finished"
    if "not a database" in text or "malformed" in text:
        return f"not a mailer database ({text})"
    if "readonly" in text:
        return "the database is read-only; mailer needs to write to it and to its folder"
    if "unable to open" in text:
        return "cannot open the database file (check the path and permissions)"
    if "FOREIGN KEY" in text:
        return "no such issue: call start_issue before recording deliveries"
    return text
