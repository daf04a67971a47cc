"""`mailer status POST` counts the readers the last send of the post found suppressed (2bb4429); a last send
killed with -9 kept no count, and status must say it has none (null), as docs/sending.md says, not the count
of a send before it. Real CLI, a real SMTP server (tests/smtpd.py), a real kill, both engines.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from mailer.engine import Location
from tests.smtpd import SMTPServer
from tests.test_workers import env_at, spawn, write_list
from tests.test_workers_lifecycle import finish, mailer

READERS = [f"reader{i}@example.com" for i in range(10)]
REFUSED, LEFT = READERS[3], READERS[9]  # refused for now (given up at once) in the first send; unsubscribed


def _suppressed(env: dict[str, str], cwd: Path, post: Path) -> object:
    status = mailer(["status", str(post), "--json"], env, cwd)
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)["suppressed"]


def test_status_has_no_suppressed_count_for_a_last_send_killed_before_its_end(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    csv = write_list(tmp_path / "subs.csv", READERS)
    env = env_at(smtp_server, tmp_path, record_at, MAILER_MAX_ATTEMPTS="1")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--connections", "1"]
    assert mailer(["unsubscribe", LEFT], env, tmp_path).returncode == 0
    smtp_server.fail(REFUSED, 450)
    first = mailer(args, env, tmp_path)
    assert first.returncode == 3, first.stderr  # REFUSED failed for now: the list is not complete
    assert _suppressed(env, tmp_path, post) == 1
    smtp_server.heal(REFUSED)
    held = smtp_server.hold(REFUSED)  # the rerun tries REFUSED again, and is killed there
    rerun = spawn(args, env, tmp_path)
    try:
        assert held.reached.wait(120), "the rerun never reached the reader it tries again"
        rerun.send_signal(signal.SIGKILL)
        rerun.communicate(timeout=60)
    finally:
        held.release.set()
        finish(rerun)
    assert _suppressed(env, tmp_path, post) is None, "the count of the send before the last one"
