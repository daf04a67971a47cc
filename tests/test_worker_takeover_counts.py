"""What the record counts of a batch taken over from a worker killed with -9 (docs/workers.md): its readers'
counts, which the worker that takes it over writes from the record at once, so that the live line shows what
the record holds, not what the dead one last wrote (with a 600 s lease, nothing of the batch) until the new
holder's first lease renewal 150 s later; and its retries, which each holder writes as it makes one, so that
the report's total has those of the dead one too. Both engines; a real SMTP server, real SIGKILLs, the
coordinator on a pseudo-terminal; the waits are on held RCPTs and rows in the record, and the line with a
time-out.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from mailer.engine import Location
from tests.pg import rows
from tests.smtpd import SMTPServer
from tests.test_worker_counts import _owner, _sent
from tests.test_worker_progress import _dealt_with, _Terminal
from tests.test_workers import env_at, recipients, spawn, wait_until, write_list
from tests.test_workers_lifecycle import finish

READERS = 60  # 6 batches of 10 for one worker (workers.batch_size)
HELD = "user25@example.com"  # the middle of batch 2
BEFORE_HELD = "user24@example.com"


def _one_worker(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record: Location
) -> tuple[list[str], dict[str, str], list[str]]:
    """The readers, the environment (a 600 s lease, a retry a second after a refusal for now) and the
    arguments of a `send --workers 1 --connections 1` to them."""
    emails = [f"user{i}@example.com" for i in range(READERS)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = {
        **env_at(smtp_server, tmp_path, record, MAILER_SMTP_TIMEOUT="120", MAILER_RETRY_DELAY="1"),
        "MAILER_WORKER_LEASE": "600",
    }
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "1", "--connections", "1"]
    return emails, env, args


def test_the_line_shows_a_batch_taken_over_from_a_killed_worker_as_the_record_has_it(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails, env, args = _one_worker(smtp_server, tmp_path, post, record_at)
    held = smtp_server.hold(HELD)
    term = _Terminal(args, env, tmp_path)
    proc = term.proc
    try:
        assert held.reached.wait(120), "the held reader never came"
        wait_until("the reader before the held one recorded", lambda: _sent(record_at, BEFORE_HELD))
        again = smtp_server.hold(HELD)  # where the worker that takes batch 2 over waits in its turn
        os.kill(_owner(record_at, 2), signal.SIGKILL)
        held.release.set()
        assert again.reached.wait(120), "batch 2's next holder never came to the held reader"
        # one worker with one connection, waiting: the record holds all it will hold until the reply goes
        truth = _dealt_with(record_at)
        assert truth[0] == 25, truth  # user00 to user24
        deadline = time.monotonic() + 60
        while not (drawn := term.lines()) or drawn[-1] != truth:
            assert time.monotonic() < deadline, f"the line lags: {drawn[-3:]} against the record's {truth}"
            time.sleep(0.1)
        assert all(done <= truth[0] for done, _ in drawn), drawn  # never more than the record
        again.release.set()
        proc.communicate(timeout=300)
    finally:
        held.release.set()
        finish(proc)
        term.close()
    assert proc.returncode == 0, term.seen.decode(errors="replace")
    assert recipients(smtp_server) == {e: 1 for e in emails}  # the held reader's RCPT had no reply: not sent


def test_the_retries_of_a_worker_killed_before_its_next_renewal_are_in_the_record(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails, env, args = _one_worker(smtp_server, tmp_path, post, record_at)
    smtp_server.fail(HELD, 451, times=1)
    first = smtp_server.hold(HELD)  # its first try, refused for now once the hold is let go
    proc = spawn(args, env, tmp_path)
    try:
        assert first.reached.wait(120), "the reader never came"
        retry = smtp_server.hold(HELD)  # its retry, a second later
        first.release.set()
        assert retry.reached.wait(120), "the reader's retry never came"
        os.kill(_owner(record_at, 2), signal.SIGKILL)  # long before its next renewal (150 s)
        retry.release.set()
        _, err = proc.communicate(timeout=300)
    finally:
        first.release.set()
        finish(proc)
    assert proc.returncode == 0, err.decode()
    assert recipients(smtp_server) == {e: 1 for e in emails}
    # tried three times: refused for now, its retry killed waiting for a reply, tried again by the next holder
    retries = sum(
        json.loads(str(counts)).get("retries", 0)
        for (counts,) in rows(record_at, "SELECT counts FROM send_batches")
    )
    assert retries == 2, (
        retries
    )  # before: 0, the killed one's retry never written, the next one's a first try
