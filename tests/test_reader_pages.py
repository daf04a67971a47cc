"""Every page a reader sees speaks the list's language: a real `mailer serve` on the state of real sends.

A Chinese issue (the example post) and an English one are each sent to the test's SMTP server, then served;
each page is fetched over HTTP and its visible words read: no Latin letter on a Chinese page but those of the
addresses and links it shows, no Chinese on an English one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import lxml.html
import pytest

from mailer.config import Settings
from mailer.tokens import Keyring, load_keyring
from tests.served import Served, send_issue, serving
from tests.smtpd import HOST
from tests.webthread import ServerThread

READER = "reader@example.org"
LIST_NAME = {"zh": "每日简报", "en": "Daily Notes"}
TITLE = {"zh": "四巨头6100亿美元豪赌AI 市场泼冷水蒸发9500亿市值", "en": "Four giants bet big on AI"}
ENGLISH_POST = """---
title: Four giants bet big on AI
date: 2026-02-10
lang: en
---
The four giants plan to spend more on data centres this year than in the three years before.
"""
CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Page:
    status: int
    headers: dict[str, str]
    body: str

    @property
    def lang(self) -> str:
        match = re.search(r"<html\b[^>]*\blang=\"([^\"]*)\"", self.body)
        assert match, self.body[:300]
        return match[1]

    def words(self) -> str:
        """What a reader reads: the title, the body's text, and the labels of its controls."""
        root = lxml.html.document_fromstring(self.body)
        for hidden in root.xpath("//style|//script|//input[@type='hidden']"):
            hidden.drop_tree()
        shown = [root.findtext(".//title") or "", root.body.text_content()]
        shown += root.xpath("//@placeholder|//@alt|//@aria-label|//@title|//input[@type='submit']/@value")
        return " ".join(" ".join(shown).split())


@dataclass
class Site:
    served: Served
    keyring: Keyring
    lang: str

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Page:
        conn = HTTPConnection(HOST, self.served.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            got = {k.lower(): v for k, v in answer.getheaders()}
            return Page(answer.status, got, answer.read().decode("utf-8"))
        finally:
            conn.close()

    def token(self, address: str) -> str:
        return self.keyring.sign(address, "")  # no list_id is set: links carry no scope

    def every_page(self, address: str) -> dict[str, Page]:
        """Each page a reader can come to, by what it is (the unsubscribe flow changes `address`)."""
        token = self.token(address)
        pages = {
            "home": self.request("GET", "/"),
            "archive": self.request("GET", "/issues/"),
            "confirm": self.request("GET", f"/unsubscribe?t={quote(token)}"),
            "unsubscribed": self.form({"t": token, "action": "unsubscribe"}),
            "resubscribed": self.form({"t": token, "action": "resubscribe"}),
            "bad link": self.request("GET", "/unsubscribe?t=not-a-token"),
            "unknown action": self.form({"t": token, "action": "delete-everything"}),
            "not found": self.request("GET", "/nowhere"),
            "no such issue": self.request("GET", "/issues/1999-01-01"),
            "wrong method": self.request("PUT", "/unsubscribe", b"", FORM),
            "too large": self.request("POST", "/unsubscribe", b"t=" + b"x" * 100_000, FORM),
        }
        return pages

    def form(self, fields: dict[str, str]) -> Page:
        return self.request("POST", "/unsubscribe", urlencode(fields).encode(), FORM)


STATUS = {
    "home": 200,
    "archive": 200,
    "confirm": 200,
    "unsubscribed": 200,
    "resubscribed": 200,
    "bad link": 400,
    "unknown action": 400,
    "not found": 404,
    "no such issue": 404,
    "wrong method": 405,
    "too large": 413,
}


def _english_post(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "2026-02-10.md"
    path.write_text(ENGLISH_POST, encoding="utf-8")
    return path


@contextmanager
def _site(root: Path, lang: str, **env: str) -> Iterator[Site]:
    """An issue in `lang` sent, then `mailer serve` on its state (env: more settings for serve)."""
    post = _english_post(root / "posts") if lang == "en" else None
    settings, sent = send_issue(root, [READER], *([post] if post else []))
    keyring = load_keyring(Settings(data_dir=root / "state"))  # the key the send made
    with serving(root, sent, **settings, MAILER_LIST_NAME=LIST_NAME[lang], **env) as served:
        yield Site(served, keyring, lang)


@pytest.fixture(scope="module", params=["zh", "en"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with _site(tmp_path_factory.mktemp(f"pages-{request.param}"), request.param) as running:
        yield running


def assert_speaks(page: Page, lang: str, *data: str) -> None:
    """The page is in `lang`: its <html lang>, and no word of the other language outside `data`."""
    assert page.lang == lang
    words = page.words()
    for value in sorted(data, key=len, reverse=True):
        words = words.replace(value, " ")
    words = re.sub(r"https?://\S+", " ", words)
    if lang == "zh":
        assert not re.search(r"[A-Za-z]", words), words
        assert CJK.search(words), words
    else:
        assert not CJK.search(words), words
        assert re.search(r"[A-Za-z]{3}", words), words


def test_every_reader_page_is_in_the_language_of_the_list(site: Site) -> None:
    address = f"pages-{site.lang}@example.org"
    pages = site.every_page(address)
    assert {name: page.status for name, page in pages.items()} == STATUS
    for name, page in pages.items():
        assert page.headers["content-type"] == "text/html; charset=utf-8", name
        assert_speaks(page, site.lang, address, LIST_NAME[site.lang], TITLE[site.lang])
    assert TITLE[site.lang] in pages["archive"].words()


def test_the_setting_wins_over_the_language_of_the_issues(tmp_path: Path) -> None:
    with _site(tmp_path, "en", MAILER_LANG="zh-CN") as site:
        for page in site.every_page("setting@example.org").values():
            assert_speaks(page, "zh", "setting@example.org", LIST_NAME["en"], TITLE["en"])


def test_the_pages_follow_the_newest_issue_while_serving(tmp_path: Path) -> None:
    with _site(tmp_path, "zh") as site:
        assert_speaks(site.request("GET", "/unsubscribe?t=x"), "zh", LIST_NAME["zh"])
        send_issue(tmp_path, ["second@example.org"], _english_post(tmp_path / "posts"))
        assert_speaks(site.request("GET", "/unsubscribe?t=x"), "en", LIST_NAME["zh"])


def test_an_unexpected_error_page_is_in_the_list_language(tmp_path: Path) -> None:
    """A 500 is a bug, so none can be made to happen on purpose: dispatch is made to raise, and the real
    server (waitress, as `mailer serve` runs it) answers."""
    from mailer.web import make_app, make_server

    def broken(*args: object) -> Any:
        raise RuntimeError("a bug")

    for lang in ("zh", "en"):
        settings = Settings(data_dir=tmp_path / lang, lang=lang, list_name=LIST_NAME[lang])
        app = make_app(settings)
        app.dispatch = broken  # type: ignore[method-assign]
        server = make_server(lambda app=app: app, HOST, 0, 1, settings)  # type: ignore[misc]
        running = ServerThread(server)
        try:
            conn = HTTPConnection(HOST, server.effective_port, timeout=30)
            conn.request("GET", "/")
            answer = conn.getresponse()
            page = Page(answer.status, {}, answer.read().decode())
            conn.close()
        finally:
            running.stop()
        assert page.status == 500
        assert_speaks(page, lang, LIST_NAME[lang])


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_a_busy_record_is_a_503_page_in_the_list_language(tmp_path: Path, lang: str) -> None:
    with _site(tmp_path, lang) as site:
        database = site.served.db
        for leftover in database.parent.glob(database.name + "*"):
            if leftover.is_file():  # the database, its WAL and SHM files (not the folder of send locks)
                leftover.unlink()
        database.mkdir()  # a folder where the database was: no SQLite can open it
        pages = [
            site.form({"t": site.token(READER), "action": "unsubscribe"}),
            site.request("GET", "/issues/"),
        ]
    for page in pages:
        assert page.status == 503 and page.headers["retry-after"] == "60"
        assert_speaks(page, lang, LIST_NAME[lang])
