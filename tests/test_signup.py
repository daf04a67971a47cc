"""Signup with double opt-in against a running `mailer serve`: the blog's form POST, the confirmation read
from the outbox as a reader would, the link's page and button, the next send; and the abuse cases."""

from __future__ import annotations

import email
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import Settings
from mailer.engine import Location, Server
from mailer.ledger import SCHEMA_VERSION, Ledger
from mailer.signup import Mailroom, SignupError, Signups, link_token, read_link, read_request
from mailer.signupmail import Letters
from mailer.tokens import Keyring
from mailer.transport import OutboxTransport
from tests import publisher
from tests.conftest import EXAMPLE, ROOT
from tests.served import serving

HOST = "127.0.0.1"
BLOG = "https://blog.aidaily.news"
FORM = "application/x-www-form-urlencoded"


@dataclass
class Site:
    """A running `mailer serve` and the state it runs on."""

    root: Path
    port: int
    env: dict[str, str]

    def http(
        self, method: str, path: str, fields: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, dict[str, str], str]:
        conn = HTTPConnection(HOST, self.port, timeout=60)
        try:
            data = body if body is not None else urlencode(fields or {}).encode() if fields else None
            headers = {"Content-Type": FORM, "Origin": BLOG, "Referer": f"{BLOG}/about/"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            answer = conn.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read().decode()
        finally:
            conn.close()

    def sign_up(self, address: str, **fields: str) -> tuple[int, dict[str, str], str]:
        return self.http("POST", "/subscribe", {"email": address, **fields})

    @property
    def outbox(self) -> Path:
        return self.root / "state" / "outbox" / "new"

    def mail(self) -> list[EmailMessage]:
        """Every message in the outbox, oldest first, as a mail program parses it."""
        files = (
            sorted(self.outbox.iterdir(), key=lambda p: p.stat().st_mtime_ns) if self.outbox.is_dir() else []
        )
        return [email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]  # type: ignore[misc]

    def wait_for_mail(self, count: int) -> list[EmailMessage]:
        """The outbox once it holds `count` messages (the signup thread writes them as files)."""
        deadline = time.monotonic() + 60
        while len(found := self.mail()) < count:
            assert time.monotonic() < deadline, f"{len(found)} message(s) in the outbox, waited for {count}"
            time.sleep(0.02)
        return found

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.root / "state" / "mailer.db")) as conn:
            return conn.execute(sql, params).fetchall()

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(cli, list(args), env=self.env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {
        **publisher.ENV,
        "MAILER_DATA_DIR": str(root / "state"),
        "MAILER_OFFLINE": "1",
        "MAILER_LIST_NAME": "AI Daily",
        "MAILER_FROM_NAME": "AI Daily",
        "MAILER_BASE_URL": BLOG,
        **extra,
    }


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """`mailer serve` with its outbox as the transport; no per-client limit (every test posts from here)."""
    env = _env(tmp_path, MAILER_SIGNUP_IP_LIMIT="0")
    with serving(tmp_path, {}, **env) as served:
        yield Site(tmp_path, served.port, env)


def _link(message: EmailMessage) -> str:
    """The confirmation link as the reader sees it in the text part; the path and query it asks for."""
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    (url,) = re.findall(r"https://\S+", text)
    assert url.startswith(publisher.WEB_URL + "/subscribe/confirm?t="), url
    parts = urlsplit(url)
    return f"{parts.path.removeprefix('/mailer')}?{parts.query}"


def _token(path: str) -> str:
    return parse_qs(urlsplit(path).query)["t"][0]


def _members(site: Site) -> list[tuple[Any, ...]]:
    return site.rows("SELECT list, address, name, consent_source FROM members ORDER BY member_id")


# --- end to end -------------------------------------------------------------------------------------------


def test_a_blog_form_signup_is_confirmed_from_the_outbox_and_the_next_send_mails_the_reader(
    site: Site,
) -> None:
    status, _, body = site.sign_up("Ann.Lee@Example.org", name="Ann Lee", website="")
    assert status == 200 and "Check your inbox" in body
    (confirmation,) = site.wait_for_mail(1)

    # a real email, as an issue is
    assert confirmation["To"] == "Ann.Lee@example.org"
    assert confirmation["From"] == f"AI Daily <{publisher.FROM_EMAIL}>"
    assert confirmation["List-Id"] == "AI Daily <news.aidaily.news>"
    assert "AI Daily" in confirmation["Subject"] and confirmation["Subject"].startswith("Confirm")
    assert re.fullmatch(r"<signup\.[0-9a-f]+@aidaily\.news>", confirmation["Message-ID"])
    assert abs(confirmation["Date"].datetime - datetime.now(UTC)) < timedelta(minutes=5)
    assert confirmation.get_content_type() == "multipart/alternative"
    html = confirmation.get_body(("html",)).get_content()  # type: ignore[union-attr]
    path = _link(confirmation)
    assert f'href="{publisher.WEB_URL}{path.replace("&", "&amp;")}"' in html

    # following the link shows a button and changes nothing (mail scanners fetch links)
    status, _, page = site.http("GET", path)
    assert status == 200 and 'method="post" action="confirm"' in page
    assert _members(site) == []
    assert site.http("HEAD", path)[0] == 200 and _members(site) == []

    status, _, page = site.http("POST", "/subscribe/confirm", {"t": _token(path)})
    assert status == 200 and "You are subscribed" in page
    assert _members(site) == [("main", "Ann.Lee@example.org", "Ann Lee", "web signup")]
    (when, ip, consent_at) = site.rows(
        "SELECT s.confirmed_at, s.confirm_ip, m.consent_at FROM signups AS s JOIN members AS m USING (email)"
    )[0]
    assert ip == HOST and when == consent_at

    # confirming twice is harmless
    status, _, page = site.http("POST", "/subscribe/confirm", {"t": _token(path)})
    assert status == 200 and "You are subscribed" in page
    assert len(_members(site)) == 1

    site.cli("send", str(EXAMPLE), "--list", "main", "--yes", "--force")
    issue = site.wait_for_mail(2)[1]
    assert issue["To"] == "Ann Lee <Ann.Lee@example.org>"
    assert issue["List-Unsubscribe"]


def test_a_welcome_post_follows_the_confirmation_as_a_real_issue(tmp_path: Path) -> None:
    welcome = tmp_path / "welcome.md"
    welcome.write_text(
        '---\ntitle: 欢迎订阅\nlang: zh\n---\n\n你好，{{ name or "读者" }}！\n', encoding="utf-8"
    )
    env = _env(tmp_path, MAILER_SIGNUP_IP_LIMIT="0", MAILER_SIGNUP_WELCOME=str(welcome))
    with serving(tmp_path, {}, **env) as served:
        site = Site(tmp_path, served.port, env)
        site.sign_up("wen@example.org", name="文")
        (confirmation,) = site.wait_for_mail(1)
        site.http("POST", "/subscribe/confirm", {"t": _token(_link(confirmation))})
        _, greeting = site.wait_for_mail(2)
    assert greeting["Subject"] == "欢迎订阅"
    assert greeting["List-Unsubscribe"] and greeting["Message-ID"].startswith("<welcome.")
    assert "你好，文！" in greeting.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert site.rows("SELECT welcome_due FROM signups") == [(0,)]


# --- the same answer -------------------------------------------------------------------------------------


def test_the_answer_is_the_same_whatever_the_address_is(site: Site) -> None:
    (site.root / "list.csv").write_text("email\nold@example.org\ngone@example.org\n", encoding="utf-8")
    site.cli("subscribers", "import", str(site.root / "list.csv"))
    site.cli("unsubscribe", "gone@example.org")
    site.sign_up("waiting@example.org")
    site.wait_for_mail(1)

    answers = {
        address: site.sign_up(address)
        for address in ("new@example.org", "old@example.org", "gone@example.org", "waiting@example.org")
    }
    honeypot = site.sign_up("bot@example.org", website="http://spam.example/")
    for status, headers, body in [*answers.values(), honeypot]:
        assert status == 200
        assert body == answers["new@example.org"][2]
        assert {k: v for k, v in headers.items() if k != "Date"} == {
            k: v for k, v in answers["new@example.org"][1].items() if k != "Date"
        }
    # a subscriber gets a link too (confirming renews the consent); the waiting one not a second within
    # minutes; the bot nothing
    site.sign_up("last@example.org")  # mailed after whatever the requests above queued
    mailed = sorted(m["To"] for m in site.wait_for_mail(5))
    assert mailed == [
        "gone@example.org",
        "last@example.org",
        "new@example.org",
        "old@example.org",
        "waiting@example.org",
    ]
    assert site.rows("SELECT count(*) FROM signups WHERE email = 'bot@example.org'") == [(0,)]


def test_a_suppressed_address_comes_back_only_by_confirming_and_the_lifting_is_recorded(site: Site) -> None:
    (site.root / "list.csv").write_text("email,name\ngone@example.org,Gone\n", encoding="utf-8")
    site.cli("subscribers", "import", str(site.root / "list.csv"))
    site.cli("unsubscribe", "gone@example.org")
    site.sign_up("gone@example.org")
    (confirmation,) = site.wait_for_mail(1)
    assert site.rows("SELECT email FROM suppressions") == [("gone@example.org",)]  # not yet

    site.http("POST", "/subscribe/confirm", {"t": _token(_link(confirmation))})
    assert site.rows("SELECT email FROM suppressions") == []
    assert site.rows("SELECT email FROM resubscribed") == [("gone@example.org",)]
    (lifted,) = site.rows("SELECT lifted FROM signups")[0]
    assert "manual" in lifted or "unsubscribed" in lifted
    assert _members(site) == [("main", "gone@example.org", "Gone", "web signup")]


# --- links ----------------------------------------------------------------------------------------------


def _key(site: Site) -> Keyring:
    return Keyring((site.root / "state" / "secret.key").read_text().strip())


def test_a_forged_an_expired_or_a_replaced_link_gets_a_clear_page_and_changes_nothing(site: Site) -> None:
    site.sign_up("kim@example.org")
    (confirmation,) = site.wait_for_mail(1)
    token = _token(_link(confirmation))
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for method in ("GET", "POST"):
        status, _, page = site.http(method, f"/subscribe/confirm?t={forged}", {} if method == "GET" else None)
        assert status == 400 and "This link does not work" in page
    status, _, page = site.http("POST", "/subscribe/confirm", {"t": ""})
    assert status == 400 and "This link does not work" in page

    (requested_at,) = site.rows("SELECT requested_at FROM signups")[0]
    old = (datetime.fromisoformat(requested_at) - timedelta(hours=49)).isoformat(timespec="microseconds")
    expired = link_token(_key(site), "main", "kim@example.org", old)
    status, _, page = site.http("POST", "/subscribe/confirm", {"t": expired})
    assert status == 410 and "This link has expired" in page and "<strong>48</strong> hours" in page
    assert 'action="../subscribe"' in page  # the form to sign up again posts to /subscribe

    # genuine and in time, but not the request the record holds: a newer link replaced it
    newer = (datetime.fromisoformat(requested_at) - timedelta(hours=1)).isoformat(timespec="microseconds")
    other = link_token(_key(site), "main", "kim@example.org", newer)
    status, _, page = site.http("POST", "/subscribe/confirm", {"t": other})
    assert status == 200 and "no longer valid" in page
    assert _members(site) == []

    # a link used, then the reader unsubscribed: the old link does not bring the address back
    site.http("POST", "/subscribe/confirm", {"t": token})
    site.cli("unsubscribe", "kim@example.org")
    status, _, page = site.http("POST", "/subscribe/confirm", {"t": token})
    assert status == 200 and "no longer valid" in page
    assert site.rows("SELECT email FROM suppressions") == [("kim@example.org",)]


def test_a_link_made_with_an_old_key_still_confirms_and_links_expire() -> None:
    old, new = Keyring("o" * 32), Keyring("n" * 32, ["o" * 32])
    at = datetime(2026, 2, 9, 7, tzinfo=UTC)
    token = link_token(old, "main", "ann@example.org", at.isoformat())
    assert read_link(new, token, 48, now=at + timedelta(hours=47)).email == "ann@example.org"
    with pytest.raises(SignupError, match="signup.expired"):
        read_link(new, token, 48, now=at + timedelta(hours=49))
    with pytest.raises(SignupError, match="signup.bad_link"):
        read_link(Keyring("x" * 32), token, 48, now=at)
    # an unsubscribe token of the same key is not a confirmation link
    with pytest.raises(SignupError, match="signup.bad_link"):
        read_link(new, new.sign("ann@example.org", ""), 48, now=at)


# --- limits and refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["not an address", "ann@example.org\r\nBcc: victim@example.net", "ann@example.org,bob@example.org",
     "<ann@example.org>", "ann@exa mple.org", "a" * 300 + "@example.org"],
)  # fmt: skip
def test_an_address_that_cannot_be_mailed_is_refused_with_a_page_saying_so(site: Site, address: str) -> None:
    status, _, page = site.sign_up(address, name="Ann")
    assert status == 400 and "Not an email address" in page and 'name="email"' in page
    assert site.rows("SELECT count(*) FROM signups") == [(0,)]


def test_a_form_body_over_the_limit_is_refused(site: Site) -> None:
    status, _, page = site.http("POST", "/subscribe", body=b"email=a%40example.org&name=" + b"x" * 5000)
    assert status == 413
    assert site.rows("SELECT count(*) FROM signup_hits") == [(0,)]


def test_a_list_the_form_names_must_be_allowed(tmp_path: Path) -> None:
    env = _env(tmp_path, MAILER_SIGNUP_LISTS="weekly", MAILER_SIGNUP_IP_LIMIT="0")
    with serving(tmp_path, {}, **env) as served:
        site = Site(tmp_path, served.port, env)
        status, _, page = site.sign_up("ann@example.org", list="secret")
        assert status == 400 and "No such list" in page
        assert site.sign_up("ann@example.org", list="weekly")[0] == 200
        (confirmation,) = site.wait_for_mail(1)
        site.http("POST", "/subscribe/confirm", {"t": _token(_link(confirmation))})
        assert _members(site) == [("weekly", "ann@example.org", "", "web signup")]


def _an_hour_earlier(root: Path) -> None:
    """As if the requests so far had been made an hour ago: past the resend window, within the day."""
    with closing(sqlite3.connect(root / "state" / "mailer.db")) as conn, conn:
        conn.execute(
            "UPDATE signups SET requested_at = ?", ((datetime.now(UTC) - timedelta(hours=1)).isoformat(),)
        )


def test_one_address_gets_one_confirmation_in_a_short_window_and_a_few_a_day(tmp_path: Path) -> None:
    env = _env(tmp_path, MAILER_SIGNUP_IP_LIMIT="0", MAILER_SIGNUP_ADDRESS_LIMIT="3")
    with serving(tmp_path, {}, **env) as served:
        site = Site(tmp_path, served.port, env)
        assert [site.sign_up("ann@example.org")[0] for _ in range(2)] == [200, 200]  # the second: too soon
        site.wait_for_mail(1)
        _an_hour_earlier(tmp_path)
        assert site.sign_up("ann@example.org")[0] == 200  # the third request today: mailed
        site.wait_for_mail(2)
        _an_hour_earlier(tmp_path)
        assert site.sign_up("ann@example.org")[0] == 200  # the fourth: over the limit of 3 a day
        assert site.sign_up("bob@example.org")[0] == 200  # mailed after whatever the requests above queued
        mailed = [m["To"] for m in site.wait_for_mail(3)]
    assert mailed == ["ann@example.org", "ann@example.org", "bob@example.org"]


def test_two_serve_processes_share_the_per_client_limit(tmp_path: Path) -> None:
    env = _env(tmp_path, MAILER_SIGNUP_IP_LIMIT="3")
    with serving(tmp_path, {}, **env) as one:
        (tmp_path / "serve.log").rename(tmp_path / "serve-1.log")
        with serving(tmp_path, {}, **env) as two:
            a, b = Site(tmp_path, one.port, env), Site(tmp_path, two.port, env)
            assert [a.sign_up("a1@example.org")[0], b.sign_up("b1@example.org")[0]] == [200, 200]
            assert a.sign_up("a2@example.org")[0] == 200
            status, headers, page = b.sign_up("b2@example.org")
            assert status == 429 and headers["Retry-After"] == "3600" and "Too many" in page
            assert a.sign_up("a3@example.org")[0] == 429
            # a client behind a proxy on this machine is told by the address the proxy adds
            conn = HTTPConnection(HOST, one.port, timeout=60)
            proxied = {"Content-Type": FORM, "X-Forwarded-For": "6.6.6.6, 203.0.113.9"}
            conn.request("POST", "/subscribe", body=b"email=c%40example.org", headers=proxied)
            assert conn.getresponse().status == 200
            conn.close()
            mailed = sorted(m["To"] for m in a.wait_for_mail(4))
    assert mailed == ["a1@example.org", "a2@example.org", "b1@example.org", "c@example.org"]
    assert ("203.0.113.9",) in a.rows("SELECT request_ip FROM signups")


# --- where the answer goes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("next_url", "location"),
    [
        (f"{BLOG}/thanks/", f"{BLOG}/thanks/"),
        ("https://BLOG.aidaily.news:443/thanks/", "https://BLOG.aidaily.news:443/thanks/"),  # the same origin
        ("https://evil.example/", None),
        ("//evil.example/", None),
        (f"{BLOG}@evil.example/", None),
        ("https://blog.aidaily.news\\@evil.example/", None),
        ("javascript:alert(1)", None),
        ("http://blog.aidaily.news/thanks/", None),  # another scheme is another origin
    ],
)
def test_the_answer_goes_back_to_the_publishers_site_only(
    site: Site, next_url: str, location: str | None
) -> None:
    status, headers, _ = site.sign_up("ann@example.org", next=next_url)
    assert (status, headers.get("Location")) == ((303, location) if location else (200, None))


def test_a_refused_address_keeps_the_forms_way_back(site: Site) -> None:
    status, _, page = site.sign_up("not an address", next=f"{BLOG}/thanks/")
    assert status == 400 and f'<input type="hidden" name="next" value="{BLOG}/thanks/">' in page
    status, _, page = site.sign_up("not an address", next="https://evil.example/")
    assert status == 400 and 'name="next"' not in page


def test_a_thank_you_page_can_be_set(tmp_path: Path) -> None:
    env = _env(tmp_path, MAILER_SIGNUP_THANKS_URL=f"{BLOG}/welcome/", MAILER_SIGNUP_IP_LIMIT="0")
    with serving(tmp_path, {}, **env) as served:
        site = Site(tmp_path, served.port, env)
        assert site.sign_up("ann@example.org")[:2][0] == 303
        assert site.sign_up("bob@example.org")[1]["Location"] == f"{BLOG}/welcome/"
        assert (
            site.sign_up("cy@example.org", next="https://evil.example/")[1]["Location"] == f"{BLOG}/welcome/"
        )


def test_the_subscribe_page_is_a_form_with_a_honeypot(site: Site) -> None:
    status, headers, page = site.http("GET", "/subscribe?list=main")
    assert status == 200 and "form-action 'self'" in headers["Content-Security-Policy"]
    assert re.search(r'<form method="post" action="subscribe">', page)
    for field in ('name="email"', 'name="name"', 'name="website" tabindex="-1"', 'name="list" value="main"'):
        assert field in page


# --- schema ----------------------------------------------------------------------------------------------


def test_a_schema_6_database_gets_the_signup_tables_and_keeps_its_lists(tmp_path: Path) -> None:
    db = tmp_path / "mailer.db"
    with Ledger(db) as ledger:
        ledger.write("INSERT INTO lists (name, created_at, changed_at) VALUES ('main', 'x', 'x')")
    with closing(sqlite3.connect(db)) as conn, conn:  # back to what schema 6's mailer wrote
        for table in ("signups", "signup_hits", "send_workers", "send_batches", "sends"):  # and step 7's
            conn.execute(f"DROP TABLE {table}")
        conn.execute("ALTER TABLE deliveries DROP COLUMN run_id")  # step 10's
        conn.execute("PRAGMA user_version = 6")
    with Ledger(db) as ledger:
        assert ledger.rows("SELECT name FROM lists") == [("main",)]
        assert ledger.rows("SELECT count(*) FROM signups") == [(0,)]
        assert ledger.rows("PRAGMA user_version") == [(SCHEMA_VERSION,)]


# --- the list's language ---------------------------------------------------------------------------------


def test_a_chinese_list_signs_up_in_chinese_pages_and_mail(tmp_path: Path) -> None:
    env = _env(tmp_path, MAILER_LANG="zh", MAILER_LIST_NAME="AI 日报", MAILER_SIGNUP_IP_LIMIT="0")
    with serving(tmp_path, {}, **env) as served:
        site = Site(tmp_path, served.port, env)
        status, _, page = site.http("GET", "/subscribe")
        assert status == 200 and '<html lang="zh">' in page and "邮箱地址" in page
        status, _, page = site.sign_up("wang@example.org")
        assert status == 200 and "请查收邮件" in page
        status, _, page = site.sign_up("not an address")
        assert status == 400 and "邮箱地址无效" in page
        (confirmation,) = site.wait_for_mail(1)
        assert confirmation["Subject"] == "请确认订阅 AI 日报"
        text = confirmation.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "请确认你希望用 wang@example.org 接收 AI 日报" in text and "48 小时" in text
        html = confirmation.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert '<html lang="zh">' in html and "确认订阅" in html
        status, _, page = site.http("GET", _link(confirmation))
        assert status == 200 and "确认订阅" in page
        status, _, page = site.http("POST", "/subscribe/confirm", {"t": _token(_link(confirmation))})
        assert status == 200 and "订阅成功" in page


# --- the record on both engines --------------------------------------------------------------------------


def test_the_signup_record_works_on_sqlite_and_postgresql(record_at: Location, tmp_path: Path) -> None:
    password = {"database_password": record_at.password or ""} if isinstance(record_at, Server) else {}
    settings = Settings(
        data_dir=tmp_path / "state",
        database=record_at,
        web_url=publisher.WEB_URL,
        signup_ip_limit=3,
        **password,
    )
    Ledger(settings.db_path).close()
    keyring = Keyring("k" * 32)
    outbox = tmp_path / "outbox"
    room = Mailroom(
        settings, lambda: keyring, Letters(settings, lambda: keyring, lambda: "en"), OutboxTransport(outbox)
    )
    signups = Signups(settings, lambda: None)
    ann = read_request({"email": "ann@example.org", "name": "Ann"}, settings)
    signups.request(ann, "192.0.2.1")
    signups.request(ann, "192.0.2.1")  # within the resend window: queues nothing
    signups.request(None, "192.0.2.1")  # the honeypot's: counted for the client, nothing else
    with pytest.raises(SignupError, match="signup.limit"):
        signups.request(read_request({"email": "bob@example.org"}, settings), "192.0.2.1")
    assert room.mail_all() == 1 and room.mail_all() == 0
    (message,) = [
        email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in (outbox / "new").iterdir()
    ]
    link = read_link(keyring, _token(_link(message)), settings.signup_confirm_hours)  # type: ignore[arg-type]
    assert signups.confirm(link, "192.0.2.9") == "confirmed"
    assert signups.confirm(link, "192.0.2.9") == "already"
    with Ledger(settings.db_path) as ledger:
        assert ledger.rows("SELECT list, address, name, consent_source FROM members") == [
            ("main", "ann@example.org", "Ann", "web signup")
        ]
        assert ledger.rows("SELECT confirm_ip, welcome_due FROM signups") == [("192.0.2.9", 0)]


def test_the_signup_benchmark_runs_and_every_answer_is_the_same_status() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "signup.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "(statuses [200])" in done.stdout
    for kind in ("new", "subscribed", "suppressed", "waiting", "honeypot"):
        assert re.search(rf"^{kind} +[0-9.]+ +[0-9.]+$", done.stdout, re.MULTILINE), done.stdout


def _delivered(outbox: Path) -> bool:
    return (outbox / "new").is_dir() and any((outbox / "new").iterdir())


def test_a_worker_forked_after_the_app_was_built_mails_with_a_thread_of_its_own(tmp_path: Path) -> None:
    # a WSGI server that builds the app and then forks its workers (gunicorn --preload): the fork keeps the
    # mailing thread's object, not the thread
    settings = Settings(data_dir=tmp_path / "state", web_url=publisher.WEB_URL)
    Ledger(settings.db_path).close()
    keyring = Keyring("k" * 32)
    outbox = tmp_path / "outbox"
    room = Mailroom(
        settings, lambda: keyring, Letters(settings, lambda: keyring, lambda: "en"), OutboxTransport(outbox)
    )
    room.wake()  # the parent's thread runs
    pid = os.fork()
    if pid == 0:  # the worker: only its own thread can mail now (the parent's is stopped below)
        code = 1
        try:
            Signups(settings, room.wake).request(
                read_request({"email": "kid@example.org"}, settings), "192.0.2.1"
            )
            # the message's file in new/ (a Maildir delivery renames it there whole), not new/ itself: the
            # outbox makes its folders first, and a child that left then was killed before it had mailed
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not _delivered(outbox):
                time.sleep(0.02)
            code = 0 if _delivered(outbox) else 1
        finally:
            os._exit(code)
    room.stop()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    (message,) = [
        email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in (outbox / "new").iterdir()
    ]
    assert message["To"] == "kid@example.org"


def test_a_fork_while_the_mail_thread_runs_never_hangs_the_child(tmp_path: Path) -> None:
    # a child forked while the thread was inside SQLite inherited its lock held by no thread of its own and
    # hung at its first connect (10 of 200 forks here before the fork waited for the pass)
    settings = Settings(data_dir=tmp_path / "state", web_url=publisher.WEB_URL)
    Ledger(settings.db_path).close()
    keyring = Keyring("k" * 32)
    hung = 0
    for _ in range(50):
        letters = Letters(settings, lambda: keyring, lambda: "en")
        room = Mailroom(settings, lambda: keyring, letters, OutboxTransport(tmp_path))
        room.wake()
        pid = os.fork()
        if pid == 0:
            try:
                Ledger(settings.db_path).close()
            finally:
                os._exit(0)
        deadline = time.monotonic() + 20
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                hung += 1
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        room.stop()
    assert hung == 0


def test_welcomes_due_wait_while_no_welcome_post_is_set(tmp_path: Path) -> None:
    welcome = tmp_path / "welcome.md"
    welcome.write_text("---\ntitle: Welcome\n---\n\nHello!\n", encoding="utf-8")
    base = Settings(data_dir=tmp_path / "state", web_url=publisher.WEB_URL, offline=True)
    Ledger(base.db_path).close()
    keyring, outbox = Keyring("k" * 32), tmp_path / "outbox"
    with_welcome = base.replace(signup_welcome=str(welcome))
    Signups(with_welcome, lambda: None).request(read_request({"email": "ann@example.org"}, base), "192.0.2.1")

    def room(settings: Settings) -> Mailroom:
        return Mailroom(
            settings,
            lambda: keyring,
            Letters(settings, lambda: keyring, lambda: "en"),
            OutboxTransport(outbox),
        )

    assert room(base).mail_all() == 1
    (message,) = [
        email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in (outbox / "new").iterdir()
    ]
    link = read_link(keyring, _token(_link(message)), 48)  # type: ignore[arg-type]
    assert Signups(with_welcome, lambda: None).confirm(link, "192.0.2.1") == "confirmed"
    assert room(base).mail_all() == 0  # the welcome post was unset since: the welcome waits, nothing fails
    assert room(with_welcome).mail_all() == 1
    assert len(list((outbox / "new").iterdir())) == 2
