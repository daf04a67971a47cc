"""A signup through real mail software: the form POSTed to `mailer serve`, its confirmation delivered by
Postfix and read over IMAP from Dovecot as a reader's mail program would, the link's button pressed, the next
issue delivered to the new reader the same way."""

from __future__ import annotations

import email
import re
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from tests import mta
from tests.conftest import EXAMPLE
from tests.served import serving

pytestmark = pytest.mark.mta

DOMAIN = "inbox.example.net"


@pytest.fixture(scope="module")
def mail_system() -> Iterator[mta.MailSystem]:
    with mta.running(DOMAIN, ["dora"]) as system:
        yield system


def _read(system: mta.MailSystem, count: int) -> list[EmailMessage]:
    system.wait_for({"dora": count})
    found = [email.message_from_bytes(raw, policy=policy.default) for raw in system.fetch("dora")]
    return [m for m in found if isinstance(m, EmailMessage)]


def test_a_signup_confirmed_from_the_inbox_gets_the_next_issue(
    mail_system: mta.MailSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = mta.send_env(mail_system, tmp_path, monkeypatch) | {
        "MAILER_OFFLINE": "1",
        "MAILER_LIST_NAME": "AI 日报",
    }
    dora = mail_system.address("dora")
    with serving(tmp_path, {}, **env) as served:
        conn = HTTPConnection(mta.HOST, served.port, timeout=60)
        body = urlencode({"email": dora, "name": "Dora", "website": ""})
        conn.request(
            "POST", "/subscribe", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert conn.getresponse().status == 200
        conn.close()

        (confirmation,) = _read(mail_system, 1)
        assert confirmation["To"] == dora and confirmation["List-Id"] == "AI 日报 <news.example.org>"
        assert confirmation["Subject"] == "Confirm your subscription to AI 日报"
        text = confirmation.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        (link,) = re.findall(r"http://\S+/subscribe/confirm\?t=\S+", text)
        token = parse_qs(urlsplit(link).query)["t"][0]
        status, answer = served.post(
            "/subscribe/confirm", urlencode({"t": token}).encode(), "application/x-www-form-urlencoded"
        )
        assert status == 200 and b"You are subscribed" in answer

    skip = ["--skip-check", "from-address", "--skip-check", "unsubscribe-url"]
    args = ["send", str(EXAMPLE), "--list", "main", "--yes", "--force", *skip]
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    _, issue = _read(mail_system, 2)
    assert issue["To"] == f"Dora <{dora}>" and issue["List-Unsubscribe"]
