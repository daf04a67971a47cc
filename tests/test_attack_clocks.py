"""A host whose clock is off the others', or stepped during the send, makes no live worker's batch look free.

The attack pass's finding: leases were times on their holders' clocks, compared by other workers on theirs.
A `mailer worker` 7 s ahead (lease 8 s) joining a --distributed send took over batches its local worker was
still sending: 19 of 300 readers got the issue twice, and the report said 300 sent. A check of each host's
offset as it joined followed, which a clock stepped later passed by. Now every lease, every word that a
process is alive and the rate limit's schedule are times on the record's clock (the PostgreSQL server's, in
the SQL): a worker whose clock steps 600 s ahead, as it joins or mid-send, leaves a live worker's batch
alone, and `mailer status` or a rerun on a host 600 s ahead reads a live send as alive. A host's clock
cannot be set here without the machine's, so each skewed process runs with its Python clock (time.time)
moved by a sitecustomize module of the test's; the other host is a host name and pid namespace of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from subprocess import Popen

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


STEPPED = """\
import os
import time

_real = time.time
time.time = lambda: _real() + ({seconds} if os.path.exists({mark!r}) else 0.0)
"""


def _batches(server: Server, sql: str, *params: object) -> list[tuple[object, ...]]:
    return rows(server, f"SELECT batch_no, owner FROM send_batches WHERE {sql}", params)


LEASE = 10.0  # seconds: a holder whose renewals stall loses its batches' leases within the test's time


def _shared_send(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster, hook: str
) -> tuple[Server, list[str], list[str], dict[str, str], dict[str, str]]:
    """A --distributed send of forty readers (one local worker, one connection, lease LEASE) on PostgreSQL:
    its record, readers, arguments and environment, and that environment with `hook` as sitecustomize."""
    if os.geteuid() != 0:
        pytest.skip("another host name and pid namespace for the worker need root")
    server: Server = pg_cluster.database()
    emails, args = forty_readers(tmp_path, post, "--distributed", "--workers", "1", "--connections", "1")
    env = {
        **env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120"),
        "MAILER_WORKER_LEASE": f"{LEASE:g}",
    }
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(hook)
    return server, emails, args, env, {**env, "PYTHONPATH": str(tmp_path / "hook")}


def _both_end_each_reader_once(
    smtp_server: SMTPServer, proc: Popen[bytes], joining: Popen[bytes], emails: list[str]
) -> None:
    """The coordinator and the joined worker exit 0, and every reader got the issue once."""
    _, err = proc.communicate(timeout=300)
    _, said = joining.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert joining.returncode == 0, said.decode()
    assert recipients(smtp_server) == Counter(emails)


def _joined(server: Server, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """A `mailer worker` of another host, once it has joined the send held at user10 and sent its share
    (batches 2 and 3; the local worker sent batch 0 and holds batch 1)."""
    joining = elsewhere(["worker"], env, cwd)
    shares = lambda: joining.poll() is not None or len(_batches(server, "done = 1")) == 3  # noqa: E731
    wait_until("batches 0, 2 and 3 done", shares)
    assert joining.poll() is None, joining.communicate()[1].decode()  # it joined, and sent its share
    return joining


@pytest.mark.parametrize(
    ("stepped", "seconds", "when"),
    [("worker", 600.0, "as-it-joins"), ("worker", 600.0, "mid-send"), ("holder", -600.0, "mid-send")],
    ids=["worker-ahead-as-it-joins", "worker-stepped-ahead", "holder-stepped-back"],
)
def test_a_clock_stepped_on_either_host_makes_no_batch_of_a_live_worker_change_hands(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster, stepped: str, seconds: float,
    when: str,
) -> None:  # fmt: skip
    """A --distributed send's local worker (the holder) waits on user10's reply, in batch 1 of 4, while a
    `mailer worker` of another host sends batches 2 and 3, then looks for free batches. One host's clock is
    off (an NTP step, a VM resumed, `date -s`): the joined worker's 600 s ahead, from its start or stepped
    once it has joined, or the holder's host's (its coordinator's too) stepped 600 s back. Batch 1 must stay
    its live holder's, and no reader gets two. Before: stepped ahead mid-send, the joined worker took batch
    1 over (its lease ran out long ago on that clock) and mailed user10-19, which the holder, once its reply
    came, mailed again; 600 s ahead as it joined, it was refused; the holder stepped back renewed nothing
    for 600 s (its renewals were timed on that clock) while it took its lease for good for 600 s more."""
    mark = tmp_path / "stepped"
    if when == "as-it-joins":
        mark.touch()
    hook = STEPPED.format(seconds=seconds, mark=str(mark))
    server, emails, args, env, skewed = _shared_send(smtp_server, tmp_path, post, pg_cluster, hook)
    looks: set[object] = set()

    def looked() -> bool:
        """Whether the joined worker looked for a free batch twice (it does every 0.2 s while none is free)
        since the step, and, with the holder's clock stepped, since a lease renewed before it ran out; or
        took batch 1 over and finished it."""
        looks.update(
            start for (start,) in rows(
                server, "SELECT query_start FROM pg_stat_activity WHERE query LIKE ? AND query_start > ?",
                ("%sum(CASE WHEN lease_until <%", since),
            )
        )  # fmt: skip
        return len(looks) >= 2 or bool(_batches(server, "batch_no = 1 AND done = 1"))

    with held_send(smtp_server, args, skewed if stepped == "holder" else env, tmp_path) as (proc, held):
        joining = _joined(server, skewed if stepped == "worker" else env, tmp_path)
        mark.touch()
        wait = LEASE + 1 if stepped == "holder" else 0.0
        (since,) = rows(server, "SELECT clock_timestamp() + make_interval(secs => ?)", (wait,))[0]
        wait_until("the joined worker looking for a free batch since", looked)
        held.release.set()
        _both_end_each_reader_once(smtp_server, proc, joining, emails)
    ((_, owner),) = _batches(server, "batch_no = 1")
    assert not str(owner).startswith("elsewhere "), owner  # its live holder's to the end


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


SUSPENDED = """\
import time

_real = time.monotonic
_slept: list[float] = []


def _monotonic() -> float:
    # CLOCK_MONOTONIC leaves out the time the host was suspended: from the mark on, by what it says
    if not _slept:
        try:
            with open({mark!r}) as fh:
                _slept.append(float(fh.read()))
        except (OSError, ValueError):
            return _real()
    return _real() - _slept[0]


time.monotonic = _monotonic
"""


def test_a_holder_whose_host_was_suspended_past_its_lease_sends_nothing_of_a_batch_taken_over(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    """The host of a --distributed send is suspended (a laptop's lid, `systemctl suspend`: the coordinator
    and its local worker, which holds batch 1 at user10's RCPT, stop together) past its lease, while a
    `mailer worker` elsewhere sends batches 2 and 3, then takes batch 1 over and sends it. The host resumes
    and the held reply comes: the holder must send nothing more of batch 1. A suspend cannot be made here:
    the host's processes are stopped (SIGSTOP), and on their resumption their time.monotonic() leaves the
    pause out, as CLOCK_MONOTONIC leaves out a suspend. Before: its lease followed on that clock, the holder
    took its lease for good and mailed user10-19 again."""
    mark = tmp_path / "slept"
    hook = SUSPENDED.format(mark=str(mark))
    server, emails, args, env, suspending = _shared_send(smtp_server, tmp_path, post, pg_cluster, hook)
    with held_send(smtp_server, args, suspending, tmp_path) as (proc, held):
        joining = _joined(server, env, tmp_path)
        ((holder,),) = rows(
            server, "SELECT worker FROM send_workers WHERE worker NOT LIKE ?", ("elsewhere %",)
        )
        host = [proc.pid, int(str(holder).split(" pid ")[1].split()[0])]
        started = time.monotonic()
        for pid in host:
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_until("batch 1 taken over and done", lambda: _batches(server, "batch_no = 1 AND done = 1"))
        finally:
            (tmp_path / "slept.new").write_text(str(time.monotonic() - started))
            (tmp_path / "slept.new").rename(mark)
            for pid in host:
                os.kill(pid, signal.SIGCONT)
        held.release.set()
        _both_end_each_reader_once(smtp_server, proc, joining, emails)
