"""The coordinator's stop (SIGTERM, Ctrl-C) reaches a `mailer worker` on another host through the record.

A worker heard of the stop only when it next renewed its leases, a quarter of `worker_lease` later, and went
on claiming batches meanwhile: a send told to stop "after the messages in flight" went on mailing readers, and
the coordinator could end before that worker had stopped, so that a rerun, or `mailer status`, found a worker
of the stopped send still at it. Now a worker begins no batch of a send that no longer runs, looks at the
send's state every second, and the coordinator ends once every worker has written its end.

Real processes and the real record on both engines; a lease of 120 s, so that a worker that waited for its
renewal (30 s) to hear of the stop would mail the whole list first. Every wait is on a held reply, a row or a
process's end.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from mailer.engine import Location
from tests.pg import rows
from tests.smtpd import SMTPServer
from tests.test_workers import _running, env_at, recipients, spawn, wait_until, write_list


def test_a_stop_of_the_coordinator_stops_a_worker_elsewhere_before_its_next_batch_and_a_rerun_goes_ahead(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails = [f"user{i:03}@example.com" for i in range(200)]
    first_batch = set(emails[:25])  # 200 readers, no local worker: batches of 25 (workers.batch_size)
    csv = write_list(tmp_path / "subs.csv", emails)
    env = {
        **env_at(smtp_server, tmp_path, record_at, MAILER_SMTP_TIMEOUT="120"),
        "MAILER_WORKER_LEASE": "120",
    }
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed"]
    held = smtp_server.hold("user005@example.com")
    coordinator = spawn([*args, "--workers", "0"], env, tmp_path)
    worker = None
    try:
        wait_until("the send in the record", lambda: _running(record_at))
        worker = spawn(["worker", "--connections", "1"], env, tmp_path)
        assert held.reached.wait(timeout=120), "the worker never reached user005"
        coordinator.send_signal(signal.SIGTERM)
        wait_until(
            "the stop in the record", lambda: rows(record_at, "SELECT state FROM sends") == [("stopping",)]
        )
        held.release.set()
        _, said = coordinator.communicate(timeout=120)
        # the coordinator ended only once the worker had written its end: nothing of the send is still at it
        still = rows(record_at, "SELECT worker FROM send_workers WHERE state = 'running'")
        _, worker_said = worker.communicate(timeout=120)
    finally:
        held.release.set()
        for proc in (coordinator, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert coordinator.returncode == 143, said.decode()
    assert worker.returncode == 143, worker_said.decode()  # stopped by its coordinator, as on SIGTERM
    assert b"Traceback" not in said + worker_said
    assert still == []
    mailed = recipients(smtp_server)
    assert set(mailed) <= first_batch, sorted(set(mailed) - first_batch)[:5]  # no batch begun after the stop
    assert rows(record_at, "SELECT state FROM sends") == [("stopped",)]
    # the publisher runs the same command at once: it goes ahead, and mails each reader once in all
    again = spawn([*args, "--workers", "1"], env, tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})
