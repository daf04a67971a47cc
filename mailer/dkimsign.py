"""DKIM signatures (RFC 6376): rsa-sha256, c=relaxed/simple, the RSA done by `cryptography` (OpenSSL).

Written here rather than left to dkimpy, which mailer called before: dkimpy parses the PEM key and signs with
RSA in pure Python at every message, 8.9 ms of CPU each (0.3 ms with OpenSSL), 9-10 times what the rest of
a send costs per message (docs/benchmarks.md). What is ours is only the canonical forms and the header's
layout; dkimpy's verifier checks every signature in the tests (tests/test_dkim.py).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time

from .config import Settings
from .errors import ConfigError

# the headers the signature covers: RFC 8058 wants List-Unsubscribe and List-Unsubscribe-Post signed; one
# that a message lacks is named all the same, so that none can be added on the way without breaking it
HEADERS = (
    b"from", b"to", b"subject", b"date", b"message-id", b"list-id",
    b"list-unsubscribe", b"list-unsubscribe-post", b"mime-version", b"content-type",
)  # fmt: skip

_UNFOLD = re.compile(rb"\r\n(?=[ \t])")
_WSP = re.compile(rb"[ \t]+")
_WIDTH = 78  # RFC 5322's line length that a header's lines keep to


class DkimSigner:
    """Signs whole messages (CRLF line ends) with one key; its `identity` (selector, domain, a digest of the
    key) tells one signer from another."""

    def __init__(self, key_file: str, key: bytes, selector: bytes, domain: bytes) -> None:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        try:
            private = serialization.load_pem_private_key(key, password=None)
        except TypeError:  # a passphrase it cannot ask for
            raise ConfigError(
                f"{key_file}: the DKIM key is encrypted; give it without a passphrase"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise ConfigError(f"{key_file}: not a PEM private key (DKIM needs an RSA key)") from None
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ConfigError(f"{key_file}: not an RSA key (DKIM's rsa-sha256 needs one)")
        if private.key_size < 1024:  # RFC 8301 3.2: verifiers must not take a signature of a smaller key
            raise ConfigError(f"{key_file}: a {private.key_size}-bit RSA key; DKIM needs 1024 bits or more")
        self._private = private
        self._scheme = (padding.PKCS1v15(), hashes.SHA256())  # made once, not per message
        digest = hashlib.sha256(key).hexdigest()[:16]
        self.identity = f"DKIM s={selector.decode()} d={domain.decode()} key sha256 {digest}"
        self._tags = [
            b"v=1;", b"a=rsa-sha256;", b"c=relaxed/simple;", b"d=" + domain + b";", b"i=@" + domain + b";",
            b"q=dns/txt;", b"s=" + selector + b";",
        ]  # fmt: skip
        self._names = b" : ".join(HEADERS).split(b" ")
        self._names[-1] += b";"

    def __call__(self, message: bytes) -> bytes:
        """The message with its DKIM-Signature header on top."""
        split = message.find(b"\r\n\r\n")
        head, body = (message, b"") if split < 0 else (message[: split + 2], message[split + 4 :])
        body_hash = base64.b64encode(hashlib.sha256(_simple_body(body)).digest())
        words = [*self._tags, b"t=%d;" % time.time(), b"h=" + self._names[0], *self._names[1:]]
        words += [b"bh=" + body_hash + b";", b"b="]
        header = _fold(b"DKIM-Signature:", words)
        signed = _signed_headers(head) + _relaxed(header)
        signature = base64.b64encode(self._private.sign(signed, *self._scheme))
        room = _WIDTH - (len(header) - header.rfind(b"\n") - 1)  # b= begins on the header's last line
        chunks = [signature[:room]]
        chunks += [signature[i : i + _WIDTH - 1] for i in range(room, len(signature), _WIDTH - 1)]
        return header + b"\r\n ".join(chunks) + b"\r\n" + message


def _simple_body(body: bytes) -> bytes:
    """RFC 6376 3.4.3: the body without its trailing empty lines, ending in one CRLF."""
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n"


def _relaxed(field: bytes) -> bytes:
    """RFC 6376 3.4.2: one header field (name, colon, value; folded or not) in its relaxed form, without the
    CRLF that ends it."""
    name, _, value = _UNFOLD.sub(b"", field).partition(b":")
    return name.rstrip(b" \t").lower() + b":" + _WSP.sub(b" ", value).strip(b" ")


def _signed_headers(head: bytes) -> bytes:
    """The relaxed forms of the headers h= names, each the last of its name in the head (RFC 6376 5.4.2:
    a name listed once signs its bottom instance), in h='s order, each ending in CRLF."""
    last: dict[bytes, bytes] = {}
    for field in re.split(rb"\r\n(?![ \t])", head.removesuffix(b"\r\n")):
        name = field.partition(b":")[0].rstrip(b" \t").lower()
        if name in HEADERS:
            last[name] = field
    return b"".join(_relaxed(last[name]) + b"\r\n" for name in HEADERS if name in last)


def _fold(start: bytes, words: list[bytes]) -> bytes:
    """`start` and the words, space-separated, in lines of at most _WIDTH characters after the first
    (continuation lines begin with a space), and no CRLF at the end."""
    lines, line = [], start
    for word in words:
        if len(line) + 1 + len(word) > _WIDTH and line.strip():
            lines.append(line)
            line = b""
        line += b" " + word
    lines.append(line)
    return b"\r\n".join(lines)


def dkim_signer(settings: Settings) -> DkimSigner | None:
    """The DKIM signer of these settings, or None when DKIM is off."""
    if not settings.dkim_key_file:
        return None
    from pathlib import Path

    try:
        key = Path(settings.dkim_key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{settings.dkim_key_file}: cannot read the DKIM key: {exc.strerror}") from None
    selector = settings.dkim_selector.encode()
    domain = (settings.dkim_domain or settings.sender_domain).encode()
    if not selector:
        raise ConfigError("dkim_selector must be set when dkim_key_file is")
    return DkimSigner(settings.dkim_key_file, key, selector, domain)
