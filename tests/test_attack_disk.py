"""The attack pass on the disk: the delivery record cannot grow in the middle of a send.

A file size limit (ulimit -f, RLIMIT_FSIZE: a shell's or a service's limit) stops SQLite's write-ahead log
growing a few dozen messages into the send; Python ignores the SIGXFSZ, so the write fails (EFBIG) and the
send must stop with one line that says what to change, not SQLite's bare "disk I/O error".

A nearly full file system under the record (a real tmpfs, tests/conftest.py's `disk`) is the same failure
without a limit to name: a send must stop before a message whose outcome the record might not take.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mailer.engine_sqlite import ROOM
from mailer.ledger import Ledger
from tests.conftest import Disk
from tests.publisher import env_for
from tests.smtpd import SMTPServer

LIMIT = 300_000  # bytes: the new record, the web copy and a few dozen outcomes (30), not 300


def test_a_file_size_limit_that_stops_the_record_growing_is_named_and_the_rerun_finishes(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    # 300 readers, ten times what the limit lets through (2,000: the rerun mailed 1,970, the same verdict)
    emails = [f"user{i}@example.com" for i in range(300)]
    csv = tmp_path / "subs.csv"
    csv.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
    env = {**os.environ, **env_for(smtp_server, tmp_path)}
    args = [sys.executable, "-m", "mailer", "send", str(post), "--to", str(csv), "--yes", "--force"]
    limited = subprocess.run(
        args,
        env=env,
        capture_output=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT)),
    )
    err = limited.stderr.decode()
    assert limited.returncode == 4, err
    assert "Traceback" not in err
    [line] = [x for x in err.splitlines() if x.startswith("Error: ")]
    assert "mailer.db" in line and "file size limit" in line and f"{LIMIT:,} bytes" in line, line
    took = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        _, states = ledger.states("2026-02-09", emails)
    assert {e for e, s in states.items() if s == "sent"} <= set(took)
    again = subprocess.run(args, env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    got = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert set(got) == set(emails)
    assert sum(got.values()) - len(emails) <= 1  # the crash window: the one message whose commit failed


def test_a_send_whose_log_is_on_a_full_disk_still_mails_and_records_everyone(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    # cron's `mailer send ... >> send.log 2>&1` with the log's disk full: every line mailer writes fails
    # (ENOSPC; /dev/full here). The send is what matters: it must not die at its first line, nor half-way
    emails = [f"user{i}@example.com" for i in range(30)]
    csv = tmp_path / "subs.csv"
    csv.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
    env = {**os.environ, **env_for(smtp_server, tmp_path)}
    args = [sys.executable, "-m", "mailer", "send", str(post), "--to", str(csv), "--yes", "--force"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(args, env=env, stdout=full, stderr=full, timeout=300)
    assert done.returncode == 0
    assert Counter(r for m in smtp_server.messages for r in m.rcpt_tos) == Counter(emails)
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        _, states = ledger.states("2026-02-09", emails)
    assert set(states.values()) == {"sent"} and len(states) == len(emails)


def _send(post: Path, csv: Path, env: dict[str, str], *more: str) -> tuple[int, str]:
    args = [sys.executable, "-m", "mailer", "send", str(post), "--to", str(csv), "--yes", "--force", *more]
    done = subprocess.run(args, env=env, capture_output=True, timeout=300)
    return done.returncode, done.stderr.decode()


def _room_line(err: str, disk: Disk) -> str:
    """The one error line, which must name the record's folder and the free space there."""
    assert "Traceback" not in err, err
    [line] = [x for x in err.splitlines() if x.startswith("Error: ")]
    assert f"{disk.path}/mailer.db: " in line and f"free in {disk.path} " in line, line
    return line


def test_a_nearly_full_disk_stops_the_send_before_its_first_message_and_no_rerun_mails_anyone_twice(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, disk: Disk
) -> None:
    # 300 KB left: the record's write-ahead log filled it a few dozen messages in, the commit after a "."
    # failed, and each rerun (the WAL deleted, its space back) mailed again the reader left in doubt
    emails = [f"user{i}@example.com" for i in range(400)]
    csv = tmp_path / "subs.csv"
    csv.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
    env = {**os.environ, **env_for(smtp_server, tmp_path, MAILER_DATABASE=str(disk.path / "mailer.db"))}
    code, err = _send(post, csv, env, "--dry-run")  # the record made while the disk had room
    assert code == 0, err
    disk.leave(300_000)
    for connections in ("1", "3", "1"):
        code, err = _send(post, csv, env, "--connections", connections)
        assert code == 1, err  # refused before sending: nothing went
        line = _room_line(err, disk)
        assert "KiB free" in line and "free some space and run the same command again" in line, line
        assert smtp_server.messages == []
    (disk.path / "filler").unlink()
    code, err = _send(post, csv, env, "--connections", "3")
    assert code == 0, err
    assert Counter(r for m in smtp_server.messages for r in m.rcpt_tos) == Counter(emails)


@pytest.mark.parametrize("connections", ["1", "3"])
def test_a_send_that_brings_the_disk_under_the_room_it_keeps_stops_with_every_message_recorded(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, disk: Disk, connections: str
) -> None:
    # the send's own record takes the disk below the room it keeps (ROOM) some way in: it stops at the next
    # look-up in the record, each message that went recorded as sent, none in doubt, so a rerun once space
    # is freed mails each reader left, and no one twice
    emails = [f"user{i}@example.com" for i in range(700)]
    csv = tmp_path / "subs.csv"
    csv.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
    db = disk.path / "mailer.db"
    env = {**os.environ, **env_for(smtp_server, tmp_path, MAILER_DATABASE=str(db))}
    code, err = _send(post, csv, env, "--dry-run")  # the record made while the disk had room
    assert code == 0, err
    disk.leave(ROOM + 150_000)
    code, err = _send(post, csv, env, "--connections", connections)
    assert code == 4, err  # stopped early: rerun to resume
    line = _room_line(err, disk)
    assert "MiB free" in line, line
    took = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert 0 < len(took) < len(emails) and set(took.values()) == {1}
    with Ledger(db) as ledger:
        _, states = ledger.states("2026-02-09", emails)
    assert {e for e, s in states.items() if s == "sent"} == set(took)  # each message that went, recorded
    assert set(states.values()) == {"sent"}  # and none in doubt
    (disk.path / "filler").unlink()
    code, err = _send(post, csv, env, "--connections", connections)
    assert code == 0, err
    assert Counter(r for m in smtp_server.messages for r in m.rcpt_tos) == Counter(emails)
