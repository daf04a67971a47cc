"""Deliver finished messages: over SMTP on reused connections, or into the local outbox (a Maildir).

Every reply is classified by its code and the stage it answers, never by exception type: 2xx ok, 4xx (or no
reply at all) temporary, 5xx permanent for the one recipient when it is about that recipient. A 5xx about the
session (sender, login, policy, protocol, the message itself) and the problems that no retry of a single
message can fix (authentication refused, STARTTLS missing) raise TransportError: they stop the send instead
of failing every reader in turn. No reply to the end of a message leaves it in doubt (Outcome.in_doubt).
"""

from __future__ import annotations

import base64
import hmac
import itertools
import os
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from .config import Settings, smtp_port
from .console import SILENT, Voice
from .errors import ConfigError, TransportError
from .headers import one_line
from .ledger import OUTBOX, SMTP
from .private import make_folder, open_new

_BARE_EOL = re.compile(rb"\r\n|\r|\n")
_SECURITY_NAMES = {"starttls": "STARTTLS", "tls": "TLS", "none": "plain"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: the server's reply code (0 when there was none) and its text."""

    code: int
    text: str
    in_doubt: bool = False  # the whole message went out but no reply to its end came: it may have arrived
    stage: str = ""  # the command the reply answers ('RCPT', 'END' ...); '' when no server replied

    @property
    def ok(self) -> bool:
        """The server took responsibility for the message (2xx)."""
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        """The server refused the message for good (5xx); do not retry it."""
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code else self.text


Envelope = tuple[str, str]  # (sender, recipient) of a message: what MAIL FROM and RCPT TO carry

# What a connection's steps (Connection.steps) ask of whoever drives them, one at a time: CONNECT, open a
# session (the driver sends back open_session()'s result, or throws its exception in); GATE, wait until
# `ready` may be called without waiting (the outcome of the message before is committed); bytes, write
# them; a float, read the next reply within that many seconds (sent back as (code, text); an OSError,
# TimeoutError at the deadline, is thrown in). send() drives them itself, one connection in one thread;
# the send loop's pool drives every connection's from one thread (pool.Pool).
CONNECT = "connect"
GATE = "gate"
Step = str | bytes | float
Steps = Generator[Step, Any, "Outcome"]


class Connection(Protocol):
    """One session with the mail server (or the outbox), used by one thread for many messages."""

    def send(
        self,
        sender: str,
        recipient: str,
        data: Message,
        ready: Callable[[], None] | None = None,
        following: Callable[[], Envelope | None] | None = None,
    ) -> Outcome:
        """Deliver one message to one recipient; never raises for per-message problems.

        `ready`, if given, is called just before the point of no return (SMTP: the final "." of
        DATA; outbox: the rename into new/). If it raises, the message is not delivered (the SMTP
        session is dropped, so the server discards it) and the exception propagates.
        `following`, if given, may be called after `ready` returned: it names the message the caller
        will send next on this connection (None: none yet), whose commands may then go out with this
        message's end. The caller's next send must be that message.
        """
        ...

    def steps(
        self,
        sender: str,
        recipient: str,
        data: Message,
        ready: Callable[[], None] | None = None,
        following: Callable[[], Envelope | None] | None = None,
    ) -> Steps:
        """send() as steps for a driver (see Step): `ready` then only checks, it may not wait."""
        ...

    def wire(self) -> Wire | None:
        """The open session's socket, for a driver to read and write it; None without one."""
        ...

    def open_session(self) -> Outcome | None:
        """What a CONNECT step asks for: open a session; None once open, else why not."""
        ...

    def cut(self) -> None:
        """Close the session's socket as a failed read does (after an unreadable reply)."""
        ...

    def close(self) -> None:
        """End the session politely; safe to call twice."""
        ...


@dataclass(slots=True)
class Wire:
    """An open session as its driver sees it: the socket, the bytes read from it that no reply took yet
    (take_reply), and the seconds a write may stall."""

    sock: socket.socket
    buffer: bytearray
    timeout: float


class Transport(Protocol):
    """A destination for mail that hands out connections."""

    description: str
    destination: str  # the delivery record's name for it (ledger.SMTP or ledger.OUTBOX): kept apart

    def connect(self) -> Connection:
        """A new connection, opened lazily on its first send()."""
        ...


def make_transport(settings: Settings, console: Voice = SILENT) -> Transport:
    """The SMTP server when smtp_host is set, else the local outbox; a certificate not checked is said."""
    if settings.smtp_host:
        return SMTPTransport(settings, console)
    return OutboxTransport(settings.outbox_path)


_END = b".\r\n"


@dataclass(slots=True)
class Pieces:
    """A message as its builder hands it over: pieces that, joined, are its bytes (CRLF line ends).

    `personal[i]` comes before `shared[i]`. The shared pieces (the parts' text between the personal values)
    are the same objects in every message of an issue, so the transport encodes each once for SMTP DATA
    (DotStuffer) and per message only the personal ones: the head and the values, a few hundred bytes.
    `seven_bit`, when set, builds the same message with 7-bit parts (quoted-printable): what a server
    without 8BITMIME gets (RFC 6152). The builder makes it, not the transport, so that a DKIM signature
    covers the bytes that are sent; it is called only for such a server, so others pay nothing.
    """

    personal: tuple[bytes, ...]
    shared: tuple[bytes, ...]
    seven_bit: Callable[[], bytes] | None = None

    def __bytes__(self) -> bytes:
        return b"".join(itertools.chain.from_iterable(zip(self.personal, self.shared, strict=True)))


Message = bytes | Pieces  # what a connection sends: the bytes, or the builder's pieces of them


def _stuffed_piece(piece: bytes) -> bytes | None:
    """The piece with each "." that follows a CRLF doubled; None if a CR or LF in it is not part of a CRLF."""
    if b"\n" not in piece:  # a personal value: one line
        return None if b"\r" in piece else piece
    lines = piece.count(b"\n")
    if lines != piece.count(b"\r\n") or piece.count(b"\r") != lines:
        return None
    return piece.replace(b"\r\n.", b"\r\n..")


class DotStuffer:
    """SMTP DATA's form of a message (RFC 5321 4.5.2): CRLF line ends, a line-initial "." doubled, a final
    CRLF, without the ".CRLF" that ends DATA.

    Scanning a 45 KB message costs several times what building it does, so the shared pieces of Pieces
    are stuffed once and kept (by their tuple, the same object in every message of an issue); per message
    only the personal pieces are scanned. Bytes, or pieces with a stray CR or LF, are encoded whole.
    """

    def __init__(self) -> None:
        # per shared tuple: each piece stuffed (None: a stray CR or LF), whether it starts with "." and
        # whether it ends a line
        self._shared: dict[tuple[bytes, ...], tuple[tuple[bytes | None, bool, bool], ...]] = {}

    def __call__(self, message: Message) -> bytes:
        """The DATA payload of the message."""
        if isinstance(message, bytes):
            return _stuffed_whole(message)
        shared = self._of(message)
        out: list[bytes] = []
        line_start = True  # a piece that begins a line and starts with "." gets the extra dot here
        for personal, (fixed, fixed_dot, fixed_ends_line) in zip(message.personal, shared, strict=True):
            if personal:
                stuffed = _stuffed_piece(personal)
                if stuffed is None:  # a bare CR or LF: the whole message, normalised
                    return _stuffed_whole(bytes(message))
                if line_start and personal.startswith(b"."):
                    out.append(b".")
                out.append(stuffed)
                line_start = personal.endswith(b"\n")
            if fixed is None:
                return _stuffed_whole(bytes(message))
            if fixed:
                if line_start and fixed_dot:
                    out.append(b".")
                out.append(fixed)
                line_start = fixed_ends_line
        if not (out and line_start):
            out.append(b"\r\n")
        return b"".join(out)

    def plain(self, message: Message) -> bytes:
        """The message as BDAT sends it (RFC 3030): CRLF line ends and a final CRLF, no dot doubled."""
        data = bytes(message)
        if isinstance(message, Pieces) and all(fixed is not None for fixed, _, _ in self._of(message)):
            if all(_stuffed_piece(p) is not None for p in message.personal):  # no stray CR or LF
                return data if data.endswith(b"\r\n") else data + b"\r\n"
        return _plain_whole(data)

    def _of(self, message: Pieces) -> tuple[tuple[bytes | None, bool, bool], ...]:
        shared = self._shared.get(message.shared)
        if shared is None:
            shared = tuple((_stuffed_piece(p), p.startswith(b"."), p.endswith(b"\n")) for p in message.shared)
            self._shared[message.shared] = shared
        return shared


def _stuffed_whole(data: bytes) -> bytes:
    """The DATA payload of whole message bytes: bare CR or LF made CRLF, line-initial dots doubled."""
    data = _plain_whole(data).replace(b"\r\n.", b"\r\n..")
    return b"." + data if data.startswith(b".") else data


def _plain_whole(data: bytes) -> bytes:
    """Whole message bytes with every bare CR or LF made CRLF and a final CRLF."""
    lines = data.count(b"\n")
    if lines != data.count(b"\r\n") or data.count(b"\r") != lines:
        data = _BARE_EOL.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _one_line(raw: bytes | str) -> str:
    """A server's reply as one clean line: it reaches the delivery record and the terminal (no ESC or NUL)."""
    return one_line(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)


def _describe(exc: BaseException) -> str:
    """Say what went wrong on the network in a few words, without a traceback."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, BrokenPipeError):
        return "connection closed by the server"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        cause = str(exc).removeprefix("Connection unexpectedly closed").lstrip(": ")
        return f"connection closed by the server{': ' + cause if cause else ''}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(str(exc)) or type(exc).__name__


def _helo_name(settings: Settings) -> str:
    """The name to say in EHLO: this machine's if it looks qualified (no DNS lookup), else the sender's."""
    name = socket.gethostname()
    return name if "." in name else settings.sender_domain


_MAX_LINE = 8192  # octets in one reply line (smtplib's limit; RFC 5321 asks for 512)
_MAX_REPLY = 64 * 1024  # octets in one whole reply
_REPLY_LINE = re.compile(rb"[2-5][0-9][0-9](?:[ -]|\r?\n)")


def take_reply(buf: bytearray) -> tuple[int, bytes] | None:
    """The first whole reply in `buf` as (code, text), taken out of it; None while it is not all there.

    What is not an SMTP reply (no three-digit code, a line or reply too long) is code -1 with the start of
    it as text: nothing after it can be trusted to line up with the commands, so the session must end.
    """
    end = buf.find(b"\n")
    if end >= 0 and buf[3:4] == b" " and end <= _MAX_LINE:  # one line, as most replies are
        line = bytes(buf[: end + 1])
        if _REPLY_LINE.match(line):
            del buf[: end + 1]
            return int(line[:3]), line[4:].strip(b" \t\r\n")
    start = 0
    lines: list[bytes] = []
    while True:
        end = buf.find(b"\n", start)
        if end < 0:
            if len(buf) - start > _MAX_LINE or len(buf) > _MAX_REPLY:
                return -1, bytes(buf[:200]).strip()
            return None
        line = bytes(buf[start : end + 1])
        start = end + 1
        if not _REPLY_LINE.match(line):
            return -1, line[:200].strip()
        lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            del buf[:start]
            return int(line[:3]), b"\n".join(lines)


class _WholeReplies:
    """Read each SMTP reply with one deadline for the whole reply.

    smtplib reads a reply line by line, each read with its own timeout, so a server that trickles one
    continuation line every few seconds holds it forever. Here every reply (the greeting, EHLO, AUTH and
    all the rest, since smtplib reads them all through getreply) must be complete within `reply_timeout`
    of its first read, however it is split into packets; a reply that is not SMTP (no three-digit code,
    a line or reply too long) is returned as code -1, which the caller treats as no reply at all.
    """

    sock: socket.socket | None
    timeout: float
    reply_timeout: float = 30.0
    _buffer: bytearray | None = None
    _buffer_of: socket.socket | None = None

    close: Callable[[], None]

    def buffer(self) -> bytearray:
        """The bytes read from the socket that no reply took yet (a new one for a new socket or TLS layer)."""
        if self._buffer is None or self._buffer_of is not self.sock:
            self._buffer = bytearray()
            self._buffer_of = self.sock
        return self._buffer

    def getreply(self) -> tuple[int, bytes]:
        """The next reply as (code, text); OSError (TimeoutError at the deadline) if it does not come."""
        sock = self.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        buf = self.buffer()
        deadline = 0.0
        shortened = False  # the socket's timeout cut to what is left of the deadline: restored below
        try:
            while (reply := take_reply(buf)) is None:
                now = time.monotonic()
                if not deadline:
                    deadline = now + self.reply_timeout
                left = deadline - now
                if left <= 0:
                    raise TimeoutError("timed out")
                # the socket keeps `timeout` (one ioctl per change): a longer deadline (the end of a
                # message) is waited for in turns of it, and only its last stretch shortens it
                if left < self.timeout:
                    sock.settimeout(left)
                    shortened = True
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue  # the deadline, checked above, says whether to wait on
                if not chunk:
                    raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
                buf += chunk
        except OSError:
            self.close()
            raise
        finally:
            if shortened and self.sock is not None:
                sock.settimeout(self.timeout)
        if reply[0] < 0:
            self.close()  # what follows cannot be trusted to line up with our commands
        return reply


class _SMTP(_WholeReplies, smtplib.SMTP):
    """smtplib.SMTP with whole-reply deadlines."""


class _SMTP_SSL(_WholeReplies, smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL (implicit TLS) with whole-reply deadlines."""


_Session = _SMTP | _SMTP_SSL


class SMTPTransport:
    """An SMTP server reached with STARTTLS, implicit TLS or in plain text, optionally with AUTH."""

    def __init__(self, settings: Settings, console: Voice = SILENT) -> None:
        self.host = settings.smtp_host
        self.port = smtp_port(settings)
        self.where = f"{self.host}:{self.port}"
        self.security = settings.smtp_security
        self.user = settings.smtp_user
        self._password = settings.smtp_password
        self.timeout = settings.smtp_timeout
        self.data_timeout = settings.smtp_data_timeout
        self.helo = _helo_name(settings)
        self.context: ssl.SSLContext | None = None
        if self.security in ("starttls", "tls"):
            self.context = _tls_context(settings, console)
        details = [_SECURITY_NAMES[self.security]]
        if self.context is not None and self.context.verify_mode == ssl.CERT_NONE:
            details.append("certificate NOT verified")
        if self.user:
            details.append(f"user {self.user}")
        self.description = f"{self.where} ({', '.join(details)})"
        self.destination = SMTP
        self.stuff = DotStuffer()  # shared by the connections: an issue's shared pieces are stuffed once

    def connect(self) -> SMTPConnection:
        """A new connection, opened on its first send() or open()."""
        return SMTPConnection(self)

    def scrub(self, text: str) -> str:
        """The text with the password masked, should a server ever echo it."""
        if self._password and self._password in text:
            return text.replace(self._password, "********")
        return text


def _tls_context(settings: Settings, console: Voice) -> ssl.SSLContext:
    """The client TLS context: system CAs, or only smtp_cafile; no verification only on request."""
    cafile = settings.smtp_cafile or None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ConfigError(f"smtp_cafile: {cafile}: cannot load certificates: {reason}") from None
    if not settings.smtp_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        console.warn(
            f"smtp_verify is false: the certificate of {settings.smtp_host} is NOT checked; anyone on the"
            " path can read the mail and the password"
        )
    return context


class _Fatal(Exception):
    """Raised inside a session setup step to turn into TransportError after cleanup."""


class _ClosedOnExit:
    """`with transport.connect() as conn:` closes the connection however the block ends."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class SMTPConnection(_ClosedOnExit):
    """One SMTP session reused for many messages; reconnects after the server hangs up."""

    def __init__(self, transport: SMTPTransport) -> None:
        self._t = transport
        self._smtp: _Session | None = None
        self._wire: Wire | None = None  # the open session's, for a driver (wire())
        self._fresh = False  # no message sent yet on the current session
        self._mail_suffix = b""
        self._eight_bit = False
        self._smtputf8 = False
        self._pipelining = False
        self._chunking = False
        self._mail_answered = False
        # the message whose MAIL, RCPT and DATA went out behind the last message's "." (RFC 2920), replies
        # not read yet: the server may have said 354 to it, so nothing but its body may follow
        self._ahead: Envelope | None = None
        self.sessions = 0  # how many times this connection was (re)opened

    @property
    def connected(self) -> bool:
        """Whether a session is open right now."""
        return self._smtp is not None

    def send(
        self,
        sender: str,
        recipient: str,
        data: Message,
        ready: Callable[[], None] | None = None,
        following: Callable[[], Envelope | None] | None = None,
    ) -> Outcome:
        """Deliver one message; reconnect once if a reused session turns out to be dead.

        `ready` is called after the message's body went out and before the "." that ends it: a
        caller can finish recording the previous message meanwhile, and a server delivers nothing
        it has not seen the "." of. With PIPELINING (and no CHUNKING), `following` is then asked for
        the next message, and its MAIL, RCPT and DATA go out in the same write as the "." (RFC 2920
        lets commands follow the end of data): its replies come back with this message's, so a
        message costs one round trip, not two.
        """
        return self._drive(self.steps(sender, recipient, data, ready, following))

    def steps(
        self,
        sender: str,
        recipient: str,
        data: Message,
        ready: Callable[[], None] | None = None,
        following: Callable[[], Envelope | None] | None = None,
    ) -> Steps:
        """send() as steps (see Step), for send() itself or a driver of many connections."""
        if self._ahead is not None and self._ahead != (sender, recipient):
            self._drop()  # commands went out for another message: only a new session is clean
        bad = _bad_address(sender) or _bad_address(recipient)
        if bad:
            return Outcome(553, f"not sent: {bad}")
        for _ in range(2):
            if self._smtp is None:
                failure = yield CONNECT
                if failure is not None:
                    return failure
            reused = not self._fresh
            self._fresh = False
            outcome, stale = yield from self._transaction(sender, recipient, data, ready, following)
            if not (stale and reused):
                return outcome
        return outcome

    def _drive(self, steps: Steps) -> Outcome:
        """Run a message's steps here, in this thread, waiting on the socket for each."""
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                step = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            value, error = None, None
            if step is CONNECT:
                value = self.open_session()
                continue
            if step is GATE:  # `ready` waits itself
                continue
            smtp = self._smtp
            try:
                if smtp is None or smtp.sock is None:
                    raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
                if isinstance(step, bytes):
                    smtp.sock.sendall(step)
                    continue
                smtp.reply_timeout = float(step)
                try:
                    value = smtp.getreply()
                finally:
                    smtp.reply_timeout = self._t.timeout
            except OSError as exc:
                error = exc

    def wire(self) -> Wire | None:
        """The open session's socket and unread bytes, for a driver of many connections: the same object
        for as long as the session lasts (the driver asks after each step)."""
        return self._wire

    def cut(self) -> None:
        """Close the socket as a failed or unreadable read does; the steps then drop the session."""
        self._wire = None
        if self._smtp is not None:
            self._smtp.close()

    def close(self) -> None:
        """Say QUIT and close the socket; errors on the way out do not matter."""
        if self._ahead is not None:  # the server may be reading a body: a QUIT would be part of it
            self._drop()
        smtp, self._smtp, self._wire = self._smtp, None, None
        if smtp is None:
            return
        try:
            if smtp.sock is not None:
                smtp.timeout = smtp.reply_timeout = min(self._t.timeout, 5.0)
                smtp.sock.settimeout(smtp.timeout)
                smtp.sock.sendall(b"QUIT\r\n")
                smtp.getreply()
        except OSError:
            pass
        finally:
            smtp.close()

    def _drop(self) -> None:
        self._ahead = None
        smtp, self._smtp, self._wire = self._smtp, None, None
        if smtp is not None:
            smtp.close()

    def _fail(self, code: int, text: str, stage: str = "") -> Outcome:
        return Outcome(code, self._t.scrub(text), stage=stage)

    def open_session(self) -> Outcome | None:
        """Open, secure and authenticate a session; None on success, else why not (a refusal of the
        session as a whole, or a certificate that fails, raises TransportError)."""
        t = self._t
        smtp: _SMTP | _SMTP_SSL
        if t.security == "tls":
            smtp = _SMTP_SSL(local_hostname=t.helo, timeout=t.timeout, context=t.context)
        else:
            smtp = _SMTP(local_hostname=t.helo, timeout=t.timeout)
        smtp.reply_timeout = t.timeout
        # SMTP_SSL checks the certificate against _host, which only the constructor sets
        smtp._host = t.host  # type: ignore[union-attr]
        try:
            failure = self._setup(smtp)
        except _Fatal as exc:
            smtp.close()
            raise TransportError(t.scrub(f"{t.where}: {exc}")) from None
        except ssl.SSLCertVerificationError as exc:  # no retry can fix a certificate: stop the send
            smtp.close()
            raise TransportError(f"{t.where}: {_describe(exc)} (see smtp_cafile)") from None
        except (OSError, ValueError) as exc:
            smtp.close()
            return self._fail(0, f"{t.where}: {_describe(exc)}")
        if failure is not None:
            smtp.close()
            return failure
        self._smtp = smtp
        assert smtp.sock is not None
        self._wire = Wire(smtp.sock, smtp.buffer(), t.timeout)
        self._fresh = True
        self.sessions += 1
        return None

    def _setup(self, smtp: _Session) -> Outcome | None:
        t = self._t
        code, msg = smtp.connect(t.host, t.port)
        if code != 220:
            return self._refused_session("greeting", code, msg)
        if smtp.sock is not None:
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        failure = self._hello(smtp)
        if failure is not None:
            return failure
        if t.security == "starttls":
            if not smtp.has_extn("starttls"):
                raise _Fatal(
                    'server does not offer STARTTLS (use smtp_security = "tls" for port 465, '
                    'or "none" only for a trusted local relay)'
                )
            code, msg = smtp.docmd("STARTTLS")
            if code != 220:
                return self._refused_session("STARTTLS", code, msg)
            assert t.context is not None and smtp.sock is not None
            if smtp._buffer:  # RFC 3207 5: nothing may follow the 220 before the TLS handshake
                raise _Fatal("server sent more after its STARTTLS reply, in plain text; refusing the session")
            smtp.sock = t.context.wrap_socket(smtp.sock, server_hostname=t.host)
            smtp.file = None
            smtp.ehlo_resp = smtp.helo_resp = None
            smtp.esmtp_features = {}
            smtp.does_esmtp = False
            failure = self._hello(smtp)
            if failure is not None:
                return failure
        if t.user:
            failure = self._login(smtp)
            if failure is not None:
                return failure
        self._eight_bit = smtp.has_extn("8bitmime")
        self._mail_suffix = b" BODY=8BITMIME" if self._eight_bit else b""
        self._smtputf8 = smtp.has_extn("smtputf8")
        self._pipelining = smtp.has_extn("pipelining")
        # BDAT only with PIPELINING: the whole message then costs one round trip (RFC 3030 4.2)
        self._chunking = self._pipelining and smtp.has_extn("chunking")
        return None

    def _hello(self, smtp: _Session) -> Outcome | None:
        code, msg = smtp.ehlo()
        if not 200 <= code < 300:
            code, msg = smtp.helo()
            if not 200 <= code < 300:
                return self._refused_session("EHLO", code, msg)
        return None

    def _login(self, smtp: _Session) -> Outcome | None:
        """AUTH PLAIN, LOGIN or CRAM-MD5 with the user and password in UTF-8 (RFC 4954, RFC 4616).

        Done here rather than with smtplib.login, which encodes the password as ASCII: a password
        with "é" raised UnicodeEncodeError (quoting the character) and was retried as a network error.
        """
        t = self._t
        if not smtp.has_extn("auth"):
            hint = " before STARTTLS" if t.security == "none" else ""
            raise _Fatal(f"server does not offer AUTH{hint}, but smtp_user is set")
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        user, password = t.user.encode("utf-8"), t._password.encode("utf-8")
        secrets = [t._password]
        if "PLAIN" in offered:
            token = _b64(b"\0" + user + b"\0" + password)
            secrets.append(token)
            code, msg = smtp.docmd("AUTH", "PLAIN " + token)
        elif "LOGIN" in offered:
            code, msg = smtp.docmd("AUTH", "LOGIN " + _b64(user))
            if code == 334:
                secrets.append(_b64(password))
                code, msg = smtp.docmd(secrets[-1])
        elif "CRAM-MD5" in offered:
            code, msg = smtp.docmd("AUTH", "CRAM-MD5")
            if code == 334:
                try:
                    challenge = base64.b64decode(msg, validate=True)
                except ValueError:
                    challenge = b""
                digest = hmac.new(password, challenge, "md5").hexdigest().encode("ascii")
                code, msg = smtp.docmd(_b64(user + b" " + digest))
        else:
            mechanisms = " ".join(offered) or "nothing"
            raise _Fatal(f"server offers AUTH {mechanisms}; mailer speaks PLAIN, LOGIN and CRAM-MD5")
        if code == 235:
            return None
        text = _one_line(msg)
        for secret in secrets:
            text = text.replace(secret, "********")
        reply = f"{code} {text}"
        if code == 334:  # still asking: cancel the exchange (RFC 4954 4)
            smtp.docmd("*")
        elif 400 <= code < 500:
            return self._fail(code, f"{t.where}: authentication: {reply}")
        elif code < 0:
            return self._fail(0, f"{t.where}: authentication: unreadable reply: {text}")
        raise _Fatal(f"authentication failed for user {t.user}: {reply}")

    def _refused_session(self, stage: str, code: int, msg: bytes) -> Outcome:
        """A server that says 5xx before any message refuses us as a whole; 4xx is worth a retry."""
        if code < 100:
            return self._fail(0, f"{self._t.where}: {stage}: unreadable reply: {_one_line(msg)}")
        text = f"{self._t.where}: {stage}: {code} {_one_line(msg)}"
        if 500 <= code < 600:
            raise _Fatal(text.split(": ", 1)[1])
        return self._fail(code if 400 <= code < 500 else 0, text)

    def _transaction(
        self,
        sender: str,
        recipient: str,
        data: Message,
        ready: Callable[[], None] | None,
        following: Callable[[], Envelope | None] | None,
    ) -> Generator[Step, Any, tuple[Outcome, bool]]:
        """MAIL, RCPT, DATA (or BDAT) for one message; also say if the session was dead or closing at MAIL."""
        t = self._t
        payload = self._t.stuff.plain(data) if self._chunking else self._t.stuff(data)
        ahead, self._ahead = self._ahead, None
        commands = b"" if ahead is not None else self._commands(sender, recipient)
        if commands is None:
            return Outcome(553, "not sent: address is not ASCII and the server lacks SMTPUTF8"), False
        if not self._eight_bit and not payload.isascii():
            payload = self._seven_bit(data)
        stage = "MAIL"
        self._mail_answered = False
        try:
            if self._chunking:
                stage = yield from self._chunked(commands, payload, ready)
                return (yield from self._replies_to_chunks())
            if self._pipelining:
                if commands:
                    yield commands + b"DATA\r\n"
                refused = yield from self._pipelined()
                if refused is not None:
                    return refused
            else:
                mail, rcpt = commands.split(b"\r\n", 1)
                yield mail + b"\r\n"
                code, msg = yield t.timeout
                if code != 250:
                    return (yield from self._rejected("MAIL", code, msg, reset=True)), code == 421
                stage = "RCPT"
                yield rcpt
                code, msg = yield t.timeout
                if not 200 <= code < 300:
                    return (yield from self._rejected("RCPT", code, msg, reset=True)), False
                yield b"DATA\r\n"
                code, msg = yield t.timeout
                if code != 354:
                    return (yield from self._rejected("DATA", code, msg, reset=True)), False
            stage = "DATA"
            yield payload
            yield from self._gate(ready)
            yield _END + self._next_commands(following)
            stage = "END"
            code, msg = yield t.data_timeout  # RFC 5321 4.5.3.2.6: 10 minutes
            return (yield from self._rejected("END", code, msg, reset=False)), False
        except OSError as exc:
            self._drop()
            if stage == "END" and isinstance(exc, TimeoutError):
                # the server has the whole message and said nothing: it may have kept it (RFC 1047)
                wait = f"{self._t.data_timeout:g} s waiting for the reply to the end of the message"
                text = f"in doubt: timed out after {wait} (it may have been delivered)"
                return Outcome(0, text, in_doubt=True), False
            lost = self._fail(0, f"connection lost: {_describe(exc)}")
            # no reply at all on a reused session: it was dead or closing before this message
            return lost, not self._mail_answered and (stage == "MAIL" or self._chunking)

    def _commands(self, sender: str, recipient: str) -> bytes | None:
        """MAIL FROM and RCPT TO for a message; None if an address needs SMTPUTF8 and the server lacks it."""
        suffix = self._mail_suffix
        encoding = "ascii"
        if not (sender.isascii() and recipient.isascii()):
            if not self._smtputf8:
                return None
            suffix += b" SMTPUTF8"
            encoding = "utf-8"
        return (
            b"MAIL FROM:<" + sender.encode(encoding) + b">" + suffix + b"\r\n"
            b"RCPT TO:<" + recipient.encode(encoding) + b">\r\n"
        )

    def _next_commands(self, following: Callable[[], Envelope | None] | None) -> bytes:
        """The next message's MAIL, RCPT and DATA, to go out behind this one's "." (RFC 2920 3.1: DATA
        ends the group); b"" without PIPELINING, with CHUNKING (BDAT costs one round trip already), or
        when there is no next message yet or its addresses need a check of their own in send()."""
        if following is None or not self._pipelining or self._chunking:
            return b""
        envelope = following()
        if envelope is None or _bad_address(envelope[0]) or _bad_address(envelope[1]):
            return b""
        commands = self._commands(*envelope)
        if commands is None:
            return b""
        self._ahead = envelope
        return commands + b"DATA\r\n"

    def _gate(self, ready: Callable[[], None] | None) -> Generator[Step, Any, None]:
        """Just before the point of no return: wait for the GATE, then `ready`; if it raises, hang up
        (nothing that ends the message was sent: the server discards it)."""
        if ready is None:
            return
        yield GATE
        try:
            ready()
        except BaseException:
            self._drop()
            raise

    def _chunked(
        self, head: bytes, payload: bytes, ready: Callable[[], None] | None
    ) -> Generator[Step, Any, str]:
        """MAIL, RCPT and the message as one BDAT chunk in one write; then, once `ready` returns, the empty
        last chunk that ends it (RFC 3030). Return the stage reached: 'END' once that is sent.

        Nothing is read in between, so a message costs one round trip; a refused recipient costs the
        transfer of a message the server throws away, which is cheaper than a second round trip for all.
        """
        yield head + b"BDAT %d\r\n" % len(payload) + payload
        yield from self._gate(ready)
        yield b"BDAT 0 LAST\r\n"
        return "END"

    def _replies_to_chunks(self) -> Generator[Step, Any, tuple[Outcome, bool]]:
        """The outcome of MAIL, RCPT, BDAT and BDAT LAST from their four replies, read in turn; also say
        if the session was closing at MAIL (421: no transaction, nothing delivered).

        Each may take as long as the end of a message: a server may hold all its replies until it has
        judged the message. The first refusal is the outcome; 421 or an unreadable reply ends the session.
        """
        refusal: tuple[str, int, bytes] | None = None
        for stage in ("MAIL", "RCPT", "DATA", "END"):  # the first chunk stands where DATA would
            code, msg = yield self._t.data_timeout
            self._mail_answered = True
            if code == 421 or code < 100:
                outcome = yield from self._rejected(stage, code, msg, reset=False)
                return outcome, code == 421 and stage == "MAIL"
            wanted = code == 250 if stage == "MAIL" else 200 <= code < 300
            if refusal is None and not wanted:
                refusal = (stage, code, msg)
        if refusal is not None:  # the server read the chunks and dropped the message: RSET for the next
            return (yield from self._rejected(*refusal, reset=True)), False
        return (yield from self._rejected("END", code, msg, reset=False)), False

    def _seven_bit(self, data: Message) -> bytes:
        """The message with 7-bit parts, for a server without 8BITMIME (RFC 6152 forbids 8-bit data there)."""
        build = data.seven_bit if isinstance(data, Pieces) else None
        if build is None:
            raise TransportError(
                f"{self._t.where}: the server does not offer 8BITMIME and this message is 8-bit"
            )
        return (self._t.stuff.plain if self._chunking else self._t.stuff)(build())

    def _pipelined(self) -> Generator[Step, Any, tuple[Outcome, bool] | None]:
        """The replies to MAIL, RCPT and DATA sent at once (RFC 2920); None once the server says 354."""
        code, msg = yield self._t.timeout
        self._mail_answered = True
        if code == 421:
            return (yield from self._rejected("MAIL", code, msg, reset=False)), True
        first_refusal = None if code == 250 else ("MAIL", code, msg)
        for stage, wanted in (("RCPT", range(200, 300)), ("DATA", range(354, 355))):
            code, msg = yield self._t.timeout
            if code == 421:
                return (yield from self._rejected(stage, code, msg, reset=False)), False
            if first_refusal is None and code not in wanted:
                first_refusal = (stage, code, msg)
        if first_refusal is None:
            return None
        if code == 354:  # the server wants data we will not send: hang up so nothing is delivered
            self._drop()
            stage, code, msg = first_refusal
            self._refuses_session(stage, code, msg)
            return self._fail(code, _one_line(msg), stage), False
        return (yield from self._rejected(*first_refusal, reset=True)), False

    def _rejected(self, stage: str, code: int, msg: bytes, *, reset: bool) -> Generator[Step, Any, Outcome]:
        """Turn a reply into an Outcome; forget the session on 421, reset the transaction after a refusal."""
        if code < 100:
            self._drop()
            return self._fail(0, f"unreadable reply: {_one_line(msg)}")
        if stage == "DATA" and code < 400:  # neither 354 nor a refusal: the reply of another command
            self._drop()
            return self._fail(0, f"replies out of step with the commands: {code} {_one_line(msg)} to DATA")
        self._refuses_session(stage, code, msg)
        outcome = self._fail(code, _one_line(msg), stage)
        if code == 421 or code < 200:
            self._drop()
        elif reset and not outcome.ok:
            yield from self._reset()
        return outcome

    def _refuses_session(self, stage: str, code: int, msg: bytes) -> None:
        """Hang up and raise TransportError if a 5xx reply refuses the session, not the recipient."""
        if refuses_session(stage, code, msg):
            self._drop()
            said = {"MAIL": "MAIL FROM", "END": "the end of the message"}.get(stage, stage)
            raise TransportError(
                self._t.scrub(
                    f"{self._t.where}: the server refuses this session, not one reader: {code} "
                    f"{_one_line(msg)} (in answer to {said}); no reader was marked failed for it"
                )
            )

    def _reset(self) -> Generator[Step, Any, None]:
        try:
            yield b"RSET\r\n"
            code, _ = yield self._t.timeout
        except OSError:
            code = 0
        if code != 250:
            self._drop()


_ENHANCED = re.compile(rb"\s*5\.(\d{1,3})\.(\d{1,3})(?!\d)")
_SESSION_CODES = frozenset({500, 501, 502, 503, 504, 530, 534, 535, 538})
_RECIPIENT_POLICY = frozenset({1, 2, 17, 18})  # 5.7.1 not authorised, 5.7.2 list expansion, 5.7.17/18


def refuses_session(stage: str, code: int, msg: bytes) -> bool:
    """Whether a 5xx reply refuses the whole session (every reader) rather than this one recipient.

    A refusal that is not about the recipient would, if recorded as that reader's permanent failure,
    fail reader after reader until max_consecutive_failures (52 of 100 readers "failed" behind a 530 to
    MAIL FROM, left unmailed by every rerun). So the stage of the reply comes first, then its enhanced
    status code (RFC 3463), then the basic code:

    - MAIL FROM carries only the sender, the same for every message: any 5xx refuses the session. So
      does a 5xx to the DATA command: the recipient was accepted, the transaction is refused.
    - 500-504 (our command), 530/534/535/538 (log in first, mechanism too weak, bad credentials,
      encryption needed) refuse the session at any stage.
    - 5.1.x (the address) and 5.2.x (the mailbox), 5.4.x (routing to the recipient's domain) and the
      recipient's own policy 5.7.1/5.7.2/5.7.17/5.7.18 refuse the recipient; but 5.1.7/5.1.8 are the
      sender's address.
    - 5.3.x (the mail system: full, not accepting, message too big for it), 5.5.x (protocol), 5.6.x
      (content the server cannot take, the same message for all) and every other 5.7.x (login, TLS,
      sender authentication such as SPF/DKIM/DMARC) refuse the session.
    - Without a telling enhanced code (or with 5.0.x), a 5xx to RCPT or to the end of the message refuses
      that recipient or this reader's message, as RFC 5321 uses 550/551/552/553/554 there.
    """
    if not 500 <= code < 600:
        return False
    if stage in ("MAIL", "DATA") or code in _SESSION_CODES:
        return True
    enhanced = _ENHANCED.match(msg)
    if enhanced is not None:
        subject, detail = int(enhanced[1]), int(enhanced[2])
        if subject == 1:
            return detail in (7, 8)
        if subject in (2, 4):
            return False
        if subject == 7:
            return detail not in _RECIPIENT_POLICY
        return subject != 0
    return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_NOT_IN_ADDRESS = re.compile("[\r\n<>\0]")


def _bad_address(address: str) -> str:
    if not address or _NOT_IN_ADDRESS.search(address):
        return f"{address!r} is not a usable envelope address"
    return ""


class OutboxTransport:
    """A local Maildir that stands in for the mail server; nothing leaves the machine."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"outbox {self.path}"
        self.destination = OUTBOX  # mails no one: what it records never counts for SMTP

    def connect(self) -> OutboxConnection:
        """A writer into the Maildir (created on first use)."""
        return OutboxConnection(self.path)


class OutboxConnection(_ClosedOnExit):
    """Write each message to tmp/ and rename it into new/, as a local delivery agent does."""

    _counter = itertools.count()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def send(
        self,
        sender: str,
        recipient: str,
        data: Message,
        ready: Callable[[], None] | None = None,
        following: Callable[[], Envelope | None] | None = None,
    ) -> Outcome:
        """Store the message with Return-Path and Delivered-To so the envelope stays visible; a file
        costs no round trip, so `following` is never asked."""
        steps = self.steps(sender, recipient, data, ready, following)
        try:
            while True:
                steps.send(None)  # only a GATE is asked, and `ready` waits itself
        except StopIteration as done:
            return done.value

    def steps(
        self,
        sender: str,
        recipient: str,
        data: Message,
        ready: Callable[[], None] | None = None,
        following: Callable[[], Envelope | None] | None = None,
    ) -> Steps:
        """send() as steps for a driver: a file is written at once, so the only one is the GATE."""
        bad = _bad_address(sender) or _bad_address(recipient)
        if bad:
            return Outcome(553, f"not queued: {bad}")
        if isinstance(data, Pieces):
            data = bytes(data)
        try:
            if not self._ready:
                for sub in ("tmp", "new", "cur"):
                    make_folder(self.path / sub)
                self._ready = True
            now = time.time()
            name = f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}Q{next(self._counter)}.{self._host}"
            tmp = self.path / "tmp" / name
            trace = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode()
            with os.fdopen(open_new(tmp), "wb") as fh:
                fh.write(trace)
                fh.write(data)
            final = self.path / "new" / name
            if ready is not None:
                yield GATE
                try:
                    ready()
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
            os.replace(tmp, final)
        except OSError as exc:
            raise TransportError(f"{self.path}: cannot write to the outbox: {exc.strerror or exc}") from None
        return Outcome(250, f"queued in outbox as {final}")

    def wire(self) -> None:
        """No socket: a driver only runs the steps."""

    def open_session(self) -> None:
        """Nothing to open: the outbox asks for no CONNECT."""

    def cut(self) -> None:
        """No socket to close."""

    def close(self) -> None:
        """Nothing to close; present for symmetry with SMTP."""
