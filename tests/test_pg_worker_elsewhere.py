"""A `mailer worker` on another host, stopped by its PostgreSQL record going away (a restart, a fail-over).

A rerun may not start while a worker of the old send may still send; a worker on the rerun's host can be
proven gone (its pid), one elsewhere only by its last word in the record or by its lease running out. The
worker here runs under another host name (a UTS namespace of its own: root), so that no pid proves it gone.
Real processes, a real cluster; the waits are on a held reply, a line, and the processes' ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg import Cluster
from tests.sends import forty_readers
from tests.smtpd import SMTPServer
from tests.test_workers import _running, env_at, recipients, spawn, wait_until

pytestmark = pytest.mark.postgresql


def test_a_worker_elsewhere_stopped_by_the_database_going_away_says_so_once_it_is_back_and_a_rerun_goes_ahead(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    if os.geteuid() != 0:
        pytest.skip("another host name for the worker needs a UTS namespace (root)")
    server = pg_cluster.database()
    name = server.url.rpartition("/")[2]
    emails, args = forty_readers(tmp_path, post, "--distributed")
    # a lease the test would notice waiting for: the rerun must not need it to run out
    env = {**env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120"), "MAILER_WORKER_LEASE": "120"}
    held = smtp_server.hold("user10@example.com")
    coordinator = spawn([*args, "--workers", "0"], env, tmp_path)
    said = tmp_path / "worker.err"
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_until("the send in the record", lambda: _running(server))
        with said.open("wb") as err:
            worker = subprocess.Popen(
                ["unshare", "--uts", "sh", "-c", 'hostname elsewhere && exec "$0" -m mailer worker',
                 sys.executable],
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path, stdout=subprocess.DEVNULL,
                stderr=err,
            )  # fmt: skip
        assert held.reached.wait(timeout=120), "the worker never reached user10"
        # the database goes away: every session ends, and no new one is let in
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        pg_cluster.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        held.release.set()
        coordinator.communicate(timeout=120)
        # the worker has stopped sending: it ended, or it waits for the record to write its end
        wait_until(
            "the worker stopped",
            lambda: worker.poll() is not None or b"trying again" in said.read_bytes(),  # type: ignore[union-attr]
        )
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        worker.wait(timeout=120)
    finally:
        held.release.set()
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        for proc in (coordinator, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert coordinator.returncode == 4
    assert worker.returncode == 4, said.read_text()  # stopped early: the record lost (test_worker_exits.py)
    assert b"trying again" in said.read_bytes()
    # the publisher runs the same command at once: the worker's lease (120 s) need not run out first
    again = spawn([*args, "--workers", "1"], env, tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    got = recipients(smtp_server)
    assert set(got) == set(emails)
    assert sum(got.values()) - len(emails) <= 1
