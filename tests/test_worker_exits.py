"""How a `mailer worker` that loses its PostgreSQL record mid-send ends: one exit code (4, stopped early),
whether a commit or a look-up met the loss, so that a supervisor restarts it (docs/workers.md) and a script
reads one meaning. Before, a worker between batches exited 1 ('refused': not restarted), and so did one whose
last word could not be written.

Real processes, a real cluster whose database stops letting anyone in; the waits are on a held reply, the
record and the processes' ends.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mailer.engine import Server
from tests.pg import Cluster, rows
from tests.smtpd import SMTPServer
from tests.test_workers import _running, env_at, spawn, wait_until, write_list

pytestmark = pytest.mark.postgresql


def _joined(server: Server, n: int) -> bool:
    return len(rows(server, "SELECT worker FROM send_workers")) >= n


def test_a_worker_that_loses_its_database_at_a_commit_or_a_look_up_exits_4(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    server = pg_cluster.database()
    name = server.url.rpartition("/")[2]
    emails = [f"user{i:02}@example.com" for i in range(10)]  # one batch: one worker sends, the other waits
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed", "--workers", "0"]
    held = smtp_server.hold("user05@example.com")
    coordinator = spawn(args, env, tmp_path)
    procs: list[subprocess.Popen[bytes]] = [coordinator]
    try:
        wait_until("the send in the record", lambda: _running(server))
        sending = spawn(["worker"], env, tmp_path)
        procs.append(sending)
        assert held.reached.wait(timeout=120), "no worker reached user05"
        waiting = spawn(["worker"], env, tmp_path)  # finds the one batch taken: looks again every 0.2 s
        procs.append(waiting)
        wait_until("the second worker joined", lambda: _joined(server, 2))
        # the database goes away and stays away: every session ends, and no new one is let in
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        pg_cluster.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        held.release.set()  # the sending worker's next commit meets the loss; the waiting one's next look-up
        said = {}
        for what, proc in (("sending", sending), ("waiting", waiting), ("coordinator", coordinator)):
            _, err = proc.communicate(timeout=120)
            said[what] = err.decode()
    finally:
        held.release.set()
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert coordinator.returncode == 4, said
    for what in ("sending", "waiting"):
        err = said[what]
        assert "Traceback" not in err, err
        assert (sending if what == "sending" else waiting).returncode == 4, (what, err)
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and server.url.split("@")[-1] in errors[0], (what, err)
