"""Workers killed with -9 again and again (issue 16; docs/workers.md "When a process dies").

`send --workers 3` against one fault-injecting SMTP server (tests/smtpd.py) and PostgreSQL (tests/pg.py),
one local worker killed at a seeded random point 20 times over the send: the coordinator starts one in the
place of each, no reader is lost, only the messages a killed worker had in flight arrive twice, and the record
holds every outcome once. And a `mailer worker` on "another host", which mailer never restarts, started again
after a kill -9 (as systemd's Restart=on-failure does): it rejoins the same send and takes the dead one's
batch over. Real processes, real SIGKILLs; every wait is on something that happened (a message or a RCPT
arrived, a row in the record, a process ended), never on a sleep.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest

from mailer.ledger import Ledger
from tests.pg import Cluster, rows
from tests.smtpd import SMTPServer
from tests.test_workers import _running, env_at, recipients, spawn, states, wait_until, write_list
from tests.test_workers_lifecycle import finish, joined, live_workers, mailer

ISSUE = "2026-02-09"


@pytest.mark.slow
@pytest.mark.postgresql
def test_a_local_worker_killed_20_times_is_replaced_each_time_and_no_reader_is_lost(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    record = pg_cluster.database()
    rng = random.Random(2016)  # the kill points and victims: the same on every run
    emails = [f"user{i}@example.com" for i in range(800)]
    csv = write_list(tmp_path / "subs.csv", emails)
    # faults on every 50th reader from three starts (no reader has two): a refusal for good, a deferral at
    # RCPT and one at the end of DATA, each once
    rejected = {f"user{i}@example.com" for i in range(5, 800, 50)}
    deferred = {f"user{i}@example.com" for i in range(15, 800, 50)}
    refused_data = {f"user{i}@example.com" for i in range(30, 800, 50)}
    for address in rejected:
        smtp_server.reject(address)
    for address in deferred:
        smtp_server.fail(address, 451, times=1)
    for address in refused_data:
        smtp_server.fail(address, 451, times=1, at="DATA")
    smtp_server.delay(0.002)
    connections, kills = 2, 20
    env = env_at(smtp_server, tmp_path, record, MAILER_SMTP_TIMEOUT="60")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "3"]
    proc = spawn([*args, "--connections", str(connections)], env, tmp_path)
    killed: list[int] = []
    try:
        wait_until("the three workers in the record", lambda: _running(record) and joined(record, 3)())
        for k in range(kills):
            smtp_server.wait_for(len(smtp_server.messages) + rng.randint(3, 20), timeout=120)
            victim = sorted(live_workers(record))[rng.randrange(3)]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            smtp_server.pause()  # the send stands still until the replacement has joined it
            try:
                wait_until("a worker in the place of the killed one", joined(record, 3 + k + 1))
                assert len(live_workers(record)) == 3, f"kill {k}: not 3 workers again"
            finally:
                smtp_server.resume()
        _, err = proc.communicate(timeout=300)
    finally:
        finish(proc)
    said = err.decode()
    assert proc.returncode == 3, said  # done; the rejected readers failed for good
    assert "Traceback" not in said
    for pid in killed:
        assert f"worker pid {pid} was killed by signal 9 (Killed); pid " in said
    assert said.count("takes its place") == kills
    got = recipients(smtp_server)
    assert set(got) == set(emails) - rejected  # no reader lost
    # each kill repeats at most the messages its worker had in flight (one per connection); a live worker
    # that lost its lease to a slow renewal (a starved machine) says so, and may repeat as many
    lost = said.count("taking up the batches still free")
    repeats = sum(n - 1 for n in got.values())
    assert repeats <= connections * (kills + lost), (repeats, lost)
    # every outcome recorded once: one row per reader, whose attempts are the answers recorded: one, or two
    # for a reader deferred once, but for a deferral the kill took with it
    recorded = states(record)
    assert set(recorded) == set(emails)
    twice = deferred | refused_data
    for address, (state, attempts) in recorded.items():
        if address in rejected:
            assert (state, attempts) == ("failed", 1), address
        elif address in twice:
            assert state == "sent" and attempts in (1, 2), (address, state, attempts)
        else:
            assert (state, attempts) == ("sent", 1), (address, state, attempts)
    assert rows(record, "SELECT state FROM sends") == [("done",)]
    with Ledger(record) as ledger:
        assert ledger.status(ISSUE).count("sent") == len(emails) - len(rejected)
    # the killed workers' last counts died with them, so the run is not recorded complete yet; the same
    # command again finds every reader dealt with (the refused ones suppressed as hard bounces), mails no
    # one, and records the run complete
    again = mailer([*args, "--connections", str(connections)], env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Sending 2026-02-09 to 0 subscriber(s)" in again.stderr
    assert recipients(smtp_server) == got
    status = mailer(["status", str(post), "--json"], env, tmp_path)
    found = json.loads(status.stdout)
    mailed = len(emails) - len(rejected)
    assert (found["sending"], found["sent"], found["complete"]) == (None, mailed, True), found
