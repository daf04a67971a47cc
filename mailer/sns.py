"""Amazon SNS messages posted to `mailer serve`: only genuine ones, for a topic the publisher named, count.

Anyone can POST JSON that looks like SNS. A message is believed only when its signature (RSA over the
canonical string of its type's fields, SHA1 for SignatureVersion 1, SHA256 for 2) verifies with the
certificate at its SigningCertURL, and that URL is https on an SNS host, so the certificate is one SNS
served over TLS. The checks run cheapest first: a forged message for a foreign topic costs no fetch.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
import re
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

log = logging.getLogger("mailer.sns")

# The fields each type signs, in the order of the canonical string (AWS: "Verifying the signatures of
# Amazon SNS messages"); Subject is signed only when the message has one.
SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}  # fmt: skip
SIGNED["UnsubscribeConfirmation"] = SIGNED["SubscriptionConfirmation"]
OPTIONAL = frozenset({"Subject"})
DEFAULT_HOSTS = "sns.*.amazonaws.com, sns.*.amazonaws.com.cn"
# SNS gives up retrying an HTTP delivery within an hour; an older message is a replay. Clocks may differ.
MAX_AGE = timedelta(hours=1)
MAX_SKEW = timedelta(minutes=5)
FETCH_TIMEOUT = 5.0  # seconds, for the certificate and the confirmation
MAX_CERT_BYTES = 16 * 1024
CACHED_CERTS = 32  # SNS rotates its signing certificate rarely; a few URLs cover every region in use
CACHED_FAILURES = 256
FAILED_FOR = 600.0  # seconds a URL that served no certificate is refused without asking again


class Invalid(Exception):
    """Not a genuine SNS message for this publisher; the text says which check failed (no secret in it)."""


class Unreachable(Invalid):
    """SNS could not be asked (the certificate or confirmation fetch failed): worth a retry by SNS."""


@dataclass(frozen=True, slots=True)
class Message:
    """A verified SNS message."""

    type: str  # Notification, SubscriptionConfirmation or UnsubscribeConfirmation
    message_id: str
    topic_arn: str
    timestamp: datetime
    message: str  # for a Notification, the publisher's payload (SES: a JSON document)
    subscribe_url: str  # the confirmation link; '' for a Notification


def host_patterns(setting: str) -> list[re.Pattern[str]]:
    """`sns.*.amazonaws.com, ...` as patterns of a URL's host[:port]; `*` stands for one DNS label."""
    patterns = []
    for item in filter(None, (part.strip().lower() for part in setting.split(","))):
        body = r"[a-z0-9-]+".join(re.escape(piece) for piece in item.split("*"))
        patterns.append(re.compile(body))
    return patterns


def _time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"Timestamp {value[:40]!r} is not a time") from None
    if moment.tzinfo is None:
        raise Invalid(f"Timestamp {value[:40]!r} has no time zone")
    return moment


class Verifier:
    """Checks SNS messages for a set of topics; one instance serves every thread of the app."""

    def __init__(self, topics: frozenset[str], hosts: str = DEFAULT_HOSTS) -> None:
        self.topics = topics
        self.hosts = host_patterns(hosts)
        self._certs: OrderedDict[str, Certificate] = OrderedDict()
        self._failed: OrderedDict[str, tuple[float, Invalid]] = OrderedDict()  # when, and why
        self._fetching: dict[str, threading.Lock] = {}  # one fetch per URL, even when a burst names it
        self._lock = threading.Lock()  # guards the three

    def verify(self, body: Any, claimed_type: str = "") -> Message:
        """The message, once every check passed; Invalid naming the first that failed."""
        if not isinstance(body, dict):
            raise Invalid("not a JSON object")
        kind = body.get("Type")
        if kind not in SIGNED:
            raise Invalid(f"Type {str(kind)[:40]!r} is not an SNS message type")
        if claimed_type and claimed_type != kind:
            raise Invalid(f"x-amz-sns-message-type {claimed_type[:40]!r} differs from Type {kind!r}")
        for name in (*SIGNED[kind], "SignatureVersion", "Signature", "SigningCertURL"):
            value = body.get(name)
            if value is None and name in OPTIONAL:
                continue
            if not isinstance(value, str) or (not value and name not in OPTIONAL and name != "Message"):
                raise Invalid(f"{name} is missing" if value is None else f"{name} is not a string")
        if body["TopicArn"] not in self.topics:
            raise Invalid(f"TopicArn {body['TopicArn'][:200]!r} is not one of ses_topic_arns")
        algorithm = {"1": "SHA1", "2": "SHA256"}.get(body["SignatureVersion"])
        if algorithm is None:
            raise Invalid(f"SignatureVersion {body['SignatureVersion'][:10]!r} is not 1 or 2")
        timestamp = _time(body["Timestamp"])
        now = datetime.now(UTC)
        if timestamp < now - MAX_AGE:
            raise Invalid(f"Timestamp {body['Timestamp']} is more than an hour old (a replay)")
        if timestamp > now + MAX_SKEW:
            raise Invalid(f"Timestamp {body['Timestamp']} is in the future")
        try:
            signature = base64.b64decode(body["Signature"], validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("Signature is not base64") from None
        self.check_url(body["SigningCertURL"], "SigningCertURL")
        if not urlsplit(body["SigningCertURL"]).path.endswith(".pem") or "?" in body["SigningCertURL"]:
            raise Invalid("SigningCertURL is not the address of a .pem certificate")
        if kind != "Notification":
            self.check_url(body["SubscribeURL"], "SubscribeURL")
        canonical = "".join(f"{name}\n{body[name]}\n" for name in SIGNED[kind] if body.get(name) is not None)
        certificate = self.certificate(body["SigningCertURL"])
        _check_signature(certificate, signature, canonical.encode(), algorithm, now)
        return Message(
            kind,
            body["MessageId"],
            body["TopicArn"],
            timestamp,
            body["Message"],
            body.get("SubscribeURL") or "",
        )

    def check_url(self, url: str, name: str) -> None:
        """Invalid unless url is https, on an SNS host, with no credentials in it."""
        if not all(33 <= ord(c) <= 126 for c in url):
            raise Invalid(f"{name} is not a URL (spaces, control or non-ASCII characters)")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (a bad port raises here)
        except ValueError:
            raise Invalid(f"{name} is not a URL") from None
        if parts.scheme != "https":
            raise Invalid(f"{name} is not https: {url[:100]!r}")
        if parts.username is not None or not any(p.fullmatch(parts.netloc.lower()) for p in self.hosts):
            raise Invalid(f"{name} is not on an SNS host (sns_hosts): {parts.netloc[:100]!r}")

    def certificate(self, url: str) -> Certificate:
        """The signing certificate SNS serves at url, fetched once and kept.

        A URL that served no certificate is not asked again for FAILED_FOR seconds, and a slow fetch holds
        up only the messages naming the same URL: a forger cannot make every message wait on a dead URL.
        """
        with self._lock:
            known = self._known(url)
            fetching = self._fetching.setdefault(url, threading.Lock()) if known is None else None
        if fetching is not None:
            with fetching:
                with self._lock:
                    known = self._known(url)  # fetched by another thread meanwhile
                if known is None:
                    try:
                        known = _certificate(url)
                    except Unreachable:
                        raise  # SNS may answer the next try: nothing kept
                    except Invalid as exc:
                        known = exc
                    self._keep(url, known)
        if isinstance(known, Invalid):
            raise Invalid(str(known))
        assert known is not None  # kept, or fetched just now
        return known

    def _known(self, url: str) -> Certificate | Invalid | None:
        """What a fetch of url gave before, if it is still kept (the caller holds the lock)."""
        if url in self._certs:
            self._certs.move_to_end(url)
            return self._certs[url]
        failed = self._failed.get(url)
        if failed is not None and time.monotonic() - failed[0] < FAILED_FOR:
            return failed[1]
        return None

    def _keep(self, url: str, known: Certificate | Invalid) -> None:
        with self._lock:
            if isinstance(known, Invalid):
                self._failed[url] = (time.monotonic(), known)
                self._failed.move_to_end(url)
                if len(self._failed) > CACHED_FAILURES:
                    self._failed.popitem(last=False)
            else:
                self._certs[url] = known
                if len(self._certs) > CACHED_CERTS:
                    self._certs.popitem(last=False)
            self._fetching.pop(url, None)

    def confirm(self, message: Message) -> None:
        """Confirm a verified subscription by visiting its SubscribeURL (checked by verify)."""
        query = parse_qs(urlsplit(message.subscribe_url).query)
        if query.get("Action") != ["ConfirmSubscription"] or query.get("TopicArn") != [message.topic_arn]:
            raise Invalid("SubscribeURL does not confirm a subscription to this topic")
        _get(message.subscribe_url, 64 * 1024)


def _check_signature(
    certificate: Certificate, signature: bytes, data: bytes, algorithm: str, now: datetime
) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise Invalid(
            f"the signing certificate is not valid now (valid {certificate.not_valid_before_utc:%Y-%m-%d}"
            f" to {certificate.not_valid_after_utc:%Y-%m-%d})"
        )
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Invalid("the signing certificate's key is not RSA")
    digest = hashes.SHA1() if algorithm == "SHA1" else hashes.SHA256()
    try:
        key.verify(signature, data, padding.PKCS1v15(), digest)
    except InvalidSignature:
        raise Invalid("the signature does not verify") from None


def _certificate(url: str) -> Certificate:
    from cryptography.x509 import load_pem_x509_certificate

    try:
        return load_pem_x509_certificate(_get(url, MAX_CERT_BYTES))
    except ValueError:
        raise Invalid(f"SigningCertURL {url[:100]!r} did not serve a PEM certificate") from None


def _get(url: str, limit: int) -> bytes:
    """The body of a GET over verified TLS, at most limit bytes; no redirects, no proxies."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    assert parts.hostname is not None  # check_url made sure
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, timeout=FETCH_TIMEOUT, context=ssl.create_default_context()
    )
    try:
        conn.request("GET", target, headers={"User-Agent": "mailer"})
        answer = conn.getresponse()
        body = answer.read(limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"could not fetch {ascii(parts.netloc + parts.path[:100])}: {exc}") from None
    finally:
        conn.close()
    if answer.status >= 500:
        raise Unreachable(f"{ascii(parts.netloc + parts.path[:100])} answered {answer.status}")
    if answer.status != 200:
        raise Invalid(f"{ascii(parts.netloc + parts.path[:100])} answered {answer.status}")
    if len(body) > limit:
        raise Invalid(f"{ascii(parts.netloc + parts.path[:100])} answered with more than {limit} bytes")
    return body
