"""The delivery record where it lives: a full disk, a read-only file system, a data folder that is a file,
and the file modes of everything that names a reader. Real file systems (a small tmpfs, mounted when the
tests run as root, skipped otherwise), the real CLI, a real SMTP server.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.ledger import Ledger
from tests import publisher
from tests.conftest import EXAMPLE
from tests.smtpd import SMTPServer


class Disk:
    """A tmpfs of a few hundred KB, mounted for one test."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fill(self) -> None:
        """Take every free block, down to the last byte."""
        with open(self.path / "filler", "ab", buffering=0) as out:
            for size in (1 << 16, 4096, 1):
                try:
                    while True:
                        out.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == 28, exc  # ENOSPC

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "disk"
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


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


@pytest.mark.parametrize("other_process", [False, True], ids=["alone", "database-held-open"])
def test_a_full_disk_under_the_record_stops_the_send_before_any_message(
    disk: Disk, smtp_server: SMTPServer, tmp_path: Path, other_process: bool
) -> None:
    post = post_named(tmp_path, "2026-02-09.md")
    first = ["a@example.com", "b@example.com"]
    csv = write_list(tmp_path / "subs.csv", first)
    db = disk.path / "mailer.db"
    env = smtp_env(smtp_server, tmp_path / "state", MAILER_DATABASE=str(db))
    code, out = send(post, csv, env)
    assert code == 0, out
    with closing(sqlite3.connect(db)) as held:
        if other_process:  # e.g. `mailer serve` answering a click: the WAL and SHM files stay
            held.execute("SELECT count(*) FROM suppressions").fetchone()
        disk.fill()
        newcomers = [f"new{i}@example.com" for i in range(6)]
        write_list(csv, first + newcomers)
        for connections in ("1", "3"):  # each rerun: still nothing sent, nothing half-recorded
            code, out = send(post, csv, env, "--connections", connections)
            assert code == 1, out
            assert error_lines(out) == [
                f"Error: {db}: no space left on the file system that holds it;"
                " free some and run the same command again"
            ], out
            assert "Traceback" not in out
            assert recipients(smtp_server) == Counter({e: 1 for e in first})
    (disk.path / "filler").unlink()
    code, out = send(post, csv, env, "--connections", "3")  # space again: the newcomers, once each
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
        env["MAILER_SECRET_KEY"] = "k" * 40  # no key file to read: the archive is the first write
        (tmp_path / "state-file").write_text("a file where the data folder should be\n")
    post = post_named(tmp_path, "2026-02-09.md")
    code, out = send(post, csv, env)
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
