"""A send by workers put in the record over longer than its lease (a long list, a slow disk or server) leaves
its coordinator alive for a lease from the end of the publishing, not from its start: the coordinator first
says it is alive again only a quarter lease after publishing, and meanwhile `mailer status` (under_way)
called a live coordinator gone, its lease stamped by the first statement of the publishing transaction.
A real record on both engines; the list read slowly by a generator that waits out the lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from mailer.campaign import SendOptions
from mailer.config import Settings
from mailer.engine import Location
from mailer.ledger import Ledger, issue_lock
from mailer.message import make_factory
from mailer.post import load_post
from mailer.render import render_issue
from mailer.subscribers import Subscriber
from mailer.workers.alive import my_name
from mailer.workers.coordinator import publish
from mailer.workers.tally import under_way
from tests.test_campaign import subscriber
from tests.test_workers import wait_until

LEASE = 1.0  # seconds: the smallest worker_lease the settings take


def test_a_coordinator_is_alive_for_a_lease_after_a_publishing_longer_than_its_lease(
    smtp_settings: Settings, post: Path, record_at: Location
) -> None:
    issue = render_issue(load_post(post), smtp_settings)

    def slow_list() -> Iterator[Subscriber]:
        started = time.time()
        yield subscriber("ann@example.com", 2)
        wait_until("a lease gone by while publishing", lambda: time.time() > started + 2 * LEASE)
        yield subscriber("bo@example.com", 3)

    with issue_lock(record_at, issue.issue_id), Ledger(record_at) as ledger:  # held, as by a coordinator
        ledger.start_issue(issue.issue_id, issue.post.content_hash, issue.subject)
        run_id = ledger.start_run(issue.issue_id, "subs", "subs.csv")
        publish(
            ledger, issue, make_factory(issue, smtp_settings), SendOptions(), slow_list(), expected=2,
            workers=1, lease=LEASE, coordinator=my_name(), run_id=run_id,
        )  # fmt: skip
        sending = under_way(ledger, issue.issue_id)
    assert sending is not None and sending["coordinator_gone"] is False, sending
