"""A host whose clock is off the coordinator's does not join a send shared by hosts (clocks.py).

The attack pass's finding: leases are times on their holders' clocks, compared by other workers on theirs.
A `mailer worker` 7 s ahead (lease 8 s) joining a --distributed send took over batches its local worker was
still sending: 19 of 300 readers got the issue twice, and the report said 300 sent. Here a worker ahead of
the coordinator (or a coordinator behind the worker) refuses with one line before it claims anything, and
the send goes on without it. A host's clock cannot be set here without the machine's, so each skewed process
runs with its Python clock (time.time, which mailer's leases read) moved by a sitecustomize module of the
test's; the other host is a host name and pid namespace of the worker's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mailer.engine import Server
from tests.pg import Cluster, rows
from tests.sends import forty_readers, held_send
from tests.smtpd import SMTPServer
from tests.test_workers import _running, env_at, recipients, spawn, wait_until

pytestmark = pytest.mark.postgresql

SKEWED = """\
import time

_real = time.time
time.time = lambda: _real() + {seconds}
"""


def _skewed(env: dict[str, str], folder: Path, seconds: float) -> dict[str, str]:
    """`env` for a process whose clock is `seconds` off this machine's."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SKEWED.format(seconds=seconds), encoding="utf-8")
    return {**env, "PYTHONPATH": str(folder)}


def elsewhere(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """`mailer ARGS` as on another host: a host name and pid namespace of its own (root), so that it does
    not pass for a worker beside the coordinator, on its clock."""
    return subprocess.Popen(
        ["unshare", "--uts", "--pid", "--fork", "sh", "-c", 'hostname elsewhere && exec "$0" -m mailer "$@"',
         sys.executable, *args],
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def _joins(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, server: Server, coordinator: float, worker: float
) -> None:
    """A --distributed send with one local worker, its clock `coordinator` s off, and a `mailer worker` of
    another host `worker` s off (5 s apart, with a lease of 3 s): the worker refuses before it claims a
    batch, and the send goes on without it, each reader mailed once."""
    if os.geteuid() != 0:
        pytest.skip("another host name and pid namespace for the worker need root")
    emails, args = forty_readers(tmp_path, post, "--distributed", "--workers", "1", "--connections", "1")
    env = env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120")  # the held reply takes a while
    coordinating = _skewed(env, tmp_path / "coordinator", coordinator)
    with held_send(smtp_server, args, coordinating, tmp_path) as (proc, held):
        joining = elsewhere(["worker"], _skewed(env, tmp_path / "worker", worker), tmp_path)
        _, said = joining.communicate(timeout=120)
        held.release.set()
        _, err = proc.communicate(timeout=300)
    assert joining.returncode == 1, said.decode()
    assert "Traceback" not in said.decode()
    last = said.decode().strip().splitlines()[-1]
    assert "this host's clock is 5.0 s ahead of the clock of the send's coordinator" in last
    assert last.endswith("; not joining")
    assert proc.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter(emails)  # each once
    owners = {str(owner) for (owner,) in rows(server, "SELECT owner FROM send_batches")}
    assert len(owners) == 1  # the local worker's alone: the other claimed none


def test_a_worker_whose_clock_is_ahead_does_not_join_and_no_reader_gets_two(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    _joins(smtp_server, tmp_path, post, pg_cluster.database(), 0.0, 5.0)


def test_a_worker_is_held_to_the_clock_of_a_coordinator_that_is_behind(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    """The worker's clock is the server's; the coordinator's, 5 s behind it, is the one leases were
    written on."""
    _joins(smtp_server, tmp_path, post, pg_cluster.database(), -5.0, 0.0)


def test_a_send_by_workers_of_one_host_is_not_refused_for_its_clock(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    """Without --distributed every worker runs beside the coordinator, on its clock: however far that is
    off the server's, no two leases are compared across clocks, and the send goes ahead."""
    server: Server = pg_cluster.database()
    emails, args = forty_readers(tmp_path, post, "--workers", "2")
    proc = spawn(args, _skewed(env_at(smtp_server, tmp_path, server), tmp_path / "behind", -5.0), tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter(emails)


def test_status_on_a_host_whose_clock_is_ahead_reads_the_coordinator_as_alive(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    """`mailer status` 600 s ahead of a live send's coordinator (lease 60 s: a loaded machine does not
    starve either process for that long) called it gone 600 s ago, and its worker too: it reads their words
    on their clock."""
    server: Server = pg_cluster.database()
    _, args = forty_readers(tmp_path, post, "--distributed", "--workers", "1", "--connections", "1")
    env = {**env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120"), "MAILER_WORKER_LEASE": "60"}
    with held_send(smtp_server, args, env, tmp_path):
        status = spawn(["status", str(post), "--json"], _skewed(env, tmp_path / "ahead", 600.0), tmp_path)
        out, err = status.communicate(timeout=120)
    assert status.returncode == 0, err.decode()
    sending = json.loads(out)["sending"]
    assert sending is not None, out.decode()
    assert sending["coordinator_gone"] is False, sending
    assert sending["coordinator_heard_ago"] < 60, sending
    assert sending["workers"] == 1, sending


def test_a_lone_rerun_on_a_host_whose_clock_is_ahead_is_refused_while_a_worker_still_sends(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    """The host of a --distributed send dies; its `mailer worker` goes on. The plain command on a host 600 s
    ahead (lease 60 s) took the worker for dead, as its last word was 600 s old on that clock, and went
    ahead beside it; it must be refused as on a host in step (test_attack_workers)."""
    server: Server = pg_cluster.database()
    emails, args = forty_readers(tmp_path, post)
    env = {**env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120"), "MAILER_WORKER_LEASE": "60"}
    held = smtp_server.hold("user25@example.com")
    coordinator = spawn([*args, "--distributed", "--workers", "0"], env, tmp_path)
    wait_until("the send in the record", lambda: _running(server))
    worker = spawn(["worker"], env, tmp_path)
    try:
        assert held.reached.wait(timeout=120), "the worker never reached user25"
        coordinator.kill()
        coordinator.communicate(timeout=60)
        before = recipients(smtp_server)
        lone = spawn(args, _skewed(env, tmp_path / "ahead", 600.0), tmp_path)
        _, err = lone.communicate(timeout=120)
        assert lone.returncode == 1, err.decode()
        [line] = [x for x in err.decode().splitlines() if x.startswith("Error: ")]
        assert "which is gone, is still being finished by 1 worker(s)" in line, line
        assert recipients(smtp_server) == before
        held.release.set()
        _, said = worker.communicate(timeout=120)
        assert worker.returncode == 0, said.decode()
    finally:
        held.release.set()
        for proc in (coordinator, worker):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert recipients(smtp_server) == Counter(emails)
