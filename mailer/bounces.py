"""Reports that a message did not arrive, or was unwanted: the one shape every source of them is read into.

Delivery status notifications and complaint (ARF) reports read from a mailbox, ESP webhooks received by
`mailer serve`, and recipients refused for good during a send all become `Bounce` values, so one policy
decides who is suppressed, and every suppression can say which report, issue and server reply caused it.

The calls every source uses:

- `policy.record_bounces(ledger, bounces, settings) -> policy.Recorded`: keeps each report (idempotent by
  (report_id, address): a report read twice counts once) and suppresses by the policy; one transaction.
- `envelope.from_return_path(ledger, settings, keyring, address) -> Recipient | None`: the (issue_id, email)
  a VERP address `bounce+TOKEN@domain` names; None when the token's signature is wrong (a forged bounce) or
  no bounce_address is set. `keyring = keymarks.reading_keyring(settings, ledger, console)`.
- `envelope.from_message_id(ledger, message_id) -> Recipient | None`: the same from a Message-ID a DSN
  quotes, for sites without a bounce address (unsigned: anyone who saw the message can quote it).
- `envelope.ReturnPaths(bounce_address, keyring).address(message_tag(issue_id, email))`: the encoder the
  send uses (MessageFactory.envelope_sender).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

HARD = "hard"  # 5.x.x, or a recipient refused at RCPT with a recipient-specific code: suppress at once
SOFT = "soft"  # 4.x.x, a delay or a full mailbox: suppress only after several within a while
COMPLAINT = "complaint"  # the reader marked the message as spam (ARF, an ESP's complaint event)
KINDS = (HARD, SOFT, COMPLAINT)


@dataclass(frozen=True, slots=True)
class Bounce:
    """One report about one message to one address."""

    email: str  # the subscriber's address the message was sent to
    kind: str  # one of KINDS
    status: str  # the enhanced status code ('5.1.1'); '' when the report gives none
    diagnostic: str  # the reporting server's own words, one line
    issue_id: str | None  # the issue the message belonged to; None when the report does not say
    source: str  # where the report came from: 'smtp', 'dsn', 'arf', 'ses', 'postmark', 'mailgun'
    report_id: str  # unique per report (a DSN Message-ID, an SNS MessageId): read twice, counted once
    at: datetime  # when it happened (the report's own date), timezone-aware

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"not a bounce kind: {self.kind!r}")
