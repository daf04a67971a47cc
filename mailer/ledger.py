"""The delivery record, the suppression list and the stored lists, shared by every mailer process.

One SQLite file (the default) or one PostgreSQL database: the SQL here is written once for both, and what
differs (connecting, locking, DDL types, errors) is the engine's (engine.py). Every write transaction takes
the database's write lock up front and waits for it up to the timeout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from .bounces import Bounce
from .engine import Cursor, Engine, Location, connect
from .engine import issue_lock as issue_lock
from .envelope import TAG_BYTES, Recipient, message_tag
from .errors import MailerError
from .subscribers import dedupe_key
from .webcopies import digest

T = TypeVar("T")
SCHEMA_VERSION = 14
STATES = ("sending", "sent", "deferred", "failed")
# what a person reads for each state: 'sending' is the record's name for a message whose fate is unknown
LABELS = {"sending": "in doubt", "sent": "sent", "deferred": "deferred", "failed": "failed"}
# Where a send's messages went. The record is kept apart per destination: a try-out in the local outbox
# mails no one, so it must never make a send over SMTP skip a reader (nor the other way round).
SMTP = "smtp"
OUTBOX = "outbox"
DESTINATIONS = (SMTP, OUTBOX)
_IN_BATCH = 500  # addresses per IN (...) query, well under either engine's limit on bound parameters
# The condition of the index of deliveries by state (schema 9), which holds only the rows not sent: a query
# on deliveries by state names it word for word, which is how SQLite knows the index answers it.
_UNSENT = "state != 'sent'"

# Issues, runs and deliveries are keyed by destination too; suppressions hold for every destination.
_RECORD_TABLES = """
CREATE TABLE issues (
    issue_id TEXT NOT NULL,
    destination TEXT NOT NULL CHECK (destination IN ('smtp', 'outbox')),
    content_hash TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (issue_id, destination)
);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY,
    issue_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    list_key TEXT NOT NULL,
    list_path TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    completed_at TEXT,
    FOREIGN KEY (issue_id, destination) REFERENCES issues(issue_id, destination)
);
CREATE INDEX runs_by_list ON runs(issue_id, destination, list_key);
CREATE TABLE deliveries (
    issue_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    email TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'deferred', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_code INTEGER,
    last_reply TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (issue_id, destination, email),
    FOREIGN KEY (issue_id, destination) REFERENCES issues(issue_id, destination)
) WITHOUT ROWID;
CREATE INDEX deliveries_by_state ON deliveries(issue_id, destination, state);
"""

_SUPPRESSIONS = """
CREATE TABLE IF NOT EXISTS suppressions (
    email TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
"""


# One row per report and address (a DSN may name several); report_id is the report's own id, so a report
# read twice (a mailbox read again, a webhook delivered twice) is one row.
_BOUNCES = """
CREATE TABLE bounces (
    report_id TEXT NOT NULL,
    email TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('hard', 'soft', 'complaint')),
    status TEXT NOT NULL,
    diagnostic TEXT NOT NULL,
    issue_id TEXT,
    source TEXT NOT NULL,
    at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (report_id, email)
) WITHOUT ROWID;
CREATE INDEX bounces_by_issue ON bounces(issue_id, kind);
CREATE INDEX bounces_by_email ON bounces(email, kind, at);
"""


# Subscriber lists kept in the database (issue 15; stored.py reads and writes them). A list's version goes
# up with every change to its members: a send's record keys the list by (name, version), so a reader added
# after a complete send makes the next run of the issue read the list again. member_id never repeats
# (AUTOINCREMENT): a send mails the members up to the highest id it saw at its start.
_SUBSCRIBERS = """
CREATE TABLE lists (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    changed_at TEXT NOT NULL
);
CREATE TABLE members (
    member_id INTEGER PRIMARY KEY AUTOINCREMENT,
    list TEXT NOT NULL REFERENCES lists(name),
    email TEXT NOT NULL,
    address TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    fields TEXT NOT NULL DEFAULT '{}',
    consent_at TEXT NOT NULL,
    consent_source TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (list, email)
);
"""


# Signups with double opt-in (issue 15; signup.py reads and writes them). One row per list and address: the
# latest request, whose time its confirmation link carries (an older link no longer confirms), when that
# link was mailed (NULL: still to mail; a serve process claims the row until claimed_until), when and from
# where it was confirmed, the suppression it lifted, and whether a welcome is still to mail. signup_hits
# are the requests the rate limits count, per client address and per address signed up; every serve
# process sharing the database counts the same ones.
_SIGNUPS = """
CREATE TABLE signups (
    list TEXT NOT NULL,
    email TEXT NOT NULL,
    address TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    requested_at TEXT NOT NULL,
    request_ip TEXT NOT NULL,
    claimed_until TEXT,
    confirm_sent_at TEXT,
    confirm_reply TEXT NOT NULL DEFAULT '',
    confirmed_at TEXT,
    confirm_ip TEXT,
    lifted TEXT NOT NULL DEFAULT '',
    welcome_due INTEGER NOT NULL DEFAULT 0,
    welcome_reply TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (list, email)
);
CREATE INDEX signups_to_mail ON signups(confirm_sent_at, welcome_due);
CREATE TABLE signup_hits (
    kind TEXT NOT NULL CHECK (kind IN ('ip', 'address')),
    hit_key TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX signup_hits_by_key ON signup_hits(kind, hit_key, at);
CREATE INDEX signup_hits_by_time ON signup_hits(at);
"""


# A send made by several processes (issue 16; workers/): the coordinator's row says what to send and how,
# and whether the send still runs; its readers wait in numbered batches, each leased by one worker at a time
# (lease_until in seconds since the epoch; 0: free); each worker's counts so far, for the report.
_SENDS = """
CREATE TABLE sends (
    issue_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'stopping', 'stopped', 'done')),
    coordinator TEXT NOT NULL,
    alive_until DOUBLE PRECISION NOT NULL,
    post_name TEXT NOT NULL,
    post TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    options TEXT NOT NULL,
    next_slot DOUBLE PRECISION NOT NULL DEFAULT 0,
    started_at TEXT NOT NULL,
    PRIMARY KEY (issue_id, destination)
);
CREATE TABLE send_batches (
    issue_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    batch_no INTEGER NOT NULL,
    readers TEXT NOT NULL,
    size INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (issue_id, destination, batch_no)
);
CREATE INDEX send_batches_open ON send_batches(issue_id, destination, done, lease_until);
CREATE TABLE send_workers (
    issue_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    worker TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'stopped')),
    counts TEXT NOT NULL DEFAULT '{}',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (issue_id, destination, worker)
);
"""


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Deliveries that did not go out for the same reason."""

    state: str
    code: int | None
    reply: str
    count: int


@dataclass(frozen=True, slots=True)
class IssueSummary:
    """One issue sent to one destination, and how many deliveries are in each state."""

    issue_id: str
    destination: str  # SMTP or OUTBOX: the counts are for this destination only
    subject: str
    content_hash: str
    created_at: datetime
    completed_at: datetime | None  # when the list was finished (None: no send of this version finished it)
    counts: dict[str, int]
    changed_at: datetime | None = None  # when this version was first sent, if an earlier one was (--changed)
    # readers the last run of this version that ended (not killed) found suppressed and did not mail, as its
    # report counted them; None: no such run (the runs before schema 14 were not counted)
    suppressed: int | None = None

    @property
    def total(self) -> int:
        """Every subscriber the issue was attempted for."""
        return sum(self.counts.values())

    def count(self, state: str) -> int:
        """The number of deliveries in one state (0 when none)."""
        return self.counts.get(state, 0)


@dataclass(frozen=True, slots=True)
class IssueStatus(IssueSummary):
    """An issue's counts plus its failures grouped by (state, code, reply), commonest first."""

    failures: list[FailureGroup] = field(default_factory=list)

    def format(self, running: bool | None) -> str:
        """Render the status as a few lines for the terminal; `running`: whether a send of the issue holds
        its lock now (Ledger.issue_locked), so that one not complete reads as under way or as stopped."""
        counts = ", ".join(f"{self.count(s)} {LABELS[s]}" for s in STATES if self.count(s)) or "nothing yet"
        lines = [
            f"{self.issue_id}: {self.subject}",
            f"  {_WHERE[self.destination]}: {counts} ({self.total} in all)",
        ]
        if self.suppressed:
            lines.append(
                f"  {self.suppressed} suppressed (unsubscribed, bounced or complained): not mailed, as the"
                " last send of it found them"
            )
        if self.completed_at is not None:
            lines.append(f"  complete since {self.completed_at.isoformat(sep=' ', timespec='seconds')}")
        elif running:  # the counts alone read as done: the record holds only the readers a send reached
            lines.append("  not complete: a send of it is running now")
        else:
            failed = self.count("deferred") + self.count("failed")  # a send that met one does not finish
            why = f"{failed} reader(s) failed (below), or " if failed else ""
            now = "" if running is None else " and none runs now"  # None: the engine cannot tell
            how = "one stopped early" if running is False else "one is running, or it stopped early"
            lines.append(
                f"  not complete: no send of this version has mailed its whole list{now} ({why}{how}):"
                " run the same send command again to finish"
            )
        if self.changed_at is not None:
            when = self.changed_at.isoformat(sep=" ", timespec="seconds")
            lines.append(
                f"  the post changed {when} (--changed): this version is the web copy, and readers mailed"
                " before then got the earlier one"
            )
        for group in self.failures:
            code = "no reply" if group.code is None else str(group.code)
            lines.append(f"  {group.count} {LABELS[group.state]}: {code} {group.reply}".rstrip())
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address that must not be mailed again, who said so and why."""

    email: str
    source: (
        str  # 'web', 'one-click', 'manual', 'import'; for a bounce, its Bounce.source ('smtp', 'dsn', ...)
    )
    reason: str  # free text; a bounce's is policy.HARD_BOUNCE, SOFT_BOUNCES or COMPLAINED
    created_at: datetime
    issue_id: str | None = None  # the issue whose bounce or complaint caused it
    status: str = ""  # the report's enhanced status code
    diagnostic: str = ""  # the reporting server's words


_WHERE = {SMTP: "over SMTP", OUTBOX: "to the local outbox (no one mailed)"}

_RECORD = (
    "INSERT INTO deliveries"
    " (issue_id, destination, email, state, attempts, last_code, last_reply, updated_at, tag, run_id)"
    " VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?)"
    " ON CONFLICT (issue_id, destination, email) DO UPDATE SET state = excluded.state,"
    " attempts = deliveries.attempts + CASE WHEN deliveries.state = 'sending' THEN 0 ELSE 1 END,"
    " last_code = excluded.last_code, last_reply = excluded.last_reply, updated_at = excluded.updated_at,"
    " run_id = excluded.run_id"
    " WHERE deliveries.state != 'sent'"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _utc(when: datetime) -> str:
    """A moment as the record writes it (UTC, ISO 8601), so text order is time order."""
    if when.tzinfo is None:
        raise ValueError("a naive datetime: give the time zone")
    return when.astimezone(UTC).isoformat(timespec="microseconds")


class Ledger:
    """One connection to the record (a SQLite file or a PostgreSQL database); one per thread or process.

    Issues, runs and deliveries are read and written for one destination, SMTP unless told: a send opens
    the ledger for its transport's destination, so the outbox's record never answers for SMTP's.
    """

    def __init__(
        self,
        path: Location,
        *,
        timeout: float = 30.0,
        create: bool = True,
        destination: str = SMTP,
        upgrade: bool = True,
    ) -> None:
        """Open (with `create`, make) the database; create=False refuses a missing one instead, and
        upgrade=False a schema older than this mailer's (a worker that joins a send an older mailer runs)."""
        if destination not in DESTINATIONS:
            raise ValueError(f"not a destination: {destination!r}")
        self.path = path
        self.destination = destination
        self.timeout = timeout
        self.create = create
        self.upgrade = upgrade
        self._depth = 0
        self._worker = ""  # the send worker whose lock this connection holds (hold_worker), its copies too
        self.found_version = 0  # the schema's number before this opening made or upgraded it
        self._engine: Engine | None = None
        self._engine = connect(path, timeout=timeout, create=create)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _migrate(self) -> None:
        # Read first, lock only to create: opening must not wait for a send's open transaction.
        self.found_version = self.schema_version()
        if self.found_version == SCHEMA_VERSION:
            return
        if not self.upgrade and 0 < self.found_version < SCHEMA_VERSION:
            raise MailerError(
                f"{self.path}: written by an older mailer (schema {self.found_version}, this one knows"
                f" {SCHEMA_VERSION}), which may be sending from it now: not upgraded under it; run the mailer"
                " version of the host that started the send, or `mailer db migrate` once no send runs"
            )
        self.found_version = self.migrate()  # read again under the lock: another process may have made it

    def schema_version(self) -> int:
        """The schema's number as the database has it (0 for an empty one; SCHEMA_VERSION once opened)."""
        with self._errors():
            return self._db.schema_version()

    def migrate(self) -> int:
        """Bring the schema up to SCHEMA_VERSION; the version it had before (0: none, made now).

        Schemas 1 to 5 are only ever in SQLite files (a PostgreSQL record starts at 6), but each step from
        here on is written for both engines.
        """
        with self.transaction():
            version = before = self.schema_version()
            if version > SCHEMA_VERSION:
                raise MailerError(
                    f"{self.path}: written by a newer mailer (schema {version}, this one knows"
                    f" {SCHEMA_VERSION}); upgrade mailer"
                )
            if 0 < version < SCHEMA_VERSION and (senders := self._senders()):
                raise MailerError(
                    f"{self.path}: written by an older mailer (schema {version}, this one knows"
                    f" {SCHEMA_VERSION}), whose send runs on it now ({senders[0]}): not upgraded under it"
                    " (that send's own processes and the older web hosts would be refused mid-send); run"
                    " this again once it has ended"
                )
            if version < SCHEMA_VERSION:
                self._script(_SUPPRESSIONS)
                if version == 0:
                    self._script(_RECORD_TABLES)
                    version = 3  # _RECORD_TABLES is schema 3; every later schema is a step from it
                upgrades = {
                    1: self._from_v1,
                    2: self._from_v2,
                    3: self._from_v3,
                    4: self._from_v4,
                    5: self._from_v5,
                    6: self._from_v6,
                    7: self._from_v7,
                    8: self._from_v8,
                    9: self._from_v9,
                    10: self._from_v10,
                    11: self._from_v11,
                    12: self._from_v12,
                    13: self._from_v13,
                }
                for step in range(version, SCHEMA_VERSION):
                    upgrades[step]()  # from schema `step` to `step + 1`, in one transaction with the rest
                with self._errors():
                    self._db.set_schema_version(SCHEMA_VERSION)
        return before

    def _senders(self) -> list[str]:
        with self._errors():
            return self._db.senders()

    def _script(self, script: str) -> None:
        # statement by statement, each in the engine's DDL words: executescript() would commit first
        with self._errors():
            for statement in filter(str.strip, script.split(";")):
                self._db.execute(self._db.ddl(statement))

    def _from_v1(self) -> None:
        # Version 1 marked a whole issue complete, whatever list it went to. Which list that was is not
        # known, so the mark becomes a run of an unknown list: shown by `status`, never matching a list
        # (the next send of the issue reads its list again and skips whoever is recorded as sent).
        self._db.execute(
            "CREATE TABLE runs (run_id INTEGER PRIMARY KEY,"
            " issue_id TEXT NOT NULL REFERENCES issues(issue_id), content_hash TEXT NOT NULL,"
            " list_key TEXT NOT NULL, list_path TEXT NOT NULL,"
            " pid INTEGER NOT NULL, started_at TEXT NOT NULL, completed_at TEXT)"
        )
        self._db.execute(
            "INSERT INTO runs (issue_id, content_hash, list_key, list_path, pid, started_at, completed_at)"
            " SELECT issue_id, content_hash, '', '(before schema 2)', 0, completed_at, completed_at"
            " FROM issues WHERE completed_at IS NOT NULL"
        )
        self._db.execute("ALTER TABLE issues DROP COLUMN completed_at")

    def _from_v2(self) -> None:
        # Version 2 kept one record for every destination, so a try-out in the outbox counted as sent for
        # a later send over SMTP. Outbox deliveries are told apart by the outbox's own replies (it has
        # answered "queued in outbox as ..." and "not queued: ..." since the first release); everything
        # else stays SMTP's, so no one mailed over SMTP can be mailed again. A run is kept for the one
        # destination its issue's deliveries went to; a run of an issue that went to both is not known
        # to be either's, so it is kept as the outbox's (which mails no one) and as a run of no list: the
        # next send to either destination reads its list again and skips whoever is recorded as sent.
        for table in ("deliveries", "runs", "issues"):
            self._db.execute(f"ALTER TABLE {table} RENAME TO {table}_v2")
        for index in ("runs_by_list", "deliveries_by_state"):
            self._db.execute(f"DROP INDEX IF EXISTS {index}")
        self._script(_RECORD_TABLES)
        self._db.execute(
            "CREATE TEMP VIEW v2_destinations AS SELECT issue_id, email, CASE"
            " WHEN last_reply LIKE 'queued in outbox as %' OR last_reply LIKE 'not queued: %' THEN 'outbox'"
            " ELSE 'smtp' END AS destination FROM deliveries_v2"
        )
        self._db.execute(
            "INSERT INTO issues (issue_id, destination, content_hash, subject, created_at)"
            " SELECT i.issue_id, w.destination, i.content_hash, i.subject, i.created_at FROM issues_v2 AS i"
            " JOIN (SELECT DISTINCT issue_id, destination FROM v2_destinations"
            "  UNION SELECT issue_id, 'smtp' FROM issues_v2"
            "  WHERE issue_id NOT IN (SELECT issue_id FROM deliveries_v2)) AS w USING (issue_id)"
        )
        self._db.execute(
            "INSERT INTO deliveries (issue_id, destination, email, state, attempts, last_code, last_reply,"
            " updated_at) SELECT d.issue_id, w.destination, d.email, d.state, d.attempts, d.last_code,"
            " d.last_reply, d.updated_at FROM deliveries_v2 AS d JOIN v2_destinations AS w"
            " USING (issue_id, email)"
        )
        self._db.execute(
            "INSERT INTO runs (run_id, issue_id, destination, content_hash, list_key, list_path, pid,"
            " started_at, completed_at)"
            " SELECT r.run_id, r.issue_id, min(i.destination),"
            " r.content_hash, CASE WHEN count(*) > 1 THEN '' ELSE r.list_key END, r.list_path, r.pid,"
            " r.started_at, r.completed_at FROM runs_v2 AS r JOIN issues AS i USING (issue_id)"
            " GROUP BY r.run_id"
        )
        self._db.execute("DROP VIEW v2_destinations")
        for table in ("deliveries", "runs", "issues"):
            self._db.execute(f"DROP TABLE {table}_v2")

    def _from_v3(self) -> None:
        # Bounces (issue 14): each delivery keeps its message's tag, which the Message-ID and the signed
        # envelope sender carry, so a bounce names its reader; reports are kept, counted once each; a
        # suppression says which issue, status and diagnostic caused it. Deliveries recorded before keep
        # the tag of their key: the Message-IDs mailer sent them with, for all but addresses whose domain
        # was not ASCII.
        self._script("ALTER TABLE deliveries ADD COLUMN tag BLOB")
        keys = self._all("SELECT issue_id, destination, email FROM deliveries")
        self.write_many(
            "UPDATE deliveries SET tag = ? WHERE issue_id = ? AND destination = ? AND email = ?",
            [(message_tag(issue, email), issue, where, email) for issue, where, email in keys],
        )
        self._script("CREATE INDEX deliveries_by_tag ON deliveries(tag)")
        for column in (
            "issue_id TEXT",
            "status TEXT NOT NULL DEFAULT ''",
            "diagnostic TEXT NOT NULL DEFAULT ''",
        ):
            self._script(f"ALTER TABLE suppressions ADD COLUMN {column}")
        self._script(_BOUNCES)

    def _from_v4(self) -> None:
        # When an address was last taken off the suppression list: soft bounces before it no longer count
        # towards soft_bounce_limit, so a removed suppression is not brought back by the next delay notice.
        self._script("CREATE TABLE resubscribed (email TEXT PRIMARY KEY, at TEXT NOT NULL) WITHOUT ROWID")

    def _from_v5(self) -> None:
        # Subscriber lists in the database (issue 15): nothing before had them, so nothing to carry over.
        self._script(_SUBSCRIBERS)

    def _from_v6(self) -> None:
        # Signups through `mailer serve` (issue 15; signup.py): nothing before had them.
        self._script(_SIGNUPS)

    def _from_v7(self) -> None:
        # Sends made by several processes (issue 16): nothing before had them, so nothing to carry over.
        self._script(_SENDS)

    def _from_v8(self) -> None:
        # One commit per message at one connection (issue 16): each 'sent' row written also went into the
        # index by state, 1.5 more pages to the WAL per commit (its leaf, and a rebalance about one insert
        # in six). Rows not sent are the ones looked up by state (failures, retries, messages in doubt); the
        # count of those sent is the issue's rows less those (Ledger._summaries).
        # (IF EXISTS: the upgrade tests of steps 4 to 7 make their old schema from today's, which has none)
        self._script(
            "DROP INDEX IF EXISTS deliveries_by_state;"
            " CREATE INDEX IF NOT EXISTS deliveries_unsent ON deliveries(issue_id, destination, state)"
            f" WHERE {_UNSENT}"
        )

    def _from_v9(self) -> None:
        # Each issue's web copy (archive.py), for the `mailer serve` of every host that shares the record:
        # until now only the sending host's data folder had it. Copies written before stay on their host.
        # (IF NOT EXISTS: the upgrade tests of older steps make their old schema from today's)
        self._script(
            "CREATE TABLE IF NOT EXISTS web_copies (issue_id TEXT PRIMARY KEY, html BLOB NOT NULL)"
            " WITHOUT ROWID"
        )

    def _from_v10(self) -> None:
        # Which run wrote a delivery's outcome (issue 16): a send by workers tells the readers mailed in this
        # run (by a worker that stopped or died half-way through their batch) from those mailed before it;
        # and each batch's counts, written with its done mark, so that the report adds up the batches, not
        # the workers (a killed one's last counts die with it). Rows written before are of no run (NULL).
        self._script(
            "ALTER TABLE deliveries ADD COLUMN run_id INTEGER;"
            " ALTER TABLE send_batches ADD COLUMN counts TEXT"
        )

    def _from_v11(self) -> None:
        # The mark of the key each run signed its readers' links with (keymarks.py), so that a host with
        # another key stops instead of mailing links the other hosts refuse. Runs before have none: the next
        # send's run gives the record its first. (IF NOT EXISTS: the upgrade tests of older steps make their
        # old schema from today's)
        self._script(
            "CREATE TABLE IF NOT EXISTS key_marks (run_id BIGINT PRIMARY KEY, mark TEXT NOT NULL)"
            " WITHOUT ROWID"
        )

    def _from_v12(self) -> None:
        # The digest of each web copy (webcopies.py), beside it, so that every host's `mailer serve` sees
        # that its file of an issue is not the record's copy (replaced by a send with --changed on another
        # host) by reading 64 characters per issue, not the copies. A table of its own: read whole, at most
        # once a second, it is what a serve asks the record for each issue page. (IF NOT EXISTS: the
        # upgrade tests of older steps make their old schema from today's)
        self._script(
            "CREATE TABLE IF NOT EXISTS web_copy_digests (issue_id TEXT PRIMARY KEY"
            " REFERENCES web_copies(issue_id) ON DELETE CASCADE, digest TEXT NOT NULL) WITHOUT ROWID"
        )
        lacking = self._all(
            "SELECT issue_id FROM web_copies AS w"
            " WHERE NOT EXISTS (SELECT 1 FROM web_copy_digests AS d WHERE d.issue_id = w.issue_id)"
        )
        for (issue_id,) in lacking:  # one copy in memory at a time
            (html,) = self._one("SELECT html FROM web_copies WHERE issue_id = ?", (issue_id,))
            self._write(
                "INSERT INTO web_copy_digests (issue_id, digest) VALUES (?, ?)",
                (issue_id, digest(bytes(html))),
            )

    def _from_v13(self) -> None:
        # How many readers each run found suppressed and so did not mail, as its report counted them
        # (also those suppressed while it ran: recheck.py), so that `mailer status` says what the report
        # said. Written as the run ends; runs before, and one killed, have none. (IF NOT EXISTS: the upgrade
        # tests of older steps make their old schema from today's)
        self._script(
            "CREATE TABLE IF NOT EXISTS run_counts (run_id BIGINT PRIMARY KEY, suppressed INTEGER NOT NULL)"
            " WITHOUT ROWID"
        )

    def keep_web_copy(self, issue_id: str, html: bytes, *, replace: bool = True) -> None:
        """Keep the issue's web copy, which every host's `mailer serve` shows (hostcopies.py), and its
        digest; replace=False keeps the one the record has, if any."""
        on_conflict = "DO UPDATE SET html = excluded.html" if replace else "DO NOTHING"
        with self.transaction(rows_only=True):
            if self._write(
                f"INSERT INTO web_copies (issue_id, html) VALUES (?, ?) ON CONFLICT (issue_id) {on_conflict}",
                (issue_id, html),
            ).rowcount:
                self._write(
                    "INSERT INTO web_copy_digests (issue_id, digest) VALUES (?, ?)"
                    " ON CONFLICT (issue_id) DO UPDATE SET digest = excluded.digest",
                    (issue_id, digest(html)),
                )

    def reopen(self) -> Ledger:
        """Another connection to this record and destination, for another thread (one per thread); it
        holds the worker's lock this one holds (hold_worker)."""
        other = Ledger(self.path, timeout=self.timeout, destination=self.destination)
        if self._worker:
            try:
                other.hold_worker(self._worker)
            except BaseException:
                other.close()
                raise
        return other

    def hold_worker(self, name: str) -> bool:
        """Hold the lock that says the send's worker `name` is alive on this connection and every one
        reopen() makes of it, so that the lock is free once the worker's last session has ended (killed,
        or cut off from the record, where it commits no outcome, so sends no further "."); whether the
        engine has such locks (PostgreSQL; SQLite's senders share one host, where a pid tells)."""
        with self._errors():
            held = self._db.hold_worker(name)
        if held:
            self._worker = name
        return held

    def held_workers(self, names: Sequence[str]) -> set[str] | None:
        """Which of the workers named hold their lock now (hold_worker); None where the engine cannot tell."""
        with self._errors():
            return self._db.held_workers(names)

    def issue_locked(self, issue_id: str) -> bool | None:
        """Whether a send of the issue holds its lock now (issue_lock); None where the engine cannot tell."""
        with self._errors():
            return self._db.issue_locked(issue_id)

    @property
    def now(self) -> str:
        """SQL for the record's time now, in seconds since the epoch (engine.Engine.now)."""
        return self._db.now

    @property
    def stamp(self) -> str:
        """SQL for the record's time less `?` seconds, as '%Y-%m-%dT%H:%M:%SZ' (engine.Engine.stamp)."""
        return self._db.stamp

    def lease_clock(self) -> float:
        """Seconds on the clock this process follows its leases on (engine.Engine.lease_clock)."""
        return self._db.lease_clock()

    @property
    def skip_locked(self) -> str:
        """What a SELECT in a rows_only transaction adds to claim rows no other transaction holds."""
        return self._db.skip_locked

    @property
    def concurrent_writers(self) -> int:
        """How many connections' write transactions can usefully commit at once (engine.Engine.writers)."""
        return self._db.writers

    def in_place(self) -> bool:
        """Whether this connection still writes where the next one will read.

        A SQLite file deleted, or replaced by another file renamed over it, while open keeps taking writes
        into the old file, which no one will read again; a writer that must not lose its write (an
        unsubscribe) checks this after committing. A PostgreSQL database always is in place.
        """
        return self._engine is not None and self._engine.in_place()

    def let_go_of_replaced(self) -> None:
        """Let go of a SQLite file that was replaced while open (in_place() is False): see the engine's."""
        self._db.let_go_of_replaced()

    def room(self) -> None:
        """Raise MailerError if the record might not take the outcomes of what a send is about to mail:
        a SQLite file whose file system has less than engine_sqlite.ROOM free. A send asks before its first
        message and at each look-up of the next readers, so it stops before a "." whose outcome could not
        be committed (that reader would be mailed again by the next run)."""
        self._db.room()

    def close(self) -> None:
        """Close the connection (an open transaction() is rolled back)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @contextmanager
    def closed_for_fork(self) -> Iterator[None]:
        """The connection closed for the block's time, opened again after it: a process forks in the block.

        SQLite keeps what a process holds of a file (its locks, the shared-memory index) in the process's
        memory: a child that inherited a connection's, and opened its own to the file, would take the
        parent's locks for its own. Only between transactions."""
        if self._depth or self._db.in_transaction:
            raise RuntimeError("closed_for_fork() inside a transaction")
        self.close()
        try:
            yield
        finally:
            self._engine = connect(self.path, timeout=self.timeout, create=False)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------------

    @property
    def _db(self) -> Engine:
        if self._engine is None:
            raise MailerError(f"{self.path}: the ledger is closed")
        return self._engine

    def _errors(self) -> AbstractContextManager[None]:
        return self._db.errors()

    @contextmanager
    def transaction(self, *, rows_only: bool = False) -> Iterator[None]:
        """Group several calls into one commit; an exception rolls all of them back.

        It holds the database-wide write lock, for a read-then-write that no other writer may come
        between; rows_only=True locks only the rows it writes (or selects with `skip_locked`) where the
        engine can (PostgreSQL), for writes that stand alone. A transaction inside another is part of it.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        db = self._db
        with db.errors():
            try:
                db.begin_rows() if rows_only else db.begin()
            except BaseException:
                if db.in_transaction:  # PostgreSQL: BEGIN went through, its lock did not
                    db.rollback()
                raise
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            if self._engine is not None and db.in_transaction:
                with db.errors():
                    db.rollback()
            raise
        self._depth = 0
        with db.errors():
            try:
                db.commit()
            except BaseException:
                if db.in_transaction:
                    db.rollback()
                raise

    def _write(self, sql: str, params: tuple[Any, ...] = (), rows_only: bool = False) -> Cursor:
        if rows_only and not self._depth:  # one statement is its own transaction, locking what it writes
            with self._errors():
                return self._db.execute(sql, params)
        with self.transaction(), self._errors():
            return self._db.execute(sql, params)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a query for a module that keeps its own tables here (stored.py); errors as MailerError."""
        return self._all(sql, tuple(params))

    def write(self, sql: str, params: Sequence[Any] = (), *, rows_only: bool = False) -> int:
        """Run one write (in the open transaction(), else its own); the rows it changed. rows_only=True:
        on its own it locks only the rows it writes (see transaction)."""
        return self._write(sql, tuple(params), rows_only).rowcount

    def write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one write for many rows, in one transaction."""
        with self.transaction(), self._errors():
            self._db.executemany(sql, rows)

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with self._errors():
            return self._db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._errors():
            return self._db.execute(sql, params).fetchall()

    # --- issues -----------------------------------------------------------------------------------

    def start_issue(
        self,
        issue_id: str,
        content_hash: str,
        subject: str,
        *,
        allow_changed: bool = False,
        allow_resend: bool = False,
    ) -> None:
        """Record an issue before sending it; refuse a changed post that some subscribers already got.

        A new issue id whose post has the exact content of one already mailed under another id (the
        file was renamed) is refused too, unless allow_resend: its readers would get it twice.
        """
        with self.transaction():
            row = self._one(
                "SELECT content_hash FROM issues WHERE issue_id = ? AND destination = ?",
                (issue_id, self.destination),
            )
            if row is None:
                if not allow_resend:
                    self._refuse_renamed(issue_id, content_hash)
                self._write(
                    "INSERT INTO issues (issue_id, destination, content_hash, subject, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (issue_id, self.destination, content_hash, subject, _now()),
                )
                return
            if row[0] == content_hash:
                return
            if not allow_changed:
                mailed = self._one(  # every row less those neither sent nor in doubt (see _from_v8)
                    "SELECT (SELECT count(*) FROM deliveries WHERE issue_id = ? AND destination = ?)"
                    " - (SELECT count(*) FROM deliveries WHERE issue_id = ? AND destination = ?"
                    f" AND {_UNSENT} AND state IN ('deferred', 'failed'))",
                    (issue_id, self.destination) * 2,
                )[0]
                if mailed:
                    raise MailerError(
                        f"issue {issue_id}: the post changed since it was first sent to {mailed}"
                        " subscribers; pass --changed to send the new version to those not yet mailed"
                        " (none if the list was done) and make it the issue's web copy"
                    )
            self._write(
                "UPDATE issues SET content_hash = ?, subject = ? WHERE issue_id = ? AND destination = ?",
                (content_hash, subject, issue_id, self.destination),
            )

    def _refuse_renamed(self, issue_id: str, content_hash: str) -> None:
        row = self._one(
            "SELECT i.issue_id, count(*) FROM issues AS i JOIN deliveries AS d USING (issue_id, destination)"
            " WHERE i.content_hash = ? AND i.issue_id != ? AND i.destination = ?"
            " AND d.state IN ('sent', 'sending') GROUP BY i.issue_id ORDER BY count(*) DESC LIMIT 1",
            (content_hash, issue_id, self.destination),
        )
        if row is not None:
            raise MailerError(
                f"issue {issue_id}: this exact post was already sent as issue {row[0]} to {row[1]}"
                " subscribers (was the file renamed?); pass --resend to mail it again under the new name"
            )

    def start_run(self, issue_id: str, list_key: str, list_path: str, key_mark: str = "") -> int:
        """Record that a send of the issue to one list starts, signing with the key of `key_mark` (when
        given: keymarks.py); return the run's id.

        A real write and commit before the first message goes: a database that cannot take one (a full
        disk, a read-only file) stops the send here rather than after a message the record cannot show;
        so does one with too little room left to record the send (room()).
        """
        self.room()
        with self.transaction():
            row = self._write(
                "INSERT INTO runs (issue_id, destination, content_hash, list_key, list_path, pid, started_at)"
                " SELECT issue_id, destination, content_hash, ?, ?, ?, ? FROM issues"
                " WHERE issue_id = ? AND destination = ? RETURNING run_id",
                (list_key, list_path, os.getpid(), _now(), issue_id, self.destination),
            ).fetchone()
            if row is None:
                raise MailerError(f"no issue {issue_id!r}: call start_issue before start_run")
            if key_mark:
                self._write("INSERT INTO key_marks (run_id, mark) VALUES (?, ?)", (row[0], key_mark))
            return int(row[0])

    def finish_run(self, run_id: int) -> None:
        """Note that a run reached everyone on its list it could, so the daily run need not look again."""
        self._write("UPDATE runs SET completed_at = ? WHERE run_id = ?", (_now(), run_id))

    def count_run(self, run_id: int, suppressed: int) -> None:
        """Keep how many readers the run found suppressed (its report's count), for `mailer status`."""
        self._write(
            "INSERT INTO run_counts (run_id, suppressed) VALUES (?, ?)"
            " ON CONFLICT (run_id) DO UPDATE SET suppressed = excluded.suppressed",
            (run_id, suppressed),
            rows_only=True,
        )

    def is_complete(self, issue_id: str, list_key: str) -> bool:
        """Whether a run of the issue's current version finished for this list (the same list key)."""
        row = self._one(
            "SELECT 1 FROM runs JOIN issues USING (issue_id, destination, content_hash)"
            " WHERE issue_id = ? AND destination = ? AND list_key = ? AND completed_at IS NOT NULL LIMIT 1",
            (issue_id, self.destination, list_key),
        )
        return row is not None

    def status(self, issue_id: str) -> IssueStatus:
        """The issue's record for this ledger's destination (see statuses())."""
        for status in self.statuses(issue_id):
            if status.destination == self.destination:
                return status
        raise MailerError(f"{self.path}: no issue {issue_id!r} has been sent {_WHERE[self.destination]} yet")

    def statuses(self, issue_id: str) -> list[IssueStatus]:
        """Per destination the issue went to: its deliveries per state, what did not go out by reply."""
        summaries = self._summaries(issue_id)
        if not summaries:
            raise MailerError(f"{self.path}: no issue {issue_id!r} has been sent yet")
        out = []
        for s in summaries:
            groups = self._all(
                "SELECT state, last_code, last_reply, count(*) AS n FROM deliveries"
                f" WHERE issue_id = ? AND destination = ? AND {_UNSENT} AND state IN ('deferred', 'failed')"
                " GROUP BY state, last_code, last_reply ORDER BY n DESC, state, last_code",
                (issue_id, s.destination),
            )
            out.append(
                IssueStatus(
                    s.issue_id,
                    s.destination,
                    s.subject,
                    s.content_hash,
                    s.created_at,
                    s.completed_at,
                    s.counts,
                    s.changed_at,
                    s.suppressed,
                    [FailureGroup(state, code, reply, n) for state, code, reply, n in groups],
                )
            )
        return out

    def issues(self) -> list[IssueSummary]:
        """Every issue with its delivery counts, one per destination it went to, newest first."""
        return self._summaries(None)

    def _summaries(self, issue_id: str | None) -> list[IssueSummary]:
        """One issue's summaries (one per destination), or every issue's when None."""
        # The rows not sent per state from their index, 'sent' the rest of the issue's rows (see _from_v8)
        one, params = ("", ()) if issue_id is None else (" AND issue_id = ?", (issue_id,))
        # complete: a run of the issue's version finished its list; since the last finished run that dealt
        # with a reader (one with none left to mail, such as a --changed correction of a finished list, does
        # not move it), else the first finished; changed: the first run of this version, after another's
        runs = "FROM runs AS r WHERE r.issue_id = i.issue_id AND r.destination = i.destination"
        dealt = (
            "SELECT 1 FROM deliveries AS d WHERE d.issue_id = r.issue_id AND d.destination = r.destination"
        )
        earlier = "SELECT 1 FROM runs AS o WHERE o.issue_id = i.issue_id AND o.destination = i.destination"
        rows = self._all(
            "SELECT i.issue_id, i.destination, i.subject, i.content_hash, i.created_at,"
            f" (SELECT max(r.completed_at) {runs} AND r.content_hash = i.content_hash),"
            f" coalesce((SELECT max(r.completed_at) {runs} AND r.completed_at IS NOT NULL"
            f"  AND EXISTS ({dealt} AND d.run_id = r.run_id)), (SELECT min(r.completed_at) {runs})),"
            f" (SELECT min(r.started_at) {runs} AND r.content_hash = i.content_hash"
            f"  AND EXISTS ({earlier} AND o.content_hash != i.content_hash AND o.run_id < r.run_id)),"
            " (SELECT count(*) FROM deliveries AS d WHERE d.issue_id = i.issue_id"
            "  AND d.destination = i.destination),"
            # the last send's count: none (null) if it kept none (killed), not the count of a send before it
            " (SELECT c.suppressed FROM runs AS r LEFT JOIN run_counts AS c USING (run_id)"
            "  WHERE r.issue_id = i.issue_id AND r.destination = i.destination"
            "  AND r.content_hash = i.content_hash ORDER BY r.run_id DESC LIMIT 1)"
            f" FROM issues AS i WHERE TRUE{one}"
            " ORDER BY i.created_at DESC, i.issue_id DESC, i.destination DESC",
            params,
        )
        unsent: dict[tuple[str, str], dict[str, int]] = {}
        for issue, destination, state, n in self._all(
            f"SELECT issue_id, destination, state, count(*) FROM deliveries WHERE {_UNSENT}{one}"
            " GROUP BY issue_id, destination, state",
            params,
        ):
            unsent.setdefault((issue, destination), {})[state] = n
        out: list[IssueSummary] = []
        for (
            issue,
            destination,
            subject,
            content_hash,
            created,
            complete,
            since,
            changed,
            total,
            suppressed,
        ) in rows:
            counts = unsent.get((issue, destination), {})
            if total > sum(counts.values()):
                counts["sent"] = total - sum(counts.values())
            out.append(
                IssueSummary(
                    issue,
                    destination,
                    subject,
                    content_hash,
                    _time(created),
                    _time(since) if complete else None,
                    counts,
                    _time(changed) if changed else None,
                    suppressed,
                )
            )
        return out

    # --- deliveries -------------------------------------------------------------------------------

    def record_outcomes(
        self,
        issue_id: str,
        outcomes: Sequence[tuple[str, str, int, str]],
        run: int | None = None,
        *,
        tags: Sequence[bytes] = (),
    ) -> None:
        """Record many (email, state, code, reply) outcomes of the run `run` in one commit: one fsync for a
        whole batch.

        The one way deliveries are written. Each outcome is an attempt, except one that settles a message
        in doubt ('sending': handed to the server, fate unknown), which was counted when it was handed
        over. A delivery already recorded as sent is left as it is, so one odd row cannot roll back the
        records of messages that went out, nor anyone be recorded as not mailed who was.

        `tags`, the outcomes' message tags in their order, are taken as they are where the caller made them
        already (a send's message factory makes each reader's once, for the Message-ID); else made here.
        """
        for _, state, _, _ in outcomes:
            if state not in ("sent", "deferred", "failed", "sending"):
                raise ValueError(f"not an outcome state: {state!r}")
        if tags and (len(tags) != len(outcomes) or any(len(tag) != TAG_BYTES for tag in tags)):
            raise ValueError(f"not a message tag for each of the {len(outcomes)} outcomes")
        now = _now()
        rows = [
            (
                issue_id,
                self.destination,
                key := dedupe_key(email),
                state,
                code,
                reply,
                now,
                tags[i] if tags else message_tag(issue_id, key),
                run,
            )
            for i, (email, state, code, reply) in enumerate(outcomes)
        ]
        if self._depth:
            with self._errors():
                self._db.executemany(_RECORD, rows)
            return
        with self._errors():  # each row's write stands alone: no read-then-write, so no database-wide lock
            self._db.write_batch(_RECORD, sorted(rows, key=lambda row: row[2]))

    def states(self, issue_id: str, emails: Iterable[str]) -> tuple[set[str], dict[str, str]]:
        """For many addresses at once: the suppressed ones, and the delivery state of those attempted
        (to this ledger's destination; a suppression holds for every destination).

        Both are keyed by dedupe_key(email); one query each per call instead of two per address.
        """
        suppressed, states, _ = self.looked_up(issue_id, emails, None)
        return suppressed, states

    def looked_up(
        self, issue_id: str, emails: Iterable[str], run: int | None
    ) -> tuple[set[str], dict[str, str], set[str]]:
        """states(), and which of those attempted have their outcome from the run `run` (a send by workers:
        another worker of the same run, stopped or killed half-way through their batch, dealt with them)."""
        keys = list(dict.fromkeys(dedupe_key(e) for e in emails))
        suppressed: set[str] = set()
        states: dict[str, str] = {}
        ours: set[str] = set()
        for start in range(0, len(keys), _IN_BATCH):
            part = keys[start : start + _IN_BATCH]
            with self._errors():
                suppressed.update(self._suppressed(part))
                found = self._db.keyed(
                    "deliveries",
                    ("state", "run_id"),
                    "issue_id = ? AND destination = ?",
                    (issue_id, self.destination),
                    "email",
                    part,
                )
            for email, state, by in found:
                states[email] = state
                if by is not None and by == run:
                    ours.add(email)
        return suppressed, states, ours

    def suppressed_among(self, keys: Iterable[str]) -> set[str]:
        """Which of these addresses (dedupe_key'd) are suppressed now: one indexed query per _IN_BATCH."""
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), _IN_BATCH):
            with self._errors():
                found.update(self._suppressed(keys[start : start + _IN_BATCH]))
        return found

    def _suppressed(self, keys: list[str]) -> list[str]:
        return [row[0] for row in self._db.keyed("suppressions", (), "TRUE", (), "email", keys)]

    def reset_failed(self, issue_id: str) -> int:
        """Turn permanent failures (and messages in doubt) into retries with a fresh attempt count; not those
        of readers suppressed since (a hard bounce suppresses its reader): the send skips them, and they
        stayed 'deferred' with their 550, which `status` called a temporary failure."""
        cursor = self._write(
            "UPDATE deliveries SET state = 'deferred', attempts = 0, updated_at = ?"
            f" WHERE issue_id = ? AND destination = ? AND {_UNSENT} AND state IN ('failed', 'sending')"
            " AND email NOT IN (SELECT s.email FROM suppressions AS s)",
            (_now(), issue_id, self.destination),
        )
        return cursor.rowcount

    def tagged(self, tag: bytes) -> Recipient | None:
        """The (issue, reader) of the message with this tag (envelope.message_tag), over SMTP first."""
        row = self._one(
            "SELECT issue_id, email FROM deliveries WHERE tag = ? ORDER BY destination = 'smtp' DESC LIMIT 1",
            (tag,),
        )
        return None if row is None else Recipient(row[0], row[1])

    def mailed(self, email: str) -> bool:
        """Whether any issue was ever handed to the SMTP server for this address (a webhook's test)."""
        row = self._one(
            "SELECT 1 FROM deliveries WHERE email = ? AND destination = 'smtp'"
            " AND state IN ('sent', 'sending') LIMIT 1",
            (dedupe_key(email),),
        )
        return row is not None

    # --- bounces ----------------------------------------------------------------------------------

    def add_bounce(self, bounce: Bounce) -> bool:
        """Keep one report about one address; False if this report about it was kept before."""
        b = bounce
        cursor = self._write(
            "INSERT INTO bounces"
            " (report_id, email, kind, status, diagnostic, issue_id, source, at, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (report_id, email) DO NOTHING",
            (b.report_id, dedupe_key(b.email), b.kind, b.status, b.diagnostic, b.issue_id, b.source,
             _utc(b.at), _now()),
        )  # fmt: skip
        return cursor.rowcount == 1

    def bounce_counts(self, issue_id: str | None = None) -> dict[str, dict[str, int]]:
        """{issue: {kind: addresses}} of the bounces kept (one issue's, or every issue's)."""
        where, params = ("WHERE issue_id = ?", (issue_id,)) if issue_id is not None else ("", ())
        rows = self._all(
            f"SELECT issue_id, kind, count(DISTINCT email) FROM bounces {where} GROUP BY issue_id, kind",
            params,
        )
        out: dict[str, dict[str, int]] = {}
        for issue, kind, n in rows:
            if issue is not None:
                out.setdefault(issue, {})[kind] = n
        return out

    def soft_bounces(self, email: str, since: datetime, until: datetime) -> list[tuple[datetime, str]]:
        """(when, which message) of the address's soft bounces in a span, oldest first.

        The message is its issue, or the report itself when the report did not say which issue. Bounces
        dated before the address was last taken off the suppression list are left out.
        """
        key = dedupe_key(email)
        rows = self._all(
            "SELECT at, coalesce('issue ' || issue_id, 'report ' || report_id) FROM bounces"
            " WHERE email = ? AND kind = 'soft' AND at >= ? AND at <= ?"
            " AND at > coalesce((SELECT at FROM resubscribed WHERE email = ?), '') ORDER BY at",
            (key, _utc(since), _utc(until), key),
        )
        return [(_time(at), message) for at, message in rows]

    # --- suppression list -------------------------------------------------------------------------

    def suppress(
        self,
        email: str,
        *,
        source: str,
        reason: str = "",
        issue_id: str | None = None,
        status: str = "",
        diagnostic: str = "",
    ) -> bool:
        """Never mail this address again; True if it was not suppressed before (the first reason stays)."""
        cursor = self._write(
            "INSERT INTO suppressions (email, source, reason, created_at, issue_id, status, diagnostic)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (email) DO NOTHING",
            (dedupe_key(email), source, reason, _now(), issue_id, status, diagnostic),
        )
        return cursor.rowcount == 1

    def unsuppress(self, email: str) -> bool:
        """Allow mail to this address again; True if it was suppressed.

        The time is kept: the soft bounces before it no longer count (see soft_bounces).
        """
        key = dedupe_key(email)
        with self.transaction():
            if self._write("DELETE FROM suppressions WHERE email = ?", (key,)).rowcount != 1:
                return False
            self._write(
                "INSERT INTO resubscribed (email, at) VALUES (?, ?)"
                " ON CONFLICT (email) DO UPDATE SET at = excluded.at",
                (key, _now()),
            )
        return True

    def suppression(self, email: str) -> Suppression | None:
        """The address's suppression (who, why, when), or None if it is not suppressed."""
        row = self._one(
            "SELECT email, source, reason, created_at, issue_id, status, diagnostic FROM suppressions"
            " WHERE email = ?",
            (dedupe_key(email),),
        )
        return None if row is None else _suppression(row)

    def is_suppressed(self, email: str) -> bool:
        """Whether the address is on the suppression list (case-insensitive)."""
        row = self._one("SELECT 1 FROM suppressions WHERE email = ?", (dedupe_key(email),))
        return row is not None

    def suppressions(self, *, page: int = 1000) -> Iterator[Suppression]:
        """Every suppressed address in address order, read a page at a time."""
        after = ""
        while True:
            rows = self._all(
                "SELECT email, source, reason, created_at, issue_id, status, diagnostic FROM suppressions"
                " WHERE email > ? ORDER BY email LIMIT ?",
                (after, page),
            )
            for row in rows:
                yield _suppression(row)
            if len(rows) < page:
                return
            after = rows[-1][0]


def _suppression(row: Sequence[Any]) -> Suppression:
    email, source, reason, created, issue_id, status, diagnostic = row
    return Suppression(email, source, reason, _time(created), issue_id, status, diagnostic)


def write_in_place(path: Location, write: Callable[[Ledger], T]) -> T:
    """Run `write` on the database at `path` (which must exist) so that it lands in the file there now.

    If a SQLite file was deleted or replaced while the write ran, the write went to a file no one will
    read: it is done again on the file now at the path (the writes given here are idempotent), or, with no
    file there, refused with a MailerError rather than reported as done.
    """
    for _ in range(3):
        with Ledger(path, create=False) as ledger:
            result = write(ledger)
            if ledger.in_place():
                return result
            ledger.let_go_of_replaced()
    raise MailerError(f"{path}: the database keeps being replaced; the write was not kept")
