"""Which refusals during a send are about the reader: the bounces a send sees itself, at RCPT or the end.

A 5xx reply to one recipient may say the address is dead, or that the server will not take mail from us;
only the first is a reason to stop mailing the reader. transport.refuses_session has already stopped the
send on every reply about the session (5.3.x, 5.5.x, 5.6.x, 5.1.7/5.1.8, most 5.7.x). Of the rest, by the
enhanced status code (RFC 3463) and the stage it answers:

- hard (suppress at once): 5.1.x (the address: no such user, no such domain), 5.2.x (the mailbox: disabled,
  gone) and 5.4.x (no route to the recipient's domain), at RCPT or the end of the message; a bare 550, 551
  or 553 (no enhanced code: "no such user", "user not local", "mailbox name not allowed") at RCPT.
- soft (counted like a 4.x.x bounce): 5.2.2 (mailbox full) anywhere, a bare 552 at RCPT.
- policy: 5.7.1, 5.7.2, 5.7.17, 5.7.18 and a bare 554 at RCPT ("not authorised", "relay access denied",
  "blocked"). About the reader only when the same send had other recipients accepted: a server that
  refuses everyone so refuses us (a relay that does not relay for this client or sender), and a send
  that sees only such refusals stops early with nothing recorded against any reader.
- not the reader's: everything else, such as a 5.7.x or a bare 5xx at the end of the message (the
  content was refused, not the address), or mailer's own "not sent" (553 with no stage).

An enhanced code of 5.0.0 ("other or undefined") counts as none: the basic code decides.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from .bounces import HARD, SOFT, Bounce
from .subscribers import dedupe_key
from .transport import Outcome

POLICY = "policy"
_ENHANCED = re.compile(r"\s*([2-5])\.(\d{1,3})\.(\d{1,3})(?!\d)")


def judge(outcome: Outcome) -> str:
    """HARD, SOFT, POLICY, or '' when a permanent refusal is not about the reader."""
    if not outcome.permanent or outcome.stage not in ("RCPT", "END"):
        return ""
    enhanced = _ENHANCED.match(outcome.text)
    if enhanced is not None and enhanced[1] == "5" and enhanced[2] != "0":
        subject, detail = int(enhanced[2]), int(enhanced[3])
        if (subject, detail) == (2, 2):
            return SOFT
        if subject == 1 and detail in (7, 8):  # the sender's address
            return ""
        if subject in (1, 2, 4):
            return HARD
        if subject == 7 and outcome.stage == "RCPT":
            return POLICY
        return ""
    if outcome.stage != "RCPT":
        return ""
    return {550: HARD, 551: HARD, 553: HARD, 552: SOFT, 554: POLICY}.get(outcome.code, "")


def status_code(outcome: Outcome) -> str:
    """The enhanced status code the reply starts with ('5.1.1'), or ''."""
    enhanced = _ENHANCED.match(outcome.text)
    return ".".join(enhanced.groups()) if enhanced is not None else ""


def refusal_bounce(issue_id: str, email: str, outcome: Outcome, kind: str) -> Bounce:
    """The Bounce of a refusal during the send; one per issue and reader (a rerun's refusal counts once)."""
    return Bounce(
        email=email,
        kind=kind,
        status=status_code(outcome),
        diagnostic=str(outcome),
        issue_id=issue_id,
        source="smtp",
        report_id=f"smtp:{issue_id}:{dedupe_key(email)}",
        at=datetime.now(UTC),
    )
