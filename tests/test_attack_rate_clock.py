"""The rate limit of a send by workers: it holds with several connections per worker, and a step back of
the record's clock does not hold the send back.

The schedule is kept in the record (sends.next_slot) on the record's clock. A step back of that clock (the
PostgreSQL server's here: a cluster of the test's own run under libfaketime, whose offset the test changes
mid-send; mailer's own processes keep the real clock) made every start time the workers reserved ten minutes
off: the send stood still for ten minutes. A first fix reset the schedule whenever it was further ahead than
a chunk per worker, which a legitimate schedule is with several connections per worker (each holds a start
time while it waits): `--workers 3 --connections 4 --rate 2` sent 40 messages in 5 s, 3.9 times its rate.
Now a worker starts the schedule again only when the record's clock went back since its last reservation.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.engine import Location
from mailer.workers.worker import _step_floor
from tests.pg import Cluster, binaries
from tests.smtpd import SMTPServer
from tests.test_workers import _faster_than, env_at, recipients, spawn, wait_until, write_list

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")  # Debian's libfaketime


def _send(post: Path, csv: Path, *options: str) -> list[str]:
    return ["send", str(post), "--to", str(csv), "--yes", "--force", *options]


def test_the_rate_holds_with_several_connections_per_worker(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    rate, workers, connections = 4.0, 2, 2
    emails = [f"user{i:02}@example.com" for i in range(24)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record_at)
    options = ["--workers", str(workers), "--connections", str(connections), "--rate", str(rate)]
    proc = spawn(_send(post, csv, *options), env, tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})
    assert not _faster_than(rate, smtp_server, workers * connections)


def test_a_slewed_record_clock_is_no_step_back_and_a_stepped_one_is() -> None:
    # a record clock that NTP slews runs slow, never back: chrony slews by up to 8.3%. The first rule (the
    # record's time less than the last one's plus the time elapsed here, less 1 s) took that for a step once
    # 12 s passed between a worker's reservations (--workers 3 --rate 0.2: 15 of 30 messages in 35.8 s
    # where the rate allows 12.2; the adversarial pass, under libfaketime "x0.917")
    then, at = 1_796_000_000.0, 50.0
    for elapsed in (0.5, 16.4, 600.0, 3600.0):
        slewed = then + elapsed * (1 - 0.083)
        assert slewed >= _step_floor(then, at, at + elapsed), elapsed
    for elapsed, back in ((0.1, 1.5), (10.0, 2.5), (100.0, 600.0)):
        assert then + elapsed - back < _step_floor(then, at, at + elapsed), (elapsed, back)


@pytest.fixture
def stepped_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, Path]]:
    """A durable-less cluster of this test's own whose clock is libfaketime's: its offset in the file."""
    bindir = binaries()
    if bindir is None or not FAKETIME.exists():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL or libfaketime is not installed (scripts/test installs both)")
        pytest.skip("PostgreSQL or libfaketime is not installed (Debian: postgresql, libfaketime)")
    cluster = Cluster(bindir)
    offset = cluster.root / "faketime"  # the server's user reads it: in the folder it owns
    offset.write_text("+0\n")
    cluster.env = {
        "LD_PRELOAD": str(FAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # the server's own timeouts and waits keep their clock
    }  # fmt: skip
    cluster.start()
    try:
        yield cluster, offset
    finally:
        cluster.stop()
        for left in Path("/dev/shm").glob("*faketime_*"):  # what libfaketime leaves of the killed server's
            with contextlib.suppress(OSError):
                if left.stat().st_uid == _server_uid():
                    left.unlink()


def _server_uid() -> int:
    """The uid the test cluster's processes run as (tests/pg.py: `postgres` under root)."""
    return pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()


@pytest.mark.postgresql
def test_a_send_by_workers_goes_on_when_the_records_clock_steps_back_ten_minutes(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, stepped_cluster: tuple[Cluster, Path]
) -> None:
    cluster, offset = stepped_cluster
    rate, workers = 20.0, 2
    emails = [f"user{i:02}@example.com" for i in range(80)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, cluster.database())
    proc = spawn(_send(post, csv, "--workers", str(workers), "--rate", str(rate)), env, tmp_path)
    try:
        wait_until("ten messages out", lambda: len(smtp_server.messages) >= 10)
        offset.write_text("-600\n")
        stepped = time.monotonic()
        _, err = proc.communicate(timeout=120)  # before: ten minutes and more
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})
    # the 70 or so left take 3.5 s at 20 a second; the step costs at most a chunk (a quarter second's start
    # times) sent early by each worker: no span holds more than the rate allows and those
    assert time.monotonic() - stepped < 30, err.decode()
    assert not _faster_than(rate, smtp_server, workers * (1 + int(rate / 4)))
