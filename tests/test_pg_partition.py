"""A network partition between a sender's host and its PostgreSQL record: packets dropped, not refused.

The sender gives up on its own (database_timeout), but the lock of the issue is a session's advisory lock,
held by the server until it learns that the session's client is gone: on a dead network nothing tells it
(no FIN, no RST), so only TCP keepalives can, after the server's default of some two hours. Until then every
rerun of the send is refused as "another send of this issue is running". Real processes, a real cluster,
real dropped packets (tests/netcut.py); the waits are on a process's end and on the lock's row.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from tests.netcut import cut_off
from tests.pg import Cluster
from tests.sends import forty_readers, held_send, rerun_finishes
from tests.smtpd import SMTPServer
from tests.test_pg_hazards import LIMIT
from tests.test_workers import env_at, wait_until

pytestmark = pytest.mark.postgresql


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["lone", "workers"])
def test_a_sender_cut_off_from_the_database_lets_go_of_the_issue_lock_within_about_database_timeout(
    smtp_server: SMTPServer,
    tmp_path: Path,
    post: Path,
    own_cluster: Cluster,
    workers: list[str],
) -> None:
    server = own_cluster.database()
    emails, args = forty_readers(tmp_path, post, *workers)
    env = env_at(smtp_server, tmp_path, server, MAILER_DATABASE_TIMEOUT=LIMIT, MAILER_SMTP_TIMEOUT="120")
    # the test's own view of the server, from "another host" the partition spares
    with (
        held_send(smtp_server, args, env, tmp_path) as (proc, held),
        psycopg.connect(server.url, password=server.password, autocommit=True) as watch,
    ):
        port = watch.execute("SELECT inet_client_port()").fetchone()

        def locks() -> int:
            """Advisory locks of one key held in this database: the issue's (a write lock lasts a
            transaction; a worker's own locks have two keys)."""
            found = watch.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()
            return int(found[0]) if found else 0

        assert locks() == 1
        assert port is not None
        with cut_off(own_cluster.port, spared=int(port[0])):
            cut = time.monotonic()
            held.release.set()
            _, err = proc.communicate(timeout=120)  # the sender's own limit ends it, still cut off
            gave_up = time.monotonic() - cut
            # the server alone must end the session, while the sender's host is still unreachable
            wait_until("the server let go of the issue's lock", lambda: not locks(), timeout=40)
            released = time.monotonic() - cut
    said = err.decode()
    assert proc.returncode not in (0, None), said
    assert "Traceback" not in said, said
    assert len([line for line in said.splitlines() if line.startswith("Error: ")]) == 1, said
    # the server let go no sooner than the sender gave up, and within about database_timeout after that
    print(f"sender gave up after {gave_up:.1f} s, the lock was let go after {released:.1f} s")
    assert released >= float(LIMIT), (gave_up, released)
    # the network is back: the same command finishes the send, repeating at most the message in flight
    rerun_finishes(smtp_server, args, env, tmp_path, emails, 1)
