"""The bounce policy: which reports suppress an address, recorded with the reason, once per report.

A hard bounce (5.x.x, or a recipient refused for good during the send) and every complaint suppress the
address at once. Soft bounces (4.x.x: a full mailbox, a server down for days) suppress it only when
`soft_bounce_limit` different messages bounced softly within `soft_bounce_days` days: one slow weekend is
not a dead address, and several delay notices about one message count as one. Every report is kept (the
bounces table) so rates can be computed; a report kept before (the same report_id and address) changes
nothing, so reading a mailbox or taking a webhook twice is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from .bounces import COMPLAINT, HARD, Bounce
from .config import Settings
from .ledger import Ledger

# a bounce's suppression reason (docs/bounces.md says what each means)
HARD_BOUNCE = "hard bounce"
SOFT_BOUNCES = "soft bounces"
COMPLAINED = "complaint"


@dataclass
class Recorded:
    """What record_bounces did."""

    new: int = 0  # reports kept for the first time
    repeated: int = 0  # reports kept before: nothing changed for them
    suppressed: list[str] = field(default_factory=list)  # addresses newly suppressed, in report order


def record_bounces(ledger: Ledger, bounces: Iterable[Bounce], settings: Settings) -> Recorded:
    """Keep each report and suppress the addresses the policy says to, all in one transaction."""
    done = Recorded()
    with ledger.transaction():
        for bounce in bounces:
            if not ledger.add_bounce(bounce):
                done.repeated += 1
                continue
            done.new += 1
            reason = _reason(ledger, bounce, settings)
            if reason and ledger.suppress(
                bounce.email,
                source=bounce.source,
                reason=reason,
                issue_id=bounce.issue_id,
                status=bounce.status,
                diagnostic=bounce.diagnostic,
            ):
                done.suppressed.append(bounce.email)
    return done


def _reason(ledger: Ledger, bounce: Bounce, settings: Settings) -> str:
    """The suppression this report calls for, or '' for none yet."""
    if bounce.kind == HARD:
        return HARD_BOUNCE
    if bounce.kind == COMPLAINT:
        return COMPLAINED
    days = timedelta(days=settings.soft_bounce_days)
    # every M-day window holding this report: reports may be read out of order
    nearby = ledger.soft_bounces(bounce.email, bounce.at - days, bounce.at + days)
    for start, _ in nearby:
        if start > bounce.at:
            break
        messages = {message for at, message in nearby if start <= at <= start + days}
        if len(messages) >= settings.soft_bounce_limit:
            return SOFT_BOUNCES
    return ""
