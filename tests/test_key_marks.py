"""Hosts that share a record and sign the readers' unsubscribe links: a host without the key the record says
the links were signed with, or with another, stops before it makes a key, mails or serves (keymarks.py).

Each "host" is a data folder of its own on one record (SQLite file or PostgreSQL database); real CLI runs,
the test's SMTP server, a real `mailer serve` for the links.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from email import message_from_bytes, policy
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from click.testing import CliRunner, Result

from mailer.cli import cli
from mailer.engine import Location
from mailer.ledger import SCHEMA_VERSION, Ledger
from tests.conftest import EXAMPLE
from tests.pg import database_env, rows, set_schema_version
from tests.publisher import WEB_URL, env_for
from tests.served import mailer_serve
from tests.smtpd import HOST, SMTPServer
from tests.test_workers import _running, env_at, finish_with_a_worker, recipients, spawn, wait_until

FIRST_KEY = "first-signing-key-0123456789abcdef"
SECOND_KEY = "second-signing-key-fedcba9876543210"
READERS = ["ann@example.org", "bob@example.org"]
# the rotation docs/unsubscribe.md gives: the new key, the old one kept to verify
ROTATED = {"MAILER_SECRET_KEY": SECOND_KEY, "MAILER_OLD_SECRET_KEYS": FIRST_KEY}


def _post(folder: Path, day: int) -> Path:
    """The example post, dated 2026-02-DAY (another issue each day)."""
    folder.mkdir(exist_ok=True)
    path = folder / f"2026-02-{day:02}.md"
    text = EXAMPLE.read_text(encoding="utf-8").replace("date: 2026-02-09", f"date: 2026-02-{day:02}")
    path.write_text(text, encoding="utf-8")
    return path


def _host(tmp_path: Path, name: str, key: str = "") -> Path:
    """A host's data folder; with `key`, its key file holds that key."""
    state = tmp_path / name / "state"
    state.mkdir(parents=True)
    if key:
        (state / "secret.key").write_text(key + "\n", encoding="utf-8")
        (state / "secret.key").chmod(0o600)
    return state


def _send(tmp_path: Path, state: Path, record: Location, smtp: SMTPServer, day: int, **env: str) -> Result:
    """`mailer send` of the day's issue to READERS from the host whose data folder is `state`."""
    subscribers = tmp_path / "subscribers.csv"
    subscribers.write_text("email\n" + "\n".join(READERS) + "\n", encoding="utf-8")
    settings = {**env_for(smtp, tmp_path, **database_env(record), **env), "MAILER_DATA_DIR": str(state)}
    args = ["send", str(_post(tmp_path / "posts", day)), "--to", str(subscribers), "--yes", "--force"]
    return CliRunner().invoke(cli, args, env=settings)


def _refused(result: Result, start: str, *words: str) -> None:
    """One line on stderr starting with `start` and saying `words`, exit 1."""
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"Error: {start}"), line
    for word in words:
        assert word in line, line
    assert "Traceback" not in result.output


def _serve_env(state: Path, record: Location, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_DATA_DIR=str(state), MAILER_WEB_URL=WEB_URL, PYTHONUNBUFFERED="1")
    env.update(database_env(record), **more)
    return env


def _serve_refused(tmp_path: Path, state: Path, record: Location, **more: str) -> str:
    """The one line a `mailer serve` that refuses to start says (exit 1)."""
    args = [sys.executable, "-m", "mailer", "serve", "--host", HOST, "--port", "0"]
    env = _serve_env(state, record, **more)
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    return line


def _token(smtp: SMTPServer, reader: str, nth: int) -> str:
    """The token of the one-click link in the `nth` message (from 0) that `reader` got."""
    msg = [m for m in smtp.messages if m.rcpt_tos == (reader,)][nth]
    header = str(message_from_bytes(msg.data, policy=policy.default)["List-Unsubscribe"])
    links = re.findall(r"<(https://[^>]+)>", header)
    return parse_qs(urlsplit(links[0]).query)["t"][0]


def _one_click(port: int, token: str) -> int:
    form = "application/x-www-form-urlencoded"
    return posted(port, f"/unsubscribe?t={token}", b"List-Unsubscribe=One-Click", form)


def posted(port: int, path: str, body: bytes, content_type: str) -> int:
    """The status of a POST to the serve listening on `port`."""
    conn = HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def test_a_send_from_a_host_without_the_key_makes_none_and_mails_no_one(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    first = _host(tmp_path, "first")
    assert _send(tmp_path, first, record_at, smtp_server, 9).exit_code == 0
    second = _host(tmp_path, "second")  # set up without the key file
    before = len(smtp_server.messages)
    result = _send(tmp_path, second, record_at, smtp_server, 10)
    _refused(result, f"{second / 'secret.key'}: no signing key here", "copy the key file", "secret_key")
    assert not (second / "secret.key").exists()
    assert len(smtp_server.messages) == before == len(READERS)


def test_a_send_from_a_host_whose_key_differs_stops_and_one_with_the_key_copied_goes(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    first = _host(tmp_path, "first")
    assert _send(tmp_path, first, record_at, smtp_server, 9).exit_code == 0
    second = _host(tmp_path, "second", key=SECOND_KEY)  # a key file of its own
    result = _send(tmp_path, second, record_at, smtp_server, 10)
    key = second / "secret.key"
    _refused(result, f"{key}: this host's signing key", "nothing sent", "docs/unsubscribe.md")
    assert len(smtp_server.messages) == len(READERS)
    (second / "secret.key").write_bytes((first / "secret.key").read_bytes())
    assert _send(tmp_path, second, record_at, smtp_server, 10).exit_code == 0
    assert len(smtp_server.messages) == 2 * len(READERS)


def test_the_record_keeps_a_mark_of_the_key_never_the_key(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    first = _host(tmp_path, "first", key=FIRST_KEY)
    assert _send(tmp_path, first, record_at, smtp_server, 9).exit_code == 0
    # the same key from the environment instead of the key file is the same key: no stop
    second = _host(tmp_path, "second")
    result = _send(tmp_path, second, record_at, smtp_server, 10, MAILER_SECRET_KEY=FIRST_KEY)
    assert result.exit_code == 0, result.output
    assert not (second / "secret.key").exists()
    marks = rows(record_at, "SELECT mark FROM key_marks ORDER BY run_id")
    assert len(marks) == 2 and marks[0] == marks[1]
    [(mark,)] = marks[:1]
    assert isinstance(mark, str) and FIRST_KEY not in mark and mark not in FIRST_KEY
    # another key gets another mark
    third = _host(tmp_path, "third")
    result = _send(tmp_path, third, record_at, smtp_server, 11, MAILER_SECRET_KEY=SECOND_KEY)
    assert f"(mark {mark}, issue 2026-02-10)" in result.output
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert SECOND_KEY not in result.output and FIRST_KEY not in result.output


def test_a_serve_whose_key_differs_refuses_to_start(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    first = _host(tmp_path, "first")
    assert _send(tmp_path, first, record_at, smtp_server, 9).exit_code == 0
    second = _host(tmp_path, "second", key=SECOND_KEY)
    line = _serve_refused(tmp_path, second, record_at)
    assert line.startswith(f"Error: {second / 'secret.key'}: this host's signing keys"), line
    assert "so every unsubscribe from them would be refused" in line and "copy the key file" in line, line


def test_a_rotated_key_keeps_old_links_working_and_hosts_without_it_stop(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    host = _host(tmp_path, "host")
    assert _send(tmp_path, host, record_at, smtp_server, 9, MAILER_SECRET_KEY=FIRST_KEY).exit_code == 0
    result = _send(tmp_path, host, record_at, smtp_server, 10, **ROTATED)
    assert result.exit_code == 0, result.output
    # a host still on the old key only: its sends' links would not be the record's key's, and its serve
    # would refuse the new links: both stop
    stale = _host(tmp_path, "stale")
    _refused(
        _send(tmp_path, stale, record_at, smtp_server, 11, MAILER_SECRET_KEY=FIRST_KEY),
        "secret_key: this host's signing key", "issue 2026-02-10",
    )  # fmt: skip
    line = _serve_refused(tmp_path, stale, record_at, MAILER_SECRET_KEY=FIRST_KEY)
    assert line.startswith("Error: secret_key: this host's signing keys"), line
    assert Counter(m.rcpt_tos[0] for m in smtp_server.messages) == Counter(READERS * 2)
    # the rotated web host takes the links of both issues
    with mailer_serve(tmp_path, _serve_env(host, record_at, **ROTATED)) as served:
        assert _one_click(served.port, _token(smtp_server, "ann@example.org", 0)) == 200
        assert _one_click(served.port, _token(smtp_server, "bob@example.org", 1)) == 200
    with Ledger(record_at) as ledger:
        assert ledger.is_suppressed("ann@example.org") and ledger.is_suppressed("bob@example.org")


def test_a_record_from_before_the_marks_gets_its_first_from_the_next_send(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    host = _host(tmp_path, "host", key=FIRST_KEY)
    assert _send(tmp_path, host, record_at, smtp_server, 9).exit_code == 0
    # the record as the mailer before schema 12 kept it: sent readers, no marks
    rows(record_at, "DROP TABLE key_marks")
    set_schema_version(record_at, 11)
    keyless = _host(tmp_path, "keyless")  # it holds sent issues, so no key is made for it
    result = _send(tmp_path, keyless, record_at, smtp_server, 10)
    _refused(result, f"{keyless / 'secret.key'}: no signing key", "holds issues sent with a key")
    assert not (keyless / "secret.key").exists()
    assert rows(record_at, "SELECT count(*) FROM key_marks") == [(0,)]  # upgraded, with no mark yet
    assert _send(tmp_path, host, record_at, smtp_server, 10).exit_code == 0  # first use records it
    assert len(rows(record_at, "SELECT mark FROM key_marks")) == 1
    other = _host(tmp_path, "other", key=SECOND_KEY)
    _refused(_send(tmp_path, other, record_at, smtp_server, 11), f"{other / 'secret.key'}: this host's")
    version = "PRAGMA user_version" if isinstance(record_at, Path) else "SELECT version FROM mailer_schema"
    assert rows(record_at, version) == [(SCHEMA_VERSION,)]


def test_a_worker_without_the_key_makes_none_and_does_not_join(
    tmp_path: Path, smtp_server: SMTPServer, post: Path, record_at: Location
) -> None:
    csv = tmp_path / "subs.csv"
    csv.write_text("email\na@example.com\n", encoding="utf-8")
    env = env_at(smtp_server, tmp_path, record_at)
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed", "--workers", "0"]
    coordinator = spawn(args, env, tmp_path)
    try:
        wait_until("the send in the record", lambda: _running(record_at))
        elsewhere = _host(tmp_path, "elsewhere")
        keyless = spawn(["worker"], {**env, "MAILER_DATA_DIR": str(elsewhere)}, tmp_path)
        _, said = keyless.communicate(timeout=120)
        assert keyless.returncode == 1, said.decode()
        [line] = said.decode().strip().splitlines()
        assert line.startswith(f"Error: {elsewhere / 'secret.key'}: no signing key here"), line
        assert not (elsewhere / "secret.key").exists() and smtp_server.messages == []
        other = _host(tmp_path, "other", key=SECOND_KEY)
        odd = spawn(["worker"], {**env, "MAILER_DATA_DIR": str(other)}, tmp_path)
        _, said = odd.communicate(timeout=120)
        assert odd.returncode == 1, said.decode()
        [line] = said.decode().strip().splitlines()
        assert line.startswith(f"Error: {other / 'secret.key'}: this host's signing key"), line
        assert "not joining" in line and smtp_server.messages == []
        finish_with_a_worker(coordinator, env, tmp_path)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait()
    assert recipients(smtp_server) == Counter({"a@example.com": 1})
