"""The attack pass on signals: a send stopped by what a machine or a terminal sends it, at its worst moment.

Each test holds a message past its final "." (the server has it, its reply is kept back), signals the
send there, then lets the reply go: a stop that is clean records that message, so the rerun mails no one
twice; a process that just dies leaves it unrecorded and the rerun mails that reader again.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.publisher import env_for
from tests.smtpd import RawSMTPServer, Script

EMAILS = ["a@example.com", "b@example.com", "c@example.com"]
# A send started from a shell has SIGHUP's default action; the test run itself may not (nohup, a CI runner
# that ignores it), and an ignored SIGHUP stays ignored for the send (the nohup case below)
HUP_DEFAULT = ["env", "--default-signal=HUP"]


def _list(tmp_path: Path) -> Path:
    csv = tmp_path / "subs.csv"
    csv.write_text("email\n" + "".join(f"{e}\n" for e in EMAILS), encoding="utf-8")
    return csv


def _recipients(server: RawSMTPServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


class _Terminal:
    """A pseudo-terminal that is the controlling terminal of the command run on it, read as it writes;
    close() hangs it up as a closed ssh session or terminal window does (the kernel sends SIGHUP)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.main, side = pty.openpty()
        try:  # setsid -c: a session of its own, with this terminal as its controlling terminal
            self.proc = subprocess.Popen(
                ["setsid", "-c", *HUP_DEFAULT, sys.executable, "-m", "mailer", *args],
                env={**os.environ, **env},
                stdin=side,
                stdout=side,
                stderr=side,
            )
        finally:
            os.close(side)
        self.seen = bytearray()
        self.done = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while not self.done.is_set():
            ready, _, _ = select.select([self.main], [], [], 0.05)
            if ready:
                try:
                    self.seen += os.read(self.main, 4096)
                except OSError:
                    return

    def close(self) -> None:
        self.done.set()
        self.reader.join()
        os.close(self.main)


@pytest.mark.parametrize("how", ["terminal-closed", "kill-HUP"])
def test_a_hang_up_stops_the_send_after_the_message_in_flight_and_the_rerun_mails_no_one_twice(
    tmp_path: Path, post: Path, how: str
) -> None:
    # The publisher starts a send in an ssh session and the connection drops (or a process manager sends
    # SIGHUP): the send must stop as on SIGTERM, not die with a message the server took but never recorded
    gate = threading.Event()
    server = RawSMTPServer(Script(end_gate=gate)).start()
    try:
        env = env_for(server, tmp_path, MAILER_SMTP_TIMEOUT="120")
        args = ["send", str(post), "--to", str(_list(tmp_path)), "--yes", "--force"]
        if how == "terminal-closed":
            terminal = _Terminal(args, env)
            proc = terminal.proc
            try:
                server.wait_for(1, timeout=120)  # a@ is past its "." and its reply is held
            finally:
                terminal.close()
                gate.set()
            proc.wait(timeout=120)
            said = terminal.seen.decode(errors="replace")
        else:
            proc = subprocess.Popen(
                [*HUP_DEFAULT, sys.executable, "-m", "mailer", *args],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                server.wait_for(1, timeout=120)
                proc.send_signal(signal.SIGHUP)
            finally:
                gate.set()
            _, err = proc.communicate(timeout=120)
            said = err.decode()
            assert "Hung up (SIGHUP): stopping after the messages in flight" in said, said
            assert "Traceback" not in said
        assert proc.returncode == 128 + signal.SIGHUP, said
        assert "a@example.com" in _recipients(server)
        again = subprocess.run(
            [sys.executable, "-m", "mailer", *args],
            env={**os.environ, **env},
            capture_output=True,
            timeout=120,
        )
        assert again.returncode == 0, again.stderr.decode()
        assert _recipients(server) == Counter({e: 1 for e in EMAILS})
    finally:
        gate.set()
        server.stop()


def test_a_send_started_under_nohup_goes_on_after_the_hang_up(tmp_path: Path, post: Path) -> None:
    # `nohup mailer send ... &` and log out: the publisher asked the send to outlive the terminal, so the
    # SIGHUP nohup ignores must stay ignored, not stop the send as a hang-up otherwise does
    gate = threading.Event()
    server = RawSMTPServer(Script(end_gate=gate)).start()
    try:
        env = env_for(server, tmp_path, MAILER_SMTP_TIMEOUT="120")
        args = ["send", str(post), "--to", str(_list(tmp_path)), "--yes", "--force"]
        proc = subprocess.Popen(
            ["nohup", sys.executable, "-m", "mailer", *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            server.wait_for(1, timeout=120)  # a@ is past its "." and its reply is held
            proc.send_signal(signal.SIGHUP)
        finally:
            gate.set()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert _recipients(server) == Counter({e: 1 for e in EMAILS})
    finally:
        gate.set()
        server.stop()
