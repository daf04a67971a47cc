"""`mailer status` tells a lone send that is running from one that stopped early, on both engines: the send
holds the issue's lock (an flock next to a SQLite file, an advisory lock on PostgreSQL) for as long as it
runs, and the kernel or the server lets go of it when the send dies. Before, status said "one is running,
or it stopped early" of both. A real SMTP server (tests/smtpd.py) holds a reply mid-list; the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

from mailer.engine import Location
from tests.sends import held_send
from tests.smtpd import SMTPServer
from tests.test_send import send_args, write_list
from tests.test_workers import env_at
from tests.test_workers_lifecycle import mailer

RUNNING = "not complete: a send of it is running now"
STOPPED = "and none runs now (one stopped early): run the same send command again to finish"


def test_status_says_a_send_runs_only_while_it_does(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    csv = write_list(tmp_path / "subs.csv", [f"user{i}@example.com" for i in range(12)])
    env = env_at(smtp_server, tmp_path, record_at, MAILER_SMTP_TIMEOUT="120")
    args = send_args(post, csv, "--connections", "1")
    with held_send(smtp_server, args, env, tmp_path) as (proc, _):
        running = mailer(["status", str(post)], env, tmp_path).stdout
        assert RUNNING in running and "stopped early" not in running, running
        assert json.loads(mailer(["status", str(post), "--json"], env, tmp_path).stdout)["running"] is True
        proc.kill()  # kill -9, its reply still held: it stopped early
        proc.communicate(timeout=60)
    stopped = mailer(["status", str(post)], env, tmp_path).stdout
    assert STOPPED in stopped and "running now" not in stopped, stopped
    assert json.loads(mailer(["status", str(post), "--json"], env, tmp_path).stdout)["running"] is False
