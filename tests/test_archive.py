"""The archive a reader finds: /issues/, the Atom feed, the issues' web copies, as a real `mailer serve` shows
them after real sends (to the test's SMTP server, to the outbox, and one every reader's server refused)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urljoin
from xml.etree import ElementTree as ET

import lxml.html
import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.engine import Location
from tests.conftest import EXAMPLE
from tests.pg import database_env, rows
from tests.publisher import WEB_URL, env_for
from tests.served import refuses_for_want_of_a_key, serving
from tests.smtpd import HOST, SMTPServer

A = "{http://www.w3.org/2005/Atom}"
READER = ("zhang.wei@example.org", "Zhang Wei")
TITLE_ZH = "四巨头6100亿美元豪赌AI 市场泼冷水蒸发9500亿市值"  # the example post's
# the title's & and < must reach the reader as they are, escaped once, in the page and in the feed
ENGLISH = """---
title: Chips & <Models> weekly
date: 2026-02-10
lang: en
---
Hello {{ subscriber.name or "reader" }}, the four giants plan to spend more on data centres this year.
"""
OUTBOX_ONLY = "---\ntitle: Only tried out in the outbox\ndate: 2026-02-11\nlang: en\n---\nA try-out.\n"
REFUSED = "---\ntitle: Nobody took this one\ndate: 2026-02-12\nlang: en\n---\nEvery reader refused.\n"
LATER = "---\ntitle: A later issue\ndate: 2026-02-13\nlang: en\n---\nOne more.\n"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class Archive:
    port: int
    root: Path
    sent_on: frozenset[str] = frozenset()  # the UTC day(s) the issues that reached readers were sent on

    def get(self, path: str) -> Answer:
        conn = HTTPConnection(HOST, self.port, timeout=60)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return Answer(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
        finally:
            conn.close()


def _post(root: Path, name: str, text: str) -> Path:
    path = root / "posts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _send(root: Path, post: Path, *, outbox: bool = False, refuse: bool = False, **more: str) -> None:
    """`mailer send` of one post to the one reader: over SMTP (the server refusing them with `refuse`),
    or to the local outbox; `more`: other settings."""
    subscribers = root / "subscribers.csv"
    subscribers.write_text(f"email,name\n{READER[0]},{READER[1]}\n", encoding="utf-8")
    with SMTPServer() as smtp:
        if refuse:
            smtp.reject(READER[0])
        env = env_for(smtp, root, **more)
        if outbox:
            env.pop("MAILER_SMTP_HOST")
        args = ["send", str(post), "--to", str(subscribers), "--yes", "--force"]
        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == (3 if refuse else 0), result.output  # 3: some readers not mailed


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("archive")
    before = datetime.now(UTC).date().isoformat()
    _send(root, EXAMPLE)
    _send(root, _post(root, "2026-02-10.md", ENGLISH))
    sent_on = frozenset({before, datetime.now(UTC).date().isoformat()})  # two days only across midnight
    _send(root, _post(root, "2026-02-11.md", OUTBOX_ONLY), outbox=True)
    _send(root, _post(root, "2026-02-12.md", REFUSED), refuse=True)
    with serving(root, {}, MAILER_DATA_DIR=str(root / "state"), MAILER_WEB_URL=WEB_URL) as served:
        yield Archive(served.port, root, sent_on)


def _index(archive: Archive) -> list[tuple[str, str, str]]:
    """(link, title, date) of each issue /issues/ lists, in its order."""
    answer = archive.get("/issues/")
    assert answer.status == 200
    doc = lxml.html.document_fromstring(answer.text)
    return [
        (a.get("href"), a.text_content(), li.find(".//time").get("datetime"))
        for li in doc.cssselect("li")
        for a in li.cssselect("a")
    ]


def test_the_index_lists_the_issues_that_reached_readers_newest_first(archive: Archive) -> None:
    index = _index(archive)
    assert [(link, title) for link, title, _ in index] == [
        ("2026-02-10", "Chips & <Models> weekly"),
        ("2026-02-09", TITLE_ZH),
    ]
    # each the day of its send, in the default time zone (UTC); the later send's no earlier
    (_, _, later), (_, _, earlier) = index
    assert {later, earlier} <= archive.sent_on and earlier <= later, (index, archive.sent_on)
    for link, title, _ in _index(archive):
        page = archive.get(urljoin("/issues/", link))
        assert page.status == 200
        assert lxml.html.document_fromstring(page.text).findtext(".//title") == title


def test_the_index_is_also_at_issues_without_the_slash(archive: Archive) -> None:
    answer = archive.get("/issues")
    assert answer.status == 301
    assert urljoin("/mailer/issues", answer.headers["location"]) == "/mailer/issues/"  # behind a proxy too


def _links(html: str) -> tuple[list[str], list[str]]:
    """The feed links in the head, and the links whose address is the subscribe page."""
    doc = lxml.html.document_fromstring(html)
    feeds = [link.get("href") for link in doc.xpath("//head/link[@rel='alternate']")
             if link.get("type") == "application/atom+xml"]  # fmt: skip
    subscribe = [a.get("href") for a in doc.iter("a") if a.get("href", "").endswith("/subscribe")]
    return feeds, subscribe


@pytest.mark.parametrize("path", ["/issues/", "/issues/2026-02-09", "/issues/2026-02-10"])
def test_every_archive_page_leads_to_the_feed_and_to_subscribe(archive: Archive, path: str) -> None:
    feeds, subscribe = _links(archive.get(path).text)
    assert feeds == [f"{WEB_URL}/feed.atom"]
    assert subscribe == [f"{WEB_URL}/subscribe"]


def test_a_web_copy_shows_nothing_of_a_reader(archive: Archive) -> None:
    page = archive.get("/issues/2026-02-10").text
    assert "Hello reader," in page  # the post's default for a name, not the reader's
    assert READER[1] not in page and "zhang" not in page.lower()
    assert "unsubscribe?t=" not in page and not re.search(r"[?&]t=[A-Za-z0-9_-]{8,}\.", page)


def _feed(archive: Archive) -> ET.Element:
    answer = archive.get("/feed.atom")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/atom+xml; charset=utf-8"
    assert answer.body.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    return ET.fromstring(answer.body)


def _one(element: ET.Element, tag: str) -> ET.Element:
    found = element.findall(A + tag)
    assert len(found) == 1, (tag, found)
    return found[0]


def _date(element: ET.Element, tag: str) -> datetime:
    """An RFC 3339 date-time (RFC 4287 3.3): with a time zone, "T" between date and time."""
    text = _one(element, tag).text or ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", text), text
    return datetime.fromisoformat(text)


def test_the_feed_is_atom_as_rfc_4287_asks(archive: Archive) -> None:
    feed = _feed(archive)
    assert feed.tag == A + "feed"
    # 4.1.1: exactly one id, title, updated; an author (no entry has its own); a self link
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", _one(feed, "id").text or "")
    assert _one(feed, "title").text == "mailer"  # list_name, else from_name
    assert (_one(_one(feed, "author"), "name").text or "").strip()
    links = {(link.get("rel"), link.get("type")): link.get("href") for link in feed.findall(A + "link")}
    assert links[("self", "application/atom+xml")] == f"{WEB_URL}/feed.atom"
    assert links[("alternate", "text/html")] == f"{WEB_URL}/issues/"
    entries = feed.findall(A + "entry")
    # 4.1.2: each entry has one id, title, updated, and (no content) an alternate link
    titles = [_one(e, "title").text for e in entries]
    assert titles == ["Chips & <Models> weekly", TITLE_ZH]
    hrefs = [
        [link.get("href") for link in e.findall(A + "link") if link.get("rel") == "alternate"]
        for e in entries
    ]
    assert hrefs == [[f"{WEB_URL}/issues/2026-02-10"], [f"{WEB_URL}/issues/2026-02-09"]]
    ids = [_one(e, "id").text for e in entries]
    assert len(set(ids)) == 2 and all(re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", i or "") for i in ids)
    updated = [_date(e, "updated") for e in entries]
    assert updated == sorted(updated, reverse=True)
    assert _date(feed, "updated") == updated[0]
    assert b"&lt;Models&gt;" in archive.get("/feed.atom").body  # escaped once, not twice


def test_an_issue_keeps_its_feed_id_and_date_when_more_are_sent(tmp_path: Path) -> None:
    _send(tmp_path, EXAMPLE)
    with serving(tmp_path, {}, MAILER_DATA_DIR=str(tmp_path / "state"), MAILER_WEB_URL=WEB_URL) as served:
        archive = Archive(served.port, tmp_path)
        before = [(_one(e, "id").text, _one(e, "updated").text) for e in _feed(archive).findall(A + "entry")]
        assert _feed(archive).findtext(A + "id") == _feed(archive).findtext(A + "id")
        _send(tmp_path, _post(tmp_path, "2026-02-13.md", LATER))
        after = [(_one(e, "id").text, _one(e, "updated").text) for e in _feed(archive).findall(A + "entry")]
    assert len(before) == 1 and after[1:] == before and after[0][0] != before[0][0]


def test_an_empty_archive_says_so(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with serving(tmp_path, {}, MAILER_DATA_DIR=str(state), MAILER_WEB_URL=WEB_URL) as served:
        archive = Archive(served.port, tmp_path)
        answer = archive.get("/issues/")
        feed = _feed(archive)
    assert answer.status == 200 and "<li>" not in answer.text
    assert feed.findall(A + "entry") == [] and _date(feed, "updated")


def test_the_front_page_leads_to_the_archive_and_to_subscribe(archive: Archive) -> None:
    doc = lxml.html.document_fromstring(archive.get("/").text)
    hrefs = [a.get("href") for a in doc.iter("a")]
    assert f"{WEB_URL}/subscribe" in hrefs
    assert [h for h in hrefs if archive.get(urljoin("/", h)).text == archive.get("/issues/").text] == [
        "issues/"
    ]


def test_the_archive_reads_the_record_on_either_engine(tmp_path: Path, record_at: Location) -> None:
    record = database_env(record_at)
    _send(tmp_path, EXAMPLE, **record)
    _send(tmp_path, _post(tmp_path, "2026-02-11.md", OUTBOX_ONLY), outbox=True, **record)
    env = {"MAILER_DATA_DIR": str(tmp_path / "state"), "MAILER_WEB_URL": WEB_URL, **record}
    with serving(tmp_path, {}, **env) as served:
        archive = Archive(served.port, tmp_path)
        listed = [link for link, _, _ in _index(archive)]
        feed = _feed(archive)
    assert listed == ["2026-02-09"]
    assert [_one(e, "title").text for e in feed.findall(A + "entry")] == [TITLE_ZH]


def test_a_second_web_host_shows_the_issues_sent_from_the_first(tmp_path: Path, record_at: Location) -> None:
    # docs/postgresql.md: two `mailer serve` behind a load balancer share the record; the send wrote its web
    # copy in the first host's data folder only, and a reader's "View in browser" may reach either
    record = database_env(record_at)
    _send(tmp_path, EXAMPLE, **record)
    second = tmp_path / "second"
    (second / "state").mkdir(parents=True)
    shutil.copy2(tmp_path / "state" / "secret.key", second / "state" / "secret.key")  # docs/postgresql.md
    seen: dict[str, list[Answer]] = {}
    for root in (tmp_path, second):
        env = {"MAILER_DATA_DIR": str(root / "state"), "MAILER_WEB_URL": WEB_URL, **record}
        with serving(root, {}, **env) as served:
            host = Archive(served.port, root)
            # first, before anything of the archive is asked for: the pages speak the issue's language
            paths = ["/unsubscribe?t=not-a-token", "/issues/2026-02-09", "/issues/", "/feed.atom"]
            seen[root.name] = [host.get(path) for path in paths]
    first, other = seen[tmp_path.name], seen[second.name]
    assert [a.status for a in first] == [a.status for a in other] == [400, 200, 200, 200]
    assert '<html lang="zh"' in first[0].text
    assert [a.body for a in other] == [a.body for a in first]
    assert TITLE_ZH in other[1].text


def test_a_second_web_host_without_the_signing_key_refuses_to_start(
    tmp_path: Path, record_at: Location
) -> None:
    # it would make a key of its own, and refuse every unsubscribe link the sending host signed
    record = database_env(record_at)
    _send(tmp_path, EXAMPLE, **record)
    key = tmp_path / "second" / "state" / "secret.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_DATA_DIR=str(key.parent), MAILER_WEB_URL=WEB_URL, **record)
    refuses_for_want_of_a_key(env, tmp_path, key)


@pytest.mark.parametrize("shares", ["serve", "send"])
def test_an_issue_sent_before_the_record_kept_web_copies_reaches_the_other_hosts_from_the_one_that_has_it(
    tmp_path: Path, record_at: Location, shares: str
) -> None:
    # a record upgraded past schema step 9 -> 10 keeps no web copy of the issues sent before: the sending
    # host's data folder alone has it. Its `serve` or next send puts it into the record, no folder copied
    record = database_env(record_at)
    _send(tmp_path, EXAMPLE, **record)
    rows(record_at, "DELETE FROM web_copies")  # as a mailer before step 10 left it
    second = tmp_path / "second"
    (second / "state").mkdir(parents=True)
    shutil.copy2(tmp_path / "state" / "secret.key", second / "state" / "secret.key")  # docs/postgresql.md

    def second_host_shows() -> int:
        env = {"MAILER_DATA_DIR": str(second / "state"), "MAILER_WEB_URL": WEB_URL, **record}
        with serving(second, {}, **env) as served:
            return Archive(served.port, second).get("/issues/2026-02-09").status

    assert second_host_shows() == 404  # what a reader's "View in browser" met there
    if shares == "serve":  # the first host's web server starts (a restart, an upgrade)
        env = {"MAILER_DATA_DIR": str(tmp_path / "state"), "MAILER_WEB_URL": WEB_URL, **record}
        with serving(tmp_path, {}, **env) as served:
            assert Archive(served.port, tmp_path).get("/issues/2026-02-09").status == 200
    else:  # the first host sends its next issue
        _send(tmp_path, _post(tmp_path, "2026-02-10.md", ENGLISH), **record)
    copy = (tmp_path / "state" / "archive" / "2026-02-09.html").read_bytes()
    assert [bytes(html) for (html,) in rows(record_at, "SELECT html FROM web_copies WHERE issue_id = ?",
            ("2026-02-09",))] == [copy]  # fmt: skip
    assert second_host_shows() == 200
    assert (second / "state" / "archive" / "2026-02-09.html").read_bytes() == copy
