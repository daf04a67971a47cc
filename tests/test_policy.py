"""The bounce policy on a real record: who is suppressed, why, and that a report read twice counts once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailer.bounces import COMPLAINT, HARD, SOFT, Bounce
from mailer.config import Settings
from mailer.engine import Location
from mailer.ledger import Ledger
from mailer.policy import COMPLAINED, HARD_BOUNCE, SOFT_BOUNCES, record_bounces

DAY1 = datetime(2026, 2, 9, 6, 0, tzinfo=UTC)
SETTINGS = Settings(soft_bounce_limit=3, soft_bounce_days=14)


@pytest.fixture
def ledger(record_at: Location) -> Ledger:
    """The policy's tests run on both engines."""
    with Ledger(record_at) as opened:
        yield opened  # type: ignore[misc]


def bounce(
    kind: str,
    *,
    email: str = "ann@example.org",
    issue: str | None = "2026-02-09",
    report: str = "r1",
    at: datetime = DAY1,
    status: str = "",
) -> Bounce:
    status = status or {HARD: "5.1.1", SOFT: "4.2.2", COMPLAINT: ""}[kind]
    return Bounce(email, kind, status, f"said {status}", issue, "dsn", report, at)


def suppression(ledger: Ledger, email: str = "ann@example.org"):  # type: ignore[no-untyped-def]
    found = [s for s in ledger.suppressions() if s.email == email]
    return found[0] if found else None


def test_a_hard_bounce_suppresses_at_once_with_its_issue_status_and_diagnostic(ledger: Ledger) -> None:
    done = record_bounces(ledger, [bounce(HARD, email="Ann@Example.org")], SETTINGS)
    assert (done.new, done.repeated, done.suppressed) == (1, 0, ["Ann@Example.org"])
    s = suppression(ledger)
    assert s is not None
    assert (s.source, s.reason, s.issue_id, s.status, s.diagnostic) == (
        "dsn",
        HARD_BOUNCE,
        "2026-02-09",
        "5.1.1",
        "said 5.1.1",
    )
    assert ledger.is_suppressed("ann@example.org")


def test_every_complaint_suppresses(ledger: Ledger) -> None:
    record_bounces(ledger, [bounce(COMPLAINT)], SETTINGS)
    s = suppression(ledger)
    assert s is not None and s.reason == COMPLAINED


def test_a_report_read_twice_counts_once(ledger: Ledger) -> None:
    first = record_bounces(ledger, [bounce(SOFT, report="r1")], SETTINGS)
    again = record_bounces(ledger, [bounce(SOFT, report="r1"), bounce(SOFT, report="r1")], SETTINGS)
    assert (first.new, first.repeated) == (1, 0)
    assert (again.new, again.repeated) == (0, 2)
    # one report naming two readers (a multi-recipient DSN) is two rows
    both = record_bounces(
        ledger, [bounce(HARD, report="r9"), bounce(HARD, report="r9", email="bo@x.org")], SETTINGS
    )
    assert both.new == 2 and both.suppressed == ["ann@example.org", "bo@x.org"]
    # a hard bounce after the suppression is kept, and the first reason stays
    later = record_bounces(ledger, [bounce(COMPLAINT, report="r10")], SETTINGS)
    assert later.new == 1 and later.suppressed == []
    s = suppression(ledger)
    assert s is not None and s.reason == HARD_BOUNCE


def test_soft_bounces_suppress_after_n_different_messages_within_m_days(ledger: Ledger) -> None:
    issues = ["2026-02-09", "2026-02-10", "2026-02-11"]
    # three delay notices about one message are one soft-bouncing message
    for n in range(3):
        record_bounces(ledger, [bounce(SOFT, report=f"same-{n}", at=DAY1 + timedelta(hours=n))], SETTINGS)
    assert suppression(ledger) is None
    # a second message: two of three
    record_bounces(ledger, [bounce(SOFT, issue=issues[1], report="b", at=DAY1 + timedelta(days=5))], SETTINGS)
    assert suppression(ledger) is None
    # a third, but more than 14 days after the first: still two in any 14 days
    late = DAY1 + timedelta(days=14, hours=3)
    record_bounces(ledger, [bounce(SOFT, issue=issues[2], report="c", at=late)], SETTINGS)
    assert suppression(ledger) is None
    # a fourth message within 14 days of the second and third: three
    done = record_bounces(
        ledger, [bounce(SOFT, issue="2026-02-20", report="d", at=DAY1 + timedelta(days=16))], SETTINGS
    )
    assert done.suppressed == ["ann@example.org"]
    s = suppression(ledger)
    assert s is not None and (s.reason, s.issue_id, s.status) == (SOFT_BOUNCES, "2026-02-20", "4.2.2")


def test_soft_bounces_read_out_of_order_count_the_same(ledger: Ledger) -> None:
    record_bounces(ledger, [bounce(SOFT, issue="c", report="c", at=DAY1 + timedelta(days=10))], SETTINGS)
    record_bounces(ledger, [bounce(SOFT, issue="b", report="b", at=DAY1 + timedelta(days=5))], SETTINGS)
    assert suppression(ledger) is None
    done = record_bounces(ledger, [bounce(SOFT, issue="a", report="a", at=DAY1)], SETTINGS)  # the oldest last
    assert done.suppressed == ["ann@example.org"]


def test_the_soft_bounce_settings_decide(ledger: Ledger) -> None:
    strict = Settings(soft_bounce_limit=1, soft_bounce_days=1)
    done = record_bounces(ledger, [bounce(SOFT, report="x")], strict)
    assert done.suppressed == ["ann@example.org"]


def test_a_failing_batch_records_nothing(ledger: Ledger) -> None:
    naive = Bounce("bo@x.org", HARD, "5.1.1", "", None, "dsn", "r2", datetime(2026, 2, 9))  # no time zone
    with pytest.raises(ValueError, match="time zone"):
        record_bounces(ledger, [bounce(HARD, report="r1"), naive], SETTINGS)
    assert suppression(ledger) is None
    assert record_bounces(ledger, [bounce(HARD, report="r1")], SETTINGS).new == 1


def test_a_removed_suppression_starts_the_soft_bounce_count_afresh(ledger: Ledger) -> None:
    days_ago = datetime.now(UTC) - timedelta(days=3)
    for n, issue in enumerate(["a", "b", "c"]):
        at = days_ago + timedelta(days=n)
        record_bounces(ledger, [bounce(SOFT, issue=issue, report=issue, at=at)], SETTINGS)
    assert suppression(ledger) is not None
    assert ledger.unsuppress("ann@example.org")  # the mailbox was full; the reader says it is emptied now
    # one more soft bounce within 14 days of the three: the three were forgiven, so this is one of one
    fourth = bounce(SOFT, issue="d", report="d", at=datetime.now(UTC) + timedelta(minutes=1))
    assert record_bounces(ledger, [fourth], SETTINGS).suppressed == []
    # two more messages after the removal make three: suppressed again
    for issue in ("e", "f"):
        later = bounce(SOFT, issue=issue, report=issue, at=datetime.now(UTC) + timedelta(minutes=2))
        done = record_bounces(ledger, [later], SETTINGS)
    assert done.suppressed == ["ann@example.org"]
