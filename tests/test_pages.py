"""What both web apps share (mailer/wsgi.py): the security headers on every answer, and escaping templates.

The apps are called as WSGI applications directly: real settings, a real database, the real example post.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote
from wsgiref.util import setup_testing_defaults

import pytest

from mailer.config import Settings
from mailer.preview import Preview, PreviewApp
from mailer.tokens import load_keyring
from mailer.web import make_app

HOSTILE = "<script>alert(1)</script>\"'&"


def _call(app: Any, url: str) -> tuple[str, dict[str, str], bytes]:
    path, _, query = url.partition("?")
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "QUERY_STRING": query, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = unquote(path).encode().decode("latin-1")  # as a WSGI server hands it over
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        list_name=HOSTILE,
        from_email="news@example.org",
        web_url="https://news.example.org",
        secret_key="test-key-0123456789abcdef",
        sample_email="reader@example.org",
    )


@pytest.fixture
def apps(settings: Settings, post: Path) -> dict[str, Any]:
    web = make_app(settings, keyring=load_keyring(settings))
    return {"web": web, "preview": PreviewApp(Preview(post.parent, settings), "127.0.0.1")}


ANSWERS = [
    ("web", "/", 200),
    ("web", "/healthz", 200),
    ("web", "/unsubscribe?t=bad", 400),
    ("web", "/issues/nope", 404),
    ("web", "/issues/", 200),
    ("web", "/issues", 301),
    ("web", "/feed.atom", 200),
    ("web", "/nowhere", 404),
    ("preview", "/", 200),
    ("preview", "/preview.css", 200),
    ("preview", "/preview.js", 200),
    ("preview", "/__version", 200),
    ("preview", "/p/2026-02-09.md/", 200),
    ("preview", "/p/2026-02-09.md/text", 200),
    ("preview", "/p/2026-02-09.md/message.eml", 200),
    ("preview", "/p/2026-02-09.md", 302),
    ("preview", "/p/other.md/", 404),
    ("preview", "/nowhere", 404),
]


@pytest.mark.parametrize(("app", "path", "status"), ANSWERS)
def test_every_answer_of_both_apps_carries_the_shared_security_headers(
    apps: dict[str, Any], app: str, path: str, status: int
) -> None:
    got, headers, _ = _call(apps[app], path)
    assert got.startswith(f"{status} ")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Frame-Options"] == "DENY"
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp
    assert "default-src 'none'" in csp and "'unsafe-eval'" not in csp


@pytest.mark.parametrize("view", ["html", "dark", "gmail"])
def test_the_email_views_may_be_framed_by_the_preview_only_and_run_no_script(
    apps: dict[str, Any], view: str
) -> None:
    status, headers, _ = _call(apps["preview"], f"/p/2026-02-09.md/{view}")
    assert status.startswith("200 ")
    assert headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "frame-ancestors 'self'" in headers["Content-Security-Policy"]
    assert "script-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"


def test_the_preview_page_loads_only_its_own_script_style_frames_and_poll(apps: dict[str, Any]) -> None:
    _, headers, body = _call(apps["preview"], "/p/2026-02-09.md/")
    policy = dict(
        (part.split()[0], part.split()[1:]) for part in headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == ["'none'"]
    for directive in ("script-src", "style-src", "connect-src", "frame-src"):
        assert policy[directive] == ["'self'"], directive
    assert "img-src" not in policy and "'unsafe-inline'" not in headers["Content-Security-Policy"]
    assert b"<style" not in body and b" style=" not in body and b"<script>" not in body  # nothing inline


def test_a_hostile_title_is_escaped_in_both_layouts(apps: dict[str, Any]) -> None:
    _, _, web_page = _call(apps["web"], "/")  # the list's name is the page title
    _, _, archive_page = _call(apps["web"], "/issues/")  # and in the archive's
    _, _, preview_page = _call(apps["preview"], "/" + quote(HOSTILE))  # the 404 page echoes the path
    for body in (web_page, archive_page, preview_page):
        text = body.decode()
        assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert "&quot;&#x27;&amp;" in text


def test_a_hostile_list_name_is_the_feeds_title_as_it_is(apps: dict[str, Any]) -> None:
    from xml.etree import ElementTree as ET

    _, headers, body = _call(apps["web"], "/feed.atom")
    assert headers["Content-Type"] == "application/atom+xml; charset=utf-8"
    assert ET.fromstring(body).findtext("{http://www.w3.org/2005/Atom}title") == HOSTILE
    assert b"<script>" not in body
