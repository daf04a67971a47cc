"""The record: delivery states, the changed-post rule, transactions, suppressions, processes.

Each test that takes `db` runs on both engines (SQLite and PostgreSQL); `sqlite_db` is a file's own.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from mailer.engine import Location, Server
from mailer.envelope import Recipient, message_tag
from mailer.errors import MailerError
from mailer.ledger import OUTBOX, SCHEMA_VERSION, Ledger
from tests.pg import rows, set_schema_version, without_runs_of_deliveries
from tests.record import delivery

ISSUE = "2026-02-09"


@pytest.fixture
def db(record_at: Location) -> Location:
    return record_at


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "mailer.db"


@pytest.fixture
def ledger(db: Location) -> Iterator[Ledger]:
    with Ledger(db) as led:
        led.start_issue(ISSUE, "hash-1", "Monday's post")
        yield led


def record(
    ledger: Ledger, email: str, state: str, code: int = 250, reply: str = "ok", issue: str = ISSUE
) -> None:
    """One outcome, written as the send loop writes it."""
    ledger.record_outcomes(issue, [(email, state, code, reply)])


def test_creates_folder_wal_file_and_schema_version(sqlite_db: Path) -> None:
    db = sqlite_db
    with Ledger(db):
        pass
    assert db.is_file()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"issues", "deliveries", "suppressions"} <= tables
    with Ledger(db) as again:  # reopening an existing file keeps working
        assert again.issues() == []


# The schema of mailer's first release, as it wrote it (PRAGMA user_version = 1): an issue was complete
# as a whole, whatever list it went to.
SCHEMA_V1 = """
CREATE TABLE issues (issue_id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, subject TEXT NOT NULL,
    created_at TEXT NOT NULL, completed_at TEXT);
CREATE TABLE deliveries (issue_id TEXT NOT NULL REFERENCES issues(issue_id), email TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'deferred', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0, last_code INTEGER, last_reply TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL, PRIMARY KEY (issue_id, email)) WITHOUT ROWID;
CREATE INDEX deliveries_by_state ON deliveries(issue_id, state);
CREATE TABLE suppressions (email TEXT PRIMARY KEY, source TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL);
INSERT INTO issues VALUES ('2026-02-09', 'hash-1', 'Monday', '2026-02-09T06:00:00+00:00',
    '2026-02-09T06:05:00+00:00');
INSERT INTO issues VALUES ('2026-02-10', 'hash-2', 'Tuesday', '2026-02-10T06:00:00+00:00', NULL);
INSERT INTO deliveries VALUES ('2026-02-09', 'a@example.com', 'sent', 1, 250, 'ok',
    '2026-02-09T06:01:00+00:00');
INSERT INTO deliveries VALUES ('2026-02-10', 'a@example.com', 'deferred', 2, 451, 'later',
    '2026-02-10T06:01:00+00:00');
INSERT INTO suppressions VALUES ('gone@example.com', 'web', '', '2026-02-01T00:00:00+00:00');
PRAGMA user_version = 1;
"""


def test_a_version_1_database_is_migrated(sqlite_db: Path) -> None:
    db = sqlite_db
    db.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(SCHEMA_V1)
    with Ledger(db) as ledger:
        monday = ledger.status(ISSUE)
        assert monday.counts == {"sent": 1}
        assert (
            monday.completed_at is not None and monday.completed_at.isoformat() == "2026-02-09T06:05:00+00:00"
        )
        # the old mark named no list: no list counts as done, so the next send reads its list again
        assert not ledger.is_complete(ISSUE, "any-list")
        tuesday = delivery(ledger, "2026-02-10", "a@example.com")
        assert tuesday is not None and (tuesday.state, tuesday.attempts, tuesday.last_code) == (
            "deferred",
            2,
            451,
        )
        assert ledger.is_suppressed("gone@example.com")
        run = ledger.start_run(ISSUE, "list-a", "a.csv")  # the new table takes runs
        ledger.finish_run(run)
        assert ledger.is_complete(ISSUE, "list-a") and not ledger.is_complete(ISSUE, "list-b")
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = [r[1] for r in conn.execute("PRAGMA table_info(issues)")]
        assert "completed_at" not in columns
    with Ledger(db) as again:  # a migrated file opens as it is
        assert again.is_complete(ISSUE, "list-a")


# Schema 3 as mailer wrote it before bounces (PRAGMA user_version = 3): deliveries without their message's
# tag, suppressions without issue, status and diagnostic, no bounces table.
SCHEMA_V3 = """
CREATE TABLE suppressions (email TEXT PRIMARY KEY, source TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL);
CREATE TABLE issues (issue_id TEXT NOT NULL,
    destination TEXT NOT NULL CHECK (destination IN ('smtp', 'outbox')),
    content_hash TEXT NOT NULL, subject TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (issue_id, destination));
CREATE TABLE runs (run_id INTEGER PRIMARY KEY, issue_id TEXT NOT NULL, destination TEXT NOT NULL,
    content_hash TEXT NOT NULL, list_key TEXT NOT NULL, list_path TEXT NOT NULL, pid INTEGER NOT NULL,
    started_at TEXT NOT NULL, completed_at TEXT,
    FOREIGN KEY (issue_id, destination) REFERENCES issues(issue_id, destination));
CREATE INDEX runs_by_list ON runs(issue_id, destination, list_key);
CREATE TABLE deliveries (issue_id TEXT NOT NULL, destination TEXT NOT NULL, email TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'deferred', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0, last_code INTEGER, last_reply TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL, PRIMARY KEY (issue_id, destination, email),
    FOREIGN KEY (issue_id, destination) REFERENCES issues(issue_id, destination)) WITHOUT ROWID;
CREATE INDEX deliveries_by_state ON deliveries(issue_id, destination, state);
INSERT INTO issues VALUES ('2026-02-09', 'smtp', 'hash-1', 'Monday', '2026-02-09T06:00:00+00:00');
INSERT INTO deliveries VALUES ('2026-02-09', 'smtp', 'ann@example.org', 'sent', 1, 250, 'ok',
    '2026-02-09T06:01:00+00:00');
INSERT INTO deliveries VALUES ('2026-02-09', 'smtp', 'bo@example.org', 'failed', 1, 550, '5.1.1 no such user',
    '2026-02-09T06:01:00+00:00');
INSERT INTO suppressions VALUES ('gone@example.com', 'web', 'asked', '2026-02-01T00:00:00+00:00');
PRAGMA user_version = 3;
"""


def test_a_version_3_database_is_migrated_and_its_message_ids_still_name_their_readers(
    sqlite_db: Path,
) -> None:
    db = sqlite_db
    import hashlib
    from datetime import UTC, datetime

    from mailer.bounces import HARD, Bounce
    from mailer.config import Settings
    from mailer.envelope import from_message_id
    from mailer.policy import record_bounces

    db.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(SCHEMA_V3)
    with Ledger(db) as ledger:
        assert ledger.status(ISSUE).counts == {"sent": 1, "failed": 1}
        (gone,) = ledger.suppressions()
        assert (gone.email, gone.source, gone.reason, gone.issue_id, gone.status) == (
            "gone@example.com", "web", "asked", None, "",
        )  # fmt: skip
        # the Message-ID schema 3's mailer sent Ann, as a DSN quotes it back
        digest = hashlib.blake2b(b"2026-02-09\0ann@example.org", digest_size=10).hexdigest()
        assert from_message_id(ledger, f"<2026-02-09.{digest}@example.org>") == (ISSUE, "ann@example.org")
        at = datetime(2026, 2, 9, 7, tzinfo=UTC)
        bo = Bounce("bo@example.org", HARD, "5.1.1", "no such user", ISSUE, "dsn", "dsn-1", at)
        assert record_bounces(ledger, [bo], Settings()).suppressed == ["bo@example.org"]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM bounces").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM deliveries WHERE tag IS NULL").fetchone()[0] == 0


def test_a_version_4_database_is_migrated_and_a_removal_then_forgives_soft_bounces(sqlite_db: Path) -> None:
    db = sqlite_db
    # schema 4 is today's without the `resubscribed` table (step 4 adds only that), the subscriber lists
    # (step 5 adds only those), the signups (step 6 adds only those), the tables of sends made by several
    # processes (step 7) and the run of each delivery (step 10)
    with Ledger(db) as ledger:
        ledger.suppress("ann@example.org", source="dsn", reason="soft bounces")
    with closing(sqlite3.connect(db)) as conn:
        tables = ("resubscribed", "members", "lists", "signups", "signup_hits")
        for table in (*tables, "send_workers", "send_batches", "sends"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("ALTER TABLE deliveries DROP COLUMN run_id")
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
    with Ledger(db) as ledger:
        assert ledger.is_suppressed("ann@example.org")
        assert ledger.unsuppress("ann@example.org") and not ledger.is_suppressed("ann@example.org")
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT email FROM resubscribed").fetchall() == [("ann@example.org",)]


def _delivery_indexes(db: Location) -> dict[str, str]:
    """The indexes of deliveries as the database has them: {name: its definition}."""
    if isinstance(db, Server):
        return dict(rows(db, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'deliveries'"))
    found = rows(db, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'")
    return {name: sql for name, sql in found if sql}  # the primary key's own has no SQL


def test_a_version_8_database_is_migrated_and_its_index_by_state_keeps_only_rows_not_sent(
    db: Location,
) -> None:
    # schema 8 is today's with the index by state over every row (step 8 makes it hold only rows not sent),
    # without the run of each delivery and the counts of each batch (step 10)
    with Ledger(db) as ledger:
        ledger.start_issue(ISSUE, "hash-1", "Monday's post")
        for state, who in [
            ("sent", "a"),
            ("sent", "b"),
            ("failed", "c"),
            ("deferred", "d"),
            ("sending", "e"),
        ]:
            record(ledger, f"{who}@example.com", state, 550 if state == "failed" else 250)
    rows(db, "DROP INDEX deliveries_unsent")
    rows(db, "CREATE INDEX deliveries_by_state ON deliveries(issue_id, destination, state)")
    without_runs_of_deliveries(db)
    set_schema_version(db, 8)
    with Ledger(db) as ledger:
        assert ledger.found_version == 8
        status = ledger.status(ISSUE)
        assert status.counts == {"sent": 2, "failed": 1, "deferred": 1, "sending": 1}
        assert [(g.state, g.count) for g in status.failures] == [("deferred", 1), ("failed", 1)]
        record(ledger, "f@example.com", "sent")
        assert ledger.reset_failed(ISSUE) == 2  # the failed one and the one in doubt
        assert ledger.status(ISSUE).counts == {"sent": 3, "deferred": 3}
    indexes = _delivery_indexes(db)
    assert "deliveries_by_state" not in indexes
    assert "state" in indexes["deliveries_unsent"] and "'sent'" in indexes["deliveries_unsent"]
    if isinstance(db, Path):
        assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        # the rows in the index are the ones not sent: SQLite reads it for them, and it has 3 entries
        assert rows(
            db, "SELECT count(*) FROM deliveries INDEXED BY deliveries_unsent WHERE state != 'sent'"
        ) == [(3,)]
    else:
        assert rows(db, "SELECT version FROM mailer_schema") == [(SCHEMA_VERSION,)]


def test_a_version_9_database_is_migrated_and_keeps_web_copies(db: Location) -> None:
    # schema 9 is today's without the web copies, which step 9 adds (archive.from_record), and without the
    # run of each delivery and the counts of each batch (step 10)
    with Ledger(db) as ledger:
        ledger.start_issue(ISSUE, "hash-1", "Monday's post")
        record(ledger, "a@example.com", "sent")
    rows(db, "DROP TABLE web_copy_digests")  # step 12 -> 13's, which names the copies
    rows(db, "DROP TABLE web_copies")
    without_runs_of_deliveries(db)
    set_schema_version(db, 9)
    with Ledger(db) as ledger:
        assert ledger.found_version == 9
        assert ledger.status(ISSUE).counts == {"sent": 1}
        ledger.keep_web_copy(ISSUE, b"<p>first</p>")
        ledger.keep_web_copy(ISSUE, b"<p>\xe5\x9b\x9b second</p>")  # a rerun's copy replaces it
    assert [(i, bytes(h)) for i, h in rows(db, "SELECT issue_id, html FROM web_copies")] == [
        (ISSUE, "<p>四 second</p>".encode())
    ]
    version = "SELECT version FROM mailer_schema" if isinstance(db, Server) else "PRAGMA user_version"
    assert rows(db, version) == [(SCHEMA_VERSION,)]


def test_a_version_12_database_gets_the_digest_of_each_web_copy(db: Location) -> None:
    # schema 12 is today's without the digests beside the web copies (step 12 -> 13): every host's serve
    # tells its file of an issue from the record's copy by them (hostcopies.py)
    with Ledger(db) as ledger:
        ledger.keep_web_copy(ISSUE, b"<p>first</p>")
        ledger.keep_web_copy("2026-02-10", "<p>\u56db</p>".encode())
    rows(db, "DROP TABLE web_copy_digests")
    set_schema_version(db, 12)
    with Ledger(db) as ledger:
        assert ledger.found_version == 12
        assert sorted(ledger.rows("SELECT issue_id, digest FROM web_copy_digests")) == [
            (ISSUE, hashlib.sha256(b"<p>first</p>").hexdigest()),
            ("2026-02-10", hashlib.sha256(b"<p>\xe5\x9b\x9b</p>").hexdigest()),
        ]
        ledger.keep_web_copy("2026-02-10", b"<p>replaced</p>")  # a send with --changed
        # a host's older copy, put into the record by its serve: the record's stays
        ledger.keep_web_copy(ISSUE, b"<p>not kept</p>", replace=False)
    both = (
        "SELECT w.issue_id, w.html, d.digest FROM web_copies AS w JOIN web_copy_digests AS d USING (issue_id)"
    )
    assert sorted((i, bytes(h), d) for i, h, d in rows(db, both)) == [
        (ISSUE, b"<p>first</p>", hashlib.sha256(b"<p>first</p>").hexdigest()),
        ("2026-02-10", b"<p>replaced</p>", hashlib.sha256(b"<p>replaced</p>").hexdigest()),
    ]


def test_delivery_states_and_attempts(ledger: Ledger) -> None:
    assert delivery(ledger, ISSUE, "ann@example.com") is None
    record(ledger, "Ann@Example.com", "sending", 0, "connection lost after the message")  # in doubt
    d = delivery(ledger, ISSUE, "ann@example.com")
    assert d is not None and (d.state, d.attempts, d.last_code) == ("sending", 1, 0)

    # settling the message in doubt is not another attempt
    record(ledger, "ann@example.com", "deferred", 451, "4.7.1 try later")
    d = delivery(ledger, ISSUE, "ANN@EXAMPLE.COM")
    assert d is not None
    assert (d.state, d.attempts, d.last_code, d.last_reply) == (
        "deferred",
        1,
        451,
        "4.7.1 try later",
    )

    record(ledger, "ann@example.com", "sending", 0, "lost again")  # the second attempt, in doubt
    d = delivery(ledger, ISSUE, "ann@example.com")
    assert d is not None and (d.state, d.attempts) == ("sending", 2)
    record(ledger, "ann@example.com", "sent", 250, "2.0.0 queued as 1234")
    d = delivery(ledger, ISSUE, "ann@example.com")
    assert d is not None and (d.state, d.attempts, d.last_code) == ("sent", 2, 250)
    assert d.updated_at.tzinfo is not None

    # a delivery recorded as sent stays sent, whatever is recorded for it later
    record(ledger, "ann@example.com", "sending", 0, "in doubt")
    record(ledger, "ann@example.com", "failed", 550, "no")
    d = delivery(ledger, ISSUE, "ann@example.com")
    assert d is not None and (d.state, d.attempts, d.last_code, d.last_reply) == (
        "sent",
        2,
        250,
        "2.0.0 queued as 1234",
    )


def test_outcomes_without_a_claim_still_count_attempts(ledger: Ledger) -> None:
    record(ledger, "bo@example.com", "deferred", 421, "busy")
    record(ledger, "bo@example.com", "deferred", 451, "later")
    record(ledger, "bo@example.com", "sent", 250, "ok")
    d = delivery(ledger, ISSUE, "bo@example.com")
    assert d is not None and (d.state, d.attempts, d.last_code) == ("sent", 3, 250)


def test_reset_failed_turns_permanent_failures_into_fresh_retries(ledger: Ledger) -> None:
    for who in ("a", "b"):
        record(ledger, f"{who}@example.com", "sending", 0, "in doubt")
        record(ledger, f"{who}@example.com", "failed", 550, "no such user")
    record(ledger, "c@example.com", "deferred", 451, "later")
    record(ledger, "d@example.com", "sent", 250, "ok")
    assert ledger.reset_failed(ISSUE) == 2
    a = delivery(ledger, ISSUE, "a@example.com")
    assert a is not None and (a.state, a.attempts, a.last_code) == ("deferred", 0, 550)
    c = delivery(ledger, ISSUE, "c@example.com")
    assert c is not None and (c.state, c.attempts) == ("deferred", 1)
    assert ledger.reset_failed(ISSUE) == 0
    assert ledger.status(ISSUE).counts == {"deferred": 3, "sent": 1}


def test_a_batch_of_outcomes_ends_as_the_same_outcomes_written_one_at_a_time(db: Location) -> None:
    """A batch is one statement on PostgreSQL: a reader twice in it (an in-doubt message settled, a retry)
    must end as the outcomes one by one do, and each row keep the tag a bounce finds its reader by; so
    must a batch of distinct readers (one statement, no rounds) and a lone outcome (a statement of its
    own)."""
    batch = [
        ("Ann@Example.com", "sending", 0, ""),
        ("bo@example.com", "deferred", 451, "later"),
        ("ann@example.com", "sent", 250, "2.0.0 queued"),
        ("cy@example.com", "sent", 250, "ok"),
        ("bo@example.com", "failed", 550, "no such user"),
        ("cy@example.com", "failed", 550, "too late: already sent"),
        ("dee@example.com", "deferred", 421, "4.2.2 Postfach voll — später 📭"),
    ]
    with Ledger(db) as led:
        led.start_issue(ISSUE, "hash-1", "Monday's post")
        led.start_issue("one-by-one", "hash-2", "Monday's post, one at a time")
        led.record_outcomes(ISSUE, batch)
        for outcome in batch:
            led.record_outcomes("one-by-one", [outcome])
        for email in ("ann@example.com", "bo@example.com", "cy@example.com", "dee@example.com"):
            a, b = delivery(led, ISSUE, email), delivery(led, "one-by-one", email)
            assert a is not None and b is not None
            assert a.outcome() == b.outcome(), email
            assert led.tagged(message_tag(ISSUE, email)) == Recipient(ISSUE, email)
        distinct = [batch[i] for i in (1, 3, 6)]
        for issue in ("distinct", "distinct-one-by-one"):
            led.start_issue(issue, "hash-3", "Monday's post, each reader once")
        led.record_outcomes("distinct", distinct)
        for outcome in distinct:
            led.record_outcomes("distinct-one-by-one", [outcome])
        for email, state, code, reply in distinct:
            a, b = delivery(led, "distinct", email), delivery(led, "distinct-one-by-one", email)
            assert a is not None and b is not None
            assert a.outcome() == b.outcome() == (state, 1, code, reply), email
            assert led.tagged(message_tag("distinct", email)) == Recipient("distinct", email)
        settled, retried = delivery(led, ISSUE, "ann@example.com"), delivery(led, ISSUE, "bo@example.com")
        assert settled is not None and (settled.state, settled.attempts) == ("sent", 1)  # in doubt, then sent
        assert retried is not None and (retried.state, retried.attempts) == ("failed", 2)


def test_a_batch_past_sqlites_limit_of_parameters_is_recorded_whole(db: Location) -> None:
    """SQLite takes a batch as one multi-row INSERT of 7 parameters a row, as many as its build allows in a
    statement (32,766 by default, 250,000 in Debian's): a batch of one row more than that must still be
    recorded whole."""
    with closing(sqlite3.connect(":memory:")) as probe:
        count = probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 7 + 1
    batch = [(f"reader{i}@example.com", "sent", 250, "ok") for i in range(count)]
    with Ledger(db) as led:
        led.start_issue(ISSUE, "hash-1", "Monday's post")
        led.record_outcomes(ISSUE, batch)
        assert led.status(ISSUE).counts == {"sent": count}
        last = delivery(led, ISSUE, f"reader{count - 1}@example.com")
        assert last is not None and last.outcome() == ("sent", 1, 250, "ok")


def test_a_lookup_of_many_readers_finds_each_ones_state_of_this_issue_and_destination_only(
    db: Location,
) -> None:
    """The send's per-batch lookup (each engine's own SQL: Engine.keyed), over more readers than one query
    takes: every reader's state of this issue and destination, whoever is suppressed, and which outcomes
    this run wrote; nothing of another issue's or destination's record, nor of readers not asked for."""
    readers = [f"r{i:04d}@example.com" for i in range(1200)]
    states = ("sent", "failed", "deferred", "sending")
    with Ledger(db) as ledger, Ledger(db, destination=OUTBOX) as outbox:
        ledger.start_issue(ISSUE, "hash-1", "Monday's post")
        ledger.start_issue("2026-02-16", "hash-2", "The next post")
        outbox.start_issue(ISSUE, "hash-1", "Monday's post")
        run = ledger.start_run(ISSUE, "list", "list.csv")
        wanted = {reader: states[i % 4] for i, reader in enumerate(readers) if i % 5}  # every 5th: none
        ledger.record_outcomes(ISSUE, [(r, s, 250, "ok") for r, s in wanted.items() if int(r[1:5]) < 900])
        late = [(r, s, 250, "ok") for r, s in wanted.items() if int(r[1:5]) >= 900]
        ledger.record_outcomes(ISSUE, late, run)
        unasked = ["zz@example.com", "r1200@example.com"]
        ledger.record_outcomes(ISSUE, [(r, "sent", 250, "ok") for r in unasked], run)
        never = [r for r in readers if r not in wanted]
        ledger.record_outcomes("2026-02-16", [(r, "sent", 250, "ok") for r in never])
        outbox.record_outcomes(ISSUE, [(r, "sent", 250, "ok") for r in never])
        for reader in readers[::7] + ["zz@example.com"]:
            ledger.suppress(reader, source="test")
        asked = [r.upper() if i % 3 == 0 else r for i, r in enumerate(readers)] + readers[:10]
        suppressed, found, ours = ledger.looked_up(ISSUE, asked, run)
    assert found == wanted
    assert suppressed == set(readers[::7])
    assert ours == {r for r in wanted if int(r[1:5]) >= 900}


def test_deliveries_need_a_started_issue(ledger: Ledger) -> None:
    with pytest.raises(MailerError, match="start_issue"):
        record(ledger, "a@example.com", "sent", issue="never-started")
    with pytest.raises(MailerError, match="start_issue"):
        ledger.record_outcomes("never-started", [("a@example.com", "sent", 250, "ok")] * 2)


def test_start_issue_changed_post_rule(ledger: Ledger) -> None:
    ledger.start_issue(ISSUE, "hash-1", "Monday's post")  # same version: nothing happens
    ledger.start_issue(ISSUE, "hash-2", "Monday's post, fixed")  # nobody mailed yet: accepted
    assert ledger.status(ISSUE).content_hash == "hash-2"

    for who in ("a", "b", "c"):
        record(ledger, f"{who}@example.com", "sent")
    record(ledger, "d@example.com", "failed", 550, "no")
    with pytest.raises(MailerError) as info:
        ledger.start_issue(ISSUE, "hash-3", "Monday's post, fixed again")
    assert str(info.value) == (
        f"issue {ISSUE}: the post changed since it was first sent to 3 subscribers;"
        " pass --changed to send the new version to those not yet mailed (none if the list was done)"
        " and make it the issue's web copy"
    )
    assert ledger.status(ISSUE).content_hash == "hash-2"

    ledger.finish_run(ledger.start_run(ISSUE, "list-a", "a.csv"))
    assert ledger.is_complete(ISSUE, "list-a")
    ledger.start_issue(ISSUE, "hash-3", "Monday's post, fixed again", allow_changed=True)
    status = ledger.status(ISSUE)
    assert (status.content_hash, status.subject) == ("hash-3", "Monday's post, fixed again")
    assert not ledger.is_complete(ISSUE, "list-a")  # the new version has not reached everyone yet
    assert status.counts == {"sent": 3, "failed": 1}  # what was sent stays sent


def test_status_groups_failures_and_issues_lists_newest_first(ledger: Ledger) -> None:
    record(ledger, "a@example.com", "sent")
    for i in range(3):
        record(ledger, f"gone{i}@example.com", "failed", 550, "5.1.1 no such user")
    record(ledger, "full@example.com", "deferred", 452, "4.2.2 mailbox full")
    record(ledger, "flight@example.com", "sending", 0, "in doubt")
    status = ledger.status(ISSUE)
    assert status.counts == {"sent": 1, "failed": 3, "deferred": 1, "sending": 1}
    assert status.total == 6
    assert [(g.state, g.code, g.reply, g.count) for g in status.failures] == [
        ("failed", 550, "5.1.1 no such user", 3),
        ("deferred", 452, "4.2.2 mailbox full", 1),
    ]
    text = status.format(False)
    assert "3 failed: 550 5.1.1 no such user" in text and "6 in all" in text
    assert "1 in doubt" in text and "sending" not in text  # the record's word is not the reader's

    ledger.start_issue("2026-02-10", "hash-x", "Tuesday's post")
    summaries = ledger.issues()
    assert [s.issue_id for s in summaries] == ["2026-02-10", ISSUE]
    assert summaries[0].counts == {} and summaries[0].total == 0
    assert summaries[1].count("failed") == 3 and summaries[1].count("bounced") == 0
    with pytest.raises(MailerError, match="no issue 'nope'"):
        ledger.status("nope")


def test_transaction_commits_once_and_rolls_back_on_error(ledger: Ledger, db: Location) -> None:
    with Ledger(db) as other:
        with ledger.transaction():
            for i in range(10):
                record(ledger, f"u{i}@example.com", "sending", 0, "in doubt")
                record(ledger, f"u{i}@example.com", "sent")
            with ledger.transaction():  # a nested block joins the outer one
                ledger.suppress("nested@example.com", source="test")
            # nothing is visible to another connection before the one commit at the end
            assert other.status(ISSUE).counts == {}
            assert not other.is_suppressed("nested@example.com")
        assert other.status(ISSUE).counts == {"sent": 10}
        assert other.is_suppressed("nested@example.com")

        with pytest.raises(RuntimeError), ledger.transaction():
            record(ledger, "lost@example.com", "sent")
            ledger.suppress("lost@example.com", source="test")
            raise RuntimeError("crash mid-batch")
        assert delivery(ledger, ISSUE, "lost@example.com") is None
        assert not other.is_suppressed("lost@example.com")
        record(ledger, "after@example.com", "sent")  # the ledger is usable afterwards
        assert delivery(other, ISSUE, "after@example.com") is not None


def test_suppressions_are_shared_and_case_insensitive(ledger: Ledger, db: Location) -> None:
    with Ledger(db) as web:
        assert web.suppress("Zed@Example.COM", source="web", reason="clicked")
        assert ledger.is_suppressed("zed@example.com")  # the sender's connection sees it at once
        assert not web.suppress("zed@example.com", source="manual")  # already there
        assert ledger.is_suppressed("ZED@example.com")
        entry = next(ledger.suppressions())
        assert (entry.email, entry.source, entry.reason) == ("zed@example.com", "web", "clicked")
        assert web.unsuppress("ZED@EXAMPLE.COM")
        assert not web.unsuppress("zed@example.com")
        assert not ledger.is_suppressed("zed@example.com")


def test_suppressions_iterates_every_page_in_order(ledger: Ledger) -> None:
    emails = [f"user{i}@example.com" for i in range(7)]
    for email in reversed(emails):
        ledger.suppress(email, source="import")
    assert [s.email for s in ledger.suppressions(page=3)] == sorted(emails)
    assert [s.email for s in ledger.suppressions(page=7)] == sorted(emails)


WRITER = """
import os, sys, time
from pathlib import Path
from mailer.engine import Server, is_url
from mailer.ledger import Ledger
where = sys.argv[1]
password = os.environ.get("MAILER_DATABASE_PASSWORD", "")
with Ledger(Server(where, password) if is_url(where) else Path(where)) as ledger:
    print("ready", flush=True)
    added = ledger.suppress("late@example.com", source="web")
    print("done", added, time.time(), flush=True)
"""


def test_a_second_process_waits_for_an_open_transaction_then_writes(ledger: Ledger, db: Location) -> None:
    with ledger.transaction():
        record(ledger, "a@example.com", "sent")
        where, env = (
            (db.url, {"MAILER_DATABASE_PASSWORD": db.password}) if isinstance(db, Server) else (db, {})
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(where)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"  # opened without waiting for the lock
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)  # blocked on the write lock, not failed or finished
            released_at = time.time()
        except BaseException:
            proc.kill()
            proc.communicate()  # reaps it and closes the pipe
            raise
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    word, added, finished_at = out.split()
    assert (word, added) == ("done", "True")
    assert float(finished_at) >= released_at
    assert ledger.is_suppressed("late@example.com")
    assert delivery(ledger, ISSUE, "a@example.com") is not None


def test_lock_held_past_the_timeout_is_a_mailer_error(ledger: Ledger, db: Location) -> None:
    with Ledger(db, timeout=0.1) as impatient, ledger.transaction():
        ledger.suppress("first@example.com", source="test")
        with pytest.raises(MailerError) as info:
            impatient.suppress("second@example.com", source="test")
    assert str(db) in str(info.value) and "locked" in str(info.value)


def test_a_file_that_is_not_a_database_is_a_mailer_error(tmp_path: Path) -> None:
    bogus = tmp_path / "mailer.db"
    bogus.write_bytes(b"this is a text file, not SQLite\n" * 100)
    with pytest.raises(MailerError) as info:
        Ledger(bogus)
    assert str(bogus) in str(info.value) and "not a mailer database" in str(info.value)


def test_a_database_from_a_newer_mailer_is_refused(db: Location) -> None:
    with Ledger(db):
        pass
    set_schema_version(db, SCHEMA_VERSION + 1)
    with pytest.raises(MailerError, match="newer mailer"):
        Ledger(db)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only files anyway")
def test_a_read_only_database_is_a_mailer_error(sqlite_db: Path) -> None:
    db = sqlite_db
    with Ledger(db):
        pass
    db.chmod(0o444)
    db.parent.chmod(0o555)
    try:
        with pytest.raises(MailerError, match=str(db)), Ledger(db) as led:
            led.suppress("a@example.com", source="test")
    finally:
        db.parent.chmod(0o755)
        db.chmod(0o644)


def test_a_closed_ledger_says_so(db: Location) -> None:
    led = Ledger(db)
    led.close()
    led.close()  # twice is fine
    with pytest.raises(MailerError, match="closed"):
        led.is_suppressed("a@example.com")
