"""The send loop's recorder (pool.Recorder) on an engine that takes concurrent writers (PostgreSQL).

Each connection waits for the commit of its previous outcome before the final "." of its next message. With
one commit at a time, an outcome that arrives while a commit is under way waits for it and then for its own;
on PostgreSQL the recorder commits through several connections at once instead, so one slow commit holds up
only the connections whose outcomes are in it.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import closing

import psycopg
import pytest

from mailer.envelope import message_tag
from mailer.ledger import Ledger
from mailer.pool import Job, Recorder
from mailer.subscribers import Subscriber
from mailer.transport import Outcome
from tests.pg import Cluster

ISSUE = "2026-02-09"


def job(email: str) -> Job:
    return Job(0.0, 0, Subscriber(email, "", {}, 0), tag=message_tag(ISSUE, email))


@pytest.mark.postgresql
def test_an_outcome_is_committed_while_another_connections_commit_waits(pg_cluster: Cluster) -> None:
    record = pg_cluster.database()
    with closing(Ledger(record)) as ledger:
        ledger.start_issue(ISSUE, "hash", "Subject")
        ledger.record_outcomes(ISSUE, [("held@example.com", "deferred", 451, "try later")])
        outcomes: queue.SimpleQueue = queue.SimpleQueue()  # type: ignore[type-arg]
        recorder = Recorder(ledger, ISSUE, outcomes, connections=2)
        with (
            psycopg.connect(record.url, password=record.password) as holder,
            psycopg.connect(record.url, password=record.password, autocommit=True) as watcher,
        ):
            # a transaction of the test's own holds the row the first outcome updates: its commit waits
            holder.execute("SELECT 1 FROM deliveries WHERE email = 'held@example.com' FOR UPDATE")
            held = threading.Lock()  # released by the recorder once the outcome is committed
            held.acquire()
            recorder.submit(job("held@example.com"), Outcome(250, "ok"), held)
            deadline = time.monotonic() + 30
            while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).fetchall():
                assert time.monotonic() < deadline, "the recorder's commit never reached the held row"
                time.sleep(0.01)
            free = threading.Lock()
            free.acquire()
            recorder.submit(job("free@example.com"), Outcome(250, "ok"), free)
            # one commit at a time would hold this one behind the held commit until the holder lets go
            assert free.acquire(timeout=20), "an outcome waited for another connection's commit"
            assert held.locked()
            holder.rollback()
        assert held.acquire(timeout=20)
        recorder.stop()
        assert not recorder.error
        got = dict(ledger.rows("SELECT email, state FROM deliveries WHERE issue_id = ?", (ISSUE,)))
        assert got == {"held@example.com": "sent", "free@example.com": "sent"}
