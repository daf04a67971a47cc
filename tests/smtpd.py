"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, recording what it gets and misbehaving on request.

    server = SMTPServer().start()          # or the `smtp_server` fixture from conftest.py
    server.fail("a@example.com", 451, times=2)     # 451 at RCPT for the first two tries
    server.fail("b@example.com", 550)              # 550 at RCPT, always
    server.limit_per_connection(10)                # 421 + hang-up at the 11th MAIL of every session
    server.hang_up_after(5)                        # 421 + hang-up instead of accepting the 6th message
    server.hang_up_all()                           # close every session silently (idle timeout)
    server.heal("a@example.com")                   # forget faults for one address (None: all)
    server.reset_on("c@example.com")               # TCP reset instead of the reply to DATA
    server.delay(0.3)                              # wait before answering end of DATA
    held = server.hold("d@example.com")           # keep the next RCPT's reply until held.release.set()
    server.pause(); server.resume()                # keep back every RCPT reply in between
    server.wait_for(3)                             # the first 3 messages, waiting with a deadline
    server.messages, server.connections            # what arrived, how many sessions said EHLO/HELO

All server state lives on the server's event-loop thread; every read and write from a test goes through
one lock, so tests may inspect it from any thread.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailer.config import Settings

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    """One message as the server got it: envelope and the exact bytes after un-dot-stuffing."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    session: int  # which connection (1, 2, ...) carried it
    mail_options: tuple[str, ...] = ()
    pipelined: bool = False  # DATA had already arrived when RCPT was answered (RFC 2920)
    chunks: int = 0  # BDAT commands that carried it (RFC 3030); 0: it came with DATA
    at: float = field(default_factory=time.time)  # when the server took it (time.time())


@dataclass
class _Fault:
    code: int
    text: str
    times: int | None  # None: every time
    stage: str  # "RCPT" or "DATA"


@dataclass
class Hold:
    """One RCPT reply kept back: `reached` is set when the RCPT arrives, the reply goes once `release` is."""

    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class _State:
    messages: list[Received] = field(default_factory=list)
    sessions: int = 0
    faults: dict[str, _Fault] = field(default_factory=dict)
    resets: dict[str, int] = field(default_factory=dict)
    per_connection: int | None = None
    hang_up_after: int | None = None
    delay: float = 0.0
    auth_attempts: list[tuple[str, bool]] = field(default_factory=list)
    holds: dict[str, Hold] = field(default_factory=dict)
    gate: asyncio.Event | None = None  # while set (pause()), every RCPT reply waits for it


@dataclass(frozen=True)
class TLSFiles:
    """A private CA and a server certificate it signed for 127.0.0.1 and localhost (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """The server side of TLS with this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_tls_files(directory: Path) -> TLSFiles:
    """Generate a throwaway CA and a server certificate for 127.0.0.1/localhost into `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailer test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class _Handler:
    """aiosmtpd hooks: record messages and apply the faults configured on the owning server."""

    def __init__(self, owner: SMTPServer) -> None:
        self.owner = owner

    async def handle_MAIL(
        self,
        server: _FaultySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        with self.owner._lock:
            limit = self.owner._state.per_connection
        if limit is not None and server.accepted >= limit:
            server.hang_up_after_reply = True
            return "421 4.7.0 too many messages in this connection, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_EHLO(
        self,
        server: _FaultySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.owner.pipelining:
            responses.insert(-1, "250-PIPELINING")
        if self.owner.chunking:
            responses.insert(-1, "250-CHUNKING")
        if not self.owner.eightbitmime:
            responses = [r for r in responses if r[4:] != "8BITMIME"]
        return responses

    async def handle_RCPT(
        self,
        server: _FaultySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self.owner._lock:
            hold = self.owner._state.holds.pop(address, None)
            gate = self.owner._state.gate
        if gate is not None:
            await gate.wait()
        if hold is not None:
            hold.reached.set()
            await asyncio.get_running_loop().run_in_executor(None, hold.release.wait)
        reply = self.owner._take_fault(address, "RCPT")
        if reply:
            return reply
        server.pipelined = bool(getattr(server._reader, "_buffer", b""))
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: _FaultySMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        with owner._lock:
            delay = owner._state.delay
        if delay:
            await asyncio.sleep(delay)
        recipients = tuple(envelope.rcpt_tos)
        with owner._cond:
            state = owner._state
            for address in recipients:
                left = state.resets.get(address, 0)
                if left:
                    state.resets[address] = left - 1
                    server.reset_instead_of_reply = True
                    return "451 never sent: the connection is reset instead"
            if state.hang_up_after is not None:
                if state.hang_up_after <= 0:
                    state.hang_up_after = None
                    server.hang_up_after_reply = True
                    return "421 4.3.2 shutting down, closing connection"
                state.hang_up_after -= 1
        for address in recipients:
            reply = owner._take_fault(address, "DATA")
            if reply:
                return reply
        content = envelope.original_content or b""
        with owner._cond:
            owner._state.messages.append(
                Received(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=recipients,
                    data=bytes(content),
                    session=server.number,
                    mail_options=tuple(envelope.mail_options),
                    pipelined=server.pipelined,
                    chunks=server.chunks,
                )
            )
            owner._cond.notify_all()
        server.accepted += 1
        return "250 2.0.0 OK queued"


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP that counts sessions and can hang up or reset instead of replying."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = handler.owner
        self.number = 0
        self.accepted = 0
        self.hang_up_after_reply = False
        self.reset_instead_of_reply = False
        self.pipelined = False
        self.chunks = 0  # BDAT commands of the message being received
        self.chunked = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.owner._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.owner._live.discard(self)
        super().connection_lost(error)

    def _count_session(self) -> None:
        if not self.number:
            with self.owner._lock:
                self.owner._state.sessions += 1
                self.number = self.owner._state.sessions

    async def smtp_HELO(self, hostname: str) -> None:
        self._count_session()
        await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._count_session()
        await super().smtp_EHLO(hostname)

    async def smtp_DATA(self, arg: str) -> None:
        if not self.owner.fast_data:
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        # read whole chunks up to CRLF.CRLF instead of aiosmtpd's line-by-line loop (~10x faster)
        buf = bytearray(b"\r\n")
        end = -1
        while end < 0:
            chunk = await self._reader.read(1 << 16)
            if not chunk:
                return
            searched = max(0, len(buf) - 4)
            buf += chunk
            end = buf.find(b"\r\n.\r\n", searched)
        if end + 5 != len(buf) and self.owner.pipelining:
            # RFC 2920 3.1: the next transaction's commands may follow the end of data; they are read next
            self._reader._buffer[:0] = buf[end + 5 :]  # type: ignore[attr-defined]
        elif end + 5 != len(buf):
            await self.push("503 5.5.0 PIPELINING after DATA was not offered")
            self.hang_up_after_reply = False
            if self.transport is not None:
                self.transport.close()
            return
        content = bytes(buf[: end + 2]).replace(b"\r\n.", b"\r\n")[2:]
        limit = self.data_size_limit
        if limit and len(content) > limit:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def smtp_BDAT(self, arg: str) -> None:
        """CHUNKING (RFC 3030), which aiosmtpd lacks: each chunk is read whatever the reply to it, and the
        last one goes through the same DATA hook (and so the same faults) as a message sent with DATA."""
        size, _, last = (arg or "").partition(" ")
        if not self.owner.chunking or not size.isdigit() or last.upper() not in ("", "LAST"):
            await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
            if self.transport is not None:  # the chunk's end cannot be found: nothing more can be read
                self.transport.close()
            return
        chunk = await self._reader.readexactly(int(size))
        self.chunked += chunk
        self.chunks += 1
        envelope = self.envelope
        if envelope is None or envelope.mail_from is None or not envelope.rcpt_tos:
            self.chunked.clear()
            self.chunks = 0
            await self.push("554 5.5.1 no valid recipients")
            return
        if not last:
            await self.push(f"250 2.0.0 {len(chunk)} octets received")
            return
        envelope.content = envelope.original_content = bytes(self.chunked)
        self.chunked.clear()
        status = await self._call_handler_hook("DATA")
        self.chunks = 0
        self._set_post_data_state()
        await self.push(status)

    async def push(self, status: Any) -> None:
        if self.reset_instead_of_reply:
            self.reset_instead_of_reply = False
            transport = self.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()  # type: ignore[attr-defined]
            return
        await super().push(status)
        if self.hang_up_after_reply:
            self.hang_up_after_reply = False
            if self.transport is not None:
                self.transport.close()


class _Controller(Controller):
    """aiosmtpd's threaded Controller on a port the OS picks."""

    def __init__(self, owner: SMTPServer, **kwargs: Any) -> None:
        super().__init__(_Handler(owner), hostname=HOST, port=0, **kwargs)

    def factory(self) -> SMTP:
        return _FaultySMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        super()._trigger_server()


class SMTPServer:
    """A controllable SMTP server on 127.0.0.1 for one test (use it as a context manager or fixture)."""

    def __init__(
        self,
        *,
        tls: TLSFiles | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        users: dict[str, str] | None = None,
        smtputf8: bool = True,
        pipelining: bool = False,
        fast_data: bool = False,
        eightbitmime: bool = True,
        chunking: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = _State()
        self._live: set[_FaultySMTP] = set()
        self._holds: list[Hold] = []
        self.users = dict(users or {})
        self.pipelining = pipelining  # advertise PIPELINING, as Postfix and Exim do
        self.chunking = chunking  # advertise and take BDAT (RFC 3030), as Postfix, Exim and Gmail do
        self.eightbitmime = eightbitmime  # offer 8BITMIME (RFC 6152), as aiosmtpd always does
        self.fast_data = fast_data  # read DATA in chunks, for benchmarks; default is aiosmtpd's own
        kwargs: dict[str, Any] = {
            "server_hostname": "mx.test",
            "enable_SMTPUTF8": smtputf8,
            "decode_data": False,
        }
        if tls is not None and not implicit_tls:
            kwargs["tls_context"] = tls.server_context()
            kwargs["require_starttls"] = require_starttls
        if users is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_require_tls"] = tls is not None
            kwargs["auth_required"] = tls is not None
        ssl_context = tls.server_context() if tls is not None and implicit_tls else None
        self._controller = _Controller(self, ssl_context=ssl_context, **kwargs)
        self.host = HOST
        self.port = 0

    def start(self) -> SMTPServer:
        """Listen on a free port of 127.0.0.1."""
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        """Close every client session, then the listener and its thread."""
        for hold in self._holds:
            hold.release.set()
        self.resume()
        loop = self._controller.loop
        if loop.is_running():

            async def close_all() -> None:
                for protocol in list(self._live):
                    if protocol.transport is not None:
                        protocol.transport.close()
                await asyncio.sleep(0.01)

            asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=5)
        self._controller.stop()

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # what arrived

    @property
    def messages(self) -> list[Received]:
        """Every accepted message so far, in order."""
        with self._lock:
            return list(self._state.messages)

    @property
    def connections(self) -> int:
        """How many sessions said EHLO or HELO."""
        with self._lock:
            return self._state.sessions

    @property
    def auth_attempts(self) -> list[tuple[str, bool]]:
        """(user, accepted) for every AUTH the server checked."""
        with self._lock:
            return list(self._state.auth_attempts)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The first `count` messages, once they arrived; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._state.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} messages within {timeout}s, got {len(self._state.messages)}"
                    )
                self._cond.wait(left)
            return list(self._state.messages[:count])

    def clear(self) -> None:
        """Forget the recorded messages (faults and session count stay)."""
        with self._lock:
            self._state.messages.clear()

    # faults

    def fail(
        self, address: str, code: int = 451, *, times: int | None = None, at: str = "RCPT", text: str = ""
    ) -> None:
        """Answer `code` (and `text`, or a usual one) for `address` at RCPT or end of DATA, `times` times."""
        if at not in ("RCPT", "DATA"):
            raise ValueError(f"at must be RCPT or DATA, not {at!r}")
        text = text or {4: "4.2.0 try again later", 5: "5.1.1 no such user here"}.get(code // 100, "odd")
        with self._lock:
            self._state.faults[address] = _Fault(code, f"{text} <{address}>", times, at)

    def reject(self, address: str, code: int = 550) -> None:
        """Refuse `address` at RCPT for good."""
        self.fail(address, code)

    def reset_on(self, address: str, times: int = 1) -> None:
        """Reset the TCP connection instead of answering the end of DATA for `address`."""
        with self._lock:
            self._state.resets[address] = times

    def limit_per_connection(self, count: int | None) -> None:
        """Answer 421 and hang up at MAIL once a session has had `count` messages accepted."""
        with self._lock:
            self._state.per_connection = count

    def hang_up_after(self, count: int) -> None:
        """Accept `count` more messages, then answer the next end of DATA with 421 and hang up, once."""
        with self._lock:
            self._state.hang_up_after = count

    def heal(self, address: str | None = None) -> None:
        """Forget the faults configured for `address` (or every fault and limit when None)."""
        with self._lock:
            state = self._state
            if address is None:
                state.faults.clear()
                state.resets.clear()
                state.per_connection = state.hang_up_after = None
                state.delay = 0.0
            else:
                state.faults.pop(address, None)
                state.resets.pop(address, None)

    def hang_up_all(self) -> None:
        """Close every open session without a word, as a server does to idle clients."""

        async def close_all() -> None:
            for protocol in list(self._live):
                if protocol.transport is not None:
                    protocol.transport.close()

        asyncio.run_coroutine_threadsafe(close_all(), self._controller.loop).result(timeout=5)

    def hold(self, address: str) -> Hold:
        """Keep back the reply to the next RCPT for `address` (a fault then applies) until it is released:
        a test can act while the client is known to wait there. stop() releases what is still held."""
        hold = Hold()
        self._holds.append(hold)
        with self._lock:
            self._state.holds[address] = hold
        return hold

    def pause(self) -> None:
        """Keep back every RCPT reply from now until resume(): no message gets through meanwhile."""
        with self._lock:
            if self._state.gate is None:
                self._state.gate = asyncio.Event()

    def resume(self) -> None:
        """Let the RCPT replies kept back by pause() go."""
        with self._lock:
            gate, self._state.gate = self._state.gate, None
        if gate is not None:
            self._controller.loop.call_soon_threadsafe(gate.set)

    def delay(self, seconds: float) -> None:
        """Wait this long before answering each end of DATA."""
        with self._lock:
            self._state.delay = seconds

    def _take_fault(self, address: str, stage: str) -> str:
        with self._lock:
            fault = self._state.faults.get(address)
            if fault is None or fault.stage != stage:
                return ""
            if fault.times is not None:
                if fault.times <= 0:
                    return ""
                fault.times -= 1
            return f"{fault.code} {fault.text}"

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        ok = self.users.get(user) == auth_data.password.decode("utf-8", "replace")
        with self._lock:
            self._state.auth_attempts.append((user, ok))
        return AuthResult(success=ok, handled=False)


CHUNKING_EHLO = b"250-raw.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"  # Postfix's offer
PIPELINING_EHLO = b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"  # smtp-sink's, most ESPs'


@dataclass
class Script:
    """What a RawSMTPServer answers at each step; change its fields while the server runs."""

    greeting: bytes = b"220 raw.test ESMTP\r\n"
    ehlo: bytes = b"250-raw.test\r\n250 HELP\r\n"  # no 8BITMIME, no PIPELINING
    mail: bytes = b"250 2.1.0 OK\r\n"
    rcpt: bytes = b"250 2.1.5 OK\r\n"
    data: bytes = b"354 go ahead\r\n"
    end: bytes = b"250 2.0.0 queued\r\n"  # also the reply to BDAT ... LAST
    chunk: bytes = b"250 2.0.0 chunk received\r\n"  # the reply to a BDAT that is not the last (RFC 3030)
    end_delay: float = 0.0  # seconds to wait before answering the end of a message (it is kept at once)
    end_gate: threading.Event | None = None  # set: answer the ends of messages (each is kept at once)
    close_after_message: bool = False  # hang up after answering each message, without a word
    trickle: float | None = None  # EHLO answered one continuation line per `trickle` seconds, forever
    byte_by_byte: bool = False  # every reply written one byte per TCP packet
    starttls_then: bytes | None = None  # offer STARTTLS, answer 220, then answer the ClientHello with these
    starttls_injected: bytes = b""  # written with the 220 to STARTTLS, in the same packet (RFC 3207 5)
    # this many ends of messages are answered only once the next command after them has arrived: a client
    # that sends its next MAIL with the "." (RFC 2920) is answered, one that waits for the reply first waits
    # until its own timeout
    end_after_next: int = 0
    stall_body: bool = False  # after its 354 it reads nothing more (small receive buffers): writes stall
    # the session of this number (1: the first accepted) greets only once `greeting_gate` is set
    held_greeting: int = 0
    greeting_gate: threading.Event = field(default_factory=threading.Event)


class RawSMTPServer:
    """SMTP spoken by hand over a plain socket on 127.0.0.1, for faults aiosmtpd cannot make: replies
    split into single bytes or trickled, a reply to the end of a message that comes late, garbage.

    A message counts as received (and is in `messages`) once its final "." arrived, before any reply,
    as a real server that commits first and answers second.
    """

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.host = HOST
        self._listener = socket.create_server((HOST, 0))
        if self.script.stall_body:  # the sessions' windows stay small: a client's write stalls sooner
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._messages: list[Received] = []
        self._sessions = 0
        self._socks: set[socket.socket] = set()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> RawSMTPServer:
        """Accept connections on a thread of its own."""
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the listener and every session (waking any server-side wait), and join the threads."""
        self._closed.set()
        try:  # close() alone leaves a thread blocked in accept() asleep (Linux): shutdown wakes it
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> RawSMTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def messages(self) -> list[Received]:
        """Every message whose final "." arrived, in order."""
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """How many sessions were accepted."""
        with self._lock:
            return self._sessions

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The first `count` messages, once they arrived; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} messages within {timeout}s, got {len(self._messages)}"
                    )
                self._cond.wait(left)
            return list(self._messages[:count])

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            # each reply is written as its command is read: to a pipelined MAIL, RCPT and BDAT (or the
            # next message's MAIL with a "."), Nagle held every reply after the first until the client's
            # delayed ACK (40 ms a message, ~4 s a 100-message send); a real server's replies do not wait
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sessions += 1
                number = self._sessions
                self._socks.add(sock)
            thread = threading.Thread(target=self._session, args=(sock, number), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _write(self, sock: socket.socket, reply: bytes) -> None:
        if self.script.byte_by_byte:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(reply)):
                sock.sendall(reply[i : i + 1])
        else:
            sock.sendall(reply)

    def _session(self, sock: socket.socket, number: int) -> None:
        try:
            with sock, sock.makefile("rb") as reader:
                self._converse(sock, reader, number)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks.discard(sock)

    def _end(self, sock: socket.socket, received: Received) -> bool:
        """Keep a message whose end arrived, then answer it; False when the session is to end here."""
        with self._cond:
            self._messages.append(received)
            self._cond.notify_all()
        if self.script.end_delay and self._closed.wait(self.script.end_delay):
            return False
        gate = self.script.end_gate
        while gate is not None and not gate.wait(0.05):
            if self._closed.is_set():
                return False
        self._write(sock, self.script.end)
        return not self.script.close_after_message

    def _converse(self, sock: socket.socket, reader: Any, number: int) -> None:
        script = self.script
        if number == script.held_greeting:
            while not script.greeting_gate.wait(0.05):
                if self._closed.is_set():
                    return
        self._write(sock, script.greeting)
        mail_from, rcpts = "", []
        chunked, chunks = bytearray(), 0
        ahead: bytes | None = None  # a command read before the reply to the end of the message before it
        while not self._closed.is_set():
            line = ahead if ahead is not None else reader.readline()
            ahead = None
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                if script.trickle is not None:
                    while not self._closed.wait(script.trickle):
                        sock.sendall(b"250-still thinking\r\n")
                    return
                ehlo = script.ehlo
                if script.starttls_then is not None:
                    ehlo = b"250-raw.test\r\n250 STARTTLS\r\n"
                self._write(sock, ehlo)
            elif verb == b"STAR" and script.starttls_then is not None:
                self._write(sock, b"220 2.0.0 ready to start TLS\r\n" + script.starttls_injected)
                if sock.recv(4096):  # the client's TLS hello
                    sock.sendall(script.starttls_then)
                return
            elif verb == b"MAIL":
                mail_from, rcpts = line[10:].split(b">")[0].lstrip(b"<").decode(), []
                self._write(sock, script.mail)
            elif verb == b"RCPT":
                rcpts.append(line[8:].split(b">")[0].lstrip(b"<").decode())
                self._write(sock, script.rcpt)
            elif verb == b"BDAT":  # kept whatever was said to MAIL or RCPT, as a careless server might
                size, _, last = line[5:].strip().partition(b" ")
                chunked += reader.read(int(size))
                chunks += 1
                if not last:
                    self._write(sock, script.chunk)
                    continue
                received = Received(mail_from, tuple(rcpts), bytes(chunked), number, chunks=chunks)
                chunked, chunks = bytearray(), 0
                if not self._end(sock, received):
                    return
            elif verb == b"DATA":
                self._write(sock, script.data)
                if not script.data.startswith(b"354"):
                    continue
                if script.stall_body:
                    self._closed.wait()
                    return
                body = bytearray()
                while (chunk := reader.readline()) != b".\r\n":
                    if not chunk:  # the client hung up before the end: no message
                        return
                    body += chunk[1:] if chunk.startswith(b".") else chunk
                if script.end_after_next > 0:
                    script.end_after_next -= 1
                    ahead = reader.readline()
                if not self._end(sock, Received(mail_from, tuple(rcpts), bytes(body), number)):
                    return
            elif verb == b"RSET" or verb == b"NOOP":
                self._write(sock, b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                self._write(sock, b"221 2.0.0 bye\r\n")
                return
            else:
                self._write(sock, b"502 5.5.2 not implemented\r\n")


def settings_for(server: SMTPServer | RawSMTPServer, **changes: object) -> Settings:
    """Settings that reach a test server in plain text (5 s timeout), with `changes` on top."""
    values: dict[str, object] = {
        "smtp_host": server.host,
        "smtp_port": server.port,
        "smtp_security": "none",
        "smtp_timeout": 5.0,
    }
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]
