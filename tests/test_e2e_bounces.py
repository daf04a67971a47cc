"""Bounces through real mail software: `mailer send` with a bounce address through Postfix, Postfix's own DSN
for an address it does not have, read back over Dovecot IMAP (TLS) by `mailer bounces`; a complaint fed the
same way; the next send skips both readers and still mails the others. And `mailer bounces` against Dovecot
alone: implicit TLS and STARTTLS, \\Seen, \\Flagged, a done folder, a wrong password, an untrusted server.

Postfix and Dovecot run on free loopback ports (tests/mta.py); Postfix accepts mail for the test's domain
only, and bounces what it cannot deliver there to the envelope sender. Every wait polls the mailbox with a
deadline.
"""

from __future__ import annotations

import email
import imaplib
import shutil
import smtplib
import ssl
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest
from flufl.bounce import all_failures

from mailer.config import load_config
from mailer.ledger import Ledger
from tests import mta, record
from tests.command import run
from tests.conftest import EXAMPLE
from tests.smtpd import TLSFiles, make_tls_files

pytestmark = pytest.mark.mta

DOMAIN = "inbox.example.net"
FIXTURES = Path(__file__).parent / "bounces"
MAILBOXES = ["alice", "carol", "bounce", "tlsbox", "starttlsbox"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("imap-tls"))


@pytest.fixture(scope="module")
def mail_system(tls: TLSFiles) -> Iterator[mta.MailSystem]:
    """Postfix (bouncing unknown mailboxes with a DSN) and Dovecot (IMAP with TLS) for this module."""
    with mta.running(DOMAIN, MAILBOXES, tls=tls, accept_unknown=True) as system:
        yield system


@pytest.fixture
def env(
    mail_system: mta.MailSystem, tls: TLSFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    return mta.send_env(mail_system, tmp_path, monkeypatch) | {
        "MAILER_IMAP_HOST": mta.HOST,
        "MAILER_IMAP_CAFILE": str(tls.ca),
        "MAILER_IMAP_PASSWORD": mta.PASSWORD,
    }


def _imap(system: mta.MailSystem, mailbox: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(mta.HOST, system.imap_port, timeout=10)
    imap.starttls(ssl.create_default_context(cafile=str(system.tls.ca)) if system.tls else None)
    imap.login(system.address(mailbox), mta.PASSWORD)
    return imap


def _append(system: mta.MailSystem, mailbox: str, messages: list[bytes]) -> None:
    with _imap(system, mailbox) as imap:
        for raw in messages:
            typ, data = imap.append("INBOX", "", None, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            assert typ == "OK", data


def _search(system: mta.MailSystem, mailbox: str, criteria: str, folder: str = "INBOX") -> int:
    with _imap(system, mailbox) as imap:
        imap.select(folder, readonly=True)
        _, data = imap.search(None, criteria)
        return len(data[0].split()) if data and data[0] else 0


def _suppressions(env: dict[str, str]) -> dict[str, tuple[str, str, str | None, str]]:
    with Ledger(Path(env["MAILER_DATA_DIR"]) / "mailer.db") as ledger:
        return {s.email: (s.source, s.reason, s.issue_id, s.status) for s in ledger.suppressions()}


def _mailed(env: dict[str, str], readers: list[str]) -> None:
    """The record says issue 2026-02-09 went to these readers (the fixtures' bounces are about them)."""
    with Ledger(Path(env["MAILER_DATA_DIR"]) / "mailer.db") as ledger:
        ledger.start_issue("2026-02-09", "hash", "AI")
        ledger.record_outcomes("2026-02-09", [(r, "sent", 250, "250 2.0.0 Ok") for r in readers])


def test_imap_over_implicit_tls_marks_seen_and_flags_the_unreadable(
    mail_system: mta.MailSystem, env: dict[str, str]
) -> None:
    _mailed(env, ["gone@example.net", "ghost@example.net"])
    _append(
        mail_system,
        "tlsbox",
        [(FIXTURES / f"{n}.eml").read_bytes() for n in ("postfix", "qmail", "autoreply")]
        + [b"\n\nno header\n"],
    )
    imap_env = {
        **env,
        "MAILER_IMAP_PORT": str(mail_system.imaps_port),
        "MAILER_IMAP_USER": mail_system.address("tlsbox"),
    }
    code, out, err = run(["bounces", "--imap"], imap_env)
    assert code == 3, err  # done, but one message was left for a person
    assert set(_suppressions(env)) == {"gone@example.net", "ghost@example.net"}
    assert "2: an auto-reply, not a bounce" not in out and "3: an auto-reply, not a bounce" in out
    [line] = [line for line in err.splitlines() if "Warning:" in line]
    assert (
        f"imaps://{mail_system.address('tlsbox')}@{mta.HOST}:{mail_system.imaps_port}/INBOX: message 4:"
        in line
    )
    assert _search(mail_system, "tlsbox", "SEEN") == 3
    assert _search(mail_system, "tlsbox", "FLAGGED UNSEEN") == 1
    code, out, err = run(["bounces", "--imap"], imap_env)
    assert (code, out) == (0, "") and "no unread message" in err
    assert mta.PASSWORD not in out + err


def test_imap_starttls_url_moves_what_it_read_to_the_done_folder(
    mail_system: mta.MailSystem, env: dict[str, str]
) -> None:
    user = mail_system.address("starttlsbox")
    with _imap(mail_system, "starttlsbox") as imap:
        assert imap.create("Done")[0] == "OK"
    _mailed(env, ["lost.reader@example.com"])
    _append(mail_system, "starttlsbox", [(FIXTURES / "gmail.eml").read_bytes()])
    url = f"imap://{user.replace('@', '%40')}@{mta.HOST}:{mail_system.imap_port}/INBOX"
    code, out, err = run(["bounces", "--imap", url], {**env, "MAILER_IMAP_DONE_FOLDER": "Done"})
    assert code == 0, err
    assert out.startswith("1: dsn: lost.reader@example.com hard 5.1.1")
    assert (
        _search(mail_system, "starttlsbox", "ALL"),
        _search(mail_system, "starttlsbox", "SEEN", "Done"),
    ) == (0, 1)


@pytest.mark.parametrize("problem", ["password", "certificate"])
def test_imap_refusals_are_one_line_without_the_password(
    mail_system: mta.MailSystem, env: dict[str, str], problem: str
) -> None:
    bad = {
        **env,
        "MAILER_IMAP_PORT": str(mail_system.imaps_port),
        "MAILER_IMAP_USER": mail_system.address("tlsbox"),
    }
    if problem == "password":
        bad["MAILER_IMAP_PASSWORD"] = "wrong-password-5ecret"
        expected = "cannot log in: [AUTHENTICATIONFAILED]"
    else:
        del bad["MAILER_IMAP_CAFILE"]
        expected = "cannot connect: the server's certificate is not trusted"
    code, out, err = run(["bounces", "--imap"], bad)
    assert code == 1
    assert err.startswith("Error: imaps://") and expected in err and len(err.strip().splitlines()) == 1, err
    assert bad["MAILER_IMAP_PASSWORD"] not in out + err


def _complaint_about(received: bytes, reader: str) -> bytes:
    """An ARF report (tests/bounces/arf.eml's layout) returning the message the reader got, as a feedback
    loop sends it: to the site's fixed report address, the whole message attached."""
    text = (FIXTURES / "arf.eml").read_text(encoding="utf-8")
    head, _, _ = text.partition("Content-Type: message/rfc822\nContent-Disposition: inline\n\n")
    head = head.replace("annoyed@example.com", reader)
    head = head.replace(
        "Original-Mail-From: <bounces@example.org>", f"Original-Mail-From: <{_return_path(received)}>"
    )
    body = received.replace(b"\r\n", b"\n").decode("utf-8")
    arf = (
        head
        + "Content-Type: message/rfc822\nContent-Disposition: inline\n\n"
        + body
        + "\n--part1_13d.2e68ed54_boundary--\n"
    )
    return arf.replace("To: bounces@example.org", f"To: bounce@{DOMAIN}").encode("utf-8")


def _return_path(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=policy.default)
    return str(msg["Return-Path"]).strip("<>")


def _wait_for_bounces(system: mta.MailSystem, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while system.count("bounce") < count:
        assert time.monotonic() < deadline, f"no DSN in the bounce mailbox; {system.log_tail()}"
        time.sleep(0.1)


def test_postfix_dsn_and_a_complaint_read_over_imap_suppress_and_the_next_send_skips(
    mail_system: mta.MailSystem, env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **env,
        "MAILER_BOUNCE_ADDRESS": f"bounce@{DOMAIN}",
        "MAILER_IMAP_USER": mail_system.address("bounce"),
        "MAILER_IMAP_SECURITY": "starttls",
        "MAILER_IMAP_PORT": str(mail_system.imap_port),
    }
    gone = mail_system.address("gone")  # no such mailbox: Postfix accepts it, then bounces
    first = tmp_path / "2026-02-09.md"
    shutil.copy(EXAMPLE, first)
    subscribers = tmp_path / "subscribers.csv"
    subscribers.write_text(
        f"email\n{mail_system.address('alice')}\n{gone}\n{mail_system.address('carol')}\n", encoding="utf-8"
    )
    err = mta.send(first, subscribers, env)
    assert mta.figure(err, "sent") == 3, err  # the relay took all three: the failure comes later, by mail

    mail_system.wait_for({"alice": 1, "carol": 1})
    _wait_for_bounces(mail_system, 1)
    [dsn] = mail_system.fetch("bounce")
    dsn_msg = email.message_from_bytes(dsn, policy=policy.default)
    assert dsn_msg.get_content_type() == "multipart/report"
    assert str(dsn_msg["Delivered-To"]).startswith("bounce+")  # the signed VERP address it was mailed to
    assert all_failures(email.message_from_bytes(dsn)) == (set(), {gone.encode()})  # flufl.bounce agrees

    code, out, err = run(["bounces", "--json"], env)
    assert code == 0, err
    assert '"suppressed": ["' + gone + '"]' in out
    source, reason, issue, status = _suppressions(env)[gone]
    assert (source, reason, issue, status) == ("dsn", "hard bounce", "2026-02-09", "5.1.1")
    assert _search(mail_system, "bounce", "UNSEEN") == 0

    # carol reports the issue as spam: her provider's feedback loop mails an ARF report to the bounce mailbox
    [carols] = mail_system.fetch("carol")
    with smtplib.SMTP(mta.HOST, mail_system.smtp_port, timeout=10) as smtp:
        smtp.sendmail("", [f"bounce@{DOMAIN}"], _complaint_about(carols, mail_system.address("carol")))
    _wait_for_bounces(mail_system, 2)
    code, out, err = run(["bounces"], env)
    assert code == 0, err
    assert f"arf: {mail_system.address('carol')} complaint, issue 2026-02-09: suppressed" in out
    assert _suppressions(env)[mail_system.address("carol")][:3] == ("arf", "complaint", "2026-02-09")
    code, out, err = run(["bounces"], env)
    assert (code, out) == (0, "")  # read once: a second run changes nothing

    second = tmp_path / "2026-02-10.md"
    second.write_text(
        EXAMPLE.read_text(encoding="utf-8").replace("date: 2026-02-09", "date: 2026-02-10"), encoding="utf-8"
    )
    err = mta.send(second, subscribers, env)
    assert (mta.figure(err, "sent"), mta.figure(err, "suppressed (unsubscribed, bounced or complained)")) == (
        1,
        2,
    ), err
    mail_system.wait_for({"alice": 2, "carol": 1})
    assert _search(mail_system, "bounce", "ALL") == 2  # no new bounce: gone was not mailed again
    settings = load_config(env=env).settings
    with Ledger(settings.db_path) as ledger:
        assert record.delivery(ledger, "2026-02-10", gone) is None
