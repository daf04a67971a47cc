"""Attacks on the coordinator's forks (workers/local.py): the record lost as it forks its workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from mailer.cli import cli
from tests.pg import Cluster
from tests.sends import forty_readers, rerun_finishes
from tests.smtpd import SMTPServer
from tests.test_workers import env_at, recipients, spawn, wait_until

pytestmark = pytest.mark.postgresql


def _admitted(connect: dict[str, Any]) -> bool:
    """Whether the server lets a new session in (pg_reload_conf only asks it to read its rules again)."""
    try:
        psycopg.connect(**connect).close()
    except psycopg.OperationalError as exc:
        assert "pg_hba.conf rejects" in str(exc), exc
        return False
    return True


def test_a_coordinator_that_cannot_reach_the_record_again_after_forking_stops_its_workers_as_stopped(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, own_cluster: Cluster
) -> None:
    # the record refuses new connections (the database restarted with other rules, its connection slots
    # full) between the send's publication and the coordinator's reconnection after forking its first
    # worker: the send must stop as any loss of the record mid-send does (exit 4, one line, its workers
    # stopped and reaped), not escape as an error (exit 1) leaving its workers to find out alone
    server = own_cluster.database()
    emails, args = forty_readers(tmp_path, post, "--workers", "2")
    env = env_at(smtp_server, tmp_path, server, MAILER_DATABASE_TIMEOUT="120")
    assert CliRunner().invoke(cli, ["db", "migrate"], env=env).exit_code == 0
    hba = own_cluster.root / "data" / "pg_hba.conf"
    rules = hba.read_bytes()
    connect = {"conninfo": server.url, "password": server.password, "autocommit": True}
    with psycopg.connect(**connect) as held, psycopg.connect(**connect) as looking:

        def waiting() -> bool:  # (from another session: a transaction sees one snapshot of the activity)
            row = looking.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).fetchone()
            return bool(row and row[0])

        try:
            with held.transaction():
                held.execute("LOCK TABLE send_batches IN ACCESS EXCLUSIVE MODE")
                proc = spawn(args, env, tmp_path)
                wait_until("the coordinator's publication waits for the lock", waiting)
                hba.write_bytes(b"host all all 0.0.0.0/0 reject\n" + rules)  # sessions open keep going
                held.execute("SELECT pg_reload_conf()")
                wait_until("the server refuses new sessions", lambda: not _admitted(connect))
            _, err = proc.communicate(timeout=120)
        finally:
            hba.write_bytes(rules)
            held.execute("SELECT pg_reload_conf()")
            wait_until("the server admits new sessions again", lambda: _admitted(connect))
    said = err.decode()
    assert proc.returncode == 4, said
    assert "Traceback" not in said, said
    errors = [line for line in said.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "cannot follow the send in the record" in errors[0], said
    assert not recipients(smtp_server)
    rerun_finishes(smtp_server, args, env, tmp_path, emails, 0)
