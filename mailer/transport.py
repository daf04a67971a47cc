"""Deliver finished messages: over SMTP on reused connections, or into the local outbox (a Maildir).

Every reply is classified by its code, never by exception type: 2xx ok, 4xx (or no reply at all) temporary,
5xx permanent. Only problems that no retry of a single message can fix (authentication refused, STARTTLS
missing, a server that refuses us outright) raise TransportError.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from .config import Settings, smtp_port
from .errors import ConfigError, TransportError
from .headers import one_line
from .ledger import OUTBOX, SMTP
from .private import make_folder, open_new

log = logging.getLogger(__name__)

_BARE_EOL = re.compile(rb"\r\n|\r|\n")
_SECURITY_NAMES = {"starttls": "STARTTLS", "tls": "TLS", "none": "plain"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: the server's reply code (0 when there was none) and its text."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        """The server took responsibility for the message (2xx)."""
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        """The server refused the message for good (5xx); do not retry it."""
        return 500 <= self.code < 600

    @property
    def temporary(self) -> bool:
        """Neither delivered nor refused for good (4xx, no reply, anything odd): retry later."""
        return not (self.ok or self.permanent)

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code else self.text


class Connection(Protocol):
    """One session with the mail server (or the outbox), used by one thread for many messages."""

    def send(
        self, sender: str, recipient: str, data: bytes, ready: Callable[[], None] | None = None
    ) -> Outcome:
        """Deliver one message to one recipient; never raises for per-message problems.

        `ready`, if given, is called just before the point of no return (SMTP: the final "." of
        DATA; outbox: the rename into new/). If it raises, the message is not delivered (the SMTP
        session is dropped, so the server discards it) and the exception propagates.
        """
        ...

    def close(self) -> None:
        """End the session politely; safe to call twice."""
        ...


class Transport(Protocol):
    """A destination for mail that hands out connections."""

    description: str
    destination: str  # the delivery record's name for it (ledger.SMTP or ledger.OUTBOX): kept apart

    def connect(self) -> Connection:
        """A new connection, opened lazily on its first send()."""
        ...


def make_transport(settings: Settings) -> Transport:
    """The SMTP server when smtp_host is set, else the local outbox."""
    if settings.smtp_host:
        return SMTPTransport(settings)
    return OutboxTransport(settings.outbox_path)


_END = b".\r\n"


class Stuffed(bytes):
    """A message already in the form DATA carries it: CRLF line ends, line-initial dots doubled,
    ending in CRLF, without the final ".CRLF". MessageFactory.build_stuffed makes these from parts
    stuffed once per issue, so the send loop need not scan every 45 KB message again."""


def stuff(data: bytes) -> bytes:
    """The DATA payload for a message: CRLF line ends, leading dots doubled, ending in CRLF.CRLF."""
    return stuffed_body(data) + _END


def unstuff(data: Stuffed) -> bytes:
    """The message a Stuffed payload carries (what the recipient's server stores)."""
    body = data.replace(b"\r\n..", b"\r\n.")
    return body[1:] if body.startswith(b"..") else bytes(body)


def stuffed_body(data: bytes) -> Stuffed:
    """The DATA payload without its final ".CRLF" (sent apart, once the message may be delivered)."""
    if isinstance(data, Stuffed):
        return data
    lines = data.count(b"\n")
    if lines != data.count(b"\r\n") or data.count(b"\r") != lines:
        data = _BARE_EOL.sub(b"\r\n", data)
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return Stuffed(data)


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


class SMTPTransport:
    """An SMTP server reached with STARTTLS, implicit TLS or in plain text, optionally with AUTH."""

    def __init__(self, settings: Settings) -> None:
        self.host = settings.smtp_host
        self.port = smtp_port(settings)
        self.where = f"{self.host}:{self.port}"
        self.security = settings.smtp_security
        self.user = settings.smtp_user
        self._password = settings.smtp_password
        self.timeout = settings.smtp_timeout
        self.helo = _helo_name(settings)
        self.context: ssl.SSLContext | None = None
        if self.security in ("starttls", "tls"):
            self.context = _tls_context(settings)
        details = [_SECURITY_NAMES[self.security]]
        if self.context is not None and self.context.verify_mode == ssl.CERT_NONE:
            details.append("certificate NOT verified")
        if self.user:
            details.append(f"user {self.user}")
        self.description = f"{self.where} ({', '.join(details)})"
        self.destination = SMTP

    def connect(self) -> SMTPConnection:
        """A new connection, opened on its first send() or open()."""
        return SMTPConnection(self)

    def check(self) -> str:
        """Open one session (TLS, AUTH) and close it; raise TransportError if that fails."""
        with self.connect() as conn:
            outcome = conn.open()
            if not outcome.ok:
                raise TransportError(outcome.text if outcome.code == 0 else str(outcome))
            return outcome.text

    def scrub(self, text: str) -> str:
        """The text with the password masked, should a server ever echo it."""
        if self._password and self._password in text:
            return text.replace(self._password, "********")
        return text


def _tls_context(settings: Settings) -> ssl.SSLContext:
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
        log.warning(
            "smtp_verify is false: the certificate of %s is NOT checked; anyone on the path "
            "can read the mail and the password",
            settings.smtp_host,
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
        self._smtp: smtplib.SMTP | None = None
        self._fresh = False  # no message sent yet on the current session
        self._mail_suffix = b""
        self._smtputf8 = False
        self._pipelining = False
        self._mail_answered = False
        self._sender = ""
        self._sender_bytes = b""
        self.sessions = 0  # how many times this connection was (re)opened

    @property
    def connected(self) -> bool:
        """Whether a session is open right now."""
        return self._smtp is not None

    def open(self) -> Outcome:
        """Connect, secure and log in now unless already connected; Outcome(0, ...) if that fails."""
        if self._smtp is not None:
            return Outcome(250, f"connected to {self._t.where}")
        return self._connect() or Outcome(250, f"connected to {self._t.where}")

    def send(
        self, sender: str, recipient: str, data: bytes, ready: Callable[[], None] | None = None
    ) -> Outcome:
        """Deliver one message; reconnect once if a reused session turns out to be dead.

        `ready` is called after the message's body went out and before the "." that ends it: a
        caller can finish recording the previous message meanwhile, and a server delivers nothing
        it has not seen the "." of.
        """
        bad = _bad_address(sender) or _bad_address(recipient)
        if bad:
            return Outcome(553, f"not sent: {bad}")
        payload = stuffed_body(data)
        for _ in range(2):
            if self._smtp is None:
                failure = self._connect()
                if failure is not None:
                    return failure
            reused = not self._fresh
            self._fresh = False
            outcome, stale = self._transaction(sender, recipient, payload, ready)
            if not (stale and reused):
                return outcome
        return outcome

    def close(self) -> None:
        """Say QUIT and close the socket; errors on the way out do not matter."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.sock is not None:
                smtp.sock.settimeout(min(self._t.timeout, 5.0))
                smtp.sock.sendall(b"QUIT\r\n")
                smtp.getreply()
        except OSError:
            pass
        finally:
            smtp.close()

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _fail(self, code: int, text: str) -> Outcome:
        return Outcome(code, self._t.scrub(text))

    def _connect(self) -> Outcome | None:
        """Open, secure and authenticate a session; None on success, else why not."""
        t = self._t
        smtp: smtplib.SMTP
        if t.security == "tls":
            smtp = smtplib.SMTP_SSL(local_hostname=t.helo, timeout=t.timeout, context=t.context)
        else:
            smtp = smtplib.SMTP(local_hostname=t.helo, timeout=t.timeout)
        # SMTP_SSL checks the certificate against _host, which only the constructor sets
        smtp._host = t.host  # type: ignore[attr-defined]
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
        self._fresh = True
        self.sessions += 1
        return None

    def _setup(self, smtp: smtplib.SMTP) -> Outcome | None:
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
        suffix = b""
        if smtp.has_extn("8bitmime"):
            suffix += b" BODY=8BITMIME"
        self._mail_suffix = suffix
        self._smtputf8 = smtp.has_extn("smtputf8")
        self._pipelining = smtp.has_extn("pipelining")
        return None

    def _hello(self, smtp: smtplib.SMTP) -> Outcome | None:
        code, msg = smtp.ehlo()
        if not 200 <= code < 300:
            code, msg = smtp.helo()
            if not 200 <= code < 300:
                return self._refused_session("EHLO", code, msg)
        return None

    def _login(self, smtp: smtplib.SMTP) -> Outcome | None:
        t = self._t
        if not smtp.has_extn("auth"):
            hint = " before STARTTLS" if t.security == "none" else ""
            raise _Fatal(f"server does not offer AUTH{hint}, but smtp_user is set")
        try:
            smtp.login(t.user, t._password)
        except smtplib.SMTPAuthenticationError as exc:
            reply = f"{exc.smtp_code} {_one_line(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                return self._fail(exc.smtp_code, f"{t.where}: authentication: {reply}")
            raise _Fatal(f"authentication failed for user {t.user}: {reply}") from None
        except smtplib.SMTPNotSupportedError:
            raise _Fatal("server does not offer AUTH, but smtp_user is set") from None
        except smtplib.SMTPServerDisconnected:
            raise
        except smtplib.SMTPException as exc:
            raise _Fatal(f"authentication failed for user {t.user}: {_one_line(str(exc))}") from None
        return None

    def _refused_session(self, stage: str, code: int, msg: bytes) -> Outcome:
        """A server that says 5xx before any message refuses us as a whole; 4xx is worth a retry."""
        text = f"{self._t.where}: {stage}: {code} {_one_line(msg)}"
        if 500 <= code < 600:
            raise _Fatal(text.split(": ", 1)[1])
        return self._fail(code if 400 <= code < 500 else 0, text)

    def _transaction(
        self, sender: str, recipient: str, payload: bytes, ready: Callable[[], None] | None
    ) -> tuple[Outcome, bool]:
        """MAIL, RCPT, DATA for one message; also say if the session was dead or closing at MAIL."""
        smtp = self._smtp
        assert smtp is not None and smtp.sock is not None
        sock = smtp.sock
        suffix = self._mail_suffix
        encoding = "ascii"
        if not (sender.isascii() and recipient.isascii()):
            if not self._smtputf8:
                return Outcome(553, "not sent: address is not ASCII and the server lacks SMTPUTF8"), False
            suffix += b" SMTPUTF8"
            encoding = "utf-8"
        if sender != self._sender:
            self._sender = sender
            self._sender_bytes = sender.encode("utf-8")
        mail = b"MAIL FROM:<" + self._sender_bytes + b">" + suffix + b"\r\n"
        rcpt = b"RCPT TO:<" + recipient.encode(encoding) + b">\r\n"
        stage = "MAIL"
        self._mail_answered = False
        try:
            if self._pipelining:
                refused = self._pipelined(smtp, mail + rcpt + b"DATA\r\n")
                if refused is not None:
                    return refused
            else:
                sock.sendall(mail)
                code, msg = smtp.getreply()
                if code != 250:
                    return self._rejected(code, msg, reset=True), code == 421
                stage = "RCPT"
                sock.sendall(rcpt)
                code, msg = smtp.getreply()
                if not 200 <= code < 300:
                    return self._rejected(code, msg, reset=True), False
                sock.sendall(b"DATA\r\n")
                code, msg = smtp.getreply()
                if code != 354:
                    return self._rejected(code, msg, reset=True), False
            stage = "DATA"
            sock.sendall(payload)
            if ready is not None:
                try:
                    ready()
                except BaseException:
                    self._drop()  # no "." was sent: the server discards the message
                    raise
            sock.sendall(_END)
            code, msg = smtp.getreply()
            return self._rejected(code, msg, reset=False), False
        except OSError as exc:
            self._drop()
            lost = self._fail(0, f"connection lost: {_describe(exc)}")
            return lost, stage == "MAIL" and not self._mail_answered

    def _pipelined(self, smtp: smtplib.SMTP, commands: bytes) -> tuple[Outcome, bool] | None:
        """Send MAIL, RCPT and DATA at once (RFC 2920); None once the server says 354."""
        assert smtp.sock is not None
        smtp.sock.sendall(commands)
        code, msg = smtp.getreply()
        self._mail_answered = True
        if code == 421:
            return self._rejected(code, msg, reset=False), True
        first_refusal = None if code == 250 else (code, msg)
        for wanted in (range(200, 300), range(354, 355)):
            code, msg = smtp.getreply()
            if code == 421:
                return self._rejected(code, msg, reset=False), False
            if first_refusal is None and code not in wanted:
                first_refusal = (code, msg)
        if first_refusal is None:
            return None
        if code == 354:  # the server wants data we will not send: hang up so nothing is delivered
            self._drop()
            return self._fail(first_refusal[0], _one_line(first_refusal[1])), False
        return self._rejected(*first_refusal, reset=True), False

    def _rejected(self, code: int, msg: bytes, *, reset: bool) -> Outcome:
        """Turn a reply into an Outcome; forget the session on 421, reset the transaction after a refusal."""
        if code < 100:
            self._drop()
            return self._fail(0, f"unreadable reply: {_one_line(msg)}")
        outcome = self._fail(code, _one_line(msg))
        if code == 421 or code < 200:
            self._drop()
        elif reset and not outcome.ok:
            self._reset()
        return outcome

    def _reset(self) -> None:
        smtp = self._smtp
        assert smtp is not None and smtp.sock is not None
        try:
            smtp.sock.sendall(b"RSET\r\n")
            code, _ = smtp.getreply()
        except OSError:
            code = 0
        if code != 250:
            self._drop()


def _bad_address(address: str) -> str:
    if not address or any(c in address for c in "\r\n<>\0"):
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
        self, sender: str, recipient: str, data: bytes, ready: Callable[[], None] | None = None
    ) -> Outcome:
        """Store the message with Return-Path and Delivered-To so the envelope stays visible."""
        bad = _bad_address(sender) or _bad_address(recipient)
        if bad:
            return Outcome(553, f"not queued: {bad}")
        if isinstance(data, Stuffed):
            data = unstuff(data)
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
                try:
                    ready()
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
            os.replace(tmp, final)
        except OSError as exc:
            raise TransportError(f"{self.path}: cannot write to the outbox: {exc.strerror or exc}") from None
        return Outcome(250, f"queued in outbox as {final}")

    def close(self) -> None:
        """Nothing to close; present for symmetry with SMTP."""
