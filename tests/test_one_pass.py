"""Before the first message a send reads its list once: check, record key and count share one pass."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.publisher import env_for
from tests.smtpd import SMTPServer
from tests.test_send import recipients, run, send_args, write_list


def _bytes_read_by_the_question(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run mailer on a pseudo-terminal; at its question, what it has read so far (rchar), then answer no."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", *args],
        env={**os.environ, **env},
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    screen = b""
    read = -1
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        assert ready, f"no output for 120 s: {screen.decode(errors='replace')}"
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
        if read < 0 and b"[y/N]" in screen:  # it waits for the answer: nothing of the send has begun
            io = Path(f"/proc/{proc.pid}/io").read_text()
            read = int(next(line for line in io.splitlines() if line.startswith("rchar:")).split()[1])
            os.write(master, b"n\n")
    os.close(master)
    proc.wait(timeout=60)
    assert read >= 0, screen.decode(errors="replace")
    return read, screen.decode(errors="replace")


def test_a_send_reads_its_list_once_before_the_question(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    small = write_list(tmp_path / "small.csv", [f"reader{i}@example.com" for i in range(10)])
    big = write_list(tmp_path / "big.csv", [f"reader{i}@example{i % 40}.com" for i in range(60_000)])
    env = env_for(smtp_server, tmp_path)
    counts: dict[Path, int] = {}
    for path in (small, big):
        read, screen = _bytes_read_by_the_question(["send", str(post), "--to", str(path), "--force"], env)
        assert "Nothing sent." in screen, screen
        counts[path] = read
    # the same run but for the list: what the bigger list cost in reading, as a multiple of its size
    passes = (counts[big] - counts[small]) / (big.stat().st_size - small.stat().st_size)
    assert 0.9 < passes < 1.3, f"read the list {passes:.2f} times before asking (it was 4 reads: 4.0)"
    assert "to 60,000 subscriber(s)" in screen
    assert not smtp_server.messages


def test_the_record_keys_a_list_by_the_sha256_of_its_bytes(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    """Databases written before the one pass hold SHA-256 keys: the same bytes must keep the same key."""
    csv = write_list(tmp_path / "subs.csv", ["a@example.com", "b@example.com"], extra="\n\nc@example.com,C\n")
    env = env_for(smtp_server, tmp_path)
    code, _, err = run(send_args(post, csv), env)
    assert code == 0, err
    assert recipients(smtp_server) == {"a@example.com": 1, "b@example.com": 1, "c@example.com": 1}
    with sqlite3.connect(tmp_path / "state" / "mailer.db") as db:
        keys = {row[0] for row in db.execute("SELECT list_key FROM runs")}
    assert keys == {hashlib.sha256(csv.read_bytes()).hexdigest()}
