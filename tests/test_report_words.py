"""The send's words as a publisher reads them: the rate of a slow (--rate) send, and the report's columns.

A `--rate 2` send printed "1 msg/s" and "0 msg/s" while it sent half a message a second (the rate was
rounded to a whole number), and the report's "suppressed (unsubscribed, bounced or complained)" row, longer
than the labels' column, pushed its count four columns right of the others. Found sending from the wheel
(stop 27). The real CLI, a real SMTP server (tests/smtpd.py), a reader unsubscribed with `mailer unsubscribe`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from mailer.campaign import Report
from mailer.console import Console
from mailer.progress import ConsoleFeedback
from tests.command import run
from tests.publisher import env_for
from tests.smtpd import SMTPServer
from tests.test_send import recipients, send_args, write_list

RATE = 2.0  # messages a second at most: the send's rate is below 10, where a whole number says too little


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def test_a_slow_sends_rate_has_a_decimal_and_the_reports_counts_line_up(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    readers = [f"user{i}@example.com" for i in range(4)]
    gone = "gone@example.com"
    csv = write_list(tmp_path / "subs.csv", [*readers, gone])
    env = env_for(smtp_server, tmp_path)
    code, _, err = run(["unsubscribe", gone], env)
    assert code == 0, err
    code, _, err = run(send_args(post, csv, "--rate", str(RATE)), env)
    assert code == 0, err
    assert sorted(recipients(smtp_server)) == readers

    last = re.findall(r"progress: 4/4 messages, 4 sent, ([\d,.]+) msg/s", err)
    own = re.findall(r"^  ([\d,.]+) msg/s$", err, re.MULTILINE)
    assert last and len(own) == 1, err
    for figure in [*last, *own]:  # at most the rate asked for, with its decimal
        assert re.fullmatch(r"\d\.\d", figure), err
        # never above the rate asked for: the first message goes at once, so 4 messages at 2 a second are
        # out 1.5 s after the start, and 4 / 1.5 said "2.7 msg/s" in the report
        assert 0 < float(figure) <= RATE, err

    report = err[err.index("2026-02-09: ") :].splitlines()[1:]
    rows = {line.strip().rsplit(" ", 1)[0].strip(): line for line in report if re.search(r"\s\d+$", line)}
    assert set(rows) == {"sent", "suppressed (unsubscribed, bounced or complained)"}, report
    assert rows["sent"].endswith(" 4") and rows["suppressed (unsubscribed, bounced or complained)"].endswith(
        " 1"
    )
    assert len({len(line) for line in rows.values()}) == 1, report  # every count ends in the same column


def test_a_rerun_with_nothing_left_draws_no_progress(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    """A rerun of a finished send (cron's second try, a --changed send after the list was done) has nothing
    to deliver: its log had "progress: 0 messages, 0 sent, 0 msg/s" twice, a count of nothing, before the
    report."""
    csv = write_list(tmp_path / "subs.csv", ["ann@example.com", "bob@example.com"])
    env = env_for(smtp_server, tmp_path)
    code, _, err = run(send_args(post, csv), env)
    assert code == 0 and "progress: 2/2 messages, 2 sent" in err, err
    code, _, err = run(send_args(post, csv), env)
    assert code == 0, err
    assert "progress" not in err, err
    assert re.search(r"^  already sent before +2$", err, re.MULTILINE), err
    assert sorted(recipients(smtp_server)) == ["ann@example.com", "bob@example.com"]


def test_a_slow_sends_live_rate_is_never_above_its_rate(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    """The first message starts at once, so right after it the measured rate is many a second: a --rate 0.5
    send said "3 msg/s, ETA 0:00:15" at its first line, for a send of a minute and a quarter."""
    csv = write_list(tmp_path / "subs.csv", [f"user{i}@example.com" for i in range(3)])
    env = env_for(smtp_server, tmp_path)
    code, _, err = run(send_args(post, csv, "--rate", "1"), env)
    assert code == 0, err
    lines = re.findall(r"progress: (\d+)/3 messages, \d+ sent, ([\d.]+) msg/s, ETA (\S+)", err)
    assert lines and lines[0][0] == "1", err  # the first message's line is drawn at once
    for done, rate, eta in lines:
        assert float(rate) <= 1.0, err
        if int(done) < 3:  # 3 - done messages left at one a second at most
            hours, minutes, seconds = (int(part) for part in eta.split(":"))
            assert hours * 3600 + minutes * 60 + seconds >= 3 - int(done) - 1, err


def test_a_stopped_send_draws_its_counts_once_more_only_when_they_moved() -> None:
    # a send stopped early (exit 4) draws its counts at the stop (f6e0816); one stopped before any reader
    # was dealt with said "progress: 0/30 messages, 0 sent, 0.0 msg/s, ETA -" twice in a row
    console = Console()
    console.err = io.StringIO()  # a log, not a terminal
    feedback = ConsoleFeedback(console)
    feedback.start(30)
    report = Report("2026-02-09")
    feedback.progress(report)
    report.stopped_because = "stopped after 5 failures in a row"
    feedback.stopped()
    report.sent = 3
    feedback.stopped()
    said = [line.split(" ", 1)[1] for line in console.err.getvalue().splitlines()]
    assert said[0] == "progress: 0/30 messages, 0 sent, 0.0 msg/s, ETA -", said
    assert len(said) == 2 and re.fullmatch(r"progress: 3/30 messages, 3 sent, [\d.,]+ msg/s, ETA -", said[1])


def test_the_eta_is_never_nothing_while_messages_are_left() -> None:
    # 10 left at about 20 a second: half a second, which the ETA cut down to "0:00:00"
    console = Console()
    console.err = io.StringIO()
    feedback = ConsoleFeedback(console)
    feedback.start(30)
    report = Report("2026-02-09", sent=20)
    report.started -= 1.0
    feedback.progress(report)
    [line] = console.err.getvalue().splitlines()
    eta = re.fullmatch(r"\S+ progress: 20/30 messages, 20 sent, [\d.]+ msg/s, ETA (\S+)", line)
    assert eta and eta[1] != "0:00:00", line
