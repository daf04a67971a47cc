"""What the tests of a send that meets trouble half-way share: the send started with one reader's reply held,
so that the test acts while the send is known to wait there, and the rerun that must finish it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.smtpd import Hold, SMTPServer
from tests.test_workers import recipients, spawn, write_list


def forty_readers(cwd: Path, post: Path, *options: str) -> tuple[list[str], list[str]]:
    """user00..user39@example.com in cwd/subs.csv, and the `mailer send` arguments to them (and options)."""
    emails = [f"user{i:02}@example.com" for i in range(40)]
    csv = write_list(cwd / "subs.csv", emails)
    return emails, ["send", str(post), "--to", str(csv), "--yes", "--force", *options]


@contextmanager
def held_send(
    server: SMTPServer, args: list[str], env: dict[str, str], cwd: Path, at: str = "user10@example.com"
) -> Iterator[tuple[subprocess.Popen[bytes], Hold]]:
    """`mailer ARGS`, started with the reply to the RCPT for `at` held, once the send waits there; after the
    block the reply goes and the process, if it still runs, is killed."""
    held = server.hold(at)
    proc = spawn(args, env, cwd)
    try:
        assert held.reached.wait(timeout=120), f"the send never reached {at}"
        yield proc, held
    finally:
        held.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def rerun_finishes(
    server: SMTPServer, args: list[str], env: dict[str, str], cwd: Path, emails: list[str], repeats: int
) -> None:
    """The same command again exits 0, every reader mailed, with at most `repeats` messages twice in all."""
    again = spawn(args, env, cwd)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    got = recipients(server)
    assert set(got) == set(emails)
    assert sum(got.values()) - len(emails) <= repeats
