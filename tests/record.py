"""Read one delivery of the record with plain SQL, as a person with sqlite3 or psql would: the tests' view.

Production reads the record per batch (`Ledger.states`) and per issue (`Ledger.statuses`); a test that wants
one row's attempts, code and reply asks the file itself rather than keeping a method in mailer for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mailer.engine import Location
from mailer.ledger import Ledger
from mailer.subscribers import dedupe_key
from tests.pg import rows


@dataclass(frozen=True)
class Delivery:
    """Where one subscriber stands for one issue, as the deliveries table has it."""

    state: str
    attempts: int
    last_code: int | None
    last_reply: str
    updated_at: datetime

    def outcome(self) -> tuple[str, int, int | None, str]:
        """All but when: what two ways of writing the same outcomes must both leave."""
        return self.state, self.attempts, self.last_code, self.last_reply


def delivery(ledger: Ledger, issue_id: str, email: str) -> Delivery | None:
    """The row of `email` (in its stored form) for `issue_id` at the ledger's destination; None if none."""
    found = rows(
        ledger.path,
        "SELECT state, attempts, last_code, last_reply, updated_at FROM deliveries"
        " WHERE issue_id = ? AND destination = ? AND email = ?",
        (issue_id, ledger.destination, dedupe_key(email)),
    )
    if not found:
        return None
    state, attempts, code, reply, updated = found[0]
    return Delivery(str(state), int(attempts), code, str(reply), datetime.fromisoformat(str(updated)))


def ann_mailed(record: Location) -> None:
    """Make `record` (a SQLite file or PostgreSQL database) hold one issue, 2026-02-09, sent to
    ann@example.org: the least a record the tests upgrade, copy or attack must hold."""
    with Ledger(record) as ledger:
        ledger.start_issue("2026-02-09", "hash-1", "Monday")
        ledger.record_outcomes("2026-02-09", [("ann@example.org", "sent", 250, "ok")])
