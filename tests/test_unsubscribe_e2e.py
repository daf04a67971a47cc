"""One-click unsubscribe end to end: the URL from a message a real SMTP server got, POSTed to the app."""

from __future__ import annotations

import email
import re
import shutil
import threading
from collections.abc import Iterator
from email import policy
from pathlib import Path
from urllib.request import Request, urlopen
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import load_config
from mailer.engine import Location
from mailer.ledger import Ledger
from mailer.web import make_app
from tests import publisher
from tests.conftest import EXAMPLE
from tests.pg import database_env
from tests.smtpd import SMTPServer


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_at: Location
) -> Iterator[tuple[str, dict[str, str]]]:
    """`mailer serve`'s app on a free port, and the environment that `send` shares with it (the record on
    SQLite, then on PostgreSQL)."""
    monkeypatch.chdir(tmp_path)
    env = {"MAILER_DATA_DIR": str(tmp_path / "state"), **publisher.ENV, **database_env(record_at)}
    server: WSGIServer = make_server("127.0.0.1", 0, lambda e, s: app(e, s), handler_class=_Quiet)
    url = f"http://127.0.0.1:{server.server_port}"
    env["MAILER_WEB_URL"] = url
    app = make_app(load_config(env=env).settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url, env
    server.shutdown()
    server.server_close()
    thread.join()


def _send(post: Path, csv: Path, server: SMTPServer, env: dict[str, str]) -> None:
    full = {
        **env,
        "MAILER_SMTP_HOST": server.host,
        "MAILER_SMTP_PORT": str(server.port),
        "MAILER_SMTP_SECURITY": "none",
    }
    # this test's unsubscribe pages are on 127.0.0.1, which no real reader could reach: skipped on purpose
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--skip-check", "unsubscribe-url"]
    result = CliRunner().invoke(cli, args, env=full)
    assert result.exit_code == 0, result.output


def test_one_click_from_a_received_message_stops_later_sends(
    smtp_server: SMTPServer, tmp_path: Path, web: tuple[str, dict[str, str]]
) -> None:
    url, env = web
    csv = tmp_path / "subs.csv"
    csv.write_text("email,name\nalice@example.com,Alice\nbob@example.com,Bob\n", encoding="utf-8")
    first = tmp_path / "2026-02-09.md"
    shutil.copy(EXAMPLE, first)
    _send(first, csv, smtp_server, env)

    alice = next(m for m in smtp_server.messages if m.rcpt_tos == ("alice@example.com",))
    msg = email.message_from_bytes(alice.data, policy=policy.default)
    header = str(msg["List-Unsubscribe"])
    links = re.findall(r"<([^>]+)>", header)
    https = [link for link in links if link.startswith(url)]
    assert len(https) == 1 and any(link.startswith("mailto:") for link in links)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    request = Request(
        https[0],
        data=b"List-Unsubscribe=One-Click",
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    with Ledger(load_config(env=env).settings.db_path) as ledger:
        assert ledger.is_suppressed("alice@example.com")
        assert not ledger.is_suppressed("bob@example.com")

    smtp_server.clear()
    second = tmp_path / "2026-02-10.md"
    second.write_text(
        EXAMPLE.read_text(encoding="utf-8").replace("date: 2026-02-09", "date: 2026-02-10"), encoding="utf-8"
    )
    _send(second, csv, smtp_server, env)
    assert [m.rcpt_tos for m in smtp_server.messages] == [("bob@example.com",)]
