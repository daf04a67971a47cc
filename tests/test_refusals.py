"""Refusals during a send: a reader refused for good is suppressed, so the next day's run stays green; a
relay that refuses everyone stops the send with no reader failed or suppressed. The real CLI, run against
the test's own SMTP server (aiosmtpd), and the real record."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailer.bounces import HARD, SOFT
from mailer.cli import cli
from mailer.errors import ExitStatus
from mailer.ledger import Ledger
from mailer.refusals import POLICY, judge
from mailer.transport import Outcome
from tests.publisher import env_for
from tests.record import delivery
from tests.smtpd import SMTPServer

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_FAR = datetime(2100, 1, 1, tzinfo=UTC)
READERS = ["ann@example.org", "someone@gmail.com", "bo@example.org"]


def _list(tmp_path: Path, readers: list[str]) -> Path:
    path = tmp_path / "list.csv"
    path.write_text("email\n" + "\n".join(readers) + "\n", encoding="utf-8")
    return path


def _send(env: dict[str, str], post: Path, to: Path) -> Result:
    return CliRunner().invoke(cli, ["send", str(post), "--to", str(to), "--yes", "--force"], env=env)


def _next_day(post: Path) -> Path:
    text = post.read_text(encoding="utf-8").replace("date: 2026-02-09", "date: 2026-02-10", 1)
    day2 = post.with_name("2026-02-10.md")
    day2.write_text(text.replace("\n# ", "\n# Tuesday: ", 1), encoding="utf-8")
    return day2


def test_a_reader_refused_for_good_is_suppressed_and_the_next_days_send_skips_them_and_exits_0(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    smtp_server.fail("someone@gmail.com", 554, text="5.7.1 Message rejected: policy")
    env = env_for(smtp_server, tmp_path)
    to = _list(tmp_path, READERS)

    day1 = _send(env, post, to)
    assert day1.exit_code == ExitStatus.INCOMPLETE, day1.output  # someone failed today: said once
    assert "someone@gmail.com: 554 5.7.1 Message rejected: policy" in day1.output
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == [
        "ann@example.org",
        "bo@example.org",
    ]
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        (s,) = ledger.suppressions()
    assert (s.email, s.source, s.issue_id, s.status) == ("someone@gmail.com", "smtp", "2026-02-09", "5.7.1")
    assert s.reason == "hard bounce" and "Message rejected" in s.diagnostic

    smtp_server.clear()
    day2 = _send(env, _next_day(post), to)
    assert day2.exit_code == ExitStatus.OK, day2.output
    received = sorted(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert received == ["ann@example.org", "bo@example.org"]  # the suppressed reader was not tried again


@pytest.mark.parametrize("connections", [1, 4])
def test_a_relay_that_refuses_every_recipient_stops_early_and_fails_and_suppresses_no_one(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, connections: int
) -> None:
    readers = [f"reader{n}@example.org" for n in range(30)]
    for reader in readers:
        smtp_server.fail(reader, 554, text="5.7.1 Relay access denied")
    env = env_for(smtp_server, tmp_path, MAILER_CONNECTIONS=str(connections))
    to = _list(tmp_path, readers)

    result = _send(env, post, to)
    assert result.exit_code == ExitStatus.STOPPED, result.output
    stops = [line for line in result.output.splitlines() if "accepted none" in line]
    assert len(stops) == 1 and "Relay access denied" in stops[0], result.output
    assert "no reader was marked failed or suppressed" in stops[0]
    assert smtp_server.messages == []
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        assert list(ledger.suppressions()) == []
        assert "failed" not in ledger.status("2026-02-09").counts
    # the relay set right, the same command mails everyone: no one was left marked failed
    smtp_server.heal()
    again = _send(env, post, to)
    assert again.exit_code == ExitStatus.OK, again.output
    assert len(smtp_server.messages) == 30


def test_a_policy_refusal_before_anyone_was_accepted_is_asked_again_and_then_counts(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    # the first reader is refused before any other was accepted: not known to be theirs until one is
    smtp_server.fail("first@example.org", 550, text="5.7.1 recipient blocked")
    env = env_for(smtp_server, tmp_path)
    result = _send(env, post, _list(tmp_path, ["first@example.org", "ann@example.org"]))
    assert result.exit_code == ExitStatus.INCOMPLETE, result.output
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        assert [s.email for s in ledger.suppressions()] == ["first@example.org"]
        first = delivery(ledger, "2026-02-09", "first@example.org")
        assert first is not None and (first.state, first.last_code) == ("failed", 550)


def test_a_full_mailbox_is_a_soft_bounce_and_a_refused_message_is_not_the_readers(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    smtp_server.fail("full@example.org", 552, text="5.2.2 mailbox full")
    smtp_server.fail("spam@example.org", 554, at="DATA", text="5.7.1 message content rejected")
    env = env_for(smtp_server, tmp_path)
    readers = ["ann@example.org", "full@example.org", "spam@example.org"]
    result = _send(env, post, _list(tmp_path, readers))
    assert result.exit_code == ExitStatus.INCOMPLETE, result.output
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        assert list(ledger.suppressions()) == []  # one soft bounce is not enough; content is not the reader
        assert [when for when, _ in ledger.soft_bounces("full@example.org", _EPOCH, _FAR)] != []


@pytest.mark.parametrize(
    ("stage", "code", "text", "kind"),
    [
        ("RCPT", 550, "5.1.1 no such user", HARD),
        ("RCPT", 550, "5.1.10 null MX", HARD),
        ("END", 550, "5.1.1 no such user", HARD),
        ("RCPT", 550, "5.2.1 mailbox disabled", HARD),
        ("RCPT", 550, "5.4.4 unable to route", HARD),
        ("RCPT", 552, "5.2.2 mailbox full", SOFT),
        ("RCPT", 552, "over quota", SOFT),
        ("RCPT", 550, "no such user here", HARD),
        ("RCPT", 551, "user not local", HARD),
        ("RCPT", 553, "mailbox name not allowed", HARD),
        ("RCPT", 554, "5.7.1 relay access denied", POLICY),
        ("RCPT", 554, "blocked", POLICY),
        ("END", 554, "5.7.1 message content rejected", ""),
        ("END", 550, "rejected", ""),
        ("END", 552, "message too big", ""),
        ("RCPT", 550, "5.0.0 refused", HARD),  # 5.0.0 says nothing more: the basic code speaks
        ("RCPT", 554, "5.0.0 refused", POLICY),
        ("RCPT", 451, "4.2.0 try later", ""),
        ("", 553, "not sent: 'x' is not a usable envelope address", ""),
    ],
)
def test_which_refusals_are_the_readers(stage: str, code: int, text: str, kind: str) -> None:
    assert judge(Outcome(code, text, stage=stage)) == kind
