"""ESP bounce and complaint webhooks in `mailer serve`: Amazon SES (via SNS), Postmark and Mailgun.

Each ESP proves itself its own way (an SNS signature, HTTP basic auth in the URL, an HMAC); a request that
does not is refused with a 4xx and one log line and changes nothing. What a genuine one reports becomes
`Bounce` values, recorded by the same policy as bounces read from a mailbox.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import sns
from .bounces import COMPLAINT, HARD, SOFT, Bounce
from .headers import normalize_email
from .subscribers import dedupe_key
from .wsgi import TEXT

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from .config import Settings
    from .ledger import Ledger
    from .policy import Recorded
    from .servedkeys import ServedKeys

log = logging.getLogger("mailer.webhooks")

ESPS = ("ses", "postmark", "mailgun")
JSON_TYPES = {"ses": ("text/plain", "application/json"), "postmark": ("application/json",)}
JSON_TYPES["mailgun"] = JSON_TYPES["postmark"]
MAX_RECIPIENTS = 100  # SES mails at most 50 recipients a message; Postmark and Mailgun report one at a time
MAILGUN_MAX_AGE = 15 * 60  # seconds a Mailgun signature stays good; a token is taken once within it
STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")

Answer = tuple[int, str, bytes, list[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Report:
    """What an ESP said about one address, before it is matched to the message it is about."""

    email: str
    kind: str
    status: str
    diagnostic: str
    source: str
    report_id: str
    at: datetime
    return_path: str = ""  # the message's envelope sender, as the ESP reports it
    message_id: str = ""  # the message's own Message-ID header, as the ESP reports it

    def bounce(self, issue_id: str | None) -> Bounce:
        """The Bounce, once the record says which issue (if any) it is about."""
        return Bounce(
            self.email,
            self.kind,
            self.status,
            self.diagnostic,
            issue_id,
            self.source,
            self.report_id,
            self.at,
        )


class Refused(Exception):
    """A webhook request that is not genuine or not usable: its status and the one line logged for it."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


class Webhooks:
    """The /webhooks/<esp> endpoints; an ESP without settings has no endpoint (404)."""

    def __init__(self, settings: Settings, keys: ServedKeys) -> None:
        self.settings = settings
        self.keys = keys  # open the signed envelope senders (VERP) that ESPs quote: the serve's, as they are
        topics = frozenset(filter(None, (t.strip() for t in settings.ses_topic_arns.split(","))))
        self.sns = sns.Verifier(topics, settings.sns_hosts) if topics else None
        auth = f"{settings.postmark_webhook_user}:{settings.postmark_webhook_password}"
        self.postmark_auth = auth.encode() if settings.postmark_webhook_password else None
        self.mailgun_key = settings.mailgun_webhook_key.encode() or None
        self._tokens: dict[str, float] = {}  # Mailgun tokens seen within MAILGUN_MAX_AGE, and when
        self._tokens_lock = threading.Lock()

    def handle(self, esp: str, environ: WSGIEnvironment, max_body: int) -> Answer:
        """Answer one POST to /webhooks/<esp>; refusals are logged here, in one line each."""
        try:
            if esp not in ESPS or not self._enabled(esp):
                raise Refused(404, "no such webhook (not configured)")
            if esp == "postmark":
                self._check_basic_auth(environ)  # before the body is read: a stranger's costs nothing
            body = _read_json(environ, max_body, JSON_TYPES[esp])
            if esp == "ses":
                done = self._ses(body, environ)
            elif esp == "postmark":
                done = self._recorded(_postmark(body))
            else:
                token = self._check_mailgun(body)
                done = self._recorded(_mailgun(body))
                self._used(token)  # only once recorded: a retry after a failure must still be taken
        except Refused as exc:
            shown = esp if esp in ESPS else ascii(esp[:60])  # a path is the requester's: never raw in the log
            log.warning(
                "webhook %s from %s refused (%d): %s", shown, _client(environ), exc.status, exc.reason
            )
            # the reason goes to the log only: a forger learns nothing about which check failed
            return exc.status, TEXT, b"refused\n", exc.headers
        return 200, TEXT, f"{done}\n".encode(), []

    def _enabled(self, esp: str) -> bool:
        return bool({"ses": self.sns, "postmark": self.postmark_auth, "mailgun": self.mailgun_key}[esp])

    def _recorded(self, reports: list[Report]) -> str:
        """Record the reports about addresses mailer mailed; one log line says what changed."""
        if not reports:
            return "nothing to record"
        from .ledger import write_in_place

        recorded, ignored = write_in_place(
            self.settings.db_path, lambda ledger: self._record(ledger, reports)
        )
        source = reports[0].source
        if ignored:
            log.info(
                "webhook %s: ignored reports about %s: never mailed by mailer", source, ", ".join(ignored)
            )
        if recorded.new or recorded.suppressed:
            suppressed = ", ".join(recorded.suppressed) or "no one"
            log.info("webhook %s: %d new reports; suppressed %s", source, recorded.new, suppressed)
        return f"{recorded.new} new, {recorded.repeated} seen before, {len(ignored)} ignored"

    def _record(self, ledger: Ledger, reports: list[Report]) -> tuple[Recorded, list[str]]:
        """Match each report to its message (signed envelope sender, else Message-ID) and record it.

        A report about an address the record never mailed is ignored: an ESP account may also carry
        other mail (receipts, another list), and its bounces are not this list's to act on.
        """
        from .envelope import from_message_id, from_return_path
        from .policy import record_bounces

        bounces, ignored = [], []
        for report in reports:
            found = None
            if report.return_path:
                found = from_return_path(ledger, self.settings, self.keys(), report.return_path)
                if found is None and self.keys.reread():  # signed with the key of a key file replaced since
                    found = from_return_path(ledger, self.settings, self.keys(), report.return_path)
            if found is None and report.message_id:
                found = from_message_id(ledger, report.message_id)
            if found is not None and found.email == report.email:
                bounces.append(report.bounce(found.issue_id))
            elif ledger.mailed(report.email):
                bounces.append(report.bounce(None))
            else:
                ignored.append(report.email)
        return record_bounces(ledger, bounces, self.settings), ignored

    # --- Amazon SES through SNS -------------------------------------------------------------------

    def _ses(self, body: Any, environ: WSGIEnvironment) -> str:
        assert self.sns is not None  # _enabled
        try:
            message = self.sns.verify(body, environ.get("HTTP_X_AMZ_SNS_MESSAGE_TYPE", ""))
            if message.type == "SubscriptionConfirmation":
                self.sns.confirm(message)
                log.info("confirmed the SNS subscription to %s", message.topic_arn)
                return "subscription confirmed"
        except sns.Unreachable as exc:
            raise Refused(503, str(exc), [("Retry-After", "60")]) from None
        except sns.Invalid as exc:
            raise Refused(403, f"not a genuine SNS message: {exc}") from None
        if message.type == "UnsubscribeConfirmation":
            log.warning("SNS ended the subscription to %s: no more SES reports arrive", message.topic_arn)
            return "unsubscribe noted"
        return self._recorded(_ses(message))

    # --- Postmark ---------------------------------------------------------------------------------

    def _check_basic_auth(self, environ: WSGIEnvironment) -> None:
        assert self.postmark_auth is not None  # _enabled
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        try:
            given = base64.b64decode(value.strip(), validate=True) if scheme.lower() == "basic" else b""
        except (binascii.Error, ValueError):
            given = b""
        if not hmac.compare_digest(given, self.postmark_auth):
            challenge = [("WWW-Authenticate", 'Basic realm="mailer webhooks"')]
            raise Refused(401, "wrong or missing credentials", challenge)

    # --- Mailgun ----------------------------------------------------------------------------------

    def _check_mailgun(self, body: Any) -> str:
        """The token of a genuine, fresh, unused Mailgun signature; Refused for anything else.

        The signature covers only the timestamp and token, not the event: a token is taken once, and
        only within MAILGUN_MAX_AGE of its timestamp, so a signature seen in transit cannot carry
        another event later.
        """
        assert self.mailgun_key is not None  # _enabled
        signed = body.get("signature") if isinstance(body, dict) else None
        if not isinstance(signed, dict) or not all(
            isinstance(signed.get(k), str) for k in ("timestamp", "token", "signature")
        ):
            raise Refused(403, "no signature {timestamp, token, signature}")
        stamp, token = signed["timestamp"], signed["token"]
        expected = hmac.new(self.mailgun_key, (stamp + token).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), signed["signature"].encode()):
            raise Refused(403, "the signature does not verify")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > MAILGUN_MAX_AGE:
            raise Refused(403, f"the signature's timestamp {stamp[:20]!r} is not within 15 minutes of now")
        with self._tokens_lock:
            if token in self._tokens:
                raise Refused(403, "the signature's token was used before (a replay)")
        return token

    def _used(self, token: str) -> None:
        now = time.time()
        with self._tokens_lock:
            for old in [t for t, at in self._tokens.items() if now - at > 2 * MAILGUN_MAX_AGE]:
                del self._tokens[old]
            self._tokens[token] = now


# --- payloads -> Bounce ---------------------------------------------------------------------------


def _read_json(environ: WSGIEnvironment, max_body: int, types: tuple[str, ...]) -> Any:
    """The request's JSON body, or Refused: too large, not the expected content type, not JSON."""
    kind = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if kind not in types:
        raise Refused(415, f"content type {kind[:60]!r} is not {' or '.join(types)}")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise Refused(400, "invalid Content-Length") from None
    if length > max_body:
        raise Refused(413, f"body of {length} bytes is over the limit of {max_body}")
    try:
        return json.loads(environ["wsgi.input"].read(length), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Refused(400, f"body is not JSON: {str(exc)[:80]}") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _client(environ: WSGIEnvironment) -> str:
    return str(environ.get("REMOTE_ADDR", "?"))


def _text(value: Any, limit: int = 500) -> str:
    """A one-line string of at most limit characters from a payload's field (anything else: '')."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return ""
    return " ".join(str(value).split())[:limit]


def _status(*texts: str) -> str:
    """The first enhanced status code (RFC 3463) in the texts, or ''."""
    for text in texts:
        if match := STATUS.search(text):
            return match.group()
    return ""


def _object(value: Any) -> dict[str, Any]:
    """A payload's JSON object, or an empty one for anything else."""
    return value if isinstance(value, dict) else {}


def _address(value: Any) -> str | None:
    try:
        return dedupe_key(normalize_email(_text(value, 320)))
    except ValueError:
        return None


def _when(value: Any) -> datetime:
    """The report's own time (ISO 8601 or seconds since 1970); now when it gives none that reads."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return datetime.now(UTC)


def _recipients(items: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise Refused(400, f"{what} is not a list of recipients")
    if len(items) > MAX_RECIPIENTS:
        raise Refused(413, f"{what} lists {len(items)} recipients; at most {MAX_RECIPIENTS} are read")
    return items


def _ses(message: sns.Message) -> list[Report]:
    """The bounces and complaints of an SES notification (notificationType, or eventType when published
    through a configuration set)."""
    try:
        payload = json.loads(message.message)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        log.info("SNS message %s is not an SES notification; ignored", message.message_id)
        return []
    kind = payload.get("notificationType") or payload.get("eventType")
    mail = _object(payload.get("mail"))
    headers = _object(mail.get("commonHeaders"))
    if kind == "Bounce" and isinstance(payload.get("bounce"), dict):
        report = payload["bounce"]
        kind_of = {"Permanent": HARD, "Transient": SOFT, "Undetermined": SOFT}
        bounce_kind = kind_of.get(_text(report.get("bounceType")), SOFT)
        recipients = _recipients(report.get("bouncedRecipients"), "bounce.bouncedRecipients")
    elif kind == "Complaint" and isinstance(payload.get("complaint"), dict):
        report = payload["complaint"]
        if _text(report.get("complaintFeedbackType")) == "not-spam":
            return []  # the reader says it is *not* spam
        bounce_kind = COMPLAINT
        recipients = _recipients(report.get("complainedRecipients"), "complaint.complainedRecipients")
    else:
        return []  # deliveries, opens, sends, rejects: not reports about an address
    report_id = "ses:" + (_text(report.get("feedbackId"), 200) or message.message_id)
    at = _when(report.get("timestamp")) if report.get("timestamp") else message.timestamp
    return_path, message_id = _text(mail.get("source"), 400), _text(headers.get("messageId"), 400)
    reports = []
    for recipient in recipients:
        email = _address(recipient.get("emailAddress"))
        if email is None:
            continue
        diagnostic = _text(recipient.get("diagnosticCode")) or _text(report.get("complaintFeedbackType"))
        status = _status(_text(recipient.get("status"), 20), diagnostic)
        diagnostic = diagnostic or _text(report.get("bounceSubType"))
        reports.append(
            Report(email, bounce_kind, status, diagnostic, "ses", report_id, at, return_path, message_id)
        )
    return reports


# Postmark's bounce types (https://postmarkapp.com/developer/api/bounce-api#bounce-types); the rest
# (auto-replies, address changes, challenge mails, virus and spam notices) say nothing about the address.
POSTMARK_KINDS = {
    "HardBounce": HARD,
    "BadEmailAddress": HARD,
    "SoftBounce": SOFT,
    "Transient": SOFT,
    "DnsError": SOFT,
    "Blocked": SOFT,  # the receiver blocked the sender or the content: not this address's fault
    "DMARCPolicy": SOFT,
    "SpamComplaint": COMPLAINT,
}


def _postmark(body: Any) -> list[Report]:
    """The bounce or spam complaint of a Postmark webhook (RecordType Bounce or SpamComplaint)."""
    if not isinstance(body, dict):
        raise Refused(400, "the body is not a JSON object")
    if body.get("RecordType") not in ("Bounce", "SpamComplaint"):
        return []  # deliveries, opens, clicks, subscription changes
    kind = POSTMARK_KINDS.get(_text(body.get("Type")))
    email = _address(body.get("Email"))
    if email is None:
        raise Refused(400, "Email is not an address")
    if kind is None or body.get("ID") is None:
        return []
    details = _text(body.get("Details"))
    status = _status(details, _text(body.get("Description")))
    diagnostic = details or _text(body.get("Description"))
    report_id = f"postmark:{_text(body.get('ID'), 100)}"
    # Postmark quotes neither the envelope sender nor the Message-ID: the address alone names the reader
    return [Report(email, kind, status, diagnostic, "postmark", report_id, _when(body.get("BouncedAt")))]


def _mailgun(body: dict[str, Any]) -> list[Report]:
    """The failure or complaint of a Mailgun webhook (event failed permanent/temporary, or complained)."""
    event = body.get("event-data")
    if not isinstance(event, dict):
        raise Refused(400, "event-data is missing")
    name, severity = _text(event.get("event")), _text(event.get("severity"))
    if name == "complained":
        kind = COMPLAINT
    elif name == "failed" and severity in ("permanent", "temporary"):
        kind = HARD if severity == "permanent" else SOFT
    else:
        return []
    email = _address(event.get("recipient"))
    if email is None:
        raise Refused(400, "event-data.recipient is not an address")
    status_of = _object(event.get("delivery-status"))
    message = _object(event.get("message"))
    headers = _object(message.get("headers"))
    diagnostic = _text(status_of.get("message")) or _text(status_of.get("description"))
    diagnostic = diagnostic or _text(event.get("reason"))
    code = _text(status_of.get("code"), 10)
    if code and not diagnostic.startswith(code):
        diagnostic = f"{code} {diagnostic}".strip()
    envelope = _object(event.get("envelope"))
    return [
        Report(
            email,
            kind,
            _status(_text(status_of.get("enhanced-code"), 20), diagnostic),
            diagnostic,
            "mailgun",
            f"mailgun:{_text(event.get('id'), 200) or _text(body['signature']['token'], 200)}",
            _when(event.get("timestamp")),
            _text(envelope.get("sender"), 400),
            _text(headers.get("message-id"), 400),
        )
    ]
