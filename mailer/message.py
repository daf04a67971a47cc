"""Issue + subscriber -> the bytes of one MIME message; cheap, since nothing here parses or inlines."""

from __future__ import annotations

import binascii
import secrets
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate

from .config import Settings
from .console import SILENT, Voice
from .dkimsign import DkimSigner, dkim_signer
from .envelope import ReturnPaths, message_tag
from .headers import NAME_MAX, encode_text, mailbox, normalize_email, one_line, split_mailbox
from .render import Issue, Part
from .tokens import Keyring, load_keyring, unsubscribe_mailto, unsubscribe_url
from .transport import Pieces


class MessageFactory:
    """Build one subscriber's message from a rendered issue: one code path for send, --test and --eml."""

    def __init__(
        self,
        issue: Issue,
        settings: Settings,
        *,
        sign: Callable[[str], str],
        dkim: DkimSigner | None = None,
        return_paths: ReturnPaths | None = None,
        key_mark: str = "",
    ) -> None:
        self.issue = issue
        self.key_mark = key_mark  # the mark of the key `sign` uses, which the record keeps (keymarks.py)
        self.settings = settings
        self.sign = sign
        self.dkim = dkim
        self.return_paths = return_paths
        self.domain = settings.sender_domain
        self._date_cache: tuple[int, str] = (0, "")
        self._last_tag: tuple[str, bytes] = ("", b"")  # the last reader's (address, message tag)
        boundary = "==mailer-" + secrets.token_hex(12)
        self.boundary = boundary
        # written by hand, not with email.message: Python 3.11's folder turns a value such as
        # "=?utf-8?q?=0D=0ABcc:_x?=" into a real CR LF and so an extra header
        senders = [f"From: {mailbox(settings.from_name, settings.from_email)}"]
        reply_to = _reply_to(settings.reply_to)
        if reply_to:
            senders.append(f"Reply-To: {mailbox(*reply_to)}")
        list_id = f"List-Id: {mailbox(settings.list_name or settings.from_name, settings.effective_list_id)}"
        self._sender = [*senders, list_id]  # this host's part of every head (sender_identity)
        static = [
            *senders,
            f"Subject: {encode_text(issue.subject)}",
            list_id,
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
        ]
        self._static_headers = "".join(line + "\r\n" for line in static).encode("ascii")
        self._text_head = _part_head(TEXT_PLAIN, issue.text, boundary)
        self._html_head = _part_head("text/html", issue.html, boundary)
        self._tail = f"\r\n--{boundary}--\r\n".encode("ascii")
        self._shared = _shared_pieces(
            (self._text_head, issue.text), (self._html_head, issue.html), self._tail
        )
        self._seven: tuple[bytes, bytes, tuple[bytes, ...], tuple[bytes, ...]] | None = None

    def message_id(self, email: str) -> str:
        """A Message-ID that is the same every time this issue goes to this subscriber.

        It carries the message's tag (envelope.message_tag), so a bounce that quotes it names the reader.
        """
        return f"<{self.issue.issue_id}.{self.tag(email).hex()}@{self.domain}>"

    def tag(self, email: str) -> bytes:
        """The tag of this issue's message to `email`: one BLAKE2b for the reader's Message-ID, envelope
        sender and delivery record, which a send asks for one after the other."""
        last = self._last_tag  # one read: another thread may replace it meanwhile
        if last[0] != email:
            last = self._last_tag = (email, message_tag(self.issue.issue_id, email))
        return last[1]

    def sender_identity(self) -> str:
        """Who every message says it is from and who vouches for it, as this host's settings make them: From,
        Reply-To, List-Id, the Message-ID's domain and the DKIM signer. Two hosts that send one issue must
        agree on it (workers.fingerprint): else part of the list gets mail that replies elsewhere or that
        its provider junks (another From or no DKIM signature, DMARC)."""
        signer = self.dkim.identity if self.dkim is not None else "no DKIM"
        return "\n".join([*self._sender, f"Message-ID domain: {self.domain}", signer])

    def envelope_sender(self, email: str) -> str:
        """MAIL FROM for this subscriber's message: its own signed bounce address, else from_email."""
        if self.return_paths is None:
            return self.settings.from_email
        return self.return_paths.address(self.tag(email))

    def unsubscribe_url(self, email: str) -> str:
        """The subscriber's own unsubscribe link."""
        return unsubscribe_url(self.settings, self.sign(email))

    def build(self, email: str, name: str = "", fields: Mapping[str, str] | None = None) -> bytes:
        """The whole message for one subscriber, CRLF line endings, ready for SMTP DATA."""
        message = bytes(Pieces(self._personal(email, name, fields), self._shared))
        if self.dkim is not None:
            message = self.dkim(message)
        return message

    def build_pieces(self, email: str, name: str = "", fields: Mapping[str, str] | None = None) -> Pieces:
        """build() in the pieces the send hands the transport: the parts' text, the same objects for every
        reader, between this reader's head and values, so SMTP's encoding of the text is done once per issue.

        Its `seven_bit` builds the same message with 7-bit parts, for a server without 8BITMIME.
        """

        def seven_bit() -> bytes:
            return self.build_seven_bit(email, name, fields)

        if self.dkim is not None:  # the signature covers the whole message: one piece, encoded whole
            return Pieces((self.build(email, name, fields),), (b"",), seven_bit)
        return Pieces(self._personal(email, name, fields), self._shared, seven_bit)

    def _personal(self, email: str, name: str, fields: Mapping[str, str] | None) -> tuple[bytes, ...]:
        """The head and the personal values, in the order _shared_pieces pairs them with the shared text."""
        head, values = self._head(email, name, fields)
        personal = [head]
        for part in (self.issue.text, self.issue.html):
            if part.eight_bit:
                personal += part.values(values)
            else:  # quoted-printable: encoded whole, per subscriber
                personal.append(_qp(part.fill(values)))
        return tuple(personal)

    def build_seven_bit(self, email: str, name: str = "", fields: Mapping[str, str] | None = None) -> bytes:
        """The message with both parts quoted-printable (every line ASCII); RFC 6152.

        The parts' fixed chunks are encoded once per issue, on first use, each ending in a line break
        or a soft one ("=" CRLF); per message only the personal values are encoded, each followed by a
        soft break. A reader's program decodes exactly the text of the 8-bit message.
        """
        if self._seven is None:
            issue, boundary = self.issue, self.boundary
            self._seven = (
                _part_head(TEXT_PLAIN, issue.text, boundary, seven_bit=True),
                _part_head("text/html", issue.html, boundary, seven_bit=True),
                tuple(_soft_end(_qp(c)) for c in issue.text.chunks),
                tuple(_soft_end(_qp(c)) for c in issue.html.chunks),
            )
        text_head, html_head, text_chunks, html_chunks = self._seven
        head, values = self._head(email, name, fields)
        out = [head]
        for part_head, part, chunks in ((text_head, self.issue.text, text_chunks),
                                        (html_head, self.issue.html, html_chunks)):  # fmt: skip
            out += (part_head, chunks[0])
            for value, chunk in zip(part.values(values), chunks[1:], strict=True):
                out += (_soft_end(_qp(value)), chunk)
        out.append(self._tail)
        message = b"".join(out)
        if self.dkim is not None:
            message = self.dkim(message)
        return message

    def _head(self, email: str, name: str, fields: Mapping[str, str] | None) -> tuple[bytes, dict[str, str]]:
        token = self.sign(email)
        values = {k: one_line(v)[:200] for k, v in fields.items()} if fields else {}
        values["name"] = name = one_line(name)[:NAME_MAX]
        values["email"] = email
        values["unsubscribe_url"] = url = unsubscribe_url(self.settings, token)
        head = (  # one string, encoded once
            f"To: {mailbox(name, email)}\r\nDate: {self._date()}\r\nMessage-ID: {self.message_id(email)}\r\n"
            f"List-Unsubscribe: <{url}>,\r\n <{unsubscribe_mailto(self.settings, token)}>\r\n\r\n"
        )
        return self._static_headers + head.encode(), values

    def _date(self) -> str:
        date = self._date_cache  # one read: another thread may replace it meanwhile
        now = int(time.time())
        if date[0] != now:
            date = self._date_cache = (now, formatdate(now, localtime=True))
        return date[1]


def _reply_to(value: str) -> tuple[str, str] | None:
    """`address` or `Name <address>` as (name, ASCII address); anything else is left out, not guessed at.

    config.py refuses such a value with a message; this is for settings made in code.
    """
    parts = split_mailbox(one_line(value))
    if parts is None:
        return None
    try:
        address = normalize_email(parts[1])
    except ValueError:
        return None
    return (parts[0], address) if address.isascii() else None


# the text part's lines are wrapped for format=flowed, delsp=yes (see mailer/linebreak.py)
TEXT_PLAIN = "text/plain; format=flowed; delsp=yes"


def _part_head(content_type: str, part: Part, boundary: str, *, seven_bit: bool = False) -> bytes:
    cte = "8bit" if part.eight_bit and not seven_bit else "quoted-printable"
    return (
        f'\r\n--{boundary}\r\nContent-Type: {content_type}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode("ascii")


def _shared_pieces(*layout: tuple[bytes, Part] | bytes) -> tuple[bytes, ...]:
    """The text every reader's message shares, one piece after each personal one (the head, then each value;
    a quoted-printable part is one personal piece, encoded per reader): what MessageFactory._personal's
    pieces are paired with.
    """
    shared: list[bytes] = []
    run = b""  # the shared text since the last personal piece (the head, before the first of them)
    for item in layout:
        if isinstance(item, bytes):
            run += item
            continue
        part_head, part = item
        run += part_head
        if not part.eight_bit:
            shared.append(run)
            run = b""
            continue
        run += part.chunks[0]
        for chunk in part.chunks[1:]:
            shared.append(run)
            run = chunk
    shared.append(run)
    return tuple(shared)


def _qp(data: bytes) -> bytes:
    """Quoted-printable with CRLF line ends; whitespace at the end of `data` is encoded, so it survives."""
    return binascii.b2a_qp(data.replace(b"\r\n", b"\n"), header=False).replace(b"\n", b"\r\n")


def _soft_end(encoded: bytes) -> bytes:
    """Quoted-printable text ending in a line break, or else in a soft one; lines of <= 76 characters."""
    if not encoded or encoded.endswith(b"\r\n"):
        return encoded
    last = encoded.rfind(b"\n") + 1
    if len(encoded) - last > 75:  # no room for the "=": break the last line earlier, not inside an =XX
        cut = last + 73
        while b"=" in encoded[cut - 2 : cut]:
            cut -= 1
        encoded = encoded[:cut] + b"=\r\n" + encoded[cut:]
    return encoded + b"=\r\n"


def make_factory(
    issue: Issue, settings: Settings, *, console: Voice = SILENT, keyring: Keyring | None = None
) -> MessageFactory:
    """The factory with the shared unsubscribe key (`keyring`, checked against the record by keymarks.py;
    else as load_keyring finds it, made on first use and said through `console`) and DKIM."""
    keyring = keyring or load_keyring(settings, console=console)
    list_id = settings.token_scope
    return_paths = ReturnPaths(settings.bounce_address, keyring) if settings.bounce_address else None
    return MessageFactory(
        issue,
        settings,
        sign=lambda email: keyring.sign(email, list_id),
        dkim=dkim_signer(settings),
        return_paths=return_paths,
        key_mark=keyring.marks[0],
    )
