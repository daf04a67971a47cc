"""Where the record lives and the engine that opens it: a SQLite file (the embedded default) or a PostgreSQL
database (`database = "postgresql://user@host:port/name"`, for many senders or web hosts sharing one record).

Ledger (ledger.py) holds the SQL and the guarantees; an engine holds what differs between the two:
connecting, placeholders, DDL types, how a write transaction takes its lock, the schema version's home, what
an error means to the user, and the per-issue send lock. The SQL is written once, for both: `?`
placeholders, SQLite's DDL types (the PostgreSQL engine translates them), ON CONFLICT rather than INSERT OR
IGNORE, no rowid.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import MailerError

SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class Server:
    """A PostgreSQL database by its libpq URL; printed (str) with any password in it masked.

    The password normally comes from elsewhere (the database_password setting, that is
    MAILER_DATABASE_PASSWORD, or libpq's PGPASSWORD and ~/.pgpass): kept here, never shown.
    """

    url: str
    password: str = field(default="", repr=False, compare=False)
    # seconds the server may leave a connection without an answer (database_timeout): a server that is
    # stopped or cut off would otherwise hold a send for ever, or for TCP's ~15 minutes
    timeout: float = field(default=60.0, compare=False)

    def __str__(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:
        return f"Server({str(self)!r})"


Location = Path | Server


def is_url(text: str) -> bool:
    """Whether a `database` setting names a PostgreSQL server rather than a SQLite file."""
    return text.lower().startswith(SCHEMES)


def parse_url(text: str) -> Server:
    """A `database` URL checked for shape (port, database name); a ValueError says what is wrong."""
    scheme, _, rest = text.partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if rest.count("@") > 1 or "@" in rest[len(authority) :]:
        # a password with an '@', '/', '?' or '#' of its own: libpq and urllib split such a URL at different
        # places, and what either takes for the host or the port is a piece of the password
        raise ValueError(
            f"'{scheme}://...' is not a PostgreSQL URL: an '@', '/', '?' or '#' in its user or password must"
            " be percent-encoded (%40, %2F, %3F, %23), or give the password in MAILER_DATABASE_PASSWORD"
        )
    try:
        parts = urllib.parse.urlsplit(text)
        for host in parts.netloc.rpartition("@")[2].split(","):  # libpq's fail-over: several hosts
            urllib.parse.urlsplit(f"//{host}").port  # noqa: B018 - ValueError: a port not a number in range
    except ValueError as exc:
        raise ValueError(f"{redact(text)!r} is not a PostgreSQL URL ({exc})") from None
    if not parts.path.strip("/"):
        raise ValueError(f"{redact(text)!r} names no database (postgresql://user@host:port/DATABASE)")
    if parts.fragment:
        raise ValueError(f"{redact(text)!r} is not a PostgreSQL URL (a '#' in it)")
    return Server(text)


def redact(url: str) -> str:
    """The URL with the password (user:PASSWORD@ or ?password=) replaced by ***.

    The user info ends at the URL's last '@', wherever a '/', '?' or '#' stands before it: a password
    pasted unencoded may hold any of them (parse_url refuses such a URL, and names it through here)."""
    scheme, _, rest = url.partition("://")
    userinfo, at, tail = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{tail}"
    try:
        parts = urllib.parse.urlsplit(f"{scheme}://{rest}")
    except ValueError:
        return "postgresql://***"  # unparseable: any part of it might be the password
    query = "&".join(
        f"{key}=***" if key.lower() == "password" else f"{key}={value}" if sep else key
        for key, sep, value in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class Cursor(Protocol):
    """What Ledger uses of a cursor (sqlite3's and psycopg's both have it)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Engine(Protocol):
    """One connection to the record, in autocommit mode: Ledger opens and closes its transactions itself."""

    # How many connections' write transactions can usefully commit at once: 1 where one writer at a time
    # holds the whole database (SQLite); more where commits of distinct rows run side by side and the
    # server flushes them together (PostgreSQL).
    writers: int

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement written with `?` placeholders."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many rows (in the caller's transaction)."""
        ...

    def keyed(
        self,
        table: str,
        columns: Sequence[str],
        where: str,
        params: Sequence[Any],
        key: str,
        keys: Sequence[str],
    ) -> list[Any]:
        """`SELECT key, *columns FROM table WHERE where AND key IN (keys)`: the rows of those keys, each
        unique in the table under `where` (written with `?` placeholders, filled by `params`), in any
        order; a send looks up each batch of readers so (a few hundred at once). Each engine's fastest."""
        ...

    def write_batch(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one write for one or many rows in a transaction of its own, which need not exclude other
        writers (each row's write stands alone); rows in key order, so two such batches never deadlock. The
        way a send's outcomes are written, one commit per message at one connection: each engine's
        cheapest."""
        ...

    # What a SELECT in a begin_rows() transaction adds to lock the rows it returns and pass over those
    # another transaction holds (" FOR UPDATE SKIP LOCKED"); "" where begin_rows() already excludes every
    # other writer (SQLite).
    skip_locked: str

    # SQL for the record's time now, in seconds since the epoch, the one clock on which every host's leases
    # and words of a send by workers are written and compared (workers/): a PostgreSQL server's, whatever
    # each host's clock says; a SQLite file's one host's. The same throughout one statement.
    now: str
    # SQL for that time less `?` seconds (its one parameter), as text: '%Y-%m-%dT%H:%M:%SZ'
    stamp: str

    def lease_clock(self) -> float:
        """Seconds on the clock this process follows its own leases on between the statements that write
        them: where they are on the server's clock (PostgreSQL), the time elapsed here (CLOCK_BOOTTIME), which
        no step of this host's clock moves and which counts a suspend of the host; where on this host's
        (SQLite), that clock, which moves the leases and their holders alike."""
        ...

    def begin(self) -> None:
        """Open a write transaction holding the database's write lock (one writing transaction at a time),
        for a read-then-write that must see no other writer between its read and its write."""
        ...

    def begin_rows(self) -> None:
        """Open a write transaction that locks only the rows it writes (or selects with skip_locked), so
        that writers of other rows go on meanwhile; SQLite has one writer at a time: begin()."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...

    def schema_version(self) -> int:
        """The schema's number, 0 for an empty database."""
        ...

    def set_schema_version(self, version: int) -> None: ...

    def ddl(self, statement: str) -> str:
        """A CREATE or ALTER statement written for SQLite, in this engine's words."""
        ...

    def errors(self) -> AbstractContextManager[None]:
        """Turn this engine's errors into a MailerError that names the database and says what it means."""
        ...

    def in_place(self) -> bool:
        """Whether this connection still writes where the next one will read (see Ledger.in_place)."""
        ...

    def room(self) -> None:
        """Raise MailerError if the record might not take the outcomes of the messages a send is about to
        mail (a SQLite file's file system nearly full); a server watches its own disk."""
        ...

    def senders(self) -> list[str]:
        """The sends of other processes that hold an issue's lock on this record now (issue_lock), each as
        its lock says who holds it ('pid N' or 'pid N on HOST')."""
        ...

    def hold_worker(self, name: str) -> bool:
        """Hold, for as long as this connection lives, the lock that says the send's worker `name` is alive
        (PostgreSQL: a shared session-level advisory lock, which the server lets go of when the session
        ends, also when the worker is killed); whether the engine has such locks (SQLite, one host: no, a
        worker's pid tells there)."""
        ...

    def held_workers(self, names: Sequence[str]) -> set[str] | None:
        """Which of the workers named hold their lock (hold_worker) on some connection now; None where the
        engine has no such locks."""
        ...

    def issue_locked(self, issue_id: str) -> bool | None:
        """Whether a send holds the issue's lock now (issue_lock: a send, lone or the coordinator of workers,
        holds it for as long as it runs); None where the engine cannot tell."""
        ...

    def let_go_of_replaced(self) -> None: ...

    def close(self) -> None: ...


def connect(where: Location, *, timeout: float, create: bool) -> Engine:
    """Open the engine for a location: a Server is PostgreSQL (psycopg is an extra), a path is SQLite."""
    if isinstance(where, Server):
        try:
            from .engine_postgresql import PostgreSQL
        except ImportError:
            raise MailerError(
                f"{where}: PostgreSQL needs psycopg: pip install 'mailer-newsletter[postgresql]'"
            ) from None
        return PostgreSQL(where, timeout=timeout, create=create)
    from .engine_sqlite import SQLite

    return SQLite(where, timeout=timeout, create=create)


def issue_lock(where: Location, issue_id: str) -> AbstractContextManager[Callable[[], None]]:
    """Hold the exclusive lock on one issue of one record for a whole send (see each engine's); what it
    yields raises MailerError once the lock is lost (a PostgreSQL session ended under the sender)."""
    if isinstance(where, Server):
        from .engine_postgresql import issue_lock as server_lock

        return server_lock(where, issue_id)
    from .engine_sqlite import issue_lock as file_lock

    return file_lock(where, issue_id)
