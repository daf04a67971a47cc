"""An issue really sent to the test's SMTP server, then `mailer serve` running on the same state.

For the webhook tests: the ESP reports they post quote the messages this send made (each with its own signed
envelope sender, as `bounce_address` is set), and what serve records is read straight from SQLite.
"""

from __future__ import annotations

import email
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from mailer.cli import cli
from tests.conftest import EXAMPLE
from tests.publisher import env_for
from tests.smtpd import HOST, SMTPServer

BOUNCE_ADDRESS = "bounces@aidaily.news"
ISSUE = EXAMPLE.stem


@dataclass
class Sent:
    """What the SMTP server got for one reader: the envelope sender and the Message-ID."""

    return_path: str
    message_id: str


@dataclass
class Served:
    """The running `mailer serve` and the issue it mailed."""

    port: int
    db: Path
    log: Path
    sent: dict[str, Sent]
    proc: subprocess.Popen[bytes]

    def post(
        self, path: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = HTTPConnection(HOST, self.port, timeout=60)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def request(self, method: str, path: str) -> int:
        conn = HTTPConnection(HOST, self.port, timeout=60)
        try:
            conn.request(method, path)
            return conn.getresponse().status
        finally:
            conn.close()

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        finally:
            conn.close()

    def state(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Everything a report can change: the kept reports and the suppression list."""
        return self.rows("bounces"), self.rows("suppressions")

    def suppressed(self, reader: str) -> tuple[Any, ...] | None:
        return next((row for row in self.rows("suppressions") if row[0] == reader), None)

    def bounces(self, reader: str) -> list[tuple[Any, ...]]:
        return [row for row in self.rows("bounces") if reader in row]

    def log_lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()


def send_issue(
    root: Path, readers: list[str], post: Path = EXAMPLE
) -> tuple[dict[str, str], dict[str, Sent]]:
    """Send a post (the example's unless told) to readers (state under root); the MAILER_* settings used,
    and what went out."""
    smtp = SMTPServer().start()
    try:
        env = env_for(smtp, root, MAILER_BOUNCE_ADDRESS=BOUNCE_ADDRESS)
        subscribers = root / "subscribers.csv"
        subscribers.write_text("email\n" + "\n".join(readers) + "\n", encoding="utf-8")
        args = ["send", str(post), "--to", str(subscribers), "--yes", "--force"]
        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        sent = {}
        for received in smtp.messages:
            parsed = email.message_from_bytes(received.data, policy=policy.default)
            sent[received.rcpt_tos[0]] = Sent(received.mail_from, str(parsed["Message-ID"]))
    finally:
        smtp.stop()
    assert sorted(sent) == sorted(readers)
    return {k: v for k, v in env.items() if k.startswith("MAILER_")}, sent


@dataclass
class Listening:
    """A running `mailer serve`: where it listens, its process, the file its stderr goes to."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@contextmanager
def mailer_serve(cwd: Path, env: Mapping[str, str], *args: str) -> Iterator[Listening]:
    """`mailer ARGS serve` in cwd with exactly `env`, on HOST and the port the system gives it (a port picked
    here and handed over could be taken by another process in between), stderr into cwd/serve.log. Yields
    once it listens; at the end it is stopped with Ctrl-C and must exit 0."""
    log = cwd / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailer", *args, "serve", "--host", HOST, "--port", "0"],
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()  # "Serving on http://127.0.0.1:PORT/ ..." once it listens
        match = re.search(rf"http://{re.escape(HOST)}:(\d+)/", first)
        assert match, first + log.read_text()
        yield Listening(int(match[1]), proc, log)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, log.read_text()


@contextmanager
def serving(root: Path, sent: dict[str, Sent], **env: str) -> Iterator[Served]:
    """`mailer serve` with env (and no other MAILER_* variable) on a free port, stopped with Ctrl-C."""
    serve_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    serve_env.update(PYTHONUNBUFFERED="1", **env)
    with mailer_serve(root, serve_env) as running:
        yield Served(running.port, root / "state" / "mailer.db", running.log, sent, running.proc)
    text = running.log.read_text()
    assert "Traceback" not in text, text


@contextmanager
def sent_and_served(root: Path, readers: list[str], **env: str) -> Iterator[Served]:
    """Send the example post to readers, then run `mailer serve` (with env) on that state until exit."""
    settings, sent = send_issue(root, readers)
    with serving(root, sent, **settings, **env) as served:
        yield served


def refuses_for_want_of_a_key(env: dict[str, str], cwd: Path, key: Path) -> None:
    """`mailer serve` with `env` (a data folder without the key file `key`, on a record whose readers hold
    signed links) stops at once with one line saying so and what to do, and makes no key."""
    args = [sys.executable, "-m", "mailer", "serve", "--port", "0"]
    refused = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"Error: {key}: no signing key here") and "copy the key file" in line, line
    assert not key.exists()
