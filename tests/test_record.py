"""The delivery record where it lives: a full disk, a read-only file system, a data folder that is a file,
and the file modes of everything that names a reader. Real file systems (a small tmpfs, mounted when the
tests run as root, skipped otherwise), the real CLI, a real SMTP server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import closing, nullcontext
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import Settings
from mailer.ledger import Ledger
from mailer.tokens import load_keyring
from tests import publisher
from tests.conftest import EXAMPLE, Disk
from tests.smtpd import SMTPServer


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def write_list(path: Path, emails: list[str]) -> Path:
    path.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
    return path


def post_named(tmp_path: Path, name: str) -> Path:
    target = tmp_path / "posts" / name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(EXAMPLE, target)
    return target


def smtp_env(server: SMTPServer, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **publisher.ENV,
        "MAILER_SMTP_HOST": server.host,
        "MAILER_SMTP_PORT": str(server.port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_SMTP_TIMEOUT": "5",
        "MAILER_DATA_DIR": str(data_dir),
        "MAILER_RETRY_DELAY": "0.05",
        **extra,
    }


def send(post: Path, csv: Path, env: dict[str, str], *more: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["send", str(post), "--to", str(csv), "--yes", "--force", *more], env=env, catch_exceptions=False
    )
    return result.exit_code, result.stdout + result.stderr


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def recipients(server: SMTPServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


@pytest.mark.parametrize("fault", ["full", "full, held open", "read-only"])
def test_a_full_disk_under_the_record_stops_the_send_before_any_message(
    disk: Disk, smtp_server: SMTPServer, tmp_path: Path, fault: str
) -> None:
    post = post_named(tmp_path, "2026-02-09.md")
    first = ["a@example.com", "b@example.com"]
    csv = write_list(tmp_path / "subs.csv", first)
    db = disk.path / "mailer.db"
    env = smtp_env(smtp_server, tmp_path / "state", MAILER_DATABASE=str(db))
    code, out = send(post, csv, env)
    assert code == 0, out
    # full: SQLite's write fails (making the WAL and SHM files), or, held open, the room a send keeps free
    # is not there (engine_sqlite.ROOM); either way one line that says so
    expected = {
        "full": "no space left on the file system that holds it; free some and run the same command again",
        "full, held open": (
            f"0 KiB free in {disk.path} (its file system), less than the 8.0 MiB a send keeps free so that"
            " the record can take every message it mails; stopped before the next message: free some space"
            " and run the same command again"
        ),
        "read-only": "the file system that holds it is mounted read-only; mailer needs to write to it",
    }[fault]
    # "held open": another connection, e.g. `mailer serve` answering a click: the WAL and SHM files stay
    with closing(sqlite3.connect(db)) if fault == "full, held open" else nullcontext() as held:
        if held is not None:
            held.execute("SELECT count(*) FROM suppressions").fetchone()
        if fault == "read-only":
            disk.read_only()
        else:
            disk.fill()
        newcomers = [f"new{i}@example.com" for i in range(6)]
        write_list(csv, first + newcomers)
        for connections in ("1", "3"):  # each rerun: still nothing sent, nothing half-recorded
            code, out = send(post, csv, env, "--connections", connections)
            assert code == 1, out
            assert error_lines(out) == [f"Error: {db}: {expected}"], out
            assert "Traceback" not in out
            assert recipients(smtp_server) == Counter({e: 1 for e in first})
    if fault == "read-only":
        disk.read_write()
    else:
        (disk.path / "filler").unlink()
    code, out = send(post, csv, env, "--connections", "3")  # writable again: the newcomers, once each
    assert code == 0, out
    assert recipients(smtp_server) == Counter({e: 1 for e in first + newcomers})


@pytest.mark.parametrize("fault", ["full disk", "read-only", "a file"])
def test_a_data_folder_that_cannot_take_the_web_copy_is_one_line_and_no_message(
    disk: Disk, smtp_server: SMTPServer, tmp_path: Path, fault: str
) -> None:
    csv = write_list(tmp_path / "subs.csv", ["a@example.com", "b@example.com"])
    data_dir = disk.path / "state"
    env = smtp_env(smtp_server, data_dir, MAILER_DATABASE=str(tmp_path / "mailer.db"))
    code, out = send(post_named(tmp_path, "2026-02-08.md"), csv, env)  # makes the key, archives a post
    assert code == 0, out
    smtp_server.clear()
    if fault == "full disk":
        disk.fill()
    elif fault == "read-only":
        disk.read_only()
    else:
        env["MAILER_DATA_DIR"] = str(tmp_path / "state-file")
        # no key file to read (the first send's key instead): the archive is the first write
        env["MAILER_SECRET_KEY"] = (data_dir / "secret.key").read_text().strip()
        (tmp_path / "state-file").write_text("a file where the data folder should be\n")
    post = post_named(tmp_path, "2026-02-09.md")
    code, out = send(post, csv, env, "--resend")  # the same post under another name: not refused for that
    assert code == 1, out
    lines = error_lines(out)
    assert len(lines) == 1 and "Traceback" not in out, out
    assert "2026-02-09.html: cannot write the issue's web copy: " in lines[0]
    assert lines[0].endswith("; nothing was sent")
    assert {"full disk": "No space left", "read-only": "Read-only", "a file": "is a file, not a folder"}[
        fault
    ] in lines[0]
    assert smtp_server.messages == []


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_files_that_name_readers_are_private_under_umask_022(tmp_path: Path) -> None:
    old_db = tmp_path / "old" / "mailer.db"  # made by an older mailer: world-readable
    old_db.parent.mkdir()
    with closing(sqlite3.connect(old_db)):
        pass
    old_db.chmod(0o644)
    post = post_named(tmp_path, "2026-02-09.md")
    csv = write_list(tmp_path / "subs.csv", ["a@example.com", "b@example.com"])
    data_dir = tmp_path / "home" / "state"
    previous = os.umask(0o022)
    try:
        code, out = send(post, csv, {"MAILER_DATA_DIR": str(data_dir)})
        assert code == 0, out
        db = data_dir / "mailer.db"
        with Ledger(db) as ledger:  # open, with a write in the WAL: all three files exist
            ledger.suppress("x@example.com", source="test")
            files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert [_mode(f) for f in files] == ["0o600"] * 3
        messages = list((data_dir / "outbox" / "new").iterdir())
        assert len(messages) == 2
        files = [
            *messages,
            data_dir / "archive" / "2026-02-09.html",
            data_dir / "mailer.db-locks" / "2026-02-09.lock",
        ]
        assert {_mode(f) for f in files} == {"0o600"}
        folders = [data_dir, data_dir / "outbox", data_dir / "outbox" / "new", data_dir / "outbox" / "tmp"]
        folders += [data_dir / "archive", data_dir / "mailer.db-locks"]
        assert {_mode(f) for f in folders} == {"0o700"}
        with Ledger(old_db):
            pass
        assert _mode(old_db) == "0o600"  # an older mailer's world-readable database is closed up
    finally:
        os.umask(previous)


# --- the database replaced under a running `mailer serve` ----------------------------------------------


class Serve:
    """A real `mailer serve` process on a free port."""

    def __init__(self, tmp_path: Path, settings: Settings) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
        env.update(
            PYTHONUNBUFFERED="1",
            MAILER_DATA_DIR=str(settings.data_dir),
            MAILER_SECRET_KEY=settings.secret_key,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailer", "serve", "--port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", self.proc.stdout.readline())
        assert match, self.stop()
        self.port = int(match.group(1))
        self.keyring = load_keyring(settings)
        self.list_id = settings.effective_list_id

    def one_click(self, email: str) -> int:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            token = quote(self.keyring.sign(email, self.list_id))
            body, kind = b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"
            conn.request("POST", f"/unsubscribe?t={token}", body=body, headers={"Content-Type": kind})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def holds_open(self, path: Path) -> bool:
        """Whether the server process has `path` open (its SQLite connection of a request)."""
        fds = Path(f"/proc/{self.proc.pid}/fd")
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir() if fd.is_symlink())

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        return err


def suppressed(db: Path) -> set[str]:
    with Ledger(db) as ledger:
        return {s.email for s in ledger.suppressions()}


def test_a_database_replaced_under_serve_never_swallows_an_unsubscribe(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state", secret_key="k" * 40)
    db = settings.db_path
    server = Serve(tmp_path, settings)
    try:
        assert server.one_click("a@example.com") == 200
        assert suppressed(db) == {"a@example.com"}

        # 1. a restored copy renamed over it between requests: the next unsubscribe lands in the new file
        restored = tmp_path / "restored.db"
        with Ledger(restored) as ledger:
            ledger.suppress("kept@example.com", source="import")
        os.replace(restored, db)
        assert server.one_click("b@example.com") == 200
        assert suppressed(db) == {"kept@example.com", "b@example.com"}

        # 2. replaced while a request has the old file open (it waits for a send's write lock): the write
        # that went into the old, unlinked file is made again in the new one before the answer
        replacement = tmp_path / "replacement.db"
        with Ledger(replacement) as ledger:
            ledger.suppress("new@example.com", source="import")
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # like a send committing: the request's write must wait
        answer: list[int] = []
        request = threading.Thread(target=lambda: answer.append(server.one_click("c@example.com")))
        request.start()
        deadline = time.monotonic() + 30
        while not server.holds_open(db) and time.monotonic() < deadline:
            time.sleep(0.01)  # polling /proc for the request's open file: an event, not a guess
        assert server.holds_open(db), "the request never opened the database"
        os.replace(replacement, db)
        holder.close()  # rolls back and lets the request's write go on, into the old file
        request.join(timeout=60)
        assert answer == [200]
        assert suppressed(db) == {"new@example.com", "c@example.com"}

        # 3. deleted: no new empty record appears; the unsubscribe is refused (503) until it is back
        for leftover in db.parent.glob("mailer.db*"):
            if leftover.is_file():
                leftover.unlink()
        assert server.one_click("d@example.com") == 503
        assert not db.exists()
        backup = tmp_path / "backup.db"
        with Ledger(backup) as ledger:
            ledger.suppress("backup@example.com", source="import")
        os.replace(backup, db)
        assert server.one_click("d@example.com") == 200
        assert suppressed(db) == {"backup@example.com", "d@example.com"}
    finally:
        err = server.stop()
    assert "the database is missing (deleted or moved?)" in err
    assert "Traceback" not in err


def test_a_database_replaced_during_a_send_stops_it_and_leaves_the_new_file_alone(
    smtp_server: SMTPServer, tmp_path: Path
) -> None:
    post = post_named(tmp_path, "2026-02-09.md")
    emails = [f"user{i}@example.com" for i in range(10)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = smtp_env(smtp_server, tmp_path / "state", MAILER_SMTP_TIMEOUT="120")
    db = tmp_path / "state" / "mailer.db"
    restored = tmp_path / "restored.db"
    with Ledger(restored) as ledger:
        ledger.suppress("kept@example.com", source="import")
    held = smtp_server.hold("user5@example.com")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "send", str(post), "--to", str(csv), "--yes", "--force"],
        env={**os.environ, **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert held.reached.wait(timeout=60), "the send never reached user5"
        os.replace(restored, db)  # a backup restored by renaming it over the live file, mid-send
    finally:
        held.release.set()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err.decode()  # stopped early
    assert b"the database file was replaced or deleted during the send" in err
    assert b"Traceback" not in err
    # the commit that finds the new file is user4's (if it was still in flight when user5 was held) or
    # user5's: no message goes after it
    assert len(smtp_server.messages) in (5, 6)
    with Ledger(db) as ledger:  # the restored file got none of the old file's writes
        assert [s.email for s in ledger.suppressions()] == ["kept@example.com"]
        assert ledger.issues() == []
