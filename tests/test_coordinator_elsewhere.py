"""`mailer status` and `mailer worker` on a send whose coordinator, on another host, was killed with -9.

With a SQLite record (one host, one kernel) the coordinator's flock on the issue's lock file tells a killed
one gone at once; one stopped (kill -STOP) under another host name holds its lock, and nothing proves it gone
but its silence in the record, once it has lasted a lease (before that it may wake up). So `mailer status`
says how long ago it last said it is alive, and calls it gone past its lease. On PostgreSQL the
coordinator's session holds the issue's lock (issue_lock) for as long as it runs, and the server lets go of
it once the killed process's sockets close: `mailer status` calls it gone at once, and a `mailer worker`
finishes the send and ends it at once, instead of waiting for a lease of 600 s. The coordinator runs under
another host name (a UTS namespace of its own: root), so that no pid of this host proves it gone; the test
measures the silence itself, from the kill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mailer.engine import Location
from tests.pg import Cluster
from tests.sends import forty_readers
from tests.smtpd import SMTPServer
from tests.test_workers import _running, env_at, recipients, spawn, wait_until
from tests.test_workers_lifecycle import coordinator_gone, mailer

LEASE = 10.0  # seconds: long enough for a status right after the kill, short enough to wait out

HEARD = re.compile(r"last heard from (\d+) s ago")


def _killed_elsewhere(
    args: list[str], env: dict[str, str], cwd: Path, record: Location, how: signal.Signals = signal.SIGKILL
) -> tuple[float, subprocess.Popen[bytes]]:
    """`mailer ARGS` under the host name 'elsewhere', sent `how` (kill -9, or SIGSTOP) once its send is in
    the record; when, and the process (the caller kills a stopped one)."""
    if os.geteuid() != 0:
        pytest.skip("another host name for the coordinator needs a UTS namespace (root)")
    with (cwd / "coordinator.err").open("wb") as err:
        coordinator = subprocess.Popen(
            ["unshare", "--uts", "sh", "-c", 'hostname elsewhere && exec "$0" -m mailer "$@"', sys.executable,
             *args],
            env={**os.environ, **env}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_until("the send in the record", lambda: _running(record))
    except BaseException:
        coordinator.kill()
        coordinator.wait()
        raise
    coordinator.send_signal(how)
    if how == signal.SIGKILL:
        coordinator.wait()
    return time.time(), coordinator  # it said nothing after this


def test_a_coordinator_stopped_elsewhere_shows_how_long_it_has_been_silent_and_is_gone_past_its_lease(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    record_at = tmp_path / "state" / "mailer.db"  # SQLite: its lock held, the lease alone tells
    _, args = forty_readers(tmp_path, post, "--distributed", "--workers", "0")
    env = {**env_at(smtp_server, tmp_path, record_at), "MAILER_WORKER_LEASE": f"{LEASE:g}"}
    stopped, coordinator = _killed_elsewhere(args, env, tmp_path, record_at, signal.SIGSTOP)
    try:
        _silent_then_gone(post, env, tmp_path, record_at, stopped)
    finally:
        coordinator.kill()
        coordinator.wait()


def _silent_then_gone(
    post: Path, env: dict[str, str], tmp_path: Path, record_at: Path, killed: float
) -> None:
    """status on a coordinator silent since `killed`: within its lease not called gone, past it gone."""

    before = time.time()
    status = mailer(["status", str(post)], env, tmp_path)
    assert status.returncode == 0, status.stderr
    heard = HEARD.search(status.stdout)
    assert heard, status.stdout
    silent = int(heard[1])
    assert silent >= before - killed - 1, status.stdout  # (its figure is rounded to the second)
    if silent < LEASE - 1:  # within its lease: it may be only slow or stopped, so not called gone
        assert re.search(r"sending now: 0 worker\(s\), 0 of \d+ batches done \(coordinated by elsewhere pid ",
                         status.stdout), status.stdout  # fmt: skip
        assert f"and is taken for gone after {LEASE:g} s without a word" in status.stdout, status.stdout

    wait_until("the coordinator's lease run out", lambda: coordinator_gone(record_at))
    status = mailer(["status", str(post), "--json"], env, tmp_path)
    sending = json.loads(status.stdout)["sending"]
    assert sending["coordinator"].startswith("elsewhere pid "), sending
    assert sending["coordinator_gone"] is True and sending["workers"] == 0, sending
    assert sending["coordinator_heard_ago"] >= max(LEASE, time.time() - killed - LEASE / 4 - 1), sending
    text = mailer(["status", str(post)], env, tmp_path).stdout
    assert re.search(r"stopped half-way: 0 of \d+ batches done; its coordinator \(elsewhere pid ", text), text
    assert f", past its {LEASE:g} s lease) and every worker are gone: run the same send" in text, text
    heard = HEARD.search(text)
    assert heard and int(heard[1]) >= LEASE, text


@pytest.mark.postgresql
def test_on_postgresql_a_coordinator_killed_elsewhere_is_gone_at_once_and_a_worker_ends_its_send(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    """Its session ended with it: `mailer status` calls it gone without waiting for its 600 s lease, and a
    `mailer worker` started then mails every reader and ends the send as the last worker, at once."""
    server = pg_cluster.database()
    emails, args = forty_readers(tmp_path, post, "--distributed", "--workers", "0")
    env = {**env_at(smtp_server, tmp_path, server), "MAILER_WORKER_LEASE": "600"}
    killed, _ = _killed_elsewhere(args, env, tmp_path, server)

    def sending() -> dict[str, object]:
        found: dict[str, object] = json.loads(mailer(["status", str(post), "--json"], env, tmp_path).stdout)
        return found["sending"]  # type: ignore[return-value]

    wait_until("status calling the killed coordinator gone", lambda: sending()["coordinator_gone"], 60)
    text = mailer(["status", str(post)], env, tmp_path).stdout
    assert re.search(r"stopped half-way: 0 of \d+ batches done; its coordinator \(elsewhere pid ", text), text
    assert ", it no longer holds the issue's lock) and every worker are gone: run the same send" in text, text
    heard = HEARD.search(text)
    assert heard and int(heard[1]) <= time.time() - killed + 1, text

    worker = spawn(["worker"], env, tmp_path)
    _, said = worker.communicate(timeout=120)  # the lease would make it wait 600 s
    assert worker.returncode == 0, said.decode()
    assert "is gone: this worker, the last, ended the send: done, 40 sent in all" in said.decode(), said
    assert recipients(smtp_server) == Counter(emails)
    assert json.loads(mailer(["status", str(post), "--json"], env, tmp_path).stdout)["sending"] is None
