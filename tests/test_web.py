"""The unsubscribe web app over real HTTP on 127.0.0.1, a real SQLite ledger, and the related commands."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from socketserver import ThreadingMixIn
from urllib.parse import quote, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.validate import validator

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import Settings
from mailer.ledger import Ledger
from mailer.tokens import Keyring, load_keyring
from mailer.web import make_app

LIST_ID = "news.example.org"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = False  # server_close() waits for every request thread


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class Site:
    """The app on a free port, with its settings, keyring and database."""

    def __init__(self, settings: Settings, keyring: Keyring, port: int) -> None:
        self.settings = settings
        self.keyring = keyring
        self.port = port

    def token(self, email: str) -> str:
        return self.keyring.sign(email, LIST_ID)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            got = {k.lower(): v for k, v in response.getheaders()}
            got["_set_cookie_count"] = str(len(response.headers.get_all("Set-Cookie") or []))
            return response.status, got, data.decode("utf-8")
        finally:
            conn.close()

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, dict[str, str], str]:
        body = urlencode(fields).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})

    def suppressed(self) -> dict[str, str]:
        with Ledger(self.settings.db_path) as ledger:
            return {s.email: s.source for s in ledger.suppressions()}


def _settings(tmp_path: Path, **changes: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "list_id": LIST_ID,
        "list_name": "Daily Notes",
        "from_email": "news@example.org",
        "web_url": "https://news.example.org",
        "secret_key": "test-key-0123456789abcdef",
    }
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    settings = _settings(tmp_path)
    keyring = load_keyring(settings)
    with _serve(settings, keyring) as port:
        yield Site(settings, keyring, port)


class _serve:
    def __init__(self, settings: Settings, keyring: Keyring) -> None:
        app = validator(make_app(settings, keyring=keyring))
        self.server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_QuietHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))

    def __enter__(self) -> int:
        self.thread.start()
        return int(self.server.server_address[1])

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _buttons(body: str) -> list[str]:
    return re.findall(r"<button[^>]*>", body)


# --- the unsubscribe flow -------------------------------------------------------------------------


def test_get_shows_one_button_and_changes_nothing(site: Site) -> None:
    token = site.token("Alice@Example.com")
    for _ in range(3):  # a link scanner may fetch it several times
        status, headers, body = site.request("GET", f"/unsubscribe?t={token}")
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
    assert "alice@example.com" in body and "Daily Notes" in body
    assert len(_buttons(body)) == 1
    form = re.search(r'<form method="post" action="unsubscribe">(.*?)</form>', body, re.S)
    assert form is not None
    assert f'name="t" value="{token}"' in form.group(1)
    assert 'value="unsubscribe"' in form.group(1)
    assert site.suppressed() == {}
    status, _, _ = site.request("HEAD", f"/unsubscribe?t={token}")
    assert status == 200
    assert site.suppressed() == {}


def test_post_unsubscribes_and_resubscribe_undoes_it(site: Site) -> None:
    token = site.token("alice@example.com")
    status, headers, body = site.post_form("/unsubscribe", {"t": token, "action": "unsubscribe"})
    assert status == 200
    assert site.suppressed() == {"alice@example.com": "web"}
    assert "alice@example.com" in body
    assert len(_buttons(body)) == 1 and 'value="resubscribe"' in body
    # pressing the button twice is harmless
    assert site.post_form("/unsubscribe", {"t": token, "action": "unsubscribe"})[0] == 200
    assert site.suppressed() == {"alice@example.com": "web"}

    status, _, body = site.post_form("/unsubscribe", {"t": token, "action": "resubscribe"})
    assert status == 200
    assert site.suppressed() == {}
    assert 'value="unsubscribe"' in body


def test_token_in_the_query_of_a_form_post(site: Site) -> None:
    token = site.token("bob@example.com")
    status, _, _ = site.post_form(f"/unsubscribe?t={token}", {"action": "unsubscribe"})
    assert status == 200
    assert site.suppressed() == {"bob@example.com": "web"}


def test_resubscribe_needs_a_valid_token(site: Site) -> None:
    token = site.token("alice@example.com")
    site.post_form("/unsubscribe", {"t": token, "action": "unsubscribe"})
    status, _, _ = site.post_form("/unsubscribe", {"t": token[:-2], "action": "resubscribe"})
    assert status == 400
    assert site.suppressed() == {"alice@example.com": "web"}


def test_unknown_action_changes_nothing(site: Site) -> None:
    token = site.token("alice@example.com")
    status, _, _ = site.post_form("/unsubscribe", {"t": token, "action": "delete-everything"})
    assert status == 400
    assert site.suppressed() == {}


def _assert_one_click_answer(status: int, headers: dict[str, str]) -> None:
    assert status == 200
    assert "location" not in headers
    assert headers["_set_cookie_count"] == "0"


def test_one_click_urlencoded(site: Site) -> None:
    token = site.token("carol@example.com")
    status, headers, _ = site.request(
        "POST",
        f"/unsubscribe?t={token}",
        b"List-Unsubscribe=One-Click",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    _assert_one_click_answer(status, headers)
    assert site.suppressed() == {"carol@example.com": "one-click"}


def test_one_click_multipart(site: Site) -> None:
    token = site.token("dave@example.com")
    boundary = "----mailerTestBoundary7MA4YWxkTrZu0gW"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        "One-Click\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    status, headers, _ = site.request(
        "POST",
        f"/unsubscribe?t={token}",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    _assert_one_click_answer(status, headers)
    assert site.suppressed() == {"dave@example.com": "one-click"}


def test_one_click_with_a_forged_token_changes_nothing(site: Site) -> None:
    forged = Keyring("attacker-key-0123456789").sign("carol@example.com", LIST_ID)
    status, _, _ = site.request(
        "POST",
        f"/unsubscribe?t={forged}",
        b"List-Unsubscribe=One-Click",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 400
    assert site.suppressed() == {}


def _bad_tokens(site: Site) -> dict[str, str]:
    good = site.token("alice@example.com")
    bob_mac = site.token("bob@example.com").split(".")[1]
    return {
        "truncated": good[:-3],
        "no mac": good.split(".")[0],
        "other key": Keyring("another-key-0123456789").sign("alice@example.com", LIST_ID),
        "other list": site.keyring.sign("alice@example.com", "other.example.org"),
        "swapped mac": good.split(".")[0] + "." + bob_mac,
        "garbage": "not-a-token",
        "empty": "",
    }


def test_bad_tokens_get_400_and_change_nothing(site: Site) -> None:
    for name, token in _bad_tokens(site).items():
        status, headers, body = site.request("GET", f"/unsubscribe?t={quote(token)}")
        assert status == 400, name
        assert _buttons(body) == [], name
        assert "content-security-policy" in headers
        status, _, _ = site.post_form("/unsubscribe", {"t": token, "action": "unsubscribe"})
        assert status == 400, name
    assert site.suppressed() == {}


def test_a_later_load_of_the_key_file_verifies_links(tmp_path: Path) -> None:
    """send and serve with no configured key share the key file in the data folder."""
    settings = _settings(tmp_path, secret_key="")
    token_from_send = load_keyring(settings).sign("erin@example.com", LIST_ID)
    with _serve(settings, load_keyring(settings)) as port:
        site = Site(settings, load_keyring(settings), port)
        assert site.post_form("/unsubscribe", {"t": token_from_send})[0] == 200
        assert site.suppressed() == {"erin@example.com": "web"}


# --- what every page carries -------------------------------------------------------------------------


def test_security_headers_on_every_kind_of_answer(site: Site) -> None:
    token = site.token("alice@example.com")
    for method, path, want in [
        ("GET", "/", 200),
        ("GET", f"/unsubscribe?t={token}", 200),
        ("GET", "/unsubscribe?t=bad", 400),
        ("GET", "/nowhere", 404),
        ("DELETE", "/unsubscribe", 405),
    ]:
        status, headers, body = site.request(method, path)
        assert status == want, path
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "form-action 'self'" in csp
        assert "script-src" not in csp and "'unsafe-eval'" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        assert headers["_set_cookie_count"] == "0"
        assert "Traceback" not in body
        assert len(body.encode()) < 8000


def test_hostile_token_is_escaped(site: Site) -> None:
    hostile = '"><script>alert(1)</script>'
    status, _, body = site.request("GET", f"/unsubscribe?t={quote(hostile)}")
    assert status == 400
    assert "<script" not in body


def test_hostile_address_and_list_name_are_escaped(tmp_path: Path) -> None:
    settings = _settings(tmp_path, list_name='<i>Notes</i> & "friends"')
    keyring = load_keyring(settings)
    with _serve(settings, keyring) as port:
        site = Site(settings, keyring, port)
        token = site.token('"<b>x</b>"@example.com')
        status, _, body = site.request("GET", f"/unsubscribe?t={token}")
        assert status == 200
        assert "<b>" not in body and "<i>" not in body
        assert "&lt;b&gt;x&lt;/b&gt;" in body
        assert "&lt;i&gt;Notes&lt;/i&gt; &amp; &quot;friends&quot;" in body
        status, _, body = site.post_form("/unsubscribe", {"t": token})
        assert status == 200 and "<b>" not in body


def test_unicode_pages(tmp_path: Path) -> None:
    settings = _settings(tmp_path, list_name="每日笔记 · يومي")
    keyring = load_keyring(settings)
    with _serve(settings, keyring) as port:
        site = Site(settings, keyring, port)
        status, headers, body = site.request("GET", f"/unsubscribe?t={site.token('李@例子.中国')}")
        assert status == 200
        assert "每日笔记 · يومي" in body and "李@例子.中国" in body
        assert '<meta charset="utf-8">' in body


def test_wrong_method_gets_405_with_allow(site: Site) -> None:
    status, headers, _ = site.request("PUT", "/unsubscribe", b"x")
    assert status == 405
    assert set(headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    status, headers, _ = site.request("POST", "/healthz", b"")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, _ = site.request("POST", "/issues/2026-02-09", b"")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    environ = {
        "REQUEST_METHOD": "post",  # methods are case-sensitive: "post" is not POST
        "PATH_INFO": "/unsubscribe",
        "QUERY_STRING": f"t={site.token('alice@example.com')}",
        "wsgi.input": io.BytesIO(b"List-Unsubscribe=One-Click"),
        "CONTENT_LENGTH": "26",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
    }
    answers: list[str] = []
    make_app(site.settings, keyring=site.keyring)(environ, lambda status, headers: answers.append(status))
    assert answers[0].startswith("405")
    with Ledger(site.settings.db_path) as ledger:
        assert not ledger.is_suppressed("alice@example.com")


def test_big_body_gets_413_without_being_read(site: Site) -> None:
    token = site.token("alice@example.com")
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        # Announce a gigabyte and send none of it: a server that tried to read it would hang.
        sock.sendall(
            f"POST /unsubscribe?t={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Content-Length: 1000000000\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.0 413") or data.startswith(b"HTTP/1.1 413")
    assert site.suppressed() == {}


def test_just_under_the_limit_is_read(site: Site) -> None:
    token = site.token("alice@example.com")
    body = urlencode({"t": token, "action": "unsubscribe", "pad": "x" * 60_000}).encode()
    assert len(body) < 64 * 1024
    status, _, _ = site.request(
        "POST", "/unsubscribe", body, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 200
    assert site.suppressed() == {"alice@example.com": "web"}


def test_health_and_home(site: Site) -> None:
    status, headers, body = site.request("GET", "/healthz")
    assert (status, body.strip()) == (200, "ok")
    assert headers["content-type"].startswith("text/plain")
    status, _, body = site.request("GET", "/")
    assert status == 200 and "Daily Notes" in body
    assert site.request("GET", "/unsubscribe/extra")[0] == 404


# --- the archive --------------------------------------------------------------------------------------


def test_archive_serves_issues_and_nothing_else(site: Site) -> None:
    data_dir = site.settings.data_dir
    archive = data_dir / "archive"
    archive.mkdir(parents=True)
    (archive / "2026-02-09.html").write_text("<p>Issue of the ninth 九</p>", encoding="utf-8")
    (data_dir / "secret.html").write_text("top secret", encoding="utf-8")
    (archive / "link.html").symlink_to(data_dir / "secret.html")

    status, headers, body = site.request("GET", "/issues/2026-02-09")
    assert status == 200 and "Issue of the ninth 九" in body
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["content-security-policy"]

    for path in [
        "/issues/2026-02-10",
        "/issues/../secret",
        "/issues/..%2Fsecret",
        "/issues/%2e%2e%2fsecret",
        "/issues/..",
        "/issues/.",
        "/issues/link",
        "/issues/a%00b",
        "/issues/2026-02-09.html",
        "/issues/%2Fetc%2Fpasswd",
    ]:
        status, _, body = site.request("GET", path)
        assert status == 404, path
        assert "top secret" not in body and "ninth" not in body, path
    # a file in the archive that no send recorded is not listed
    status, _, body = site.request("GET", "/issues/")
    assert status == 200 and "ninth" not in body and "2026-02-09" not in body


# --- errors --------------------------------------------------------------------------------------------


def test_unexpected_error_is_a_page_and_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "not-a-database"
    settings = _settings(tmp_path, database=blocked)
    keyring = load_keyring(settings)
    with _serve(settings, keyring) as port:  # the app makes the database as it starts ...
        for leftover in tmp_path.glob("not-a-database*"):
            leftover.unlink()
        blocked.mkdir()  # ... and a directory takes its place while it runs
        site = Site(settings, keyring, port)
        status, headers, body = site.post_form("/unsubscribe", {"t": site.token("a@example.com")})
    assert status in (500, 503)
    assert "Traceback" not in body and "sqlite" not in body.lower()
    assert str(blocked) not in body
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert any(r.name == "mailer.web" and r.levelname == "ERROR" for r in caplog.records)


def test_write_while_another_connection_is_open(site: Site) -> None:
    """A send in another process holds its own connection; the web write still lands."""
    with Ledger(site.settings.db_path) as other:
        other.suppress("zed@example.com", source="manual")
        status, _, _ = site.post_form("/unsubscribe", {"t": site.token("amy@example.com")})
        assert status == 200
        assert other.is_suppressed("amy@example.com")
    assert site.suppressed() == {"zed@example.com": "manual", "amy@example.com": "web"}


# --- commands ------------------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailer.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\nfrom_email = "news@example.org"\n'
        'secret_key = "test-key-0123456789abcdef"\n',
        encoding="utf-8",
    )
    return path


def _run(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _suppressed(config: Path) -> dict[str, tuple[str, str]]:
    with Ledger(config.parent / "data" / "mailer.db") as ledger:
        return {s.email: (s.source, s.reason) for s in ledger.suppressions()}


def test_unsubscribe_command(config: Path) -> None:
    code, out, _ = _run(
        config, "unsubscribe", "Alice@Example.com", "bob@example.com", "--reason", "replied STOP"
    )
    assert code == 0
    assert "alice@example.com" in out and "bob@example.com" in out
    assert _suppressed(config) == {
        "alice@example.com": ("manual", "replied STOP"),
        "bob@example.com": ("manual", "replied STOP"),
    }
    code, out, _ = _run(config, "unsubscribe", "alice@example.com")
    assert code == 0 and "already" in out

    code, out, _ = _run(config, "unsubscribe", "--undo", "alice@example.com")
    assert code == 0 and "resubscribed alice@example.com" in out
    assert set(_suppressed(config)) == {"bob@example.com"}


def test_unsubscribe_command_rejects_bad_addresses_and_changes_nothing(config: Path) -> None:
    code, _, err = _run(config, "unsubscribe", "carol@example.com", "not an address", "x@")
    assert code == 1
    assert "'not an address'" in err and "'x@'" in err
    assert _suppressed(config) == {}


def test_suppressions_import_list_export(config: Path, tmp_path: Path) -> None:
    plain = tmp_path / "stop.txt"
    plain.write_text(
        "# replies to the mailto address\nann@example.com\n\nnope\nBEN@example.com\nann@example.com\n",
        encoding="utf-8",
    )
    code, out, err = _run(config, "suppressions", "import", str(plain))
    assert code == 1  # the good lines are imported, and the bad one makes the exit non-zero
    assert f"{plain}:4:" in err and "nope" in err
    assert "2 newly suppressed, 1 already suppressed, 1 bad line(s) skipped" in out

    table = tmp_path / "esp.csv"
    table.write_text(
        "Name,Email,Date\nCy,cy@example.com,2026-01-01\nDi,di@@example.com,2026-01-02\n",
        encoding="utf-8",
    )
    code, out, err = _run(config, "suppressions", "import", str(table), "--reason", "ESP bounces")
    assert code == 1
    assert f"{table}:3:" in err
    assert "1 newly suppressed, 0 already suppressed, 1 bad line(s) skipped" in out

    code, out, _ = _run(config, "suppressions", "list")
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert {line[0] for line in lines} == {"ann@example.com", "ben@example.com", "cy@example.com"}
    assert all(line[1] == "import" and re.match(r"\d{4}-\d\d-\d\d", line[2]) for line in lines)

    code, out, _ = _run(config, "suppressions", "export")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["email"]: r["reason"] for r in rows}["cy@example.com"] == "ESP bounces"
    assert len(rows) == 3 and all(r["source"] == "import" and r["created_at"] for r in rows)


def test_suppressions_import_as_json_and_quiet(config: Path, tmp_path: Path) -> None:
    plain = tmp_path / "stop.txt"
    plain.write_text("ann@example.com\nnope\nben@example.com\n", encoding="utf-8")
    code, out, err = _run(config, "suppressions", "import", "--json", str(plain))
    assert code == 1 and f"{plain}:2:" in err  # the bad line is still said, on stderr
    outcome = json.loads(out)  # stdout is the one JSON object
    assert outcome["command"] == "suppressions import" and outcome["file"] == str(plain)
    assert (outcome["added"], outcome["already"], outcome["bad"], outcome["kept"]) == (2, 0, 1, 0)
    assert (outcome["status"], outcome["exit"]) == ("incomplete", 1)  # imported, but not every line
    code, out, err = _run(config, "suppressions", "import", "-q", str(plain))
    assert code == 1 and out == "" and f"{plain}:2:" in err  # quiet: nothing but the errors
    good = tmp_path / "good.txt"
    good.write_text("cy@example.com\nann@example.com\n", encoding="utf-8")
    code, out, _ = _run(config, "suppressions", "import", "--json", str(good))
    assert code == 0
    assert {k: json.loads(out)[k] for k in ("status", "added", "already", "exit")} == {
        "status": "done", "added": 1, "already": 1, "exit": 0,
    }  # fmt: skip


def test_suppressions_import_of_a_missing_file(config: Path, tmp_path: Path) -> None:
    code, _, err = _run(config, "suppressions", "import", str(tmp_path / "absent.txt"))
    assert code == 1 and "absent.txt" in err


def test_suppressions_list_when_empty(config: Path) -> None:
    code, out, _ = _run(config, "suppressions", "list")
    assert code == 0 and "No suppressed addresses" in out


def test_serve_command_runs_until_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(PYTHONUNBUFFERED="1", MAILER_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from mailer.cli import main; main()", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        first = ""
        while time.monotonic() < deadline and not first:
            first = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        assert match, first
        conn = HTTPConnection("127.0.0.1", int(match.group(1)), timeout=10)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"ok\n")
        finally:
            conn.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Stopped." in out
    assert "Traceback" not in err
    key_file = tmp_path / "data" / "secret.key"
    assert key_file.exists() and str(key_file) in err
    assert key_file.read_text().strip() not in out + err


def test_every_new_command_has_help() -> None:
    for args in (["serve"], ["unsubscribe"], ["suppressions"], ["suppressions", "import"]):
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
