"""Workers killed with -9 again and again (issue 16; docs/workers.md "When a process dies").

`send --workers 3` against one fault-injecting SMTP server (tests/smtpd.py) and PostgreSQL (tests/pg.py),
one local worker killed at a seeded random point 20 times over the send: the coordinator starts one in the
place of each, no reader is lost, only the messages a killed worker had in flight arrive twice, and the record
holds every outcome once. And a `mailer worker` on "another host", which mailer never restarts, started again
after a kill -9 (as systemd's Restart=on-failure does): it rejoins the same send and takes the dead one's
batch over; the unit docs/workers.md gives for that passes `systemd-analyze verify`. Real processes, real
SIGKILLs; every wait is on something that happened (a message or a RCPT arrived, a row in the record, a
process ended), never on a sleep.
"""

from __future__ import annotations

import configparser
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mailer.engine import Location
from mailer.errors import ExitStatus
from mailer.ledger import Ledger
from tests.pg import rows
from tests.smtpd import SMTPServer
from tests.test_workers import _running, env_at, recipients, spawn, states, wait_until, write_list
from tests.test_workers_lifecycle import finish, joined, kill_and_replace, live_workers, mailer

ISSUE = "2026-02-09"


@pytest.mark.slow
def test_a_local_worker_killed_20_times_is_replaced_each_time_and_no_reader_is_lost(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    record = record_at
    rng = random.Random(2016)  # the kill points and victims: the same on every run
    # the 20 kills come 3-20 messages apart (229 in all with this seed), and the messages that arrive as each
    # is made add more: the last came at message 296 (SQLite) and 393 (PostgreSQL) at load 17-19. 600 readers
    # leave ~200 for the batches taken over after the last kill
    emails = [f"user{i}@example.com" for i in range(600)]
    csv = write_list(tmp_path / "subs.csv", emails)
    # faults on every 50th reader from three starts (no reader has two): a refusal for good, a deferral at
    # RCPT and one at the end of DATA, each once
    rejected = {f"user{i}@example.com" for i in range(5, 600, 50)}
    deferred = {f"user{i}@example.com" for i in range(15, 600, 50)}
    refused_data = {f"user{i}@example.com" for i in range(30, 600, 50)}
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
            kill_and_replace(smtp_server, record, victim, joined_then=3 + k + 1, live=3)
            killed.append(victim)
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
    # the refused readers failed in this run, so it is not recorded complete; the same command again finds
    # every reader dealt with (the refused ones suppressed as hard bounces), mails no one, and records the
    # run complete
    again = mailer([*args, "--connections", str(connections)], env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Sending 2026-02-09 to 0 subscriber(s)" in again.stderr
    assert recipients(smtp_server) == got
    status = mailer(["status", str(post), "--json"], env, tmp_path)
    found = json.loads(status.stdout)
    mailed = len(emails) - len(rejected)
    assert (found["sending"], found["sent"], found["complete"]) == (None, mailed, True), found


def test_a_mailer_worker_started_again_after_a_kill_rejoins_the_send_and_takes_its_batch_over(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails = [f"user{i}@example.com" for i in range(100)]  # 6 batches of 13, then 11, 10, 1 (tail_size)
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record_at, MAILER_SMTP_TIMEOUT="120")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed", "--workers", "0"]
    coordinator = spawn([*args, "--json"], env, tmp_path)
    held = smtp_server.hold("user20@example.com")  # in the second batch: the first worker waits there
    workers: list[subprocess.Popen[bytes]] = []
    try:
        wait_until("the send in the record", lambda: _running(record_at))
        first = spawn(["worker", "--connections", "1"], env, tmp_path)
        workers.append(first)
        assert held.reached.wait(timeout=120), "the worker never reached user20"
        first.kill()  # the OOM killer, say: nothing of mailer's restarts a `mailer worker`
        first.communicate(timeout=60)
        [(dead,)] = rows(record_at, "SELECT worker FROM send_workers")
        owned = {
            b
            for (b,) in rows(
                record_at, "SELECT batch_no FROM send_batches WHERE owner = ? AND done = 0", (dead,)
            )
        }
        assert 1 in owned, owned  # user20's, its lease still running
        held.release.set()
        # systemd's Restart=on-failure (docs/workers.md) starts the unit's command again
        again = spawn(["worker", "--wait", "--connections", "1", "--json"], env, tmp_path)
        workers.append(again)
        out, err = again.communicate(timeout=120)
        report, said = coordinator.communicate(timeout=120)
    finally:
        held.release.set()
        finish(coordinator, *workers)
    assert first.returncode == -signal.SIGKILL
    assert again.returncode == 0, err.decode()
    assert coordinator.returncode == 0, said.decode()
    found = json.loads(out)
    # it took over the dead one's batches (and, had a starved machine made it lose its own lease, it says so
    # and takes its own back too)
    assert found["issue"] == ISSUE, found
    assert found["takeovers"] == len(owned) or found["lost"] and found["takeovers"] > len(owned), found
    [(name,)] = rows(record_at, "SELECT worker FROM send_workers WHERE worker != ?", (dead,))
    done_by = dict(rows(record_at, "SELECT batch_no, owner FROM send_batches WHERE done = 1"))
    assert len(done_by) == 9 and {done_by[b] for b in owned} == {name}, done_by  # taken over and done
    got = recipients(smtp_server)
    assert set(got) == set(emails)  # no reader lost
    assert sum(n - 1 for n in got.values()) <= 1 + len(found["lost"])  # the killed one's message in flight
    assert set(states(record_at).values()) == {("sent", 1)}
    assert rows(record_at, "SELECT state FROM sends") == [("done",)]


def _unit() -> str:
    """The systemd unit docs/workers.md gives for `mailer worker`."""
    text = (Path(__file__).parent.parent / "docs" / "workers.md").read_text(encoding="utf-8")
    section = text.split("## Keeping `mailer worker` running", 1)[1]
    return section.split("```ini\n", 1)[1].split("```", 1)[0]


def test_the_systemd_unit_in_the_docs_restarts_a_dead_worker_and_no_refused_or_stopped_one(
    tmp_path: Path,
) -> None:
    unit = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    unit.read_string(_unit())
    service = unit["Service"]
    # --wait: started with the daily send, before it is in the record, it waits for it (without, exit 1 and
    # not restarted: that host would send nothing)
    assert service["ExecStart"].endswith("/mailer worker --wait"), service["ExecStart"]
    assert service["Restart"] == "on-failure"  # systemd: a non-zero exit not listed below, or a signal but
    codes = {int(c) for c in service["RestartPreventExitStatus"].split()}  # SIGHUP, SIGINT, SIGTERM, SIGPIPE
    assert codes == {ExitStatus.ERROR, ExitStatus.USAGE}  # refused: starting again would not help
    success = {int(c) for c in service["SuccessExitStatus"].split()}
    signalled = {ExitStatus.HUNG_UP, ExitStatus.INTERRUPTED, ExitStatus.TERMINATED}
    assert success == signalled  # a signal's stop is not a failure
    assert ExitStatus.STOPPED not in codes | success  # a stop every worker meets: started again, it rejoins
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is not installed (scripts/test installs the Debian package systemd)")
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    mailer_bin = Path(sys.executable).parent / "mailer"  # the command as a venv installs it
    path = tmp_path / "mailer-worker.service"
    path.write_text(_unit().replace("/srv/newsletter/.venv/bin/mailer", str(mailer_bin)), encoding="utf-8")
    checked = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=120, env={**os.environ,
        "SYSTEMD_LOG_LEVEL": "warning"},
    )  # fmt: skip
    assert checked.returncode == 0 and checked.stderr == "" and checked.stdout == "", checked
