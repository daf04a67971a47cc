"""A host whose clock is off the record's server's does not join a send shared by hosts (clocks.py).

The attack pass's finding: leases are times on their holders' clocks, compared by other workers on theirs.
A `mailer worker` 7 s ahead (lease 8 s) joining a --distributed send took over batches its local worker was
still sending: 19 of 300 readers got the issue twice, and the report said 300 sent. Here a worker ahead, and
a coordinator behind, refuse with one line before they claim or mail anything, and the send goes on without
them. A host's clock cannot be set here without the machine's, so each skewed process runs with its Python
clock (time.time, which mailer's leases read) moved by a sitecustomize module of the test's.
"""

from __future__ import annotations

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
from tests.test_workers import env_at, recipients, spawn

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


def test_a_worker_whose_clock_is_ahead_does_not_join_and_no_reader_gets_two(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    if os.geteuid() != 0:
        pytest.skip("another host name and pid namespace for the worker need root")
    server = pg_cluster.database()
    emails, args = forty_readers(tmp_path, post, "--distributed", "--workers", "1", "--connections", "1")
    env = env_at(smtp_server, tmp_path, server)  # a lease of 3 s: 0.375 s between host and server at most
    with held_send(smtp_server, args, env, tmp_path) as (coordinator, held):
        worker = elsewhere(["worker"], _skewed(env, tmp_path / "ahead", 5.0), tmp_path)
        _, said = worker.communicate(timeout=120)
        held.release.set()
        _, err = coordinator.communicate(timeout=300)
    assert worker.returncode == 1, said.decode()
    lines = said.decode().strip().splitlines()
    assert "Traceback" not in said.decode()
    assert "this host's clock is 5.0 s ahead of the clock of the record's server" in lines[-1]
    assert lines[-1].endswith("; not joining")
    assert coordinator.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter(emails)  # each once
    owners = {str(owner) for (owner,) in rows(server, "SELECT owner FROM send_batches")}
    assert len(owners) == 1  # the local worker's alone: the skewed one claimed none


def test_a_distributed_send_from_a_host_whose_clock_is_behind_is_refused_before_any_message(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    server: Server = pg_cluster.database()
    _, args = forty_readers(tmp_path, post, "--distributed", "--workers", "1")
    env = _skewed(env_at(smtp_server, tmp_path, server), tmp_path / "behind", -5.0)
    proc = spawn(args, env, tmp_path)
    _, err = proc.communicate(timeout=120)
    said = err.decode()
    assert proc.returncode == 1, said
    assert "Traceback" not in said
    assert "this host's clock is 5.0 s behind the clock of the record's server" in said
    assert said.strip().endswith("; not starting the send")
    assert recipients(smtp_server) == Counter()
    assert rows(server, "SELECT count(*) FROM sends")[0][0] == 0


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
