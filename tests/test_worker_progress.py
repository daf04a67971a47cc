"""The live progress line of a send by workers counts from the record, around a batch that changes hands.

A worker stopped with SIGTERM (it gives its batch back) or killed with -9 (its lease runs out) half-way
through a batch: the line the coordinator draws on its terminal must never show more readers dealt with than
the record holds, nor count one twice, and must catch up with the record (not lag by what the killed worker
never wrote); a reader the stopped worker gave up on after its retries stays given up; the final report's
bounces and failure reasons are the record's. Real workers, real signals, a real SMTP server
(tests/smtpd.py), the coordinator on a pseudo-terminal, both engines; the waits are on events (a held RCPT,
a line on a worker's stderr, a row in the record) or on the line catching up, with a time-out.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailer.engine import Location
from tests.smtpd import SMTPServer
from tests.test_worker_counts import BEFORE_HELD, HELD, READERS, _owner, _sent
from tests.test_workers import WORKER_STOPS, _stderr_of, env_at, recipients, states, wait_until, write_list
from tests.test_workers_lifecycle import finish

BOUNCED = "user21@example.com"  # batch 2, before the held one: refused for good (550 5.1.1): a bounce
GIVEN_UP = "user22@example.com"  # batch 2: refused for now (450), given up at once (max_attempts 1)
HELD_LATER = "user27@example.com"  # batch 2, after the held one: where its next owner waits
_FIGURES = re.compile(rb" (\d+)/(\d+) +\d+%[^\r\n]*?(?:, (\d+) failed)?\s*$")


class _Terminal:
    """The coordinator's stderr on a pseudo-terminal (so it redraws its progress line), read as it writes;
    its stdout (the --json object) on a pipe."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.main, side = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailer", *args],
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=side,
            )
        finally:
            os.close(side)
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.main], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.main, 65536)
                except OSError:  # the coordinator ended: the terminal is hung up
                    return
                if not chunk:
                    return
                with self.lock:
                    self.seen += chunk

    def lines(self) -> list[tuple[int, int]]:
        """Every progress line drawn so far: (messages dealt with, of them failed)."""
        with self.lock:
            text = bytes(self.seen)
        found = []
        for part in re.split(rb"[\r\n]", text):
            m = _FIGURES.search(part)
            if m:
                found.append((int(m[1]), int(m[3] or 0)))
        return found

    def close(self) -> None:
        self.reader.join(timeout=10)
        os.close(self.main)


def _dealt_with(record: Location) -> tuple[int, int]:
    """The truth the line counts: readers whose outcome this send recorded (sent, failed, given up), and
    of them failed. Each reader has one row; the only reader left 'deferred' was given up."""
    found = states(record)
    failed = sum(1 for state, _ in found.values() if state in ("failed", "deferred"))
    return sum(1 for state, _ in found.values() if state != "sending"), failed


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_the_live_line_never_passes_the_record_and_catches_up_when_a_batch_changes_hands(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location, signum: int
) -> None:
    emails = [f"user{i}@example.com" for i in range(READERS)]
    csv = write_list(tmp_path / "subs.csv", emails)
    smtp_server.reject(BOUNCED, 550)
    smtp_server.reject(GIVEN_UP, 450)
    held, later = smtp_server.hold(HELD), smtp_server.hold(HELD_LATER)
    env = env_at(smtp_server, tmp_path, record_at, MAILER_MAX_ATTEMPTS="1", MAILER_SMTP_TIMEOUT="120")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "2", "--json"]
    term = _Terminal(args, env, tmp_path)
    proc = term.proc
    try:
        assert held.reached.wait(120), "the held reader never came"
        victim = _owner(record_at, 2)
        if signum == signal.SIGTERM:  # it stops after the message in flight, gives the rest of batch 2 back
            os.kill(victim, signum)
            wait_until("the worker stopping", lambda: WORKER_STOPS in _stderr_of(victim), timeout=60)
        else:  # as in test_worker_counts: killed once the reader before the held one is recorded
            wait_until("the reader before the held one recorded", lambda: _sent(record_at, BEFORE_HELD))
            os.kill(victim, signum)
        held.release.set()
        assert later.reached.wait(120), "batch 2's next owner never came to its later reader"
        # batch 2's readers before HELD_LATER are in the record, from two owners; the line must show them
        # once each, and come up to the record while the new owner waits there
        deadline = time.monotonic() + 60
        while True:
            drawn = term.lines()  # first the lines, then the record: it only grows meanwhile
            truth = _dealt_with(record_at)
            assert all(done <= truth[0] and failed <= truth[1] for done, failed in drawn), (drawn[-5:], truth)
            if drawn and drawn[-1] == truth:
                break
            assert time.monotonic() < deadline, f"the line lags: {drawn[-3:]} against the record's {truth}"
            time.sleep(0.1)
        later.release.set()
        out, _ = proc.communicate(timeout=300)
    finally:
        finish(proc)
        term.close()
    said = term.seen.decode(errors="replace")
    assert proc.returncode == 3, said  # two readers failed
    assert all(done <= READERS and failed <= 2 for done, failed in term.lines()), said
    report = json.loads(out)
    counts = {k: n for k, n in report["counts"].items() if n}
    assert counts == {"sent": READERS - 2, "failed_permanent": 1, "failed_temporary": 1, "bounced": 1}, counts
    assert report["failures"] == {
        f"550 5.1.1 no such user here <{BOUNCED}>": 1,
        f"450 4.2.0 try again later <{GIVEN_UP}>": 1,
    }, report["failures"]
    assert recipients(smtp_server) == {e: 1 for e in emails if e not in (BOUNCED, GIVEN_UP)}
    if signum == signal.SIGTERM:  # it wrote that it gave up on GIVEN_UP as it gave batch 2 back
        assert states(record_at)[GIVEN_UP] == ("deferred", 1), "the reader given up was tried again"
