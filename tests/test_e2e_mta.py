"""The whole path through real mail software: mailer send, Postfix, Maildir, Dovecot IMAP, a mail client.

Postfix and Dovecot run on free loopback ports with their own configuration (tests/mta.py); only the test's
domain is accepted and nothing can leave. Each subscriber's copy is read back over IMAP with imaplib and
checked as a reader's mail program would show it; then the one-click URL from a received message is POSTed
to `mailer serve`, and the next issue skips that subscriber.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import smtplib
import time
from collections import Counter
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import lxml.html
import pytest

from mailer.config import load_config
from mailer.ledger import Ledger
from mailer.tokens import load_keyring
from tests import mta
from tests.command import run
from tests.conftest import EXAMPLE
from tests.served import mailer_serve

pytestmark = pytest.mark.mta

TITLE = "四巨头6100亿美元豪赌AI 市场泼冷水蒸发9500亿市值"
DOMAIN = "inbox.example.net"
READERS = {"alice": "Alice Liddell", "bob": "王小明", "carol": "Carol O'Neil"}


@pytest.fixture(scope="module")
def mail_system() -> Iterator[mta.MailSystem]:
    """Postfix and Dovecot for this module, stopped at the end even when a test fails."""
    with mta.running(DOMAIN, READERS) as system:
        yield system


@pytest.fixture
def env(mail_system: mta.MailSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The MAILER_* settings `send` and `serve` share: Postfix as the server, one data folder."""
    return mta.send_env(mail_system, tmp_path, monkeypatch) | {
        "MAILER_FROM_NAME": "AI 日报",
    }


def _links(msg: EmailMessage) -> tuple[str, str]:
    """The https/http and the mailto URL of the List-Unsubscribe header."""
    links = re.findall(r"<([^<>]+)>", str(msg["List-Unsubscribe"]))
    web = [link for link in links if link.startswith("http")]
    mail = [link for link in links if link.startswith("mailto:")]
    assert len(web) == 1 and len(mail) == 1 and len(links) == 2, links
    return web[0], mail[0]


def _html(msg: EmailMessage) -> bytes:
    part = msg.get_body(("html",))
    assert part is not None and part.get_content_charset() == "utf-8"
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data.replace(b"\r\n", b"\n")


def _deliveries(system: mta.MailSystem) -> Counter[str]:
    """Completed deliveries per address, from Postfix's own log."""
    return Counter(m for line in system.deliveries() for m in re.findall(r" to=<([^>]+)>", line))


def _wait_for_empty_queue(system: mta.MailSystem, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not system.queue_is_empty():
        assert time.monotonic() < deadline, f"Postfix queue not empty; {system.log_tail()}"
        time.sleep(0.1)


def _press(port: int, url: str, body: bytes) -> tuple[int, bytes]:
    """POST to the link's path (web_url's, as in the message) on the port `mailer serve` listens on."""
    parts = urlsplit(url)
    assert parts.hostname == mta.HOST, url
    conn = HTTPConnection(mta.HOST, port, timeout=10)
    try:
        conn.request(
            "POST",
            f"{parts.path}?{parts.query}",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_only_the_test_domain_is_accepted(mail_system: mta.MailSystem) -> None:
    """The harness itself: nothing for another domain, or an unknown mailbox, gets in."""
    with smtplib.SMTP(mta.HOST, mail_system.smtp_port, timeout=10) as smtp:
        smtp.ehlo("client.example.org")
        assert smtp.mail("news@example.org")[0] == 250
        code, reply = smtp.rcpt("someone@example.com")
        assert code == 554 and b"Relay access denied" in reply
        code, _ = smtp.rcpt(f"nobody-here@{DOMAIN}")
        assert code == 550
        smtp.rset()


def test_send_through_postfix_read_over_imap_unsubscribe_and_send_again(
    mail_system: mta.MailSystem, env: dict[str, str], tmp_path: Path
) -> None:
    assert f"title: {TITLE}" in EXAMPLE.read_text(encoding="utf-8")
    first = tmp_path / "2026-02-09.md"
    shutil.copy(EXAMPLE, first)
    subscribers = tmp_path / "subscribers.csv"
    subscribers.write_text(
        "email,name\n" + "".join(f'{mail_system.address(m)},"{n}"\n' for m, n in READERS.items()),
        encoding="utf-8",
    )
    err = mta.send(first, subscribers, env)
    assert mta.figure(err, "sent") == len(READERS), err

    mail_system.wait_for({m: 1 for m in READERS})
    settings = load_config(env=env).settings
    keyring = load_keyring(settings, create=False)
    unsubscribe_prefix = env["MAILER_WEB_URL"] + "/unsubscribe?t="
    received: dict[str, EmailMessage] = {}
    anonymous_html: set[bytes] = set()
    for mailbox, name in READERS.items():
        address = mail_system.address(mailbox)
        [raw] = mail_system.fetch(mailbox)
        msg = email.message_from_bytes(raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        received[mailbox] = msg

        # whose message it is: the envelope Postfix delivered, the To header, the token: all agree
        assert msg["Delivered-To"] == address
        [to] = msg["To"].addresses
        assert (to.addr_spec, to.display_name) == (address, name)
        assert msg["Subject"] == TITLE
        assert msg["From"].addresses[0].addr_spec == "news@example.org"
        assert msg.get_content_type() == "multipart/alternative"
        text = msg.get_body(("plain",))
        assert text is not None and TITLE in text.get_content()

        web, mailto = _links(msg)
        assert web.startswith(unsubscribe_prefix)
        token = parse_qs(urlsplit(web).query)["t"][0]
        assert keyring.verify(token, *settings.accepted_token_scopes) == address
        assert mailto.startswith("mailto:") and token in mailto
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

        html = _html(msg)
        doc = lxml.html.document_fromstring(html.decode("utf-8"))
        links = [a.get("href") for a in doc.iter("a") if (a.get("href") or "").startswith(unsubscribe_prefix)]
        assert links == [web], links  # the body's link is this subscriber's own, and only that
        assert web in text.get_content()

        # the relay changed nothing: the HTML part is exactly what `mailer render` makes for this reader
        code, rendered, render_err = run(
            ["render", str(first)], {**env, "MAILER_SAMPLE_EMAIL": address, "MAILER_SAMPLE_NAME": name}
        )
        assert code == 0, render_err
        assert html == rendered.encode("utf-8")
        anonymous_html.add(html.replace(web.encode(), b"UNSUBSCRIBE-URL"))

    assert len(anonymous_html) == 1  # apart from the unsubscribe URL, everyone got the same bytes
    assert len({str(m["Message-ID"]) for m in received.values()}) == len(READERS)
    _wait_for_empty_queue(mail_system)
    assert _deliveries(mail_system) == Counter({mail_system.address(m): 1 for m in READERS})

    # bob presses "Unsubscribe" in his mail program: it POSTs to the List-Unsubscribe URL (RFC 8058)
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full.update(env, PYTHONUNBUFFERED="1")
    with mailer_serve(tmp_path, full) as serve:
        web, _ = _links(received["bob"])
        status, page = _press(serve.port, web, b"List-Unsubscribe=One-Click")
        assert status == 200, page
        assert _press(serve.port, web, b"List-Unsubscribe=One-Click")[0] == 200  # a second press is harmless
    assert "Traceback" not in serve.log.read_text()
    with Ledger(settings.db_path) as ledger:
        assert [(s.email, s.source) for s in ledger.suppressions()] == [
            (mail_system.address("bob"), "one-click")
        ]

    second = tmp_path / "2026-02-10.md"
    second.write_text(
        EXAMPLE.read_text(encoding="utf-8").replace("date: 2026-02-09", "date: 2026-02-10"),
        encoding="utf-8",
    )
    err = mta.send(second, subscribers, env)
    assert (mta.figure(err, "sent"), mta.figure(err, "suppressed (unsubscribed, bounced or complained)")) == (
        2,
        1,
    ), err
    mail_system.wait_for({"alice": 2, "bob": 1, "carol": 2})
    _wait_for_empty_queue(mail_system)
    assert mail_system.count("bob") == 1
    assert _deliveries(mail_system) == Counter(
        {mail_system.address("alice"): 2, mail_system.address("bob"): 1, mail_system.address("carol"): 2}
    )
    for mailbox in ("alice", "carol"):
        newest = email.message_from_bytes(mail_system.fetch(mailbox)[-1], policy=policy.default)
        assert "2026-02-10" in str(newest["Message-ID"])
        assert newest["Delivered-To"] == mail_system.address(mailbox)
