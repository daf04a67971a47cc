"""Workers' claims on the batches of a send (workers/worker.py), on SQLite and on PostgreSQL.

A claim leases one batch to one worker: two workers never hold the same batch, a lease that ran out is taken
over, and on PostgreSQL claims lock rows (SELECT ... FOR UPDATE SKIP LOCKED), not the whole database, so
workers claim side by side and never wait for one another's claims or for a database-wide lock.
"""

from __future__ import annotations

import json
import threading
from contextlib import closing

import pytest

from mailer.engine import Location
from mailer.ledger import Ledger
from mailer.workers.worker import claim, done
from tests.pg import Cluster, rows

WHERE = ("2026-02-09", "smtp")


def fill(record: Location, batches: int) -> None:
    """A running send's batches, one reader each, none claimed yet."""
    with closing(Ledger(record)) as ledger, ledger.transaction():
        ledger.write(
            "INSERT INTO sends (issue_id, destination, state, coordinator, alive_until, post_name, post,"
            " fingerprint, options, started_at) VALUES (?, ?, 'running', 'c', 0, 'p', '', '', '{}', '')",
            WHERE,
        )
        for n in range(batches):
            ledger.write(
                "INSERT INTO send_batches (issue_id, destination, batch_no, readers, size)"
                " VALUES (?, ?, ?, ?, 1)",
                (*WHERE, n, json.dumps([[f"reader{n}@example.com", "", {}]])),
            )


def owners(record: Location) -> dict[int, str]:
    found = rows(record, "SELECT batch_no, owner FROM send_batches WHERE issue_id = ?", (WHERE[0],))
    return {int(n): str(owner) for n, owner in found}  # type: ignore[call-overload]


def test_workers_claiming_at_once_never_get_the_same_batch(record_at: Location) -> None:
    fill(record_at, 60)
    start = threading.Barrier(4)
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            with closing(Ledger(record_at)) as ledger:
                start.wait()
                mine = got.setdefault(name, [])
                while (found := claim(ledger, WHERE, name, 60)) is not None:
                    mine.append(found[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    claimed = sorted(n for numbers in got.values() for n in numbers)
    assert claimed == list(range(60))  # every batch once: none twice, none left
    assert owners(record_at) == {n: name for name, numbers in got.items() for n in numbers}


def test_a_lease_that_ran_out_is_taken_over_and_a_live_one_is_not(record_at: Location) -> None:
    fill(record_at, 3)
    with closing(Ledger(record_at)) as a, closing(Ledger(record_at)) as b:
        fresh = (0, json.dumps([["reader0@example.com", "", {}]]), "", '{"attempts_before": {}}', True)
        assert claim(a, WHERE, "a", -1) == fresh
        taken = claim(b, WHERE, "b", 60)
        assert taken is not None and (taken[0], taken[2]) == (0, "a")  # a's lease on 0 ran out: b's now
        assert not done(a, WHERE, "a", 0, {"sent": 9})  # a lost it: its done mark (and counts) change nothing
        mine = claim(a, WHERE, "a", 60)
        assert mine is not None and mine[0] == 1
        last = claim(b, WHERE, "b", 60)
        assert last is not None and last[0] == 2  # a's lease on 1 is live
        assert claim(b, WHERE, "b", 60) is None
        assert done(a, WHERE, "a", 1, {"sent": 1}) and done(b, WHERE, "b", 0, {"already_sent": 1})
        assert done(b, WHERE, "b", 2, {"suppressed": 1})
    assert rows(record_at, "SELECT batch_no, done, owner, counts FROM send_batches ORDER BY batch_no") == [
        (0, 1, "b", '{"already_sent": 1}'),
        (1, 1, "a", '{"sent": 1}'),
        (2, 1, "b", '{"suppressed": 1}'),
    ]


def test_no_batch_of_a_send_that_no_longer_runs_is_claimed(record_at: Location) -> None:
    # a worker that has yet to hear of its coordinator's stop begins no batch after it
    fill(record_at, 2)
    with closing(Ledger(record_at)) as a:
        assert claim(a, WHERE, "a", 60) is not None
        for state in ("stopping", "stopped", "done"):
            rows(record_at, "UPDATE sends SET state = ?", (state,))
            assert claim(a, WHERE, "a", 60) is None, state
        rows(record_at, "UPDATE sends SET state = 'running'")
        assert claim(a, WHERE, "a", 60) is not None  # the same batch: it was free


@pytest.mark.postgresql
def test_on_postgresql_a_claim_passes_over_a_batch_being_claimed_and_waits_for_no_database_lock(
    pg_cluster: Cluster,
) -> None:
    record = pg_cluster.database()
    fill(record, 3)
    # b gives up on a lock after 2 s: a claim that queued behind a's transaction would fail, not pass
    with closing(Ledger(record)) as a, closing(Ledger(record, timeout=2)) as b:
        with a.transaction(rows_only=True):
            first = claim(a, WHERE, "a", 60)  # a holds batch 0's row, not yet committed
            second = claim(b, WHERE, "b", 60)
        assert first is not None and second is not None
        assert (first[0], second[0]) == (0, 1)
        with a.transaction():  # the database-wide lock, as an import or an issue's start holds it
            third = claim(b, WHERE, "b", 60)
            assert third is not None and third[0] == 2
            assert done(b, WHERE, "b", 2, {"sent": 1})
    assert owners(record) == {0: "a", 1: "b", 2: "b"}
