"""The record's clock stepped back during a rate-limited send by workers does not hold the send back.

The shared rate limit keeps the next free start time in the record (sends.next_slot), on the record's clock.
Stepped back ten minutes, that clock made every start time the workers reserved ten minutes off: the send
stood still for as long. The machine's clock cannot be stepped here (libfaketime's fake clock also moves
Python's sleeps), so the test moves the next free start time ten minutes ahead instead, which is what the
record holds just after such a step.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from mailer.engine import Location
from tests.pg import rows
from tests.smtpd import SMTPServer
from tests.test_workers import env_at, recipients, spawn, wait_until, write_list


def test_a_send_by_workers_goes_on_when_its_next_start_time_is_ten_minutes_off(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails = [f"user{i:02}@example.com" for i in range(80)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record_at)
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "2", "--rate", "20"]
    proc = spawn(args, env, tmp_path)
    try:
        wait_until("ten messages out", lambda: len(smtp_server.messages) >= 10)
        rows(record_at, "UPDATE sends SET next_slot = next_slot + 600")
        stepped = time.monotonic()
        _, err = proc.communicate(timeout=120)  # before: ten minutes and more
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})
    # the 70 or so left take 3.5 s at 20 a second; the step cost at most a chunk of start times per worker
    assert time.monotonic() - stepped < 30, err.decode()
