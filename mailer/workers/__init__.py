"""A send made by several processes: `send --workers N` on one host, `send --distributed` + `mailer worker`.

The coordinator (the `mailer send` process) reads, renders and checks as a lone send does, records the issue
and the run, then puts the send in the record: the post's text and a fingerprint of its rendering, the send's
options, and its readers in numbered batches. Workers (its own child processes, or `mailer worker` on other
hosts with the same configuration) render the stored post (a host that renders it otherwise is refused),
claim one batch at a time with a lease, and send it through the loop a lone send uses (campaign.run_share):
a message's final "." goes only once the outcome before it on the same connection is committed, so a worker
killed with -9 leaves at most one message per connection sent but unrecorded. Its lease then runs out and
another worker takes the batch over; the record says who was mailed, so only those messages are repeated.

A worker's lease is renewed by a thread of its own every quarter of `worker_lease`; a worker that has not
renewed it in time (stopped, starved, cut off from the record) sends no further "." for fear of a second
sender. Every time two processes compare (a lease, a word that one is alive, the rate limit's schedule) is
the record's, in its SQL (Ledger.now, Ledger.stamp: the PostgreSQL server's clock), so that no host's clock,
off or stepped during the send, makes a live worker's batch look free; a holder follows its own lease on
the time elapsed where it runs (Ledger.lease_clock). The rate limit is a schedule of start times in the
record that every worker reserves from in small chunks. The coordinator counts the readers from the
batches in the record (each batch's holder writes its counts there, see SendTally) and stops the workers: a
signal sets the send's state to 'stopping', which every worker sees within a renewal and stops on, as on its
own SIGTERM, after the messages in flight.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `mailer status` reads under_way() without loading the renderer
    from ..message import MessageFactory
    from ..render import Issue


BATCH_MAX = 500  # readers per batch at most: what a worker repeats a state lookup for when it takes one over


POLL = 0.2  # seconds between the coordinator's looks at the record
# seconds between the looks at the record while a send ends: the coordinator's, for its workers' last counts,
# and theirs, for its end; a few looks each, and every one of them a wait that adds to the send's time
ENDING = 0.05
# the Report fields a worker writes to the record (send_workers: its own share, and why it stopped, which the
# coordinator reads; the send's counts it takes from the batches)
COUNTED = (
    "sent", "already_sent", "suppressed", "failed_before", "failed_temporary", "failed_permanent",
    "in_doubt", "in_doubt_before", "bounced", "retries", "seen",
)  # fmt: skip


def fingerprint(issue: Issue, factory: MessageFactory) -> str:
    """What every reader's message shares, hashed: two hosts that render the post alike get the same first
    part; two that say and sign who the messages are from alike (From, Reply-To, List-Id, DKIM) the same
    second; two that sign and address a reader's message alike (the unsubscribe key, list id and web_url, the
    bounce address) the same third."""
    h = hashlib.sha256(issue.subject.encode())
    for part in (issue.html, issue.text):
        h.update(b"\0part")
        for chunk in part.chunks:
            h.update(len(chunk).to_bytes(8, "big") + chunk)
    sender = hashlib.sha256(factory.sender_identity().encode()).hexdigest()
    probe = (
        "fingerprint@mailer.invalid"  # a reader no list has: its link and return path as this host makes them
    )
    reader = "\0".join((factory.unsubscribe_url(probe), factory.envelope_sender(probe)))
    return f"{h.hexdigest()} {sender} {hashlib.sha256(reader.encode()).hexdigest()}"


def batch_size(readers: int, workers: int) -> int:
    """The first batches' size: small enough that each worker gets several batches (a slow one holds less
    back), at most BATCH_MAX."""
    return max(10, min(BATCH_MAX, -(-readers // (max(workers, 1) * 8))))


def tail_size(size: int, left: int, workers: int) -> int:
    """The next batch's size with `left` readers still to put in batches: `size` until the last quarter or
    so, then shrinking (each 1/(2 x workers) of what is left, at least 10), so that the workers end
    together: with equal batches to the end, one worker sent its last batch alone while the others had
    none left (0.13 s of a 2-worker send of 5,000 messages at 8 connections, a tenth of its send loop)."""
    return max(10, min(size, -(-left // (2 * max(workers, 1)))))


@dataclass(frozen=True)
class Crew:
    """How many processes send, and whether others may join."""

    workers: int  # local worker processes this command starts
    distributed: bool  # `mailer worker` on other hosts may join
    config_file: Path | None = None  # the configuration the workers load (the coordinator's)


# the lease_until of a batch given back: free at once (it is in the past), and told from one never claimed
# (0), whose counts are none, so that the live count reads only the batches claimed (SendTally)
GIVEN_BACK = 1.0
