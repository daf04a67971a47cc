"""The send loop driven directly: a real delivery record on tmp_path, a real SMTP server, its own clock."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import MappingProxyType

import pytest

from mailer.campaign import Clock, Feedback, RateLimiter, Report, SendOptions, run_send, run_share
from mailer.config import Settings
from mailer.errors import Interrupted, MailerError
from mailer.ledger import Ledger
from mailer.message import make_factory
from mailer.post import load_post
from mailer.render import render_issue
from mailer.stopping import StopSignals
from mailer.subscribers import Subscriber
from mailer.transport import make_transport
from tests.record import delivery
from tests.smtpd import SMTPServer

ISSUE = "2026-02-09"


class FakeClock(Clock):
    """A clock whose waits pass at once: time moves only when the loop waits on it."""

    def __init__(self) -> None:
        self.time = 1e9  # far from time.monotonic(): a mix-up of the two clocks shows
        self.waits: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self.time

    def wait(self, seconds: float, stop: threading.Event) -> None:
        with self._lock:
            self.waits.append(seconds)
            self.time += seconds


def subscriber(email: str, line: int) -> Subscriber:
    return Subscriber(email, "", MappingProxyType({"email": email}), line)


def test_the_loop_sends_records_and_retries_on_its_own_clock(
    smtp_server: SMTPServer, smtp_settings: Settings, post: Path, tmp_path: Path
) -> None:
    smtp_server.fail("bo@example.com", 451, times=1)  # deferred once, then taken
    smtp_server.fail("cy@example.com", 550)  # refused for good
    issue = render_issue(load_post(post), smtp_settings)
    clock = FakeClock()
    subscribers = [subscriber(f"{who}@example.com", n) for n, who in enumerate(("ann", "bo", "cy"), 2)]
    with Ledger(tmp_path / "record.db") as ledger:
        ledger.start_issue(ISSUE, issue.post.content_hash, issue.subject)
        report = run_send(
            issue_id=ISSUE,
            factory=make_factory(issue, smtp_settings),
            transport=make_transport(smtp_settings),
            subscribers=subscribers,
            ledger=ledger,
            options=SendOptions(connections=2, retry_delay=3600.0, max_attempts=3),
            feedback=Feedback(),
            signals=StopSignals(),
            clock=clock,
            check_lock=lambda: None,  # a SQLite record: its lock is a file lock, never lost
        )
        assert (report.sent, report.retries, report.failed_permanent, report.pending) == (2, 1, 1, 0)
        # the hour's retry delay went by on the loop's clock, not in real time
        assert clock.now() - 1e9 >= 3600.0 and sum(clock.waits) >= 3600.0
        received = sorted(rcpt for m in smtp_server.messages for rcpt in m.rcpt_tos)
        assert received == ["ann@example.com", "bo@example.com"]  # one copy each
        # the recorder thread wrote through its own connection; the loop's ledger reads it
        bo = delivery(ledger, ISSUE, "bo@example.com")
        assert bo is not None and (bo.state, bo.attempts, bo.last_code) == ("sent", 2, 250)
        cy = delivery(ledger, ISSUE, "cy@example.com")
        assert cy is not None and (cy.state, cy.attempts, cy.last_code) == ("failed", 1, 550)
        assert ledger.status(ISSUE).counts == {"sent": 2, "failed": 1}
        assert not ledger.is_complete(ISSUE, "")  # one reader failed: the run is not complete


class _SignalOnce(Feedback):
    """Raises SIGTERM in the loop's own thread at its third outcome, then goes on: what a signal's arrival
    at any point of the loop looks like to it."""

    def __init__(self) -> None:
        self.outcomes = 0
        self.went_on = False

    def progress(self, report: Report) -> None:
        self.outcomes += 1
        if self.outcomes == 3:
            signal.raise_signal(signal.SIGTERM)  # the C handler runs now; Python's at the next call
            _a_call()
            self.went_on = True


def _a_call() -> None:
    """Any Python call: the interpreter runs a pending signal handler on entering it."""


def test_a_signal_during_the_loop_is_raised_at_the_loop_s_next_step_not_where_it_lands(
    smtp_server: SMTPServer, smtp_settings: Settings, post: Path, tmp_path: Path
) -> None:
    # The handler used to raise Interrupted wherever the main thread was. Landing inside a queue's
    # `with lock:` after the acquire, it left the lock held, and the loop's shutdown waited on it for ever
    # (a `mailer worker` hung after SIGTERM). Now it is noted and the loop raises it at a step of its own.
    issue = render_issue(load_post(post), smtp_settings)
    subscribers = [subscriber(f"reader{n}@example.com", n) for n in range(2, 42)]
    feedback = _SignalOnce()
    signals = StopSignals()
    with Ledger(tmp_path / "record.db") as ledger, signals.install():
        ledger.start_issue(ISSUE, issue.post.content_hash, issue.subject)
        with pytest.raises(Interrupted) as stopped:
            run_send(
                issue_id=ISSUE,
                factory=make_factory(issue, smtp_settings), transport=make_transport(smtp_settings),
                subscribers=subscribers, ledger=ledger, options=SendOptions(connections=2),
                feedback=feedback, signals=signals, check_lock=lambda: None,
            )  # fmt: skip
        assert stopped.value.signum == signal.SIGTERM
        assert feedback.went_on  # the handler did not raise inside the loop's own code
        sent = sorted(rcpt for m in smtp_server.messages for rcpt in m.rcpt_tos)
        assert 3 <= len(sent) < 40  # stopped after the messages in flight
        assert ledger.status(ISSUE).counts == {"sent": len(sent)}  # each one recorded
        assert not signals.polled  # outside the loop a signal raises again (the CLI's other steps)


class _ShareOfAGoneRecord:
    """A worker's share (campaign.Share) whose record goes away once `gone` is set: its writes, as a batch
    is settled, raise what a lost database connection raises."""

    def __init__(self) -> None:
        self.gone = False
        self.settled_after = 0

    def holds(self) -> str:
        return ""

    def settled(self, sub: Subscriber, counted: str, reason: str = "") -> None:
        if self.gone:
            self.settled_after += 1
            raise MailerError("postgresql://record: lost the connection to the server")

    def retried(self, sub: Subscriber) -> None:
        """No retry in this test."""

    def given_up(self, sub: Subscriber) -> bool:
        return False

    def tried(self, sub: Subscriber) -> int:
        return 0

    def pace(self) -> RateLimiter:
        return RateLimiter(0, Clock())


class _SignalThenGone(_SignalOnce):
    """SIGTERM at the third outcome, and the share's record gone from then on."""

    def __init__(self, share: _ShareOfAGoneRecord) -> None:
        super().__init__()
        self.share = share

    def progress(self, report: Report) -> None:
        if self.outcomes == 2:
            self.share.gone = True
        super().progress(report)


def test_a_share_whose_record_goes_away_while_the_loop_stops_still_counts_every_outcome(
    smtp_server: SMTPServer, smtp_settings: Settings, post: Path, tmp_path: Path
) -> None:
    # a worker stopped by its coordinator's SIGTERM drains the outcomes of its messages in flight; the first
    # settled there wrote to a record that had gone away, and its MailerError cut the drain short: the
    # outcomes after it went uncounted (among them, in a real send, the messages accepted that the record
    # does not hold, whose count the worker says for the rerun), and the stop said the record's error,
    # not the signal
    issue = render_issue(load_post(post), smtp_settings)
    subscribers = [subscriber(f"reader{n}@example.com", n) for n in range(2, 42)]
    share = _ShareOfAGoneRecord()
    signals = StopSignals()
    report = Report(ISSUE)
    with Ledger(tmp_path / "record.db") as ledger, signals.install():
        ledger.start_issue(ISSUE, issue.post.content_hash, issue.subject)
        with pytest.raises(Interrupted):
            run_share(
                issue_id=ISSUE, factory=make_factory(issue, smtp_settings),
                transport=make_transport(smtp_settings), batches=[subscribers], ledger=ledger,
                options=SendOptions(connections=4), feedback=_SignalThenGone(share), signals=signals,
                share=share, report=report, run=None,
            )  # fmt: skip
    delivered = sum(len(m.rcpt_tos) for m in smtp_server.messages)
    assert share.settled_after >= 1
    assert report.sent == delivered  # every message the server took, counted
