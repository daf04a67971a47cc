"""The attack pass on `mailer db`: what a publisher's slip (the wrong file given to `db copy`) or two hosts
starting at once (two first openings of a new PostgreSQL database) did to the record; and a send whose
session with the record ends under it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest

from mailer.engine import Server
from mailer.engine_postgresql import WRITE_LOCK
from mailer.ledger import SCHEMA_VERSION, Ledger
from tests import publisher
from tests.command import invoke
from tests.pg import Cluster, database_env, rows
from tests.record import ann_mailed
from tests.sends import forty_readers, held_send
from tests.smtpd import SMTPServer
from tests.test_workers import env_at, recipients, spawn, states, write_list

pytestmark = pytest.mark.postgresql


@pytest.fixture
def server(pg_cluster: Cluster) -> Server:
    return pg_cluster.database()


def _env(tmp_path: Path, server: Server) -> dict[str, str]:
    return {**publisher.ENV, "MAILER_DATA_DIR": str(tmp_path / "state"), **database_env(server)}


def test_copy_of_a_sqlite_file_that_is_no_mailer_record_leaves_the_file_as_it_was(
    server: Server, tmp_path: Path
) -> None:
    # the publisher gives the wrong file: another program's SQLite database, or an empty file
    other = tmp_path / "app.db"
    with closing(sqlite3.connect(other)) as db, db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('keep me')")
    empty = tmp_path / "empty.db"
    empty.touch()
    for source in (other, empty):
        before = source.read_bytes()
        copied = invoke(["db", "copy", str(source)], _env(tmp_path, server))
        assert copied.exit_code == 1, copied.output
        [line] = copied.stderr.splitlines()
        assert line == f"Error: {source}: not a mailer record (no mailer tables in it); nothing copied"
        assert source.read_bytes() == before  # no mailer tables written into the publisher's file
    assert rows(server, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()") == [(0,)]


def _waiting_for_the_write_lock(server: Server, count: int) -> None:
    """Return once `count` connections wait for the record's write lock (pg_locks says so)."""
    deadline = time.monotonic() + 60
    waiting = threading.Event()
    while time.monotonic() < deadline:
        [(n,)] = rows(
            server,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND ((classid::bigint << 32) | objid::bigint) = ?",
            (WRITE_LOCK,),
        )
        if n == count:
            return
        waiting.wait(0.05)
    raise AssertionError(f"{count} processes never waited for the write lock")


def test_two_first_openings_of_a_new_postgresql_database_at_once_both_succeed(server: Server) -> None:
    # two web hosts (or two migrates) started together against a new, empty database: each finds no
    # schema, waits for the other to make it, and must then see it rather than make it again
    import psycopg

    env = {**os.environ, **database_env(server)}
    with psycopg.connect(server.url, password=server.password, autocommit=True) as holder:
        holder.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        migrates = [
            subprocess.Popen(
                [sys.executable, "-m", "mailer", "db", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        _waiting_for_the_write_lock(server, 2)
        holder.execute("COMMIT")
    outcomes = [(m.wait(timeout=120), *m.communicate()) for m in migrates]
    for code, out, err in outcomes:
        assert (code, err) == (0, ""), out
    lines = sorted(out.strip() for _, out, _ in outcomes)
    assert lines == [
        f"{server}: created the mailer schema (version {SCHEMA_VERSION})",
        f"{server}: schema {SCHEMA_VERSION}, up to date",
    ]


def test_copy_of_a_file_with_a_hostile_table_name_changes_nothing_in_the_target(
    server: Server, tmp_path: Path
) -> None:
    # a record handed over by someone else, with a table whose name is SQL; the target already holds a
    # record whose bounces table is empty (so the name's first statement runs and the rest would follow)
    ann_mailed(server)
    hostile = tmp_path / "old.db"
    with Ledger(hostile) as ledger:
        ledger.suppress("gone@example.org", source="web")
    with closing(sqlite3.connect(hostile)) as db, db:
        db.execute('CREATE TABLE "bounces; DROP TABLE deliveries; --" (a)')
    copied = invoke(["db", "copy", str(hostile)], _env(tmp_path, server))
    assert rows(server, "SELECT count(*) FROM pg_tables WHERE tablename = 'deliveries'") == [(1,)]
    assert rows(server, "SELECT email, state FROM deliveries") == [("ann@example.org", "sent")]
    assert copied.exit_code == 1, copied.output
    [line] = copied.stderr.splitlines()
    assert line == (
        f"Error: {hostile}: table 'bounces; DROP TABLE deliveries; --' is not one of mailer's; nothing copied"
    )


def test_a_connection_the_server_ended_is_one_line_that_says_to_run_again(server: Server) -> None:
    # a restart, a failover or an idle-connection reaper ends mailer's session under it: psycopg says only
    # "terminating connection due to administrator command" or "the connection is closed"
    from mailer.errors import MailerError

    with Ledger(server) as ledger:
        rows(
            server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        said = []
        for _ in range(2):  # the first use reads the server's goodbye, the next finds the connection closed
            with pytest.raises(MailerError) as lost:
                ledger.rows("SELECT 1")
            said.append(str(lost.value))
    for line in said:
        assert line.startswith(f"{server}: lost the connection to the server (")
        assert line.endswith("); it may have restarted: run the command again")
        assert "\n" not in line


@pytest.mark.parametrize("ssl", ["", "?sslmode=disable"])
def test_a_port_where_another_server_answers_is_one_line_that_says_so(
    smtp_server: SMTPServer, tmp_path: Path, ssl: str
) -> None:
    # database set to the mail relay's port by mistake: libpq says "received invalid response to SSL
    # negotiation: 2" or "expected authentication request from server, but received 2"
    url = f"postgresql://mailer:pw-in-url@{smtp_server.host}:{smtp_server.port}/news{ssl}"
    env = {**publisher.ENV, "MAILER_DATA_DIR": str(tmp_path / "state"), "MAILER_DATABASE": url}
    result = invoke(["db", "migrate"], env)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: postgresql://mailer:***@{smtp_server.host}:{smtp_server.port}/news")
    assert "is not a PostgreSQL server" in line and "pw-in-url" not in line


def test_copy_of_a_record_of_an_older_schema_leaves_the_file_as_it_was(
    server: Server, tmp_path: Path
) -> None:
    # docs/postgresql.md says to keep the SQLite file as a backup: the copy upgraded it in place (schema 1 ->
    # SCHEMA_VERSION), so the backup no longer was the file the publisher had
    from tests.test_ledger import SCHEMA_V1

    old = tmp_path / "old.db"
    with closing(sqlite3.connect(old)) as db:
        db.executescript(SCHEMA_V1)
    before = old.read_bytes()
    copied = invoke(["db", "copy", str(old)], _env(tmp_path, server))
    assert copied.exit_code == 0, copied.output
    assert old.read_bytes() == before and not Path(f"{old}-wal").exists()
    assert rows(server, "SELECT issue_id, email, state, attempts FROM deliveries ORDER BY issue_id") == [
        ("2026-02-09", "a@example.com", "sent", 1),
        ("2026-02-10", "a@example.com", "deferred", 2),
    ]
    assert rows(server, "SELECT email FROM suppressions") == [("gone@example.com",)]
    assert not list(tmp_path.glob("mailer-copy-*"))


def test_a_lone_send_whose_look_up_in_the_record_fails_exits_as_stopped_and_a_rerun_finishes(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, server: Server
) -> None:
    # the session a send reads the record through ends (an idle-session reaper, an administrator's
    # pg_terminate_backend) while the one its outcomes are committed through lives on: the failure comes at
    # the next look-up of readers, with messages already mailed. A failed commit exits 4 (stopped early,
    # rerun to resume: docs/sending.md); this exited 1 ("nothing was sent")
    emails = [f"user{i:03}@example.com" for i in range(400)]  # more than one look-up (LOOKUP_BATCH)
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--connections", "1"]
    held = smtp_server.hold("user010@example.com")
    proc = spawn(args, env, tmp_path)
    try:
        assert held.reached.wait(timeout=120), "the send never reached user010"
        ended = rows(
            server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
            " AND strpos(query, 'LATERAL (SELECT state, run_id FROM deliveries') > 0",  # Engine.keyed's
        )
        assert ended == [(True,)]  # the look-ups' session, and only it
    finally:
        held.release.set()
        _, err = proc.communicate(timeout=120)
    said = err.decode()
    assert proc.returncode == 4, said
    assert "Traceback" not in said
    [line] = [x for x in said.splitlines() if x.startswith("Error: ")]
    assert "lost the connection to the server" in line, line
    took = recipients(smtp_server)
    assert 0 < len(took) < len(emails) and set(took.values()) == {1}
    recorded = states(server)
    assert {e for e, (state, _) in recorded.items() if state == "sent"} == set(took)  # nothing in doubt
    again = spawn(args, env, tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter(emails)


def test_copy_of_a_file_a_send_is_writing_is_refused_and_leaves_the_target_empty(
    smtp_server: SMTPServer, server: Server, tmp_path: Path, post: Path
) -> None:
    # the publisher copies the record to PostgreSQL while the daily send still runs on the file: the copy
    # would take the readers mailed so far, the send would go on mailing the rest into the file alone, and
    # the first send on PostgreSQL would mail those again (most of the list)
    source = tmp_path / "state" / "mailer.db"
    _, args = forty_readers(tmp_path, post)
    env = {**publisher.env_for(smtp_server, tmp_path), "MAILER_DATABASE": str(source)}
    with held_send(smtp_server, args, env, tmp_path) as (proc, _):
        copied = invoke(["db", "copy", str(source)], _env(tmp_path, server))
        assert copied.exit_code == 1, copied.output
        [line] = copied.stderr.splitlines()
        assert line.startswith(f"Error: {source}: ") and "a send" in line and "running" in line, line
        assert f"pid {proc.pid}" in line, line
        # it said '... nothing copied (stop it first): 2026-02-09: another send of this issue is running (pid
        # N); wait for it': the send lock's words, for a copy that no send of its own waits on
        assert "wait for it" not in line and "another send" not in line, line
    assert rows(server, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()") == [(0,)]
    # once the send has ended (here: killed), the same copy goes ahead
    assert invoke(["db", "copy", str(source)], _env(tmp_path, server)).exit_code == 0
    assert rows(server, "SELECT count(*) FROM issues") == [(1,)]


def test_two_copies_into_one_empty_database_at_once_leave_one_record_and_refuse_the_other(
    server: Server, tmp_path: Path
) -> None:
    # two hosts each copy their own SQLite record into the new shared database at the same moment: both find
    # it empty before either has written. One holds a suppression, the other a stored list: no table has rows
    # of both, so the count after the copy matched and the second copy added its rows to the first's (two
    # records in one, exit 0 for both), where it must be refused as a copy into a database with a record
    import psycopg

    a, b = tmp_path / "a.db", tmp_path / "b.db"
    with Ledger(a) as ledger:
        ledger.suppress("gone@example.org", source="web")
    readers = write_list(tmp_path / "readers.csv", ["ann@example.org"])
    env = {**os.environ, **_env(tmp_path, server)}
    assert invoke(["subscribers", "import", str(readers)], {**env, "MAILER_DATABASE": str(b)}).exit_code == 0
    assert invoke(["db", "migrate"], env).exit_code == 0  # the schema there: neither opening locks
    with psycopg.connect(server.url, password=server.password, autocommit=True) as holder:
        holder.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        copies = [
            subprocess.Popen(
                [sys.executable, "-m", "mailer", "db", "copy", str(source)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for source in (a, b)
        ]
        _waiting_for_the_write_lock(server, 2)
        holder.execute("COMMIT")
    outcomes = {c.wait(timeout=120): c.communicate() for c in copies}
    assert sorted(outcomes) == [0, 1], outcomes
    first = a if f"copied {a} to " in outcomes[0][0] else b
    [line] = outcomes[1][1].splitlines()
    assert line.startswith(f"Error: {server}: already holds a record (table "), line
    suppressed, members = (
        rows(server, "SELECT count(*) FROM suppressions")[0][0],
        rows(server, "SELECT count(*) FROM members")[0][0],
    )
    assert (suppressed, members) == ((1, 0) if first == a else (0, 1))
