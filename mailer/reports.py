"""Read one message from the bounce mailbox: what it reports, about whom, in which server's words.

A message there is one of: a delivery status notification (RFC 3464: multipart/report with a
message/delivery-status part, what Postfix, Gmail, Outlook, Amazon SES and most servers send), a bounce in a
server's own older layout (Exim's, qmail's, Yahoo's, Exchange 2003's plain text), a complaint (an ARF report,
RFC 5965), an auto-reply (out of office, vacation), or anything else a person mailed to the address.

The standard formats are read here, field by field, because the status code and diagnostic they carry decide
what happens to an address. The non-standard layouts are left to flufl.bounce, GNU Mailman's detectors (its
recognition on the fixtures of tests/bounces/ is in docs/bounces.md): it finds the addresses and whether
their failure is permanent; the status code is then looked for in the text next to each address. A message
not from a mail system (an auto-reply, a person) is never handed to those heuristics, so an out-of-office
reply that quotes an address cannot suppress it.

This module only reads; who the report is about (VERP, the quoted Message-ID) is decided by the caller.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from .bounces import COMPLAINT, HARD, SOFT
from .headers import one_line

DSN = "dsn"  # an RFC 3464 report
BOUNCE = "bounce"  # a mail system's own layout, read by flufl.bounce
ARF = "arf"  # a complaint report (RFC 5965)
AUTO_REPLY = "auto-reply"  # out of office, vacation: not a bounce
NOTICE = "notice"  # a DSN that reports no failure (delivered, relayed, expanded)
OTHER = "other"  # not a report at all (a person wrote, or a mail system's message no detector read)

MAX_READ = 4 << 20  # bytes of a message read: the report parts come first, a returned original may be huge
MAX_PARTS = 200  # MIME parts looked at; a report has 2 or 3, a hostile tree millions
MAX_DEPTH = 8  # nesting of multiparts and attached messages looked into
MAX_RECIPIENTS = 10_000  # per-recipient blocks read from one DSN
MAX_DIAGNOSTIC = 300  # characters of a server's words kept

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"\b([245])\d\d\b")
_DAEMON = re.compile(
    r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon|mdaemon|mail\.delivery|maildelivery|bounces?|"
    r"microsoftexchange[0-9a-f]*|double-bounce|nobody)$",
    re.IGNORECASE,
)
_DAEMON_NAME = re.compile(r"mail delivery|mailer.daemon|postmaster|microsoft outlook|mail system", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (status notification|failure|failed|has failed)|failure notice|"
    r"returned mail|mail delivery failed|could not be delivered|delivery problem|non.?deliver",
    re.IGNORECASE,
)
_AUTO_SUBJECT = re.compile(
    r"out of (the )?office|automatic reply|auto.?reply|autoreply|vacation|away from|abwesend|absence", re.I
)


@dataclass(frozen=True, slots=True)
class Failure:
    """What a report says about one recipient."""

    email: str  # as the report names it (the original recipient when it gives one)
    kind: str  # HARD, SOFT or COMPLAINT
    status: str  # '5.1.1'; '' when the report has none
    diagnostic: str  # the server's words, one line


@dataclass(frozen=True)
class Report:
    """One message of the bounce mailbox, read."""

    what: str  # DSN, BOUNCE, ARF, AUTO_REPLY, NOTICE or OTHER
    failures: tuple[Failure, ...]
    report_id: str  # the report's own Message-ID, or a hash of its head when it has none
    at: datetime  # its Date, else when it was read
    sent_to: tuple[str, ...]  # where it was delivered (Delivered-To, X-Original-To, To): the VERP address
    original_ids: tuple[str, ...]  # Message-IDs of the message it is about (quoted, In-Reply-To, References)
    return_paths: tuple[str, ...]  # that message's envelope sender, as the report quotes it


class Unreadable(Exception):
    """The message cannot be read as a report; its text says why, in one line."""


def read_report(raw: bytes, *, now: datetime | None = None) -> Report:
    """Read one message (its first MAX_READ bytes); Unreadable when it cannot be parsed at all."""
    raw = raw[:MAX_READ]
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        parts = list(_walk(msg))
    except (RecursionError, MemoryError):
        raise Unreadable("its MIME structure is nested too deep to read") from None
    except Exception as exc:  # the stdlib parser's failures are not a documented set
        raise Unreadable(f"not a parseable message ({type(exc).__name__})") from None
    if not msg.keys():
        raise Unreadable("no header lines: not a mail message")
    at = _date(msg.get("Date")) or now or datetime.now(UTC)
    report_id = _message_id(msg.get("Message-ID")) or "sha256:" + hashlib.sha256(raw[:65536]).hexdigest()[:32]
    sent_to = _sent_to(msg)
    originals = _original_ids(msg, parts)
    return_paths = _return_paths(parts)

    def report(what: str, failures: Iterable[Failure] = ()) -> Report:
        return Report(what, tuple(failures), report_id, at, sent_to, originals, return_paths)

    feedback = [p for p in parts if p.get_content_type() == "message/feedback-report"]
    if feedback:
        return report(ARF, _complaints(feedback[0], parts))
    statuses = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    if statuses:
        failures = _dsn_failures(statuses)
        return report(DSN if failures else NOTICE, failures)
    if _from_mail_system(msg):
        failures = _flufl_failures(msg, parts)
        return report(BOUNCE, failures) if failures else report(OTHER)
    if _auto_reply(msg):
        return report(AUTO_REPLY)
    return report(OTHER)


# --- the standard formats ---------------------------------------------------------------------------------


def _dsn_failures(statuses: list[Message]) -> list[Failure]:
    failures: list[Failure] = []
    for part in statuses:
        for block in _field_blocks(part):
            if len(failures) >= MAX_RECIPIENTS:
                return failures
            address = _typed_address(block.get("Original-Recipient")) or _typed_address(
                block.get("Final-Recipient")
            )
            if not address:
                continue  # the per-message block (Reporting-MTA, Arrival-Date)
            action = _text(block.get("Action")).lower().split(" ")[0]
            diagnostic = _diagnostic(block.get("Diagnostic-Code"))
            status = _status(_text(block.get("Status"))) or _status(diagnostic)
            kind = _kind(action, status, diagnostic)
            if kind:
                failures.append(Failure(address, kind, status, diagnostic))
    return failures


def _kind(action: str, status: str, diagnostic: str) -> str | None:
    """HARD, SOFT, or None for a recipient the message reached (delivered, relayed, expanded)."""
    if action in ("delivered", "relayed", "expanded"):
        return None
    if action == "delayed":
        return SOFT
    klass = status[:1] or (m.group(1) if (m := _REPLY_CODE.search(diagnostic)) else "")
    if klass == "2":
        return None
    if klass == "4" or status == "5.2.2":  # 5.2.2 is a full mailbox: it may empty (RFC 3463 calls it so)
        return SOFT
    return HARD  # 'failed' with 5.x.x, or with no code at all


def _complaints(feedback: Message, parts: list[Message]) -> list[Failure]:
    fields = next(iter(_field_blocks(feedback)), Message())
    kind = _text(fields.get("Feedback-Type")).lower() or "abuse"
    if kind in ("not-spam",):
        return []
    recipients = [_bare(v) for v in fields.get_all("Original-Rcpt-To") or []]
    if not any(recipients):  # redacted: the quoted message's To may still name the reader
        for part in parts:
            if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
                inner = _inner(part)
                if inner is not None:
                    recipients = [a for _, a in getaddresses(inner.get_all("To") or []) if "@" in a]
                    break
    agent = _text(fields.get("User-Agent"))
    words = f"feedback-type {kind}" + (f" from {agent}" if agent else "")
    found = [r for r in dict.fromkeys(recipients) if r] or [""]
    return [Failure(r, COMPLAINT, "", words) for r in found]


# --- the non-standard layouts: flufl.bounce ---------------------------------------------------------------


def _flufl_failures(msg: Message, parts: list[Message]) -> list[Failure]:
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector that chokes on a hostile message: nothing recognised, not a crash
        return []
    text = "\n".join(_part_text(p) for p in parts if p.get_content_maintype() == "text")[:200_000]
    failures = []
    for raw, kind in [
        *((a, HARD) for a in sorted(permanent)),
        *((a, SOFT) for a in sorted(temporary - permanent)),
    ]:
        address = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        address = address.strip("<> ")
        status, diagnostic = _near(text, address)
        if kind == HARD and status.startswith("4"):
            kind = SOFT
        elif status == "5.2.2":
            kind = SOFT
        failures.append(Failure(address, kind, status, diagnostic))
    return failures


def _near(text: str, address: str) -> tuple[str, str]:
    """The status code and the server's words after an address in a bounce's text.

    The address may come up more than once (a summary line, then the failure): the first mention followed
    by a status code wins, else the first followed by a reply code, else the last mention.
    """
    found: list[tuple[str, str]] = []
    lower, key = text.lower(), address.lower()
    at = lower.find(key)
    while at >= 0 and len(found) < 20:
        after = text[at + len(key) : at + len(key) + 600]
        cut = re.split(r"\n[ \t]*\n(?![ \t])|\n--- |\n------ ", after, maxsplit=1)[0]
        found.append((_status(cut), one_line(cut.strip(" >:\n")).strip()[:MAX_DIAGNOSTIC]))
        at = lower.find(key, at + len(key))
    for status, words in found:
        if status:
            return status, words
    return next((f for f in found if _REPLY_CODE.search(f[1])), found[-1] if found else ("", ""))


# --- what kind of sender ----------------------------------------------------------------------------------


def _from_mail_system(msg: Message) -> bool:
    """Whether a mail server, not a person, sent it: its From, a failed-recipients header, its subject."""
    if msg.get("X-Failed-Recipients"):
        return True
    for name, address in getaddresses([_text(v) for v in msg.get_all("From") or []]):
        if _DAEMON.match(address.partition("@")[0]) or _DAEMON_NAME.search(name):
            return True
    return bool(
        _BOUNCE_SUBJECT.search(_text(msg.get("Subject"))) and not _text(msg.get("Return-Path")).strip("<> ")
    )


def _auto_reply(msg: Message) -> bool:
    """RFC 3834's Auto-Submitted, the de-facto X-Autoreply and Precedence, an out-of-office subject."""
    submitted = _text(msg.get("Auto-Submitted")).lower()
    if submitted and not submitted.startswith("no"):
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Auto-Response-Suppress"):
        return True
    if _text(msg.get("Precedence")).lower() in ("bulk", "auto_reply", "junk", "list"):
        return True
    return bool(_AUTO_SUBJECT.search(_text(msg.get("Subject"))))


# --- small readers ----------------------------------------------------------------------------------------


def _walk(msg: Message, depth: int = 0, seen: list[int] | None = None) -> Iterator[Message]:
    """Every part, depth-first, within MAX_PARTS and MAX_DEPTH (attached messages included)."""
    seen = [0] if seen is None else seen
    seen[0] += 1
    if seen[0] > MAX_PARTS:
        return
    yield msg
    if depth >= MAX_DEPTH or not msg.is_multipart():
        return
    if msg.get_content_type() == "message/delivery-status":
        return  # its payload is a list of field blocks, not parts
    payload = msg.get_payload()
    for part in payload if isinstance(payload, list) else []:
        if isinstance(part, Message):
            yield from _walk(part, depth + 1, seen)


def _field_blocks(part: Message) -> list[Message]:
    """The header-like blocks of a delivery-status or feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    data = part.get_payload(decode=True)
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [
        email.message_from_string(b + "\n", policy=email.policy.compat32) for b in blocks[:MAX_RECIPIENTS]
    ]


def _inner(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    if isinstance(payload, str):
        return email.message_from_string(payload, policy=email.policy.compat32)
    return None


def _original_ids(msg: Message, parts: list[Message]) -> tuple[str, ...]:
    """Message-IDs of the message a report is about: the quoted copy's first, then the report's pointers."""
    ids: list[str] = []
    for part in parts:
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            inner = _inner(part)
            if inner is not None:
                ids.append(_message_id(inner.get("Message-ID")))
        elif part.get_content_type() == "message/delivery-status":
            for block in _field_blocks(part)[:1]:
                ids.append(_message_id(block.get("X-Original-Message-ID")))
    if not any(ids):  # a plain-text bounce quotes the message inline, after its own text
        for part in parts[:3]:
            if part.get_content_type() == "text/plain":
                found = re.search(r"(?im)^message-id:\s*(<[^>\s]{3,250}>)", _part_text(part))
                ids.append(found.group(1) if found else "")
    for name in ("In-Reply-To", "References"):
        ids += re.findall(r"<[^<>\s]{3,250}>", _text(msg.get(name)))
    return tuple(dict.fromkeys(i for i in ids if i))


def _return_paths(parts: list[Message]) -> tuple[str, ...]:
    """The reported message's envelope sender: ARF's Original-Mail-From, Postfix's X-Postfix-Sender, the
    quoted copy's Return-Path."""
    found: list[str] = []
    for part in parts:
        kind = part.get_content_type()
        if kind in ("message/feedback-report", "message/delivery-status"):
            for block in _field_blocks(part)[:1]:
                found += [
                    _bare(block.get("Original-Mail-From")),
                    _typed_address(block.get("X-Postfix-Sender")),
                ]
        elif kind in ("message/rfc822", "text/rfc822-headers"):
            inner = _inner(part)
            if inner is not None:
                found.append(_bare(inner.get("Return-Path")))
    return tuple(dict.fromkeys(a for a in found if a))


def _sent_to(msg: Message) -> tuple[str, ...]:
    found: list[str] = []
    for name in ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To"):
        for _, address in getaddresses([_text(v) for v in msg.get_all(name) or []]):
            if "@" in address:
                found.append(address)
    return tuple(dict.fromkeys(found))


def _part_text(part: Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _text(value: object) -> str:
    """A header value as one line of text, whatever bytes it came in (non-UTF-8 octets become U+FFFD)."""
    if value is None:
        return ""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # compat32 keeps undecodable octets as surrogates
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return one_line(text)


def _typed_address(value: object) -> str:
    """'rfc822; someone@example.com' -> the address; '' for another address type or none."""
    text = _text(value)
    kind, sep, rest = text.partition(";")
    if not sep:
        rest, kind = text, "rfc822"
    if kind.strip().lower() not in ("rfc822", "utf-8"):
        return ""
    return _bare(rest)


def _bare(value: object) -> str:
    address = _text(value).strip().strip("<>").strip()
    return address if "@" in address and " " not in address else ""


def _status(text: str) -> str:
    found = _STATUS.search(text)
    return ".".join(found.groups()) if found else ""


def _diagnostic(value: object) -> str:
    text = _text(value)
    kind, sep, rest = text.partition(";")
    words = rest.strip() if sep and " " not in kind.strip() else text
    return words[:MAX_DIAGNOSTIC]


def _message_id(value: object) -> str:
    found = re.search(r"<[^<>\s]{3,250}>", _text(value))
    return found.group(0) if found else ""


def _date(value: object) -> datetime | None:
    text = _text(value)
    if not text:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
