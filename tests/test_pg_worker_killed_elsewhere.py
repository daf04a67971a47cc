"""A `mailer worker` on another host killed with -9 mid-send, on PostgreSQL (docs/workers.md "When a
process dies"): its sessions end with it and the server lets go of the lock each of them held, so its batches
are taken over at once, `mailer status` stops counting it, and a rerun goes ahead, instead of all three
waiting for its lease (600 s here: a test that waited for it would time out).

The worker runs under another host name (a UTS namespace of its own: root), so that no pid proves it gone.
Real processes, real SIGKILLs, a real cluster; the waits are on a held reply, the record and the processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailer.engine import Server
from tests.pg import Cluster
from tests.sends import forty_readers, rerun_finishes
from tests.smtpd import SMTPServer
from tests.test_workers import _running, env_at, recipients, spawn, wait_until

pytestmark = pytest.mark.postgresql

LEASE = "600"


def _elsewhere(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """`mailer worker` under the host name 'elsewhere'; its pid is the worker's (sh and unshare exec)."""
    return subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", 'hostname elsewhere && exec "$0" -m mailer worker', sys.executable],
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, cwd=cwd, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _sending(post: Path, env: dict[str, str], cwd: Path) -> dict[str, object] | None:
    """`mailer status POST --json`'s "sending"."""
    out, err = spawn(["status", str(post), "--json"], env, cwd).communicate(timeout=120)
    assert out, err.decode()
    sending: dict[str, object] | None = json.loads(out)["sending"]
    return sending


def _started(smtp_server: SMTPServer, tmp_path: Path, post: Path, server: Server) -> tuple[
    list[str], list[str], dict[str, str], subprocess.Popen[bytes], subprocess.Popen[bytes]
]:  # fmt: skip
    """A `send --distributed --workers 0` and a worker elsewhere, killed as it waits for user10's reply."""
    if os.geteuid() != 0:
        pytest.skip("another host name for the worker needs a UTS namespace (root)")
    emails, args = forty_readers(tmp_path, post, "--distributed")
    env = {**env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120"), "MAILER_WORKER_LEASE": LEASE}
    held = smtp_server.hold("user10@example.com")
    coordinator = spawn([*args, "--workers", "0"], env, tmp_path)
    wait_until("the send in the record", lambda: _running(server))
    worker = _elsewhere(env, tmp_path)
    try:
        assert held.reached.wait(timeout=120), "the worker never reached user10"
    finally:
        worker.kill()  # kill -9, as it waits for a reply: it holds a batch (user10's) on a 600 s lease
        worker.wait()
        held.release.set()
    return emails, args, env, coordinator, worker


def test_a_worker_killed_elsewhere_has_its_batch_taken_over_at_once_and_status_counts_it_out(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    server = pg_cluster.database()
    emails, _, env, coordinator, _ = _started(smtp_server, tmp_path, post, server)
    try:
        # the server lets go of the dead worker's lock as it sees its sockets close: within moments
        wait_until(
            "status counting the killed worker out",
            lambda: (_sending(post, env, tmp_path) or {}).get("workers") == 0,
        )
        taker = spawn(["worker"], env, tmp_path)
        _, err = taker.communicate(timeout=300)
        assert taker.returncode == 0, err.decode()
        _, err = coordinator.communicate(timeout=300)
        assert coordinator.returncode == 0, err.decode()
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait()
    got = recipients(smtp_server)
    assert set(got) == set(emails)
    assert sum(got.values()) - len(emails) <= 1  # at most the message the killed one had in flight
    assert re.search(rb"\n +sent +40\n", err), err.decode()  # the dead one's readers count as this run's


def test_a_rerun_goes_ahead_at_once_once_the_coordinator_and_the_worker_elsewhere_are_killed(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    server = pg_cluster.database()
    emails, args, env, coordinator, _ = _started(smtp_server, tmp_path, post, server)
    coordinator.kill()
    coordinator.communicate()
    wait_until(
        "status saying that every process of the send is gone",
        lambda: (sending := _sending(post, env, tmp_path)) is not None and sending["workers"] == 0
        and sending["coordinator_gone"],
    )  # fmt: skip
    # before: refused ("still being finished by 1 worker(s)") until the worker's lease ran out
    rerun_finishes(smtp_server, [*args, "--workers", "1"], env, tmp_path, emails, repeats=1)
