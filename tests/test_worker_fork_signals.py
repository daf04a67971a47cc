"""A stop signal that reaches a worker of `send --workers N` as the coordinator forks it (workers/local.py).

The signal is sent by the child itself from an at-fork hook (os.register_at_fork, set up before mailer
runs): it lands at the first instant of the worker's life, before any of mailer's code runs there, on every
run: the gap between the fork and the worker's own handlers, where the coordinator's SIGTERM or a Ctrl-C at
the terminal (before the worker's setsid) can land on a loaded machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.sends import forty_readers
from tests.smtpd import SMTPServer
from tests.test_workers import env_at, recipients

# Runs the real CLI (`python -m mailer ...`) with the first forked child signalling itself as it returns
# from the fork; the replacements, if the coordinator starts any, are left alone.
SIGNAL_THE_FIRST_CHILD = """
import os, runpy, signal, sys
forks = []
def signalled():
    if not forks:
        os.kill(os.getpid(), signal.{name})
os.register_at_fork(after_in_parent=lambda: forks.append(1), after_in_child=signalled)
runpy.run_module("mailer", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_that_reaches_a_worker_as_it_is_forked_stops_it_cleanly(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, name: str
) -> None:
    # before: the child still had the coordinator's handler, which only noted the signal in the
    # coordinator's state copied into it: the worker then sent all 40 messages, its stop lost (and after its
    # handlers were reset, the same signal killed it without its clean stop). Now the signals are blocked
    # across the fork and wait for the worker's own handlers: it stops before it claims a batch, and, stopped
    # from outside the send (the coordinator passed on no signal), it is replaced: each reader mailed once
    emails, args = forty_readers(tmp_path, post, "--workers", "1")
    env = env_at(smtp_server, tmp_path, tmp_path / "state" / "mailer.db")
    script = SIGNAL_THE_FIRST_CHILD.format(name=name)
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env={**os.environ, **env}, cwd=tmp_path,
        capture_output=True, timeout=300,
    )  # fmt: skip
    said = proc.stderr.decode()
    assert proc.returncode == 0, said
    assert f"was stopped by {name} from outside the send; pid " in said, said  # its clean stop, seen
    assert "killed by signal" not in said and said.count("takes its place") == 1, said
    assert "Traceback" not in said, said
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})
