"""The SMTP transport against a real aiosmtpd server on 127.0.0.1, and the local outbox."""

from __future__ import annotations

import email
import email.policy
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mailer.config import Settings
from mailer.errors import ConfigError, TransportError
from mailer.headers import CONTROL
from mailer.transport import (
    DotStuffer,
    OutboxTransport,
    Outcome,
    Pieces,
    SMTPConnection,
    SMTPTransport,
    make_transport,
)
from tests.conftest import Heard, examples
from tests.smtpd import PIPELINING_EHLO, RawSMTPServer, Script, SMTPServer, TLSFiles, settings_for

SENDER = "news@example.com"
PASSWORD = "pa55-w0rd-never-shown"


def message(subject: str = "Hello", body: str = "Hi there.\r\n") -> bytes:
    """A small 8-bit UTF-8 message with CRLF line ends, as the message builder makes them."""
    head = (
        f"From: News <{SENDER}>\r\nTo: reader@example.com\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return (head + body).encode("utf-8")


@pytest.fixture(params=["lockstep", "pipelining", "chunking"])
def server(request: pytest.FixtureRequest, smtp_servers: Callable[..., SMTPServer]) -> SMTPServer:
    """The recording server without PIPELINING, with it, and with PIPELINING and CHUNKING (Postfix's)."""
    return smtp_servers(pipelining=request.param != "lockstep", chunking=request.param == "chunking")


@pytest.fixture
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., SMTPConnection]]:
    """Open connections (to the test's `server` or `smtp_server` by default); close them after."""
    opened: list[SMTPConnection] = []

    def make(server: SMTPServer | None = None, **changes: object) -> SMTPConnection:
        if server is None:
            name = "server" if "server" in request.fixturenames else "smtp_server"
            server = request.getfixturevalue(name)
        conn = SMTPTransport(settings_for(server, **changes)).connect()
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


def test_outcome_classes_are_exclusive() -> None:
    for code, kind in [
        (250, "ok"),
        (251, "ok"),
        (421, "temporary"),
        (451, "temporary"),
        (0, "temporary"),
        (550, "permanent"),
        (554, "permanent"),
    ]:
        outcome = Outcome(code, "x")
        # temporary is what is neither: retried later
        assert (outcome.ok, outcome.permanent) == (kind == "ok", kind == "permanent")


def test_delivers_8bit_utf8_byte_for_byte(server: SMTPServer, connect) -> None:
    body = "你好，世界！这是一封测试邮件。\r\n.starts with a dot\r\n.\r\n..two dots\r\nlast line 完\r\n"
    data = message("中文 subject", body)
    outcome = connect().send(SENDER, "reader@example.com", data)
    assert outcome.ok and outcome.code == 250, outcome
    (got,) = server.wait_for(1)
    assert got.data == data
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ("reader@example.com",)
    assert "BODY=8BITMIME" in got.mail_options
    assert got.pipelined == server.pipelining  # MAIL, RCPT and DATA in one write only when offered
    assert got.chunks == (2 if server.chunking else 0)  # the message, then the empty last chunk
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert "你好" in parsed.get_content()


def test_normalises_bare_line_ends_and_adds_the_final_crlf(server: SMTPServer, connect) -> None:
    conn = connect()
    assert conn.send(SENDER, "a@example.com", b"Subject: lf\n\nline one\nline two\rthree").ok
    assert conn.send(SENDER, "b@example.com", b".Subject: odd\r\n\r\nno final newline").ok
    first, second = server.wait_for(2)
    assert first.data == b"Subject: lf\r\n\r\nline one\r\nline two\r\nthree\r\n"
    assert second.data == b".Subject: odd\r\n\r\nno final newline\r\n"


def test_stuff_doubles_leading_dots_only() -> None:
    # the final ".CRLF" goes apart, once the message may be delivered
    stuff = DotStuffer()
    assert stuff(b".a\r\nb.c\r\n.\r\n") == b"..a\r\nb.c\r\n..\r\n"
    assert stuff(b"x") == b"x\r\n"


def test_pieces_are_stuffed_as_the_message_they_join_to() -> None:
    stuff = DotStuffer()
    shared = (b"\r\n.text after the head\r\n", b" and\r\n", b".\r\nend")
    pieces = Pieces((b"Subject: x\r\n", b".dot at a line start", b""), shared)
    assert (
        stuff(pieces)
        == stuff(bytes(pieces))
        == (b"Subject: x\r\n\r\n..text after the head\r\n..dot at a line start and\r\n..\r\nend\r\n")
    )
    again = Pieces((b"Subject: y\r\n", b"plain", b"\r\n"), shared)  # the shared pieces' encoding is kept
    assert stuff(again) == b"Subject: y\r\n\r\n..text after the head\r\nplain and\r\n\r\n..\r\nend\r\n"
    bare = Pieces((b"Subject: lf\n", b"x\ry"), (b"\n.body\r", b"\n"))  # bare line ends: normalised whole
    assert stuff(bare) == b"Subject: lf\r\n\r\n..body\r\nx\r\ny\r\n"


@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from([b".", b"\r\n", b"\r", b"\n", b"a", b".."]), max_size=6).map(b"".join),
            st.lists(st.sampled_from([b".", b"\r\n", b"b", b"\r\n.", b"\n"]), max_size=6).map(b"".join),
        ),
        min_size=1,
        max_size=6,
    )
)
@hypothesis_settings(max_examples=examples(200))
def test_any_pieces_are_stuffed_as_their_bytes(pairs: list[tuple[bytes, bytes]]) -> None:
    stuff = DotStuffer()
    pieces = Pieces(tuple(p for p, _ in pairs), tuple(s for _, s in pairs))
    assert stuff(pieces) == stuff(bytes(pieces))
    assert stuff(pieces) == stuff(pieces)  # and again, from the kept shared pieces
    # BDAT's form: the same lines, no dot doubled (what a server un-stuffing DATA would have kept)
    plain = stuff.plain(pieces)
    assert plain == stuff.plain(bytes(pieces))
    assert plain.endswith(b"\r\n") and plain.count(b"\n") == plain.count(b"\r\n") == plain.count(b"\r")
    assert (b"\r\n" + stuff(pieces)).replace(b"\r\n.", b"\r\n")[2:] == plain  # each line's first dot off


def test_reuses_one_connection_for_many_messages(server: SMTPServer, connect) -> None:
    conn = connect()
    outcomes = [conn.send(SENDER, f"r{i}@example.com", message(f"n{i}")) for i in range(40)]
    assert all(o.ok for o in outcomes)
    got = server.wait_for(40)
    assert server.connections == 1
    assert {m.session for m in got} == {1}
    assert [m.rcpt_tos[0] for m in got] == [f"r{i}@example.com" for i in range(40)]
    assert conn.sessions == 1


def test_refused_recipient_affects_only_its_message(server: SMTPServer, connect) -> None:
    server.reject("gone@example.com")
    conn = connect()
    first = conn.send(SENDER, "a@example.com", message())
    refused = conn.send(SENDER, "gone@example.com", message())
    after = conn.send(SENDER, "c@example.com", message())
    assert first.ok and after.ok
    assert refused.code == 550 and refused.permanent and not refused.ok
    assert "no such user" in refused.text and "\n" not in refused.text
    got = server.wait_for(2)
    assert [m.rcpt_tos for m in got] == [("a@example.com",), ("c@example.com",)]
    assert server.connections == 1


def test_a_reply_with_control_characters_is_recorded_as_one_clean_line(server: SMTPServer, connect) -> None:
    # what a server says ends up in the delivery record and on the terminal: no escape, bell or NUL
    server.fail("gone@example.com", 550, text="5.1.1 \x1b[2J\x1b]0;pwned\x07no\x00such\x9buser\u2028here")
    refused = connect().send(SENDER, "gone@example.com", message())
    assert refused.code == 550 and refused.permanent
    assert not CONTROL.search(refused.text)
    assert "[2J" in refused.text and "no such" in refused.text and "user here" in refused.text


def test_451_is_temporary_and_a_retry_succeeds(server: SMTPServer, connect) -> None:
    server.fail("busy@example.com", 451, times=2)
    conn = connect()
    tries = [conn.send(SENDER, "busy@example.com", message()) for _ in range(3)]
    assert [o.code for o in tries[:2]] == [451, 451]
    assert all(not o.ok and not o.permanent for o in tries[:2])
    assert tries[2].ok
    assert len(server.wait_for(1)) == 1
    assert server.connections == 1


def test_rejection_after_data_is_permanent_and_session_goes_on(server: SMTPServer, connect) -> None:
    server.fail("spamtrap@example.com", 554, at="DATA")
    conn = connect()
    assert conn.send(SENDER, "spamtrap@example.com", message()).permanent
    assert conn.send(SENDER, "ok@example.com", message()).ok
    assert [m.rcpt_tos for m in server.wait_for(1)] == [("ok@example.com",)]
    assert server.connections == 1


def test_421_and_hang_up_then_next_send_reconnects(server: SMTPServer, connect) -> None:
    server.hang_up_after(1)
    conn = connect()
    assert conn.send(SENDER, "a@example.com", message()).ok
    dropped = conn.send(SENDER, "b@example.com", message())
    assert dropped.code == 421 and not dropped.ok and not dropped.permanent
    assert not conn.connected
    assert conn.send(SENDER, "c@example.com", message()).ok
    got = server.wait_for(2)
    assert [(m.rcpt_tos[0], m.session) for m in got] == [("a@example.com", 1), ("c@example.com", 2)]
    assert server.connections == 2 and conn.sessions == 2


def test_per_connection_limit_is_absorbed_by_reconnecting(server: SMTPServer, connect) -> None:
    server.limit_per_connection(3)
    conn = connect()
    outcomes = [conn.send(SENDER, f"r{i}@example.com", message()) for i in range(7)]
    assert all(o.ok for o in outcomes), outcomes
    got = server.wait_for(7)
    assert [m.session for m in got] == [1, 1, 1, 2, 2, 2, 3]


def test_session_closed_while_idle_is_reopened_transparently(server: SMTPServer, connect) -> None:
    conn = connect()
    assert conn.send(SENDER, "a@example.com", message()).ok
    server.hang_up_all()
    assert conn.send(SENDER, "b@example.com", message()).ok
    got = server.wait_for(2)
    assert [m.session for m in got] == [1, 2]


def test_heal_forgets_a_fault(server: SMTPServer, connect) -> None:
    server.reject("x@example.com")
    conn = connect()
    assert conn.send(SENDER, "x@example.com", message()).permanent
    server.heal("x@example.com")
    assert conn.send(SENDER, "x@example.com", message()).ok


def test_reset_during_data_is_temporary_then_next_send_works(server: SMTPServer, connect) -> None:
    server.reset_on("victim@example.com")
    conn = connect()
    lost = conn.send(SENDER, "victim@example.com", message())
    assert lost.code == 0 and not lost.ok and not lost.permanent
    assert lost.text.startswith("connection lost: ")
    assert conn.send(SENDER, "next@example.com", message()).ok
    assert [m.rcpt_tos for m in server.wait_for(1)] == [("next@example.com",)]
    assert server.connections == 2


def test_slow_reply_within_timeout_is_fine(smtp_server: SMTPServer, connect) -> None:
    smtp_server.delay(0.3)
    start = time.monotonic()
    assert connect(smtp_timeout=2.0).send(SENDER, "a@example.com", message()).ok
    assert time.monotonic() - start >= 0.3


def test_reply_slower_than_timeout_is_temporary(smtp_server: SMTPServer, connect) -> None:
    smtp_server.delay(1.5)
    conn = connect(smtp_timeout=0.3, smtp_data_timeout=0.3)  # the reply to "." has its own timeout
    slow = conn.send(SENDER, "a@example.com", message())
    assert slow.code == 0 and not slow.ok and not slow.permanent and "timed out" in slow.text
    assert slow.in_doubt  # the server had the whole message: it may have kept it
    smtp_server.delay(0)
    assert conn.send(SENDER, "b@example.com", message()).ok


def test_connection_refused_is_temporary_and_names_the_server() -> None:
    with socket.socket() as blocker:  # bound but not listening: connections are refused
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        settings = Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none")
        with make_transport(settings).connect() as conn:  # type: ignore[attr-defined]
            outcome = conn.send(SENDER, "a@example.com", message())
    assert outcome.code == 0 and not outcome.ok and not outcome.permanent
    assert outcome.text == f"127.0.0.1:{port}: connection refused"


def test_starttls_certificate_is_verified_by_default(
    smtp_servers: Callable[..., SMTPServer], tls_files: TLSFiles, connect
) -> None:
    server = smtp_servers(tls=tls_files, require_starttls=True)
    with pytest.raises(TransportError, match=f"^127.0.0.1:{server.port}: .*certificate"):
        connect(server, smtp_security="starttls").send(SENDER, "a@example.com", message())
    transport = SMTPTransport(settings_for(server, smtp_security="starttls"))
    with transport.connect() as conn, pytest.raises(TransportError, match="certificate"):
        conn.send(SENDER, "b@example.com", message())  # a second connection, refused the same way
    assert server.messages == []


def test_starttls_with_private_ca_delivers(
    smtp_servers: Callable[..., SMTPServer], tls_files: TLSFiles, connect
) -> None:
    server = smtp_servers(tls=tls_files, require_starttls=True)
    conn = connect(server, smtp_security="starttls", smtp_cafile=str(tls_files.ca))
    data = message(body="over TLS 加密\r\n")
    assert conn.send(SENDER, "a@example.com", data).ok
    assert conn.send(SENDER, "b@example.com", data).ok
    assert [m.data for m in server.wait_for(2)] == [data, data]
    assert server.connections == 1


def test_starttls_without_verification_works_and_says_so(
    smtp_servers: Callable[..., SMTPServer], tls_files: TLSFiles, connect
) -> None:
    server = smtp_servers(tls=tls_files, require_starttls=True)
    settings = settings_for(server, smtp_security="starttls", smtp_verify=False)
    said = Heard()
    assert "NOT verified" in make_transport(settings, said).description
    assert len(said) == 1 and f"the certificate of {server.host} is NOT checked" in said[0]
    assert (
        connect(server, smtp_security="starttls", smtp_verify=False)
        .send(SENDER, "a@example.com", message())
        .ok
    )


def test_implicit_tls(smtp_servers: Callable[..., SMTPServer], tls_files: TLSFiles, connect) -> None:
    server = smtp_servers(tls=tls_files, implicit_tls=True)
    conn = connect(server, smtp_security="tls", smtp_cafile=str(tls_files.ca))
    assert conn.send(SENDER, "a@example.com", message()).ok
    assert len(server.wait_for(1)) == 1


def test_missing_starttls_stops_the_send(smtp_server: SMTPServer, connect) -> None:
    conn = connect(smtp_security="starttls")
    with pytest.raises(TransportError, match=f"127.0.0.1:{smtp_server.port}: .*STARTTLS"):
        conn.send(SENDER, "a@example.com", message())
    assert smtp_server.messages == []


def test_unreadable_cafile_is_a_config_error(smtp_server: SMTPServer, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match="smtp_cafile"):
        make_transport(settings_for(smtp_server, smtp_security="starttls", smtp_cafile=str(missing)))


def test_auth_over_starttls(smtp_servers: Callable[..., SMTPServer], tls_files: TLSFiles, connect) -> None:
    server = smtp_servers(tls=tls_files, users={"news": PASSWORD})
    changes = {
        "smtp_security": "starttls",
        "smtp_cafile": str(tls_files.ca),
        "smtp_user": "news",
        "smtp_password": PASSWORD,
    }
    description = make_transport(settings_for(server, **changes)).description
    assert description == f"127.0.0.1:{server.port} (STARTTLS, user news)"
    outcome = connect(server, **changes).send(SENDER, "a@example.com", message())
    assert outcome.ok and PASSWORD not in outcome.text
    assert server.auth_attempts == [("news", True)]
    assert len(server.wait_for(1)) == 1


def test_wrong_password_raises_and_never_shows_it(
    smtp_servers: Callable[..., SMTPServer], tls_files: TLSFiles, connect
) -> None:
    server = smtp_servers(tls=tls_files, users={"news": "the-right-one"})
    conn = connect(
        server,
        smtp_security="starttls",
        smtp_cafile=str(tls_files.ca),
        smtp_user="news",
        smtp_password=PASSWORD,
    )
    with pytest.raises(TransportError) as caught:
        conn.send(SENDER, "a@example.com", message())
    text = str(caught.value)
    assert text.startswith(f"127.0.0.1:{server.port}: authentication failed")
    assert "535" in text
    assert PASSWORD not in text and PASSWORD not in repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert server.auth_attempts and not any(ok for _, ok in server.auth_attempts)
    assert server.messages == []


def test_auth_in_plain_text_for_a_local_relay(smtp_servers: Callable[..., SMTPServer], connect) -> None:
    server = smtp_servers(users={"relay": PASSWORD})
    conn = connect(server, smtp_user="relay", smtp_password=PASSWORD)
    assert conn.send(SENDER, "a@example.com", message()).ok
    assert server.auth_attempts == [("relay", True)]


def test_non_ascii_addresses_need_smtputf8(smtp_servers: Callable[..., SMTPServer], connect) -> None:
    modern = smtp_servers(smtputf8=True)
    assert connect(modern).send(SENDER, "用户@例子.测试", message()).ok
    assert modern.wait_for(1)[0].rcpt_tos == ("用户@例子.测试",)
    old = smtp_servers(smtputf8=False)
    refused = connect(old).send(SENDER, "用户@例子.测试", message())
    assert refused.permanent and "SMTPUTF8" in refused.text
    assert old.messages == []


def test_line_breaks_in_addresses_are_refused(smtp_server: SMTPServer, connect) -> None:
    outcome = connect().send(SENDER, "a@example.com>\r\nRCPT TO:<b@example.com", message())
    assert outcome.permanent
    assert smtp_server.connections == 0


def test_close_then_send_reconnects(smtp_server: SMTPServer, connect) -> None:
    conn = connect()
    assert conn.send(SENDER, "a@example.com", message()).ok
    conn.close()
    conn.close()
    assert conn.send(SENDER, "b@example.com", message()).ok
    assert smtp_server.connections == 2


def test_fast_data_server_reads_what_aiosmtpd_reads(smtp_servers: Callable[..., SMTPServer], connect) -> None:
    data = message(body="..x\r\n.\r\n.y\r\n\r\n.\r\nz 中\r\n")
    servers = [smtp_servers(), smtp_servers(fast_data=True)]
    for srv in servers:
        assert connect(srv).send(SENDER, "a@example.com", data).ok
    assert [srv.wait_for(1)[0].data for srv in servers] == [data, data]


@pytest.mark.parametrize(
    "options", [{}, {"pipelining": True, "fast_data": True}], ids=["aiosmtpd", "fast-server"]
)
def test_throughput_of_30kb_messages_on_one_connection(
    smtp_servers: Callable[..., SMTPServer],
    connect,
    capsys: pytest.CaptureFixture[str],
    options: dict[str, bool],
) -> None:
    server = smtp_servers(**options)
    line = "这是一行新闻通讯的正文 with some ASCII text too.\r\n"
    data = message(body=line * (30_000 // len(line.encode())))
    assert 29_000 < len(data) < 31_000
    conn = connect(server)
    count = 200
    start = time.perf_counter()
    outcomes = [conn.send(SENDER, f"r{i}@example.com", data) for i in range(count)]
    elapsed = time.perf_counter() - start
    assert all(o.ok for o in outcomes)
    got = server.wait_for(count)
    assert all(m.data == data for m in got) and server.connections == 1
    with capsys.disabled():
        rate = count / elapsed
        print(f"\n  transport: {rate:.0f} msg/s of {len(data)} bytes to {options or 'aiosmtpd'}")


def send_in_turn(conn: SMTPConnection, recipients: list[str]) -> list[Outcome]:
    """Send one message to each recipient in order, telling the connection each time which comes next."""
    outcomes = []
    for i, rcpt in enumerate(recipients):
        after = recipients[i + 1 : i + 2]

        def following(after: list[str] = after) -> tuple[str, str] | None:
            return (SENDER, after[0]) if after else None

        outcomes.append(conn.send(SENDER, rcpt, message(f"to {rcpt}"), following=following))
    return outcomes


def test_the_next_messages_commands_go_out_with_the_end_of_this_one() -> None:
    # the server answers the end of each of the first two messages only once the next MAIL has arrived: a
    # client that waited for that reply before its next MAIL would wait out smtp_data_timeout (in doubt)
    with RawSMTPServer(Script(ehlo=PIPELINING_EHLO, end_after_next=2)) as server:
        conn = SMTPTransport(settings_for(server, smtp_data_timeout=5.0)).connect()
        try:
            outcomes = send_in_turn(conn, ["a@example.com", "b@example.com", "c@example.com"])
        finally:
            conn.close()
        assert [(o.code, o.in_doubt) for o in outcomes] == [(250, False)] * 3, outcomes
        got = server.messages
        assert [m.rcpt_tos for m in got] == [("a@example.com",), ("b@example.com",), ("c@example.com",)]
        assert [m.data for m in got] == [message(f"to {r}") for r in "abc" for r in [f"{r}@example.com"]]
        assert server.connections == 1


@pytest.mark.parametrize("fast_data", [False, True], ids=["aiosmtpd", "fast-server"])
def test_refusals_among_pipelined_messages_fail_only_their_own(
    smtp_servers: Callable[..., SMTPServer], connect, fast_data: bool
) -> None:
    server = smtp_servers(pipelining=True, fast_data=fast_data)
    server.reject("b@example.com")  # 550 to RCPT, whose MAIL went out behind a's "."
    server.fail("c@example.com", 451, times=1)  # 451 to RCPT
    server.fail("d@example.com", 554, at="DATA", text="message refused")  # to d's end
    server.limit_per_connection(3)  # 421 to g's MAIL, sent with f's end: g goes on a new session
    recipients = [f"{c}@example.com" for c in "abcdefgh"]
    outcomes = send_in_turn(connect(server), recipients)
    said = [(o.code, o.stage) for o in outcomes]
    assert said == [
        (250, "END"),
        (550, "RCPT"),
        (451, "RCPT"),
        (554, "END"),
        (250, "END"),
        (250, "END"),
        (250, "END"),
        (250, "END"),
    ]
    got = server.messages
    assert [m.rcpt_tos[0][0] for m in got] == ["a", "e", "f", "g", "h"]
    assert [m.data for m in got] == [message(f"to {m.rcpt_tos[0]}") for m in got]
    assert [m.session for m in got] == [1, 1, 1, 2, 2]


def test_a_hang_up_after_the_end_loses_the_pipelined_commands_not_the_message() -> None:
    with RawSMTPServer(Script(ehlo=PIPELINING_EHLO, close_after_message=True)) as server:
        conn = SMTPTransport(settings_for(server)).connect()
        try:
            outcomes = send_in_turn(conn, ["a@example.com", "b@example.com", "c@example.com"])
        finally:
            conn.close()
        assert [o.code for o in outcomes] == [250, 250, 250], outcomes
        assert [m.rcpt_tos for m in server.messages] == [
            ("a@example.com",),
            ("b@example.com",),
            ("c@example.com",),
        ]
        assert server.connections == 3


def test_outbox_writes_a_maildir_message(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state")
    transport = make_transport(settings)
    assert isinstance(transport, OutboxTransport)
    assert transport.description == f"outbox {tmp_path / 'state' / 'outbox'}"
    data = message("中文", "正文\r\n.dot line\r\n")
    with transport.connect() as conn:
        outcome = conn.send(SENDER, "reader@example.com", data)
        second = conn.send(SENDER, "other@example.com", data)
    box = tmp_path / "state" / "outbox"
    files = sorted((box / "new").iterdir())
    assert len(files) == 2 and outcome.ok and outcome.code == 250
    assert outcome.text.startswith("queued in outbox as ")
    assert {outcome.text.rsplit(" ", 1)[1], second.text.rsplit(" ", 1)[1]} == {str(f) for f in files}
    assert list((box / "tmp").iterdir()) == [] and (box / "cur").is_dir()
    raw = Path(outcome.text.rsplit(" ", 1)[1]).read_bytes()
    assert raw.endswith(data)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Delivered-To"] == "reader@example.com"
    assert parsed["Return-Path"] == f"<{SENDER}>"
    assert parsed["Subject"] == "中文"
    assert "正文" in parsed.get_content()


def test_outbox_that_cannot_be_written_stops_the_send(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with OutboxTransport(blocker / "outbox").connect() as conn:
        with pytest.raises(TransportError, match=str(blocker / "outbox")):
            conn.send(SENDER, "a@example.com", message())
