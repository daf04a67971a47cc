"""SMTP faults a real server can throw at a send, each against a raw-socket or aiosmtpd server on 127.0.0.1:
session refusals, slow and trickled replies, replies split into bytes or unreadable, TLS that breaks, hang-ups
after every message, a server without 8BITMIME, a non-ASCII password, the wall clock jumping back."""

from __future__ import annotations

import email
import email.policy
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailer.config import Settings
from mailer.errors import ExitStatus, TransportError
from mailer.ledger import Ledger
from mailer.transport import Outcome, SMTPTransport, refuses_session
from tests.command import spawn
from tests.publisher import env_for
from tests.record import delivery
from tests.smtpd import (
    CHUNKING_EHLO,
    PIPELINING_EHLO,
    RawSMTPServer,
    Script,
    SMTPServer,
    TLSFiles,
    settings_for,
)
from tests.test_send import run, send_args, write_list

ISSUE = "2026-02-09"
SENDER = "news@example.com"


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def raw_servers() -> Iterator[Callable[..., RawSMTPServer]]:
    """A factory: raw_servers(mail=b"530 ...") starts a RawSMTPServer with that Script, stopped after."""
    started: list[RawSMTPServer] = []

    def start(**script: object) -> RawSMTPServer:
        server = RawSMTPServer(Script(**script)).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def states(tmp_path: Path, emails: list[str]) -> Counter[str]:
    """How many of `emails` the record holds in each state ('none' for never recorded)."""
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        found = [delivery(ledger, ISSUE, e) for e in emails]
    return Counter(d.state if d is not None else "none" for d in found)


def copies(server: RawSMTPServer | SMTPServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


def readers(tmp_path: Path, count: int) -> tuple[list[str], Path]:
    emails = [f"user{i}@example.com" for i in range(count)]
    return emails, write_list(tmp_path / "subs.csv", emails)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("Error:")]


# --- item 3: a refusal of the session stops the send; only a recipient's refusal fails that reader ---


@pytest.mark.parametrize("transfer", ["DATA", "PIPELINING", "BDAT"])
@pytest.mark.parametrize("connections", [1, 4])
@pytest.mark.parametrize(
    "fault",
    [
        {"mail": b"530 5.7.0 Authentication required\r\n"},
        {"mail": b"553 5.1.8 sender domain does not exist\r\n"},
        {"data": b"554 5.7.1 no more mail from you today\r\n"},  # RCPT accepted, DATA refused for everyone
        {"data": b"554 Transaction failed\r\n"},
        {"rcpt": b"530 5.7.0 Authentication required\r\n"},
        {"end": b"552 5.3.4 message too big for this system\r\n"},
    ],
    ids=[
        "530-to-MAIL",
        "553-5.1.8-to-MAIL",
        "554-5.7.1-to-DATA",
        "554-to-DATA",
        "530-to-RCPT",
        "5.3.4-at-end",
    ],
)
def test_a_refusal_of_the_session_stops_the_send_and_fails_no_reader(
    raw_servers: Callable[..., RawSMTPServer],
    tmp_path: Path,
    post: Path,
    fault: dict[str, bytes],
    connections: int,
    transfer: str,
) -> None:
    if transfer == "BDAT":  # the first chunk's reply stands where the reply to DATA would
        fault = {("chunk" if k == "data" else k): v for k, v in fault.items()} | {"ehlo": CHUNKING_EHLO}
    elif transfer == "PIPELINING":  # the next message's commands go out with each "."
        fault = fault | {"ehlo": PIPELINING_EHLO}
    server = raw_servers(**fault)
    emails, csv = readers(tmp_path, 100)
    env = env_for(server, tmp_path)
    args = send_args(post, csv, "--connections", str(connections))
    code, _, err = run(args, env)
    assert code == ExitStatus.STOPPED, err
    assert "Traceback" not in err
    (line,) = error_lines(err)
    reply = next(iter(fault.values())).decode().strip()
    assert reply in line and "refuses this session" in line
    assert states(tmp_path, emails)["failed"] == 0  # before: 52 of 100 readers "failed"
    assert "failed, permanent" not in err
    # the log's last progress line has the counts at the stop (it said "0/100" with readers mailed since),
    # and after the error, how to resume
    # (none drawn when the first message's reply stopped it)
    last = ([""] + [line for line in err.splitlines() if " progress: " in line])[-1]
    sent = states(tmp_path, emails)["sent"]
    assert (last, sent) == ("", 0) or f" {sent} sent, " in last and "ETA -" in last, err
    assert err.endswith("\nStopped early; once that is mended, run the same command again to resume.\n"), err

    server.script = Script(ehlo=fault.get("ehlo", Script.ehlo))  # the server is fixed
    kept = len(server.messages)  # a 5xx at the end: the raw server had the bytes, but refused them
    code, _, err = run(args, env)
    assert code == 0, err
    assert Counter(r for m in server.messages[kept:] for r in m.rcpt_tos) == Counter({e: 1 for e in emails})


def test_a_recipients_own_refusal_fails_only_that_reader(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    emails, csv = readers(tmp_path, 6)
    smtp_server.fail("user1@example.com", 550)  # 550 5.1.1 at RCPT
    smtp_server.fail("user2@example.com", 554, at="DATA")  # 554 5.1.1 ... <user2@...> after the message
    code, _, err = run(send_args(post, csv), env_for(smtp_server, tmp_path))
    assert code == ExitStatus.INCOMPLETE, err
    assert states(tmp_path, emails) == Counter({"sent": 4, "failed": 2})
    assert set(copies(smtp_server)) == set(emails) - {"user1@example.com", "user2@example.com"}


@pytest.mark.parametrize("connections", [1, 3])
def test_refusals_among_pipelined_messages_fail_only_their_readers(
    smtp_servers: Callable[..., SMTPServer], tmp_path: Path, post: Path, connections: int
) -> None:
    # each message's MAIL, RCPT and DATA go out with the "." of the one before on its connection: a refusal
    # among them, or a 421 to a MAIL sent that way, is still the outcome of its own reader only
    server = smtp_servers(pipelining=True)
    emails, csv = readers(tmp_path, 30)
    server.reject("user3@example.com")  # 550 5.1.1 to RCPT
    server.fail("user5@example.com", 554, at="DATA", text="message refused")  # to the end of the message
    server.limit_per_connection(4)  # 421 to every session's 5th MAIL: it goes again on a new session
    code, _, err = run(send_args(post, csv, "--connections", str(connections)), env_for(server, tmp_path))
    assert code == ExitStatus.INCOMPLETE, err
    refused = {"user3@example.com", "user5@example.com"}
    assert states(tmp_path, emails) == Counter({"sent": 28, "failed": 2})
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        assert {e for e in emails if delivery(ledger, ISSUE, e).state == "failed"} == refused  # type: ignore[union-attr]
    assert copies(server) == Counter({e: 1 for e in emails if e not in refused})
    assert server.connections >= 28 // 4


@pytest.mark.parametrize(
    ("stage", "reply", "session"),
    [
        ("MAIL", b"550 sender rejected", True),  # one sender for all messages
        ("RCPT", b"550 5.1.1 no such user", False),
        ("RCPT", b"550 no such user", False),
        ("RCPT", b"552 5.2.2 mailbox full", False),
        ("RCPT", b"554 5.7.1 relaying to <x@y> refused by the recipient's policy", False),
        ("RCPT", b"530 5.7.0 Authentication required", True),
        ("RCPT", b"550 5.7.26 unauthenticated mail from your domain is not accepted", True),
        ("RCPT", b"553 5.1.7 bad sender mailbox syntax", True),
        ("RCPT", b"503 5.5.1 bad sequence of commands", True),
        ("DATA", b"554 no valid recipients", True),
        ("END", b"554 5.7.1 message refused as spam by this mailbox", False),
        ("END", b"550 5.6.0 content the server cannot take", True),
        ("END", b"535 5.7.8 credentials no longer valid", True),
        ("END", b"554 transaction failed", False),
        ("RCPT", b"451 4.7.0 try later", False),  # not a 5xx: never a permanent refusal at all
    ],
)
def test_refusals_are_told_apart_by_stage_and_enhanced_code(stage: str, reply: bytes, session: bool) -> None:
    code, text = int(reply[:3]), reply[4:]
    assert refuses_session(stage, code, text) is session


# --- item 6: the reply to the end of a message gets smtp_data_timeout; after it, in doubt, one retry ---


def test_a_reply_to_the_end_slower_than_smtp_timeout_is_waited_for(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path
) -> None:
    server = raw_servers(end_delay=2.5)  # beyond smtp_timeout, within smtp_data_timeout
    emails, csv = readers(tmp_path, 2)
    env = env_for(server, tmp_path, MAILER_SMTP_TIMEOUT="1", MAILER_SMTP_DATA_TIMEOUT="30")
    code, _, err = run(send_args(post, csv), env)
    assert code == 0, err
    assert copies(server) == Counter({e: 1 for e in emails})  # before: a copy per 30 s timeout
    assert states(tmp_path, emails) == Counter({"sent": 2})


@pytest.mark.parametrize(
    "ehlo", [Script.ehlo, PIPELINING_EHLO, CHUNKING_EHLO], ids=["DATA", "PIPELINING", "BDAT"]
)
def test_no_reply_to_the_end_is_in_doubt_and_sent_at_most_once_more(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path, ehlo: bytes
) -> None:
    server = raw_servers(end_delay=60, ehlo=ehlo)  # keeps each message, never answers in time
    emails, csv = readers(tmp_path, 1)
    env = env_for(server, tmp_path, MAILER_SMTP_TIMEOUT="1", MAILER_SMTP_DATA_TIMEOUT="1.5")
    code, _, err = run(send_args(post, csv), env)
    assert code == ExitStatus.INCOMPLETE, err
    assert copies(server) == Counter({"user0@example.com": 2})  # the first try and one retry, no more
    assert "in doubt" in err and "not sent again" in err
    # the retry is said by name, as the reader may get both copies, and counted as what it is (before: no
    # line, and the count read "tries again after a temporary refusal")
    assert "user0@example.com: " in err and "; sent again once (the first may have arrived)" in err, err
    assert re.search(r"tries again \(a temporary refusal or no reply\) +1$", err, re.M), err
    assert states(tmp_path, emails) == Counter({"sending": 1})  # neither sent nor failed
    # the table of every issue counts it among those not delivered: it said "0 sent, 0 failed"
    code, out, _ = run(["status"], env)
    assert code == 0 and out.splitlines()[1].split()[4:6] == ["0", "1"], out
    code, _, err = run(send_args(post, csv), env)  # a rerun does not send it a third time
    assert copies(server) == Counter({"user0@example.com": 2})
    assert "in doubt before (--retry-failed)" in err
    # and does not count it as one to mail ("Sending ... to 1 subscriber(s)", "progress: 0/1" and 0 sent)
    assert " to 0 subscriber(s) via " in err and "progress:" not in err, err
    server.script = Script(ehlo=ehlo)
    code, _, err = run(send_args(post, csv, "--retry-failed"), env)  # unless asked to
    assert code == 0, err
    assert copies(server) == Counter({"user0@example.com": 3})
    assert states(tmp_path, emails) == Counter({"sent": 1})


# --- item 11 and friends: whole-reply deadlines, replies in pieces, unreadable replies, hang-ups ---


def _send_in_thread(settings: Settings, recipient: str, limit: float) -> object:
    """conn.send() on a thread; its Outcome, or AssertionError if it has not returned within `limit` s."""
    result: list[object] = []

    def go() -> None:
        with SMTPTransport(settings).connect() as conn:
            try:
                result.append(conn.send(SENDER, recipient, b"Subject: x\r\n\r\nbody\r\n"))
            except TransportError as exc:
                result.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(limit)
    assert result, f"send still waiting after {limit} s"
    return result[0]


def test_a_trickled_reply_times_out_as_a_whole(raw_servers: Callable[..., RawSMTPServer]) -> None:
    server = raw_servers(trickle=0.2)  # one "250-" line every 0.2 s, forever
    outcome = _send_in_thread(settings_for(server, smtp_timeout=1.0), "a@example.com", limit=60)
    assert isinstance(outcome, Outcome) and not outcome.ok and not outcome.permanent, outcome  # temporary
    assert "timed out" in str(outcome), outcome


@pytest.mark.slow
def test_the_first_ctrl_c_stops_a_send_stuck_on_a_trickling_server(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path
) -> None:
    server = raw_servers(trickle=2.0)  # the issue's server: a line every 2 s, smtp_timeout = 5
    _, csv = readers(tmp_path, 5)
    proc = spawn(send_args(post, csv), env_for(server, tmp_path, MAILER_SMTP_TIMEOUT="5"))
    try:
        deadline = time.monotonic() + 60
        while server.connections == 0:  # the send is talking to the server: the trickle has begun
            assert time.monotonic() < deadline and proc.poll() is None, "the send never connected"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # before: still hanging after 90 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err.decode()
    assert b"run the same command again" in err and b"Traceback" not in err


@pytest.mark.parametrize("pipelining", [False, True])
def test_replies_split_into_single_bytes_are_read_whole(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path, pipelining: bool
) -> None:
    ehlo = b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n" if pipelining else Script.ehlo
    server = raw_servers(byte_by_byte=True, ehlo=ehlo)
    emails, csv = readers(tmp_path, 5)
    code, _, err = run(send_args(post, csv), env_for(server, tmp_path))
    assert code == 0, err
    assert copies(server) == Counter({e: 1 for e in emails})
    assert server.connections == 1


@pytest.mark.parametrize(
    "fault",
    [{"mail": b"hello there\r\n"}, {"end": b"2 5 0 ok\r\n"}, {"greeting": b"\x00\xff garbage\r\n"}],
    ids=["at-MAIL", "at-end", "greeting"],
)
def test_an_unreadable_reply_is_temporary_and_fails_no_reader(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path, fault: dict[str, bytes]
) -> None:
    server = raw_servers(**fault)
    emails, csv = readers(tmp_path, 3)
    env = env_for(server, tmp_path, MAILER_MAX_ATTEMPTS="2")
    code, _, err = run(send_args(post, csv), env)
    assert code == ExitStatus.INCOMPLETE, err
    assert "Traceback" not in err and "unreadable reply" in err
    assert states(tmp_path, emails)["failed"] == 0
    server.script = Script()
    kept = len(server.messages)
    code, _, err = run(send_args(post, csv), env)
    assert code == 0, err
    assert Counter(r for m in server.messages[kept:] for r in m.rcpt_tos) == Counter({e: 1 for e in emails})


def test_a_server_that_hangs_up_after_every_message_loses_no_one(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path
) -> None:
    server = raw_servers(close_after_message=True)
    emails, csv = readers(tmp_path, 10)
    code, _, err = run(send_args(post, csv), env_for(server, tmp_path))
    assert code == 0, err
    assert copies(server) == Counter({e: 1 for e in emails})
    assert server.connections == 10


@pytest.mark.parametrize(
    "ehlo", [Script.ehlo, PIPELINING_EHLO, CHUNKING_EHLO], ids=["DATA", "PIPELINING", "BDAT"]
)
def test_a_server_that_hangs_up_after_every_message_loses_no_one_with_either_transfer(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path, ehlo: bytes
) -> None:
    server = raw_servers(close_after_message=True, ehlo=ehlo)
    emails, csv = readers(tmp_path, 10)
    code, _, err = run(send_args(post, csv, "--connections", "2"), env_for(server, tmp_path))
    assert code == 0, err
    assert copies(server) == Counter({e: 1 for e in emails})
    assert states(tmp_path, emails) == Counter({"sent": 10})
    assert {m.chunks for m in server.messages} == {2 if ehlo == CHUNKING_EHLO else 0}


def test_a_session_slow_to_open_holds_no_other_connection(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path
) -> None:
    # one thread drives every connection of a send; the second session's greeting is held until the first
    # session has delivered five messages: opened where the others are driven, it would hold them all
    server = raw_servers(ehlo=PIPELINING_EHLO, held_greeting=2)
    emails, csv = readers(tmp_path, 20)
    proc = spawn(send_args(post, csv, "--connections", "2"), env_for(server, tmp_path))
    try:
        first = server.wait_for(5, timeout=60)
    finally:
        server.script.greeting_gate.set()
        _, err = proc.communicate(timeout=120)
    assert {m.session for m in first} == {1}
    assert proc.returncode == 0, err.decode()
    assert copies(server) == Counter({e: 1 for e in emails})
    assert states(tmp_path, emails) == Counter({"sent": 20})


def test_each_connection_takes_its_share_to_the_end_of_a_send(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    # the loop hands messages over in runs of up to 32; given whole to one connection, a run left the
    # others idle at the end of a send (at 8 connections to a server 20 ms away: 5.9 times one connection's
    # rate, not 8): the driver hands them out one at a time. Every end is answered 20 ms late.
    smtp_server.delay(0.02)
    emails, csv = readers(tmp_path, 60)
    code, _, err = run(send_args(post, csv, "--connections", "3"), env_for(smtp_server, tmp_path))
    assert code == 0, err
    per_session = Counter(m.session for m in smtp_server.messages)
    assert sum(per_session.values()) == 60 and len(per_session) == 3
    assert min(per_session.values()) >= 12, per_session  # a third is 20 (before: one carried 2)


def test_a_server_that_stops_reading_a_message_times_out_the_write(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path
) -> None:
    # a message of 7 MB (a post of 3.5 MB, its HTML and text parts) outgrows what the sockets take; the
    # server reads nothing after its 354: the write must give up after smtp_timeout, as a blocking one did,
    # and the message is not in doubt (its end never left), not wait for ever
    server = raw_servers(ehlo=PIPELINING_EHLO, stall_body=True)
    lines = "\n".join(f"{n:07d} " + "mailer " * 9 for n in range(50_000))
    big = tmp_path / "posts" / f"{ISSUE}.md"
    big.parent.mkdir()
    big.write_text(f"---\ntitle: Big\ndate: {ISSUE}\nsummary: |\n  - one\n---\n\n## A\n\n```\n{lines}\n```\n")
    emails, csv = readers(tmp_path, 1)
    env = env_for(server, tmp_path, MAILER_SMTP_TIMEOUT="2", MAILER_MAX_ATTEMPTS="1")
    proc = spawn(send_args(big, csv, "--skip-check", "html-size"), env)
    try:
        _, said = proc.communicate(timeout=60)
    finally:
        proc.kill()
    code, err = proc.returncode, said.decode()
    assert code != 0, err
    assert "user0@example.com: connection lost: timed out (gave up after 1 attempts)" in err, err
    assert server.messages == [] and states(tmp_path, emails) == Counter({"deferred": 1})


def test_chunks_taken_for_a_refused_recipient_do_not_make_the_message_sent(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path
) -> None:
    # RCPT refused, yet the chunks and the last one answered 250, as a careless server might: the message
    # went to no one. The refusal is the outcome, RSET ends the transaction and the session goes on in step
    server = raw_servers(ehlo=CHUNKING_EHLO, rcpt=b"550 5.1.1 no such user\r\n")
    emails, csv = readers(tmp_path, 3)
    code, _, err = run(send_args(post, csv), env_for(server, tmp_path))
    assert code == ExitStatus.INCOMPLETE, err
    assert states(tmp_path, emails) == Counter({"failed": 3})
    assert "550 5.1.1 no such user" in err
    assert server.connections == 1 and len(server.messages) == 3  # one session, each message transferred


def test_replies_out_of_step_with_pipelined_commands_never_make_a_message_sent(
    raw_servers: Callable[..., RawSMTPServer], tmp_path: Path, post: Path
) -> None:
    # one reply too many to MAIL: read in step, RCPT gets MAIL's second 250 and DATA gets RCPT's 250 in
    # place of 354. Before, that 250 was taken as the message's outcome: "sent", and nothing was sent
    ehlo = b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    server = raw_servers(ehlo=ehlo, mail=b"250 2.1.0 OK\r\n250 2.1.0 OK again\r\n")
    emails, csv = readers(tmp_path, 2)
    env = env_for(server, tmp_path, MAILER_MAX_ATTEMPTS="2")
    code, _, err = run(send_args(post, csv), env)
    assert code == ExitStatus.INCOMPLETE, err
    assert states(tmp_path, emails) == Counter({"deferred": 2})
    assert "out of step" in err
    assert server.messages == []


# --- TLS breaking during a send ---


@pytest.mark.parametrize(
    ("script", "exit_code"),
    [
        ({"starttls_then": b"this is not a TLS handshake\r\n" * 4}, ExitStatus.INCOMPLETE),
        ({"starttls_then": b"", "starttls_injected": b"250 injected\r\n"}, ExitStatus.STOPPED),
    ],
    ids=["garbage-for-a-handshake", "plain-text-after-the-220"],
)
def test_garbage_instead_of_tls_after_starttls_fails_no_reader(
    raw_servers: Callable[..., RawSMTPServer],
    tmp_path: Path,
    post: Path,
    tls_files: TLSFiles,
    script: dict[str, bytes],
    exit_code: int,
) -> None:
    server = raw_servers(**script)
    emails, csv = readers(tmp_path, 3)
    env = env_for(
        server,
        tmp_path,
        MAILER_SMTP_SECURITY="starttls",
        MAILER_SMTP_CAFILE=str(tls_files.ca),
        MAILER_MAX_ATTEMPTS="2",
    )
    code, _, err = run(send_args(post, csv), env)
    assert code == exit_code, err  # a failed handshake is retried later; an injection stops the send
    assert "Traceback" not in err and ("TLS" in err or "refusing the session" in err)
    assert states(tmp_path, emails)["failed"] == 0 and server.messages == []


def test_a_tls_session_dropped_mid_send_loses_no_one(
    smtp_servers: Callable[..., SMTPServer], tmp_path: Path, post: Path, tls_files: TLSFiles
) -> None:
    server = smtp_servers(tls=tls_files, require_starttls=True)
    emails, csv = readers(tmp_path, 12)
    server.reset_on("user3@example.com")  # TCP reset under TLS instead of the reply to the end
    server.hang_up_after(7)  # later, 421 and the TLS session closed
    env = env_for(server, tmp_path, MAILER_SMTP_SECURITY="starttls", MAILER_SMTP_CAFILE=str(tls_files.ca))
    code, _, err = run(send_args(post, csv), env)
    assert code == 0, err
    assert copies(server) == Counter({e: 1 for e in emails})
    assert server.connections == 3


# --- the wall clock jumping back does not move a rate-limited schedule ---


def test_a_rate_limited_schedule_ignores_the_wall_clock(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    jumps = iter(range(1, 1_000_000))

    def backwards() -> float:  # an hour further back at every look: NTP stepping the clock, gone mad
        return real() - 3600.0 * next(jumps)

    emails, csv = readers(tmp_path, 6)
    monkeypatch.setattr(time, "time", backwards)
    started = time.monotonic()
    finished: list[tuple[int, str]] = []
    thread = threading.Thread(
        target=lambda: finished.append(
            run(send_args(post, csv, "--rate", "10"), env_for(smtp_server, tmp_path))[:2]
        ),
        daemon=True,
    )
    thread.start()
    thread.join(120)
    assert finished, "a rate-limited send waited on the wall clock"
    elapsed = time.monotonic() - started
    assert finished[0][0] == 0
    assert copies(smtp_server) == Counter({e: 1 for e in emails})
    assert elapsed >= 5 / 10 * 0.95  # 6 starts at 10/s still take their 0.5 s


# --- item 9: a server without 8BITMIME gets 7-bit parts ---


def test_a_server_without_8bitmime_gets_7bit_parts_that_decode_to_the_same_text(
    smtp_servers: Callable[..., SMTPServer], tmp_path: Path, post: Path
) -> None:
    modern, old = smtp_servers(), smtp_servers(eightbitmime=False)
    emails, csv = readers(tmp_path, 3)
    for server, folder in ((modern, "a"), (old, "b")):
        env = env_for(server, tmp_path, MAILER_DATABASE=str(tmp_path / f"{folder}.db"))  # one signing key
        code, _, err = run(send_args(post, csv, "--connections", "2"), env)
        assert code == 0, err
    eight = {m.rcpt_tos[0]: m for m in modern.messages}
    seven = {m.rcpt_tos[0]: m for m in old.messages}
    assert set(seven) == set(emails)
    for address, got in seven.items():
        assert "BODY=8BITMIME" not in got.mail_options
        assert got.data.isascii()  # every line of it
        assert b"8bit" not in got.data.lower().split(b"\r\n\r\n", 1)[1]
        parsed = email.message_from_bytes(got.data, policy=email.policy.default)
        reference = email.message_from_bytes(eight[address].data, policy=email.policy.default)
        assert parsed["Content-Transfer-Encoding"] is None
        for kind in ("plain", "html"):
            part, ref = parsed.get_body((kind,)), reference.get_body((kind,))
            assert part["Content-Transfer-Encoding"] == "quoted-printable"
            assert ref["Content-Transfer-Encoding"] == "8bit"
            assert part.get_content() == ref.get_content()
            assert any(ord(c) > 127 for c in part.get_content())  # the text really is not ASCII
        assert max(len(line) for line in got.data.split(b"\r\n")) <= 998


# --- item 17 (part): a UTF-8 password logs in; a wrong one is fatal and never shown -------------------------


NON_ASCII = "pässwörd-€-ключ"


def test_a_non_ascii_password_logs_in(
    smtp_servers: Callable[..., SMTPServer], tmp_path: Path, post: Path
) -> None:
    server = smtp_servers(users={"news": NON_ASCII})
    emails, csv = readers(tmp_path, 3)
    env = env_for(server, tmp_path, MAILER_SMTP_USER="news", MAILER_SMTP_PASSWORD=NON_ASCII)
    code, out, err = run(send_args(post, csv), env)
    assert code == 0, err
    assert copies(server) == Counter({e: 1 for e in emails})
    assert server.auth_attempts == [("news", True)]
    assert not any(c in out + err for c in "äö€ключ")


def test_a_refused_non_ascii_password_is_fatal_and_never_shown(
    smtp_servers: Callable[..., SMTPServer], tmp_path: Path, post: Path
) -> None:
    server = smtp_servers(users={"news": "the-right-one"})
    emails, csv = readers(tmp_path, 5)
    env = env_for(server, tmp_path, MAILER_SMTP_USER="news", MAILER_SMTP_PASSWORD=NON_ASCII)
    code, out, err = run(send_args(post, csv), env)
    assert code == ExitStatus.STOPPED, err
    (line,) = error_lines(err)
    assert "authentication failed" in line and "535" in line
    assert not any(c in out + err for c in "äö€ключ")  # before: "can't encode character '\xe4'"
    assert server.auth_attempts == [("news", False)]  # one login, not one per message
    assert server.messages == [] and states(tmp_path, emails)["failed"] == 0
