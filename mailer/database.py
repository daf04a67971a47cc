"""`mailer db`: make or upgrade the record's schema on either engine, and move a SQLite record to PostgreSQL.

The copy is for the day a list outgrows one machine: every table of the SQLite file (whatever schema steps
added), ids kept, into an empty PostgreSQL record, in one transaction there, so a failure (or Ctrl-C) leaves
the target as empty as it was. It reads the file inside a write transaction of its own, so no mailer process
can change it meanwhile. The file is the publisher's backup (docs/postgresql.md): one of an older schema is
not upgraded in place; a snapshot of it is, in a temporary folder, and the copy reads that.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .engine import Location, Server, issue_lock
from .errors import MailerError, SendRunning
from .ledger import SCHEMA_VERSION, Ledger

_PAGE = 5000  # rows read and written at a time


@dataclass(frozen=True)
class Migrated:
    """What `mailer db migrate` did."""

    where: Location
    before: int  # 0: the database had no mailer schema
    after: int

    def line(self) -> str:
        """One line for the terminal."""
        if self.before == self.after:
            return f"{self.where}: schema {self.after}, up to date"
        if self.before == 0:
            return f"{self.where}: created the mailer schema (version {self.after})"
        return f"{self.where}: upgraded the schema from version {self.before} to {self.after}"


def migrate(settings: Settings) -> Migrated:
    """Create the schema in the configured database, or bring it up to this mailer's version."""
    with Ledger(settings.db_path) as ledger:  # opening makes or upgrades it, or refuses a newer one
        return Migrated(settings.db_path, ledger.found_version, ledger.schema_version())


@dataclass
class Copied:
    """What `mailer db copy` moved: rows per table, in the order they were written."""

    source: Path
    target: Server
    tables: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report: a line per table and the total."""
        out = [f"  {table}: {count:,} rows" for table, count in self.tables.items()]
        total = sum(self.tables.values())
        return [f"copied {self.source} to {self.target}: {total:,} rows", *out]


def copy_sqlite(settings: Settings, source: Path) -> Copied:
    """Copy the SQLite record `source` into the configured PostgreSQL database, which must hold no rows."""
    target = settings.db_path
    if not isinstance(target, Server):
        raise MailerError(
            f'database is {target}, a SQLite file: set database = "postgresql://user@host:port/name"'
            " (docs/postgresql.md) to copy a SQLite record into PostgreSQL"
        )
    if not source.is_file():
        raise MailerError(f"{source}: no such SQLite file")
    version = _schema_of(source)
    if version == 0:  # opening it as a Ledger would write mailer's tables into it
        raise MailerError(f"{source}: not a mailer record (no mailer tables in it); nothing copied")
    copied = Copied(source, target)
    with contextlib.ExitStack() as stack:
        read = source
        if version is not None and version < SCHEMA_VERSION:  # opening it would upgrade the backup itself
            read = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailer-copy-"))) / source.name
            _snapshot(source, read)
        old = stack.enter_context(Ledger(read, create=False))
        for (issue_id,) in old.rows("SELECT issue_id FROM issues"):
            # held to the end: a send that runs on the file would go on mailing into it alone, and the
            # first send on PostgreSQL would mail again every reader it mailed after the copy
            try:
                stack.enter_context(issue_lock(source, issue_id))
            except SendRunning as exc:  # its own words ('another send ...; wait for it') are a second send's
                running = f"a send of {exc.issue_id} is running on it ({exc.holder})"
                raise MailerError(f"{source}: {running}; nothing copied: stop it first") from None
        new = stack.enter_context(Ledger(target))
        with old.transaction():  # the file holds still while it is read
            tables = _tables_in_order(old)
            ours = {
                row[0]
                for row in new.rows("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            }
            for table in tables:  # only mailer's names go into SQL below: a file's table name may be SQL
                if table not in ours:
                    raise MailerError(f"{source}: table {table!r} is not one of mailer's; nothing copied")
            with new.transaction():  # looked at under the write lock: a copy from another host waits here
                for table in tables:
                    if new.rows(f"SELECT count(*) FROM {table}")[0][0]:
                        raise MailerError(
                            f"{target}: already holds a record (table {table} has rows); db copy fills only"
                            " an empty database (make a new one, or drop this one's tables)"
                        )
                for table in tables:
                    copied.tables[table] = _copy_table(old, new, table)
                _continue_ids(new)
                for table, count in copied.tables.items():
                    there = new.rows(f"SELECT count(*) FROM {table}")[0][0]
                    if there != count:
                        raise MailerError(
                            f"{target}: table {table} has {there} rows after the copy, the file {count};"
                            " nothing was copied"
                        )
    return copied


def _snapshot(source: Path, to: Path) -> None:
    """A consistent copy of the SQLite file (the backup API, read-only on the source)."""
    uri = f"file:{urllib.parse.quote(str(source.absolute()))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as reading:
            with contextlib.closing(sqlite3.connect(to)) as writing:
                reading.backup(writing)
    except sqlite3.Error as exc:  # a full disk where the snapshot goes, a file that breaks half-way
        raise MailerError(f"{source}: cannot copy it to upgrade the copy (file unchanged): {exc}") from None


def _schema_of(source: Path) -> int | None:
    """The file's mailer schema number (0: none), read without writing to it; None if SQLite cannot read it
    (the Ledger that opens it next says why)."""
    uri = f"file:{urllib.parse.quote(str(source.absolute()))}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as probe:
        try:
            return int(probe.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError:
            return None


def _tables_in_order(old: Ledger) -> list[str]:
    """The file's tables, each after the tables its foreign keys point at."""
    names = [
        row[0]
        for row in old.rows(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    parents = {
        name: {row[2] for row in old.rows(f"SELECT * FROM pragma_foreign_key_list('{name}')")} - {name}
        for name in names
    }
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise MailerError(f"{old.path}: its tables' foreign keys go round in a circle; not copied")
        ordered += ready
    return ordered


def _copy_table(old: Ledger, new: Ledger, table: str) -> int:
    """Every row of one table, with its ids, in pages ordered by the primary key (or rowid)."""
    info = old.rows(f"SELECT name, pk FROM pragma_table_info('{table}')")
    columns = [name for name, _ in info]
    key = [name for name, pk in sorted(info, key=lambda c: c[1]) if pk] or ["rowid"]
    listed = ", ".join(columns)
    insert = f"INSERT INTO {table} ({listed}) VALUES ({', '.join('?' * len(columns))})"
    count = 0
    while True:
        page = old.rows(
            f"SELECT {listed} FROM {table} ORDER BY {', '.join(key)} LIMIT ? OFFSET ?", (_PAGE, count)
        )
        if page:
            new.write_many(insert, page)
        count += len(page)
        if len(page) < _PAGE:
            return count


def _continue_ids(new: Ledger) -> None:
    """Let PostgreSQL's identity columns go on after the highest id copied (they would start at 1)."""
    for table, column in new.rows(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE is_identity = 'YES' AND table_schema = current_schema()"
    ):
        following = f"(SELECT coalesce(max({column}), 0) + 1 FROM {table})"
        new.rows(f"SELECT setval(pg_get_serial_sequence(?, ?), {following}, false)", (table, column))
