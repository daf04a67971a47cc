"""Postmark (HTTP basic auth in the webhook URL) and Mailgun (HMAC-signed) webhooks on a running `serve`.

The payloads follow the ESPs' documented examples; the issue they report on was really sent (tests/served.py).
Genuine reports are recorded; a wrong credential, a bad or stale signature, a replayed token is refused with
a 4xx and one log line, and changes nothing. The secrets never reach the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.served import ISSUE, Served, sent_and_served

READERS = [f"esp{i}@example.net" for i in range(20)]
POSTMARK_USER = "postmark"
POSTMARK_PASSWORD = "pm-" + "s3cret" * 4
MAILGUN_KEY = "key-" + "0123456789abcdef" * 2
JSON = "application/json"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = {
        "MAILER_POSTMARK_WEBHOOK_USER": POSTMARK_USER,
        "MAILER_POSTMARK_WEBHOOK_PASSWORD": POSTMARK_PASSWORD,
        "MAILER_MAILGUN_WEBHOOK_KEY": MAILGUN_KEY,
    }
    with sent_and_served(tmp_path_factory.mktemp("esp"), READERS, **env) as served:
        yield served
    text = served.log.read_text()
    assert POSTMARK_PASSWORD not in text and MAILGUN_KEY not in text


# --- Postmark ----------------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD_AUTH = basic(POSTMARK_USER, POSTMARK_PASSWORD)


def postmark_bounce(email: str, kind: str = "HardBounce", **fields: Any) -> dict[str, Any]:
    """A Postmark bounce webhook body as documented (postmarkapp.com/developer/webhooks/bounce-webhook)."""
    record = "SpamComplaint" if kind == "SpamComplaint" else "Bounce"
    return {
        "RecordType": record,
        "MessageStream": "outbound",
        "ID": 4323372036854775807 - secrets.randbelow(10**9),
        "Type": kind,
        "TypeCode": {"HardBounce": 1, "SoftBounce": 4096, "SpamComplaint": 100001}.get(kind, 64),
        "Name": "Hard bounce",
        "Tag": "newsletter",
        "MessageID": str(uuid.uuid4()),
        "Metadata": {},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": email,
        "From": "news@aidaily.news",
        "BouncedAt": "2026-12-01T16:33:54.9070259Z",
        "DumpAvailable": False,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "AI Daily",
        **fields,
    }


def postmark(
    served: Served, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    return served.post(
        "/webhooks/postmark", json.dumps(body).encode(), JSON, GOOD_AUTH if headers is None else headers
    )


def test_a_postmark_hard_bounce_suppresses_the_reader(served: Served) -> None:
    reader = READERS[0]
    status, body = postmark(served, postmark_bounce(reader.upper()))
    assert status == 200, body
    row = served.suppressed(reader)
    assert row is not None and "postmark" in row and "5.1.1" in row, row
    assert [b[2] for b in served.bounces(reader)] == ["hard"]


def test_a_postmark_soft_bounce_is_kept_and_suppresses_no_one(served: Served) -> None:
    reader = READERS[1]
    details = "smtp;452 4.2.2 The email account that you tried to reach is over quota."
    assert postmark(served, postmark_bounce(reader, "SoftBounce", Details=details))[0] == 200
    assert [b[2] for b in served.bounces(reader)] == ["soft"]
    assert served.suppressed(reader) is None


def test_a_postmark_spam_complaint_suppresses_the_reader(served: Served) -> None:
    reader = READERS[2]
    assert postmark(served, postmark_bounce(reader, "SpamComplaint", Details=""))[0] == 200
    row = served.suppressed(reader)
    assert row is not None and "complaint" in row, row


@pytest.mark.parametrize("kind", ["AutoResponder", "AddressChange", "ChallengeVerification", "Unknown"])
def test_postmark_records_that_say_nothing_about_the_address_are_ignored(served: Served, kind: str) -> None:
    before = served.state()
    assert postmark(served, postmark_bounce(READERS[3], kind))[0] == 200
    assert served.state() == before


def test_a_postmark_webhook_delivered_twice_is_counted_once(served: Served) -> None:
    reader = READERS[4]
    body = postmark_bounce(reader)
    assert postmark(served, body)[0] == 200
    before = served.state()
    status, answer = postmark(served, body)
    assert status == 200 and b"1 seen before" in answer, answer
    assert served.state() == before


def test_postmark_without_the_credentials_is_refused_and_changes_nothing(served: Served) -> None:
    reader = READERS[5]
    cases = {
        "no Authorization": {},
        "wrong password": basic(POSTMARK_USER, POSTMARK_PASSWORD[:-1] + "x"),
        "wrong user": basic("admin", POSTMARK_PASSWORD),
        "password one longer": basic(POSTMARK_USER, POSTMARK_PASSWORD + "x"),
        "empty credentials": basic("", ""),
        "Bearer scheme": {"Authorization": "Bearer " + POSTMARK_PASSWORD},
        "not base64": {"Authorization": "Basic %%%%"},
        "no colon": {"Authorization": "Basic " + base64.b64encode(POSTMARK_PASSWORD.encode()).decode()},
    }
    before = served.state()
    for name, headers in cases.items():
        lines = len(served.log_lines())
        status, _ = postmark(served, postmark_bounce(reader), headers)
        new = served.log_lines()[lines:]
        assert status == 401, name
        assert len(new) == 1 and "refused" in new[0], (name, new)
    assert served.state() == before
    assert served.suppressed(reader) is None


def test_postmark_refuses_broken_bodies(served: Served) -> None:
    before = served.state()
    for body, ctype, want in [
        (b"{not json", JSON, 400),
        (b"RecordType=Bounce", "application/x-www-form-urlencoded", 415),
        (json.dumps([postmark_bounce(READERS[6])]).encode(), JSON, 400),
        (json.dumps(postmark_bounce("not an address")).encode(), JSON, 400),
        (b"x" * (256 * 1024 + 1), JSON, 413),
    ]:
        assert served.post("/webhooks/postmark", body, ctype, GOOD_AUTH)[0] == want, body[:40]
    assert served.state() == before


# --- Mailgun ----------------------------------------------------------------------------------------


def mailgun_signature(key: str = MAILGUN_KEY, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = secrets.token_hex(25)
    digest = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": stamp, "token": token, "signature": digest}


def mailgun_event(
    served: Served, reader: str, event: str = "failed", severity: str = "permanent"
) -> dict[str, Any]:
    """A Mailgun event webhook body as documented (documentation.mailgun.com, "Webhooks")."""
    sent = served.sent[reader]
    data: dict[str, Any] = {
        "event": event,
        "id": secrets.token_urlsafe(16),
        "timestamp": time.time(),
        "log-level": "error",
        "recipient": reader,
        "recipient-domain": reader.partition("@")[2],
        "envelope": {"sender": sent.return_path, "transport": "smtp", "targets": reader},
        "message": {
            "headers": {
                "to": reader,
                "message-id": sent.message_id.strip("<>"),
                "from": "AI Daily <news@aidaily.news>",
                "subject": "AI Daily",
            },
            "attachments": [],
            "size": 4321,
        },
    }
    if event == "failed":
        data["severity"] = severity
        data["reason"] = "bounce" if severity == "permanent" else "generic"
        code, text = (
            (550, "5.1.1 The email account does not exist.")
            if severity == "permanent"
            else (
                452,
                "4.2.2 Mailbox full",
            )
        )
        data["delivery-status"] = {"code": code, "message": text, "description": "", "attempt-no": 1}
    return {"signature": mailgun_signature(), "event-data": data}


def mailgun(served: Served, body: dict[str, Any]) -> tuple[int, bytes]:
    return served.post("/webhooks/mailgun", json.dumps(body).encode(), JSON)


@pytest.mark.parametrize(
    ("event", "severity", "kind", "suppressed"),
    [
        ("failed", "permanent", "hard", True),
        ("failed", "temporary", "soft", False),
        ("complained", "", "complaint", True),
    ],
)
def test_a_signed_mailgun_event_is_recorded_for_its_issue(
    served: Served, event: str, severity: str, kind: str, suppressed: bool
) -> None:
    reader = {"hard": READERS[10], "soft": READERS[11], "complaint": READERS[12]}[kind]
    status, body = mailgun(served, mailgun_event(served, reader, event, severity))
    assert status == 200, body
    kept = served.bounces(reader)
    assert len(kept) == 1 and kind in kept[0] and ISSUE in kept[0], kept
    assert (served.suppressed(reader) is not None) == suppressed


def test_mailgun_deliveries_and_opens_are_ignored(served: Served) -> None:
    before = served.state()
    for event in ("delivered", "opened", "clicked", "accepted"):
        assert mailgun(served, mailgun_event(served, READERS[13], event))[0] == 200
    assert served.state() == before


def test_forged_stale_and_replayed_mailgun_events_are_refused(served: Served) -> None:
    reader = READERS[14]
    genuine = mailgun_event(served, reader)

    def signed(**signature: Any) -> dict[str, Any]:
        return {**genuine, "signature": {**genuine["signature"], **signature}}

    old = mailgun_signature(timestamp=int(time.time()) - 3600)
    future = mailgun_signature(timestamp=int(time.time()) + 3600)
    cases = {
        "no signature": {"event-data": genuine["event-data"]},
        "signed with another key": {**genuine, "signature": mailgun_signature("key-attacker")},
        "signature changed": signed(signature="0" * 64),
        "timestamp changed": signed(timestamp=str(int(genuine["signature"]["timestamp"]) + 1)),
        "token changed": signed(token=secrets.token_hex(25)),
        "signed an hour ago": {**genuine, "signature": old},
        "signed an hour ahead": {**genuine, "signature": future},
        "signature not a string": signed(signature=12345),
    }
    before = served.state()
    for name, body in cases.items():
        lines = len(served.log_lines())
        status, _ = mailgun(served, body)
        new = served.log_lines()[lines:]
        assert status == 403, name
        assert len(new) == 1 and "refused" in new[0], (name, new)
    assert served.state() == before
    assert mailgun(served, genuine)[0] == 200
    recorded = served.state()
    assert served.suppressed(reader) is not None
    # the same signature again, even with another event in it, is a replay
    replays = [genuine, {**genuine, "event-data": mailgun_event(served, READERS[15])["event-data"]}]
    for body in replays:
        assert mailgun(served, body)[0] == 403
    assert served.state() == recorded
    assert served.suppressed(READERS[15]) is None
