"""Bounce and complaint rates per issue, held to the levels providers enforce.

A provider judges a sender by the share of its messages that bounce or are marked as spam: Amazon SES puts
an account under review at a 5% bounce rate (and may pause it at 10%) and at a 0.1% complaint rate (0.5%);
Gmail and Yahoo require bulk senders to keep the spam rate their users report under 0.3%, and ask for
under 0.1%. The rates here are per issue over SMTP: hard bounces (suppressing ones, from every source) and
complaints over the messages the server took or refused; soft bounces are counted but not in the rate.
`bounce_rate_warn` and `complaint_rate_warn` (percent) say when to warn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .bounces import COMPLAINT, HARD, SOFT
from .config import Settings
from .ledger import SMTP, IssueSummary

SES_BOUNCE_REVIEW = 5.0  # percent: Amazon SES puts the account under review
GMAIL_SPAM_LIMIT = 0.3  # percent: Gmail and Yahoo's most a bulk sender may reach


@dataclass(frozen=True, slots=True)
class Rates:
    """One issue's bounces and complaints against its messages."""

    issue_id: str
    mailed: int  # messages the server took, refused, or may have taken (in doubt), over SMTP
    hard: int  # addresses that bounced hard (one each, however many reports)
    soft: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        """Hard bounces per message, in percent."""
        return 100.0 * self.hard / self.mailed if self.mailed else 0.0

    @property
    def complaint_rate(self) -> float:
        """Complaints per message, in percent."""
        return 100.0 * self.complaints / self.mailed if self.mailed else 0.0

    def fields(self) -> dict[str, object]:
        """The --json form."""
        return {
            "mailed": self.mailed,
            "hard_bounces": self.hard,
            "soft_bounces": self.soft,
            "complaints": self.complaints,
            "bounce_rate": round(self.bounce_rate, 4),
            "complaint_rate": round(self.complaint_rate, 4),
        }

    def line(self) -> str:
        """One line for a person."""
        return (
            f"bounces: {self.hard} hard ({self.bounce_rate:.2f}%), {self.soft} soft;"
            f" complaints: {self.complaints} ({self.complaint_rate:.2f}%) of {self.mailed} mailed"
        )

    def warnings(self, settings: Settings) -> list[str]:
        """A line for each rate above its setting (a setting of 0 never warns)."""
        out = []
        if settings.bounce_rate_warn and self.bounce_rate > settings.bounce_rate_warn:
            out.append(
                f"{self.issue_id}: bounce rate {self.bounce_rate:.2f}% is above bounce_rate_warn"
                f" ({settings.bounce_rate_warn:g}%); Amazon SES reviews an account at {SES_BOUNCE_REVIEW:g}%:"
                " check where the list came from (docs/bounces.md)"
            )
        if settings.complaint_rate_warn and self.complaint_rate > settings.complaint_rate_warn:
            out.append(
                f"{self.issue_id}: complaint rate {self.complaint_rate:.2f}% is above complaint_rate_warn"
                f" ({settings.complaint_rate_warn:g}%); Gmail and Yahoo block bulk senders above"
                f" {GMAIL_SPAM_LIMIT:g}%: mail only people who asked for it, and make leaving easy"
            )
        return out


def issue_rates(summary: IssueSummary, counts: Mapping[str, int]) -> Rates:
    """The rates of one issue from its record (SMTP) and its bounce counts by kind."""
    mailed = (
        sum(summary.count(s) for s in ("sent", "failed", "sending")) if summary.destination == SMTP else 0
    )
    return Rates(summary.issue_id, mailed, counts.get(HARD, 0), counts.get(SOFT, 0), counts.get(COMPLAINT, 0))
