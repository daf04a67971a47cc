"""What a send by workers says before its first message.

Its workers take seconds to start under load (a process each, the post read and rendered): the coordinator's
line showed "0/20 0% 0.0 msg/s ETA -" meanwhile (10-14 s at stop 27), which said nothing of why. Now it says
that its workers are starting, or that it waits for a `mailer worker` to join, until one has joined. The real
CLI on a pseudo-terminal and on a pipe, forked workers, a real SMTP server (tests/smtpd.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.command import run
from tests.publisher import env_for
from tests.smtpd import SMTPServer
from tests.test_send import _on_a_terminal, _redrawn, recipients, send_args, write_list

READERS = [f"user{i}@example.com" for i in range(20)]


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def test_the_line_says_the_workers_are_starting_until_one_has_joined(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    csv = write_list(tmp_path / "subs.csv", READERS)
    env = env_for(smtp_server, tmp_path)
    code, screen = _on_a_terminal(send_args(post, csv, "--workers", "2"), env, columns=100)
    assert code == 0, screen
    assert recipients(smtp_server) == Counter({e: 1 for e in READERS})
    drawn = [line.rstrip() for line in _redrawn(screen)]
    assert drawn[0] == "0/20 messages: starting 2 workers", drawn  # said before the workers are forked
    assert " 20/20 100% " in drawn[-1], drawn
    assert all(line == drawn[0] or " msg/s " in line for line in drawn), drawn  # then the bar, nothing else


def test_a_log_says_it_once_before_the_progress_lines(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    csv = write_list(tmp_path / "subs.csv", READERS)
    env = env_for(smtp_server, tmp_path)
    code, _, err = run(send_args(post, csv, "--workers", "2"), env)
    assert code == 0, err
    said = [line.split(" ", 1)[1] for line in err.splitlines() if " progress: " in line]
    assert said[0] == "progress: 0/20 messages: starting 2 workers", err
    assert said.count(said[0]) == 1 and said[-1].startswith("progress: 20/20 messages, 20 sent, "), err
    # a rerun with no one left draws nothing, as a lone send's (it said "progress: 0/0 messages: starting 2
    # workers")
    code, _, err = run(send_args(post, csv, "--workers", "2"), env)
    assert code == 0 and "Sending 2026-02-09 to 0 subscriber(s)" in err and "progress:" not in err, err
