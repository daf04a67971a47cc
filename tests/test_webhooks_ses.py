"""Amazon SES bounce and complaint notifications through SNS, posted to a running `mailer serve`.

An issue is really sent (tests/smtpd.py, with a bounce address, so every message has its own signed envelope
sender), then SES notifications quoting those messages are posted, signed with a certificate the test made
and served from its own HTTPS server (tests/aws.py). Signed ones are recorded; every forgery is refused with
a 4xx and one log line, and leaves the bounces and suppressions tables as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from tests import aws
from tests.aws import EXPIRED, GOOD, TOPIC, FakeSNS, Signer
from tests.served import ISSUE, Served, sent_and_served

READERS = [f"reader{i}@example.net" for i in range(41)]


@dataclass
class SES:
    """`mailer serve` taking SES notifications, and the fake SNS whose certificate it trusts."""

    served: Served
    sns: FakeSNS
    signer: Signer

    def post(
        self, body: bytes, content_type: str = "text/plain; charset=UTF-8", **headers: str
    ) -> tuple[int, bytes]:
        return self.served.post("/webhooks/ses", body, content_type, headers)

    def send(self, message: dict[str, Any], **headers: str) -> tuple[int, bytes]:
        return self.post(aws.as_body(message), **headers)

    def signed_bounce(self, reader: str, version: str = "1", **options: Any) -> dict[str, Any]:
        """A signed notification that the message to reader bounced, quoting that message as SES does."""
        sent = self.served.sent[reader]
        payload = aws.ses_bounce(
            [
                {
                    "emailAddress": reader,
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": f"smtp; 550 5.1.1 <{reader}>: Recipient address rejected: User unknown",
                }
            ],
            source=sent.return_path,
            commonHeaders={"messageId": sent.message_id, "subject": "AI Daily"},
            **options,
        )
        return self.signer.sign(aws.notification(payload, self.sns.url(GOOD)), version)


@pytest.fixture(scope="module")
def ses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SES]:
    root = tmp_path_factory.mktemp("ses")
    signer = Signer.make()
    with aws.fake_sns(root / "tls", {GOOD: signer.pem, EXPIRED: signer.expired()}) as sns:
        env = {
            "MAILER_SES_TOPIC_ARNS": f"{TOPIC}, arn:aws:sns:eu-west-1:123456789012:other",
            "MAILER_SNS_HOSTS": sns.host,
            "SSL_CERT_FILE": str(sns.tls.ca),  # the test's CA, as OpenSSL reads it for any program
        }
        with sent_and_served(root, READERS, **env) as served:
            yield SES(served, sns, signer)


# --- genuine messages ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_subscription_confirmation_is_confirmed(ses: SES, version: str) -> None:
    message = aws.subscription("SubscriptionConfirmation", ses.sns.host, ses.sns.url(GOOD))
    status, _ = ses.send(ses.signer.sign(message, version))
    assert status == 200
    assert [url for url in ses.sns.confirmations() if message["Token"] in url] == [
        message["SubscribeURL"].removeprefix(f"https://{ses.sns.host}")
    ]


@pytest.mark.parametrize(("version", "form"), [("1", "notificationType"), ("2", "eventType")])
def test_a_signed_permanent_bounce_suppresses_its_reader_for_that_issue(
    ses: SES, version: str, form: str
) -> None:
    reader = READERS[0] if version == "1" else READERS[1]
    message = ses.signed_bounce(reader, version, form=form)
    status, body = ses.send(message)
    assert status == 200, body
    row = ses.served.suppressed(reader)
    assert row is not None and "ses" in row and ISSUE in row and "5.1.1" in row, row
    bounces = ses.served.bounces(reader)
    assert len(bounces) == 1 and "hard" in bounces[0] and ISSUE in bounces[0], bounces


def test_a_signed_notification_with_a_subject_is_recorded(ses: SES) -> None:
    reader = READERS[6]
    sent = ses.served.sent[reader]
    payload = aws.ses_bounce([{"emailAddress": reader, "status": "5.1.1"}], source=sent.return_path)
    message = aws.notification(payload, ses.sns.url(GOOD), Subject="Amazon SES Email Event Notification")
    assert ses.send(ses.signer.sign(message, "2"))[0] == 200
    assert ses.served.suppressed(reader) is not None


def test_a_signed_notification_carrying_200_kb_of_original_headers_is_recorded(ses: SES) -> None:
    # SES adds the bounced message's headers when asked to; SNS delivers up to 256 KiB, and a genuine
    # report refused for its size would be retried and then lost
    headers = [{"name": f"X-Trace-{i}", "value": "t" * 1000} for i in range(200)]
    message = ses.signed_bounce(READERS[40], headers=headers)
    assert 200_000 < len(aws.as_body(message)) < 256 * 1024
    status, _ = ses.send(message)
    assert status == 200
    assert ses.served.suppressed(READERS[40]) is not None


def test_a_transient_bounce_is_kept_but_suppresses_no_one(ses: SES) -> None:
    reader = READERS[2]
    sent = ses.served.sent[reader]
    payload = aws.ses_bounce(
        [{"emailAddress": reader, "status": "4.2.2", "diagnosticCode": "smtp; 452 4.2.2 Mailbox full"}],
        bounce_type="Transient",
        source=sent.return_path,
    )
    status, _ = ses.send(ses.signer.sign(aws.notification(payload, ses.sns.url(GOOD))))
    assert status == 200
    bounces = ses.served.bounces(reader)
    assert len(bounces) == 1 and "soft" in bounces[0] and "4.2.2" in bounces[0] and ISSUE in bounces[0]
    assert ses.served.suppressed(reader) is None


@pytest.mark.parametrize("form", ["notificationType", "eventType"])
def test_a_signed_complaint_suppresses_the_reader(ses: SES, form: str) -> None:
    reader = READERS[3] if form == "notificationType" else READERS[4]
    payload = aws.ses_complaint(
        [reader], form=form, commonHeaders={"messageId": ses.served.sent[reader].message_id}
    )
    status, _ = ses.send(ses.signer.sign(aws.notification(payload, ses.sns.url(GOOD))))
    assert status == 200
    row = ses.served.suppressed(reader)
    assert row is not None and "complaint" in row and ISSUE in row, row


def test_a_notification_delivered_twice_is_counted_once(ses: SES) -> None:
    message = ses.signed_bounce(READERS[5])
    assert ses.send(message)[0] == 200
    before = ses.served.state()
    assert ses.send(message)[0] == 200  # SNS retries with the same message: not a forgery, not news
    assert ses.served.state() == before
    assert len([r for r in ses.served.rows("bounces") if READERS[5] in r]) == 1


def test_a_report_about_an_address_never_mailed_is_ignored(ses: SES) -> None:
    payload = aws.ses_bounce([{"emailAddress": "stranger@example.org", "status": "5.1.1"}])
    before = ses.served.state()
    status, body = ses.send(ses.signer.sign(aws.notification(payload, ses.sns.url(GOOD))))
    assert status == 200 and b"1 ignored" in body, body
    assert ses.served.state() == before


def test_the_signing_certificate_is_fetched_once_for_many_messages(ses: SES) -> None:
    readers = READERS[10:30]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda r: ses.send(ses.signed_bounce(r))[0], readers))
    assert statuses == [200] * len(readers)
    assert all(ses.served.suppressed(reader) for reader in readers)
    assert ses.sns.fetched(GOOD) == 1


# --- forgeries ---------------------------------------------------------------------------------------


def _forgeries(ses: SES, reader: str) -> dict[str, Callable[[], dict[str, Any]]]:
    other = Signer.make()
    good_url = ses.sns.url(GOOD)

    def bounce(**fields: Any) -> dict[str, Any]:
        sent = ses.served.sent[reader]
        payload = aws.ses_bounce([{"emailAddress": reader, "status": "5.1.1"}], source=sent.return_path)
        return aws.notification(payload, good_url, **fields)

    def modified() -> dict[str, Any]:
        signed = ses.signer.sign(bounce())
        return {**signed, "Message": signed["Message"].replace("reader", "Reader")}

    def replayed() -> dict[str, Any]:
        return ses.signer.sign(bounce(Timestamp=aws.now_iso(-timedelta(hours=2))))

    return {
        "unsigned": lambda: bounce(SignatureVersion="1"),
        "signature of another key": lambda: other.sign(bounce()),
        "signature of another key, v2": lambda: other.sign(bounce(), "2"),
        "v1 signature labelled v2": lambda: {**ses.signer.sign(bounce()), "SignatureVersion": "2"},
        "unknown SignatureVersion": lambda: {**ses.signer.sign(bounce()), "SignatureVersion": "3"},
        "modified Message": modified,
        "Subject added after signing": lambda: {
            **ses.signer.sign(bounce()),
            "Subject": "Amazon SES Email Event",
        },
        "Subject changed after signing": lambda: {
            **ses.signer.sign(bounce(Subject="Amazon SES Email Event")),
            "Subject": "Amazon SES Email EvenT",
        },
        "TopicArn changed after signing": lambda: {
            **ses.signer.sign(bounce()),
            "TopicArn": "arn:aws:sns:eu-west-1:123456789012:other",
        },
        "signed for a topic not configured": lambda: ses.signer.sign(
            bounce(TopicArn="arn:aws:sns:us-east-1:123456789012:someone-elses")
        ),
        "replayed two hours later": replayed,
        "timestamp in the future": lambda: ses.signer.sign(bounce(Timestamp=aws.now_iso(timedelta(hours=1)))),
        "certificate on another host": lambda: ses.signer.sign(
            bounce(SigningCertURL=f"https://sns.us-east-1.amazonaws.com.evil.example{GOOD}")
        ),
        "certificate over http": lambda: ses.signer.sign(
            bounce(SigningCertURL=f"http://{ses.sns.host}{GOOD}")
        ),
        "certificate URL with credentials": lambda: ses.signer.sign(
            bounce(SigningCertURL=f"https://user@{ses.sns.host}{GOOD}")
        ),
        "certificate expired": lambda: ses.signer.sign(bounce(SigningCertURL=ses.sns.url(EXPIRED))),
        "certificate URL with an escape and a newline": lambda: ses.signer.sign(
            bounce(SigningCertURL=ses.sns.url("/SimpleNotificationService-\x1b[31m\nforged.pem"))
        ),
        "certificate not served": lambda: ses.signer.sign(
            bounce(SigningCertURL=ses.sns.url("/SimpleNotificationService-missing.pem"))
        ),
        "signature not base64": lambda: {**ses.signer.sign(bounce()), "Signature": "@@@not base64@@@"},
        "Type changed to another type": lambda: {
            **ses.signer.sign(bounce()),
            "Type": "SubscriptionConfirmation",
        },
    }


def _naming_certificate(ses: SES, path: str, reader: str) -> dict[str, Any]:
    """A notification signed with the genuine key, naming another certificate URL on the SNS host."""
    payload = aws.ses_bounce([{"emailAddress": reader, "status": "5.1.1"}])
    return ses.signer.sign(aws.notification(payload, ses.sns.url(path)))


def test_a_certificate_url_that_failed_is_not_fetched_again(ses: SES) -> None:
    path = "/SimpleNotificationService-gone.pem"
    statuses = [ses.send(_naming_certificate(ses, path, READERS[7]))[0] for _ in range(5)]
    assert statuses == [403] * 5
    assert ses.sns.fetched(path) == 1
    assert ses.served.suppressed(READERS[7]) is None


def test_a_stalled_certificate_host_holds_up_no_other_message(ses: SES) -> None:
    path = "/SimpleNotificationService-slow.pem"
    arrived, release = ses.sns.stall(path)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(ses.send, _naming_certificate(ses, path, READERS[8]))
        try:
            assert arrived.wait(60)  # serve is now fetching the slow certificate
            assert ses.send(ses.signed_bounce(READERS[9]))[0] == 200
            assert not pending.done()  # the genuine message did not wait for the slow fetch
        finally:
            release.set()
        assert pending.result()[0] in (403, 503)
    assert ses.served.suppressed(READERS[9]) is not None and ses.served.suppressed(READERS[8]) is None


def test_every_forged_notification_is_refused_and_changes_nothing(ses: SES) -> None:
    reader = READERS[35]
    forgeries = _forgeries(ses, reader)
    before = ses.served.state()
    refused: dict[str, int] = {}
    for name, make in forgeries.items():
        lines = len(ses.served.log_lines())
        status, body = ses.send(make())
        refused[name] = status
        new = ses.served.log_lines()[lines:]
        assert 400 <= status < 500 and body == b"refused\n", (name, status, body)  # why: in the log only
        assert len(new) == 1 and "refused" in new[0], (name, new)
        assert not any(ord(c) < 32 or ord(c) == 127 for c in new[0]), (name, new)
    assert ses.served.state() == before
    assert ses.served.suppressed(reader) is None
    assert ses.sns.fetched("/SimpleNotificationService-missing.pem") == 1  # the only extra fetch
    # the genuine message about the same reader still works after all of them
    assert ses.send(ses.signed_bounce(reader))[0] == 200
    assert ses.served.suppressed(reader) is not None


def test_a_forged_subscription_confirmation_confirms_nothing(ses: SES) -> None:
    host = ses.sns.host
    cases = {
        "another key": Signer.make().sign(
            aws.subscription("SubscriptionConfirmation", host, ses.sns.url(GOOD))
        ),
        "SubscribeURL elsewhere": ses.signer.sign(
            aws.subscription(
                "SubscriptionConfirmation", "sns.us-east-1.amazonaws.com.evil.example", ses.sns.url(GOOD)
            )
        ),
        "SubscribeURL over http": ses.signer.sign(
            {
                **(m := aws.subscription("SubscriptionConfirmation", host, ses.sns.url(GOOD))),
                "SubscribeURL": m["SubscribeURL"].replace("https://", "http://"),
            }
        ),
        "other topic in SubscribeURL": ses.signer.sign(
            {
                **(m := aws.subscription("SubscriptionConfirmation", host, ses.sns.url(GOOD))),
                "SubscribeURL": m["SubscribeURL"].replace("mailer-bounces", "other"),
            }
        ),
    }
    before = len(ses.sns.confirmations())
    for name, message in cases.items():
        status, _ = ses.send(message)
        assert 400 <= status < 500, name
    assert len(ses.sns.confirmations()) == before


def test_an_unsubscribe_confirmation_is_noted_and_changes_nothing(ses: SES) -> None:
    message = ses.signer.sign(aws.subscription("UnsubscribeConfirmation", ses.sns.host, ses.sns.url(GOOD)))
    before, confirmations = ses.served.state(), len(ses.sns.confirmations())
    assert ses.send(message)[0] == 200
    assert ses.served.state() == before and len(ses.sns.confirmations()) == confirmations
    assert any("ended the subscription" in line for line in ses.served.log_lines())


# --- abuse -------------------------------------------------------------------------------------------


def test_broken_bodies_get_a_4xx_and_change_nothing(ses: SES) -> None:
    before = ses.served.state()
    cases: dict[str, tuple[bytes, str, int]] = {
        "not JSON": (b"Type=Notification", "text/plain", 400),
        "truncated JSON": (aws.as_body(ses.signed_bounce(READERS[36]))[:-10], "text/plain", 400),
        "deeply nested": (b"[" * 150_000 + b"]" * 150_000, "text/plain", 413),
        "nested within the limit": (b"[" * 30_000 + b"]" * 30_000, "text/plain", 400),
        "NaN": (b'{"Type": NaN}', "application/json", 400),
        "a JSON list": (b"[1, 2, 3]", "text/plain", 403),
        "form content type": (
            aws.as_body(ses.signed_bounce(READERS[36])),
            "application/x-www-form-urlencoded",
            415,
        ),
        "no content type": (aws.as_body(ses.signed_bounce(READERS[36])), "", 415),
        "invalid UTF-8": (b'{"Type": "\xff\xfe"}', "text/plain", 400),
    }
    for name, (body, ctype, want) in cases.items():
        status, _ = ses.post(body, ctype)
        assert status == want, (name, status)
    assert ses.served.state() == before
    assert READERS[36] not in {row[0] for row in ses.served.rows("suppressions")}


def test_a_header_type_that_differs_from_the_body_is_refused(ses: SES) -> None:
    message = ses.signed_bounce(READERS[37])
    status, _ = ses.send(message, **{"x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert status == 403
    assert ses.served.suppressed(READERS[37]) is None


def test_a_signed_notification_with_a_huge_recipient_list_is_refused_whole(ses: SES) -> None:
    recipients = [{"emailAddress": f"many{i}@example.net", "status": "5.1.1"} for i in range(101)]
    recipients[0] = {"emailAddress": READERS[38], "status": "5.1.1"}
    payload = aws.ses_bounce(recipients)
    before = ses.served.state()
    status, _ = ses.send(ses.signer.sign(aws.notification(payload, ses.sns.url(GOOD))))
    assert status == 413
    assert ses.served.state() == before


def test_get_and_other_methods_are_refused(ses: SES) -> None:
    for method in ("GET", "PUT", "DELETE"):
        assert ses.served.request(method, "/webhooks/ses") == 405


def test_a_flood_of_forgeries_leaves_the_server_answering(ses: SES) -> None:
    other = Signer.make()
    forged = [aws.as_body(other.sign(ses.signed_bounce(READERS[39]))) for _ in range(4)]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: ses.post(forged[i % 4])[0], range(400)))
    assert statuses == [403] * 400
    assert ses.served.suppressed(READERS[39]) is None
    assert ses.served.proc.poll() is None
    assert ses.post(b"{}", "application/json")[0] == 403
