"""`mailer status` on a send whose coordinator, on another host, was killed with -9.

Nothing on this host can prove such a coordinator gone: only its silence in the record, and only once it has
lasted a lease (before that it may be stopped, or starved, and wake up). So `mailer status` says how long
ago it last said it is alive, and calls it gone past its lease. The coordinator runs under another host name
(a UTS namespace of its own: root), so that no pid of this host proves it gone; the test measures the
silence itself, from the kill.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailer.engine import Location
from tests.sends import forty_readers
from tests.smtpd import SMTPServer
from tests.test_workers import _running, env_at, wait_until
from tests.test_workers_lifecycle import coordinator_gone, mailer

LEASE = 10.0  # seconds: long enough for a status right after the kill, short enough to wait out

HEARD = re.compile(r"last heard from (\d+) s ago")


def test_a_coordinator_killed_elsewhere_shows_how_long_it_has_been_silent_and_is_gone_past_its_lease(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    if os.geteuid() != 0:
        pytest.skip("another host name for the coordinator needs a UTS namespace (root)")
    _, args = forty_readers(tmp_path, post, "--distributed", "--workers", "0")
    env = {**env_at(smtp_server, tmp_path, record_at), "MAILER_WORKER_LEASE": f"{LEASE:g}"}
    with (tmp_path / "coordinator.err").open("wb") as err:
        coordinator = subprocess.Popen(
            ["unshare", "--uts", "sh", "-c", 'hostname elsewhere && exec "$0" -m mailer "$@"', sys.executable,
             *args],
            env={**os.environ, **env}, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_until("the send in the record", lambda: _running(record_at))
    finally:
        coordinator.kill()
        coordinator.wait()
    killed = time.time()  # it said nothing after this

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
