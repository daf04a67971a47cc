"""`send --workers N` whose coordinator is killed with -9: its workers are its children, on its host.

They run in sessions of their own (a Ctrl-C at the terminal reaches the coordinator alone), so nothing
stopped them when it died: they sent on, unseen (their stderr went into a file only the coordinator read),
out of the publisher's reach (a Ctrl-C no longer reaches them), and a rerun was refused while they did.
Real processes and a real SIGKILL; the waits are on held SMTP replies and on the processes' ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailer.engine import Location, issue_lock
from mailer.errors import MailerError
from tests.pg import Cluster, rows
from tests.sends import forty_readers
from tests.smtpd import Hold, SMTPServer
from tests.test_workers import env_at, recipients, spawn, wait_until, worker_pids, write_list


def _alive(pid: int) -> bool:
    """Whether the process runs (not a zombie: the workers are not this test's children to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _leave_nothing_running(coordinator: subprocess.Popen[bytes], pids: set[int], holds: list[Hold]) -> None:
    """Release the held replies and kill the coordinator and any worker still there: a worker left sending
    is not for the next test to meet."""
    for hold in holds:
        hold.release.set()
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if coordinator.poll() is None:
        coordinator.kill()
        coordinator.communicate()


@dataclass
class _Held:
    """A `send --workers 2` whose two workers are each held in flight on a reader's reply."""

    emails: list[str]
    args: list[str]
    env: dict[str, str]
    coordinator: subprocess.Popen[bytes]
    holds: list[Hold]
    pids: set[int] = field(default_factory=set)


@contextlib.contextmanager
def _two_workers_held(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record: Location
) -> Iterator[_Held]:
    """80 readers, 8 batches of 10, one held reader in each: each worker waits at the batch it has, whichever
    that is. What is left running at the end is stopped (_leave_nothing_running)."""
    emails = [f"user{i:02}@example.com" for i in range(80)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record, MAILER_SMTP_TIMEOUT="120")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "2", "--connections", "1"]
    holds = [smtp_server.hold(f"user{i:02}@example.com") for i in range(5, 80, 10)]
    held = _Held(emails, args, env, spawn(args, env, tmp_path), holds)
    try:
        wait_until("both workers held", lambda: sum(h.reached.is_set() for h in holds) == 2)
        held.pids = worker_pids(record)
        assert len(held.pids) == 2
        yield held
    finally:
        _leave_nothing_running(held.coordinator, held.pids, holds)
        # its pipes (a test may have only waited for it): at their end once the workers, writing to it, are
        held.coordinator.communicate(timeout=60)


def test_the_workers_of_a_coordinator_killed_with_9_stop_say_so_and_a_rerun_sends_the_rest(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    with _two_workers_held(smtp_server, tmp_path, post, record_at) as held:
        coordinator, pids = held.coordinator, held.pids
        coordinator.send_signal(signal.SIGKILL)
        for hold in held.holds:
            hold.release.set()
        # the coordinator's stderr stays open while a worker may still speak on it
        _, err = coordinator.communicate(timeout=120)
        wait_until("the workers ended", lambda: not any(_alive(pid) for pid in pids), timeout=60)
    said = err.decode()
    assert coordinator.returncode == -signal.SIGKILL
    # each worker said, where the publisher reads, that it stopped and why
    stopped = re.findall(r"worker pid (\d+): its coordinator \(pid (\d+)\) is gone: stopping", said)
    assert {int(w) for w, _ in stopped} == pids, said
    assert {int(c) for _, c in stopped} == {coordinator.pid}, said
    assert "Traceback" not in said, said
    # they stopped after the messages in flight: the readers after the held ones were left to the rerun
    got = recipients(smtp_server)
    assert len(got) < len(held.emails) and all(n == 1 for n in got.values()), got
    again = spawn(held.args, held.env, tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    got = recipients(smtp_server)
    assert set(got) == set(held.emails)
    assert sum(got.values()) - len(held.emails) <= 2  # a message in flight on each worker's connection


@pytest.mark.postgresql
def test_what_a_worker_said_just_before_its_coordinator_was_killed_reaches_the_coordinators_stderr(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    """The coordinator passes on its workers' lines every 0.2 s; one said since its last look was left in
    the worker's file, which no one read once the coordinator was killed. Here the coordinator is stopped
    (SIGSTOP: it passes nothing on), a worker then says that a reader failed, and the coordinator is killed
    with -9: the line must still reach the coordinator's stderr, where the publisher reads. (PostgreSQL: a
    SQLite coordinator stopped in a write would hold the whole file's lock, and the worker with it.)"""
    server = pg_cluster.database()
    emails, args = forty_readers(tmp_path, post, "--workers", "1", "--connections", "1")
    env = env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120")
    smtp_server.reject("user09@example.com")
    held = smtp_server.hold("user09@example.com")
    coordinator = spawn(args, env, tmp_path)
    pids: set[int] = set()
    try:
        assert held.reached.wait(timeout=120), "the worker never reached user09"
        pids = worker_pids(server)
        assert len(pids) == 1
        (pid,) = pids
        coordinator.send_signal(signal.SIGSTOP)
        held.release.set()
        line = b"failed: user09@example.com"
        wait_until("the worker said user09 failed", lambda: line in Path(f"/proc/{pid}/fd/2").read_bytes())
        coordinator.send_signal(signal.SIGKILL)
        _, err = coordinator.communicate(timeout=120)  # open until the worker, speaking on it, ends
        wait_until("the worker ended", lambda: not _alive(pid), timeout=60)
    finally:
        _leave_nothing_running(coordinator, pids, [held])
    said = err.decode()
    assert coordinator.returncode == -signal.SIGKILL
    assert said.count("failed: user09@example.com") == 1, said
    assert re.search(r"worker pid \d+: its coordinator \(pid \d+\) is gone: stopping", said), said
    assert "Traceback" not in said, said


def _lock_free(record: Location, issue_id: str) -> bool:
    """Whether a rerun could take the issue's lock now (the lock a send holds for its whole time)."""
    try:
        with issue_lock(record, issue_id):
            return True
    except MailerError:
        return False


def test_the_issue_lock_goes_with_the_coordinator_not_with_its_workers(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """The workers are forked from the coordinator: they must not keep what it held open (the issue's flock,
    the PostgreSQL session that holds the issue's advisory lock), or a coordinator killed with -9 would go
    on locking the issue for as long as its workers finish their messages in flight (or longer, a worker
    that cannot write its end to the record). Here both workers stay in flight on held replies while the
    lock must come free."""
    with _two_workers_held(smtp_server, tmp_path, post, record_at) as held:
        [(issue_id,)] = rows(record_at, "SELECT issue_id FROM sends")
        assert not _lock_free(record_at, str(issue_id))  # the coordinator holds it
        held.coordinator.send_signal(signal.SIGKILL)
        held.coordinator.wait(timeout=60)
        wait_until("the issue's lock free", lambda: _lock_free(record_at, str(issue_id)), timeout=30)
        assert all(_alive(pid) for pid in held.pids)  # still in flight, and not holding it
