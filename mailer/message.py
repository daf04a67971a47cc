"""Issue + subscriber -> the bytes of one MIME message; cheap, since nothing here parses or inlines."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate

from .config import Settings
from .render import Issue, Part
from .tokens import load_keyring, unsubscribe_mailto, unsubscribe_url
from .transport import Stuffed, stuffed_body

_SPECIALS = re.compile(r'[\x00-\x1f\x7f()<>@,;:\\".\[\]]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_ADDRESS = r"[^\s<>()\[\]\\,;:\"@]+@[A-Za-z0-9.-]+"
_REPLY_TO = re.compile(rf"(?P<name>[^<>]*?) ?<(?P<bracketed>{_ADDRESS})>|(?P<bare>{_ADDRESS})")
NAME_MAX = 100


def one_line(value: str) -> str:
    """Remove CR, LF, NUL and other controls, so no value can start a header of its own."""
    return " ".join(_CONTROL.sub(" ", value).split())


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 base64 words of at most 75 characters, never splitting a character."""
    words: list[str] = []
    raw = b""
    for ch in text:
        b = ch.encode("utf-8")
        if len(raw) + len(b) > 45:
            words.append("=?utf-8?b?" + base64.b64encode(raw).decode("ascii") + "?=")
            raw = b""
        raw += b
    if raw:
        words.append("=?utf-8?b?" + base64.b64encode(raw).decode("ascii") + "?=")
    return words


def _needs_encoding(text: str) -> bool:
    # "=?" would be decoded by the reader as an encoded word (and by Python 3.11's own folder,
    # which then wrote a decoded CR LF into the header): such text is encoded like non-ASCII
    return not text.isascii() or "=?" in text or any(len(word) > 70 for word in text.split(" "))


def encode_display_name(name: str) -> str:
    """A display name as RFC 5322 allows it: quoted ASCII, or RFC 2047 encoded words (each <= 75 chars)."""
    name = one_line(name)[:NAME_MAX]
    if not name:
        return ""
    if not _needs_encoding(name):
        if not _SPECIALS.search(name):
            return name
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "\r\n ".join(_encoded_words(name))


def encode_text(value: str) -> str:
    """An unstructured header value (Subject): one line, folded at spaces, encoded words when needed."""
    value = one_line(value)
    if _needs_encoding(value):
        return "\r\n ".join(_encoded_words(value))
    lines = [""]
    for word in value.split(" "):
        if lines[-1] and len(lines[-1]) + 1 + len(word) > 70:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}" if lines[-1] else word
    return "\r\n ".join(lines)


def _mailbox(name: str, address: str) -> str:
    display = encode_display_name(name)
    return f"{display} <{address}>" if display else address


class MessageFactory:
    """Build one subscriber's message from a rendered issue: one code path for send, --test and --eml."""

    def __init__(
        self,
        issue: Issue,
        settings: Settings,
        *,
        sign: Callable[[str], str],
        dkim: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.issue = issue
        self.settings = settings
        self.sign = sign
        self.dkim = dkim
        self.domain = settings.sender_domain
        self._date_cache: tuple[int, bytes] = (0, b"")
        boundary = "==mailer-" + secrets.token_hex(12)
        self.boundary = boundary
        # written by hand, not with email.message: Python 3.11's folder turns a value such as
        # "=?utf-8?q?=0D=0ABcc:_x?=" into a real CR LF and so an extra header
        static = [f"From: {_mailbox(settings.from_name, settings.from_email)}"]
        reply_to = _REPLY_TO.fullmatch(one_line(settings.reply_to))
        if reply_to:  # "address" or "Name <address>"; anything else is left out, not guessed at
            name = (reply_to["name"] or "").strip().strip('"')
            static.append(f"Reply-To: {_mailbox(name, reply_to['bracketed'] or reply_to['bare'])}")
        static += [
            f"Subject: {encode_text(issue.subject)}",
            f"List-Id: {_mailbox(settings.list_name or settings.from_name, settings.effective_list_id)}",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
        ]
        self._static_headers = "".join(line + "\r\n" for line in static).encode("ascii")
        self._text_head = _part_head("text/plain", issue.text, boundary)
        self._html_head = _part_head("text/html", issue.html, boundary)
        self._tail = f"\r\n--{boundary}--\r\n".encode("ascii")
        text, html = _stuffed_twin(issue.text), _stuffed_twin(issue.html)
        self._stuffed = (text, html) if text is not None and html is not None else None

    def message_id(self, email: str) -> str:
        """A Message-ID that is the same every time this issue goes to this subscriber."""
        digest = hashlib.blake2b(
            f"{self.issue.issue_id}\0{email.lower()}".encode(), digest_size=10
        ).hexdigest()
        return f"<{self.issue.issue_id}.{digest}@{self.domain}>"

    def unsubscribe_url(self, email: str) -> str:
        """The subscriber's own unsubscribe link."""
        return unsubscribe_url(self.settings, self.sign(email))

    def build(self, email: str, name: str = "", fields: Mapping[str, str] | None = None) -> bytes:
        """The whole message for one subscriber, CRLF line endings, ready for SMTP DATA."""
        head, values = self._head(email, name, fields)
        message = b"".join(
            (
                head,
                self._text_head,
                _encode(self.issue.text, values),
                self._html_head,
                _encode(self.issue.html, values),
                self._tail,
            )
        )
        if self.dkim is not None:
            message = self.dkim(message)
        return message

    def build_stuffed(self, email: str, name: str = "", fields: Mapping[str, str] | None = None) -> Stuffed:
        """build() as SMTP DATA carries it (dot-stuffed), from body parts stuffed once per issue.

        Equal to transport.stuffed_body(build(...)), without scanning the whole message each time.
        """
        if self._stuffed is None or self.dkim is not None:
            return stuffed_body(self.build(email, name, fields))
        head, values = self._head(email, name, fields)
        if b"\n." in head or any("\r" in v or "\n" in v for v in values.values()):
            return stuffed_body(self.build(email, name, fields))
        text, html = self._stuffed
        return Stuffed(
            b"".join(
                (head, self._text_head, text.fill(values), self._html_head, html.fill(values), self._tail)
            )
        )

    def _head(self, email: str, name: str, fields: Mapping[str, str] | None) -> tuple[bytes, dict[str, str]]:
        token = self.sign(email)
        values = {k: one_line(v)[:200] for k, v in (fields or {}).items()}
        values["name"] = one_line(name)[:NAME_MAX]
        values["email"] = email
        values["unsubscribe_url"] = url = unsubscribe_url(self.settings, token)
        to = _mailbox(name, email)
        head = b"".join(
            (
                self._static_headers,
                f"To: {to}\r\n".encode(),
                b"Date: ",
                self._date(),
                f"\r\nMessage-ID: {self.message_id(email)}\r\n".encode(),
                f"List-Unsubscribe: <{url}>,\r\n <{unsubscribe_mailto(self.settings, token)}>\r\n".encode(),
                b"\r\n",
            )
        )
        return head, values

    def _date(self) -> bytes:
        now = int(time.time())
        if self._date_cache[0] != now:
            self._date_cache = (now, formatdate(now, localtime=True).encode("ascii"))
        return self._date_cache[1]


def _part_head(content_type: str, part: Part, boundary: str) -> bytes:
    cte = "8bit" if part.eight_bit else "quoted-printable"
    return (
        f'\r\n--{boundary}\r\nContent-Type: {content_type}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode("ascii")


def _stuffed_twin(part: Part) -> Part | None:
    """The part with every line-initial "." doubled, if no personal value can ever begin a line.

    Values hold no line break, so a value begins a line only right after a chunk that ends one (or
    is empty); where none does, stuffing the chunks once is stuffing every subscriber's part.
    """
    if not part.eight_bit:  # quoted-printable is encoded per subscriber: stuffed per message
        return None
    chunks = part.chunks
    for chunk in chunks:
        lines = chunk.count(b"\n")
        if lines != chunk.count(b"\r\n") or chunk.count(b"\r") != lines:
            return None
    if any(not chunks[i] or chunks[i].endswith(b"\n") for i in range(len(part.slots))):
        return None
    stuffed = [c.replace(b"\r\n.", b"\r\n..") for c in chunks]
    if stuffed[0].startswith(b"."):  # the part's first line follows its header's blank line
        stuffed[0] = b"." + stuffed[0]
    return dataclasses.replace(part, chunks=tuple(stuffed))


def _encode(part: Part, values: Mapping[str, str]) -> bytes:
    data = part.fill(values)
    if part.eight_bit:
        return data
    return binascii.b2a_qp(data.replace(b"\r\n", b"\n"), header=False).replace(b"\n", b"\r\n")


def dkim_signer(settings: Settings) -> Callable[[bytes], bytes] | None:
    """A DKIM signer whose h= covers the headers RFC 8058 needs signed, or None when DKIM is off."""
    if not settings.dkim_key_file:
        return None
    from pathlib import Path

    import dkim

    from .errors import ConfigError

    try:
        key = Path(settings.dkim_key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{settings.dkim_key_file}: cannot read the DKIM key: {exc.strerror}") from None
    selector = settings.dkim_selector.encode()
    domain = (settings.dkim_domain or settings.sender_domain).encode()
    if not selector:
        raise ConfigError("dkim_selector must be set when dkim_key_file is")
    headers = [
        b"from", b"to", b"subject", b"date", b"message-id", b"list-id",
        b"list-unsubscribe", b"list-unsubscribe-post", b"mime-version", b"content-type",
    ]  # fmt: skip

    def sign(message: bytes) -> bytes:
        try:
            signature: bytes = dkim.sign(message, selector, domain, key, include_headers=headers)
        except dkim.DKIMException as exc:
            raise ConfigError(f"{settings.dkim_key_file}: DKIM signing failed: {exc}") from None
        return signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + message

    return sign


def make_factory(
    issue: Issue, settings: Settings, *, notify: Callable[[str], None] | None = None
) -> MessageFactory:
    """The factory with the shared unsubscribe key (made on first use) and DKIM when configured."""
    keyring = load_keyring(settings, notify=notify)
    list_id = settings.token_scope
    return MessageFactory(
        issue, settings, sign=lambda email: keyring.sign(email, list_id), dkim=dkim_signer(settings)
    )
