"""A local stand-in for Amazon SNS: signing certificates, an HTTPS server for them, and signed messages.

The HTTPS server's certificate comes from a throwaway CA (tests/smtpd.make_tls_files); `mailer serve` trusts
it through SSL_CERT_FILE, as OpenSSL does for any program. The canonical string is written out here from
AWS's documentation ("Verifying the signatures of Amazon SNS messages"), not taken from mailer.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.smtpd import HOST, TLSFiles, make_tls_files

REGION = "us-east-1"
TOPIC = f"arn:aws:sns:{REGION}:123456789012:mailer-bounces"
GOOD = "/SimpleNotificationService-good.pem"
EXPIRED = "/SimpleNotificationService-expired.pem"
NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
SUBSCRIPTION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


def certificate(key: rsa.RSAPrivateKey, *, expired: bool = False) -> bytes:
    """A self-signed certificate (PEM) for key, valid now or ended yesterday."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    if expired:
        start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Signer:
    """An RSA key and the certificate that carries it."""

    key: rsa.RSAPrivateKey
    pem: bytes

    @classmethod
    def make(cls) -> Signer:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key, certificate(key))

    def expired(self) -> bytes:
        """A certificate for the same key that ended yesterday."""
        return certificate(self.key, expired=True)

    def sign(self, message: dict[str, Any], version: str = "1") -> dict[str, Any]:
        """The message with SignatureVersion and Signature over its type's canonical string."""
        names = NOTIFICATION if message["Type"] == "Notification" else SUBSCRIPTION
        text = "".join(f"{name}\n{message[name]}\n" for name in names if name in message)
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), digest)
        return {**message, "SignatureVersion": version, "Signature": base64.b64encode(signature).decode()}


@dataclass
class FakeSNS:
    """The HTTPS server and what it was asked: certificate fetches and subscription confirmations."""

    tls: TLSFiles
    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stalls: dict[str, tuple[threading.Event, threading.Event]] = field(default_factory=dict)

    def stall(self, path: str) -> tuple[threading.Event, threading.Event]:
        """Make requests for path wait: (set when one arrives, set it to let them go on to a 404)."""
        events = threading.Event(), threading.Event()
        self.stalls[path] = events
        return events

    @property
    def host(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, path: str) -> str:
        return f"https://{self.host}{path}"

    def fetched(self, path: str) -> int:
        with self.lock:
            return sum(1 for seen in self.requests if seen.partition("?")[0] == path.partition("?")[0])

    def confirmations(self) -> list[str]:
        with self.lock:
            return [seen for seen in self.requests if "Action=ConfirmSubscription" in seen]


@contextmanager
def fake_sns(directory: Path, files: dict[str, bytes]) -> Iterator[FakeSNS]:
    """An HTTPS server on 127.0.0.1 serving `files` by path and answering ConfirmSubscription."""
    fake = FakeSNS(make_tls_files(directory), files=files)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            with fake.lock:
                fake.requests.append(self.path)
            path, _, query = self.path.partition("?")
            if path in fake.stalls:
                arrived, release = fake.stalls[path]
                arrived.set()
                release.wait(60)
            if path == "/" and "Action=ConfirmSubscription" in query:
                body = b"<ConfirmSubscriptionResponse/>"
            elif path in fake.files:
                body = fake.files[path]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.socket = fake.tls.server_context().wrap_socket(server.socket, server_side=True)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def now_iso(delta: datetime.timedelta = datetime.timedelta()) -> str:
    """A Timestamp as SNS writes it (milliseconds, Z)."""
    moment = datetime.datetime.now(datetime.UTC) + delta
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def notification(payload: dict[str, Any], cert_url: str, **fields: Any) -> dict[str, Any]:
    """An unsigned SNS Notification carrying an SES payload."""
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Message": json.dumps(payload),
        "Timestamp": now_iso(),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": f"{cert_url.rpartition('/')[0]}/?Action=Unsubscribe",
        **fields,
    }


def subscription(kind: str, host: str, cert_url: str, **fields: Any) -> dict[str, Any]:
    """An unsigned SubscriptionConfirmation or UnsubscribeConfirmation for TOPIC."""
    token = uuid.uuid4().hex * 2
    return {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "Token": token,
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        "SubscribeURL": f"https://{host}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}",
        "Timestamp": now_iso(),
        "SigningCertURL": cert_url,
        **fields,
    }


def ses_bounce(
    recipients: list[dict[str, str]],
    *,
    bounce_type: str = "Permanent",
    form: str = "notificationType",
    **mail: Any,
) -> dict[str, Any]:
    """An SES bounce notification (`form`: notificationType, or event publishing's eventType)."""
    return {
        form: "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": recipients,
            "timestamp": now_iso(),
            "feedbackId": f"0100{uuid.uuid4().hex}-000000",
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        },
        "mail": {"timestamp": now_iso(), "messageId": uuid.uuid4().hex, **mail},
    }


def ses_complaint(addresses: list[str], *, form: str = "notificationType", **mail: Any) -> dict[str, Any]:
    """An SES complaint notification from a feedback loop."""
    return {
        form: "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": a} for a in addresses],
            "timestamp": now_iso(),
            "feedbackId": f"0100{uuid.uuid4().hex}-000000",
            "complaintFeedbackType": "abuse",
        },
        "mail": {"timestamp": now_iso(), "messageId": uuid.uuid4().hex, **mail},
    }


def as_body(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()
