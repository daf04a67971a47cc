"""The report of a send by workers adds up to its readers, also when a batch changed hands (issue 16).

A worker stopped (SIGTERM: it gives its batch back) or killed (-9: its lease runs out) half-way through a
batch leaves readers it mailed in this run; the worker that takes the batch over must not count them as
"already sent before", and what the killed one never wrote of its counts is in the record. Real workers,
real signals, a real SMTP server (tests/smtpd.py), both engines; every wait is on an event (a held RCPT, a
line on a worker's stderr, a row in the record, a process's end).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from mailer.engine import Location
from mailer.ledger import SCHEMA_VERSION, Ledger
from tests.pg import rows, set_schema_version, without_runs_of_deliveries
from tests.smtpd import SMTPServer
from tests.test_workers import (
    WORKER_STOPS,
    _stderr_of,
    env_at,
    recipients,
    spawn,
    states,
    wait_until,
    write_list,
)
from tests.test_workers_lifecycle import finish, mailer

READERS = 120  # 12 batches of 10 for two workers (workers.batch_size)
HELD = "user25@example.com"  # the middle of batch 2: 20 to 24 are mailed before it
BEFORE_HELD = "user24@example.com"


def _owner(record: Location, batch: int) -> int:
    """The pid of the worker that holds the batch ('HOST pid N TOKEN')."""
    ((owner,),) = rows(record, "SELECT owner FROM send_batches WHERE batch_no = ?", (batch,))
    return int(str(owner).split(" pid ")[1].split()[0])


def _sent(record: Location, email: str) -> bool:
    return states(record).get(email, ("",))[0] == "sent"


def _batch_2_changes_hands(
    server: SMTPServer,
    record: Location,
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    signum: int,
    ready: Callable[[int], bool] = lambda pid: True,
) -> tuple[int, int, bytes, str]:
    """Run the send with batch 2's HELD reader held; once its holder waits there (and `ready(its pid)`),
    stop it (SIGTERM) or kill it (-9) and let the reply go; the holder's pid, and the send's exit code,
    stdout and stderr."""
    held = server.hold(HELD)
    proc = spawn(args, env, cwd)
    try:
        assert held.reached.wait(120), "the held reader never came"
        victim = _owner(record, 2)
        wait_until("the holder of batch 2 ready", lambda: ready(victim))
        if signum == signal.SIGTERM:  # it stops after the message in flight, gives the rest of batch 2 back
            os.kill(victim, signum)
            wait_until("the worker stopping", lambda: WORKER_STOPS in _stderr_of(victim), timeout=60)
        else:  # batch 2 given back once it is reaped; the RCPT held is never answered, so that one is not
            # mailed. Killed once the reader before the held one is recorded: the worker commits that
            # outcome while it waits at the held RCPT (only the next "." waits for the commit); killed
            # before, that reader is in flight for the record and mailed again by the next owner, as mailer
            # allows, and this test could not tell that repeat from the held one mailed twice
            wait_until("the reader before the held one recorded", lambda: _sent(record, BEFORE_HELD))
            os.kill(victim, signum)
        held.release.set()
        out, err = proc.communicate(timeout=300)
    finally:
        finish(proc)
    assert _owner(record, 2) != victim  # the batch changed hands
    return victim, proc.returncode, out, err.decode()


def _two_workers_to_readers(cwd: Path, post: Path) -> tuple[list[str], list[str]]:
    """The READERS readers in cwd/subs.csv, and the arguments of a `send --workers 2 --json` to them."""
    emails = [f"user{i}@example.com" for i in range(READERS)]
    csv = write_list(cwd / "subs.csv", emails)
    return emails, ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "2", "--json"]


# killed, a worker is reaped by the coordinator, which gives its batch back at once: with a lease longer than
# the tests wait for the send's end (before, the batch waited for the lease to run out), and whose renewals
# (every quarter lease) come long after the kill
LONG_LEASE = {"MAILER_WORKER_LEASE": "600"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_a_batch_that_changes_hands_half_sent_is_counted_once_and_a_rerun_finds_it_sent_before(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location, signum: int
) -> None:
    emails, args = _two_workers_to_readers(tmp_path, post)
    env = {**env_at(smtp_server, tmp_path, record_at), **(LONG_LEASE if signum == signal.SIGKILL else {})}
    _, code, out, said = _batch_2_changes_hands(smtp_server, record_at, args, env, tmp_path, signum)
    assert code == 0, said
    assert recipients(smtp_server) == {e: 1 for e in emails}  # no one twice: the held one came once
    counts = json.loads(out)["counts"]
    assert counts["sent"] == READERS, counts
    assert {k: n for k, n in counts.items() if n and k != "sent"} == {}, counts  # nothing "already sent"
    # and the run is complete: the killed worker's counts it never wrote are the record's
    status = mailer(["status", str(post), "--json"], env, tmp_path)
    assert json.loads(status.stdout)["complete"] is True, status
    again = mailer(args, env, tmp_path)
    assert again.returncode == 0, again.stderr
    counts = json.loads(again.stdout)["counts"]
    assert (counts["sent"], counts["already_sent"]) == (0, READERS), counts


GIVEN_UP = "user22@example.com"  # batch 2, before the held one: refused for now (450), given up at once


def test_a_reader_given_up_stays_given_up_when_its_worker_is_killed_before_its_next_renewal(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    # with max_attempts 1 the holder of batch 2 gives GIVEN_UP up at its first 450, says so, and is killed
    # (-9) before its next renewal. Before, the batch's list of readers given up reached the record only with
    # a renewal, and the next holder tried the reader again (two attempts, and the report said what that
    # one's try gave); now the holder writes it as it gives the reader up
    emails, args = _two_workers_to_readers(tmp_path, post)
    smtp_server.reject(GIVEN_UP, 450)
    env = {**env_at(smtp_server, tmp_path, record_at, MAILER_MAX_ATTEMPTS="1"), **LONG_LEASE}
    gave_up = f"{GIVEN_UP}: 450".encode()
    _, code, out, said = _batch_2_changes_hands(
        smtp_server, record_at, args, env, tmp_path, signal.SIGKILL, lambda pid: gave_up in _stderr_of(pid)
    )
    assert code == 3, said  # a reader failed
    assert states(record_at)[GIVEN_UP] == ("deferred", 1), "the reader given up was tried again"
    assert recipients(smtp_server) == {e: 1 for e in emails if e != GIVEN_UP}
    report = json.loads(out)
    counts = {k: n for k, n in report["counts"].items() if n}
    assert counts == {"sent": READERS - 1, "failed_temporary": 1}, counts
    assert report["failures"] == {f"450 4.2.0 try again later <{GIVEN_UP}>": 1}, report["failures"]


def test_a_schema_10_record_gets_the_run_of_each_delivery_and_its_rows_count_as_before_any_run(
    record_at: Location,
) -> None:
    issue = "2026-02-08"
    with Ledger(record_at) as ledger:
        ledger.start_issue(issue, "h", "Old")
        ledger.record_outcomes(issue, [("ann@example.com", "sent", 250, "ok")])
    # back to what schema 10's mailer wrote: no run of a delivery, no counts of a batch
    without_runs_of_deliveries(record_at)
    set_schema_version(record_at, 10)
    with Ledger(record_at) as ledger:
        assert ledger.found_version == 10
        run = ledger.start_run(issue, "key", "list.csv")
        ledger.record_outcomes(issue, [("bob@example.com", "sent", 250, "ok")], run)
        both = ["ann@example.com", "bob@example.com"]
        found = ledger.looked_up(issue, both, run)
        assert found == (set(), {"ann@example.com": "sent", "bob@example.com": "sent"}, {"bob@example.com"})
        assert ledger.looked_up(issue, both, run + 1)[2] == set()  # a later run: both before it
        assert ledger.rows("SELECT counts FROM send_batches") == []
        assert ledger.schema_version() == SCHEMA_VERSION
