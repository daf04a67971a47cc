"""The coordinator of a send by workers: it puts the send in the record, starts its own workers, follows
the batches and ends the send."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..campaign import Feedback, Report, SendOptions
from ..config import Settings
from ..errors import Interrupted, MailerError, SendAborted
from ..ledger import Ledger
from ..stopping import StopSignals
from ..subscribers import Subscriber
from . import ENDING, POLL, Crew, batch_size, fingerprint, tail_size
from .alive import alive_workers, free_dead, live_leases, my_name, open_batches
from .local import LocalWorkers, unrecorded_line
from .tally import SendTally, add_up, conclude

if TYPE_CHECKING:  # for annotations only
    from ..message import MessageFactory
    from ..render import Issue


def publish(
    ledger: Ledger,
    issue: Issue,
    factory: MessageFactory,
    options: SendOptions,
    subscribers: Iterator[Subscriber] | Any,
    *,
    expected: int,
    workers: int,
    lease: float,
    coordinator: str,
    run_id: int,
) -> int:
    """Put the send in the record (replacing an earlier one of the issue that is no longer running);
    return the number of batches. One transaction: the workers see all of it or nothing."""
    where = (issue.issue_id, ledger.destination)
    size = batch_size(expected, workers)
    stored = {
        "connections": options.connections, "rate": options.rate, "max_attempts": options.max_attempts,
        "retry_delay": options.retry_delay, "max_consecutive_failures": options.max_consecutive_failures,
        "retry_failed": options.retry_failed, "lease": lease, "run": run_id,
    }  # fmt: skip
    batches = 0
    with ledger.transaction():
        _take_over(ledger, where)
        ledger.write(
            "INSERT INTO sends (issue_id, destination, state, coordinator, alive_until, post_name, post,"
            f" fingerprint, options, started_at) VALUES (?, ?, 'running', ?, {ledger.now} + ?, ?, ?, ?, ?,"
            f" {ledger.stamp})",
            (*where, coordinator, lease, str(issue.post.path), _post_text(issue),
             fingerprint(issue, factory), json.dumps(stored), 0.0),
        )  # fmt: skip
        batch: list[list[Any]] = []
        put, cap = 0, size
        for sub in subscribers:
            batch.append([sub.email, sub.name, dict(sub.fields)])
            if len(batch) == cap:
                batches += _write_batch(ledger, where, batches, batch)
                put += cap
                batch, cap = [], tail_size(size, expected - put, workers)
        if batch:
            batches += _write_batch(ledger, where, batches, batch)
        # alive for a lease from here: stamped at the INSERT only, a publishing longer than a lease left
        # `mailer status` calling a live coordinator gone until its first word, a quarter lease later
        ledger.write(
            f"UPDATE sends SET alive_until = {ledger.now} + ? WHERE issue_id = ? AND destination = ?",
            (lease, *where),
        )
    return batches


def take_over(ledger: Ledger, issue_id: str) -> None:
    """Before a lone send of the issue (its caller holds the issue's lock): refuse while workers of an earlier
    send by workers still mail its readers, else take that send out of the record, so that a `mailer worker`
    started meanwhile (systemd restarting one) does not join it and mail beside this send."""
    with ledger.transaction():
        _take_over(ledger, (issue_id, ledger.destination))


def _take_over(ledger: Ledger, where: tuple[str, str]) -> None:
    # the caller holds the issue's lock, which a coordinator holds (and checks: held()) for as long as it
    # runs: the coordinator of a send still open here is gone, however recent its last word; only its
    # workers may be left
    # ... or a stopped one whose workers elsewhere have yet to hear of the stop (within LOOK seconds)
    issue_id = where[0]
    running = ledger.rows(
        "SELECT coordinator, options, state FROM sends WHERE issue_id = ? AND destination = ?"
        " AND state IN ('running', 'stopping', 'stopped')",
        where,
    )
    left: list[str] = []
    if running:
        options = json.loads(running[0][1])
        left = alive_workers(ledger, where, float(options["lease"]))
    if left:
        if running[0][2] == "stopped":
            raise MailerError(
                f"{issue_id}: the send started by {running[0][0]} was stopped, and {len(left)} of its"
                " worker(s) have yet to write that they stopped (each does within seconds, after its"
                " messages in flight; one that went silent, once its lease runs out); run the command"
                " again then"
            )
        raise MailerError(
            f"{issue_id}: the send started by {running[0][0]}, which is gone, is still being finished by"
            f" {len(left)} worker(s); they end it when no reader is left (`mailer status` shows it)"
        )
    for table in ("send_batches", "send_workers", "sends"):
        ledger.write(f"DELETE FROM {table} WHERE issue_id = ? AND destination = ?", where)


def _post_text(issue: Issue) -> str:
    try:
        return issue.post.path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # read a moment ago: changed or gone since
        raise MailerError(f"{issue.post.path}: cannot read the post again: {exc}") from None


def _write_batch(ledger: Ledger, where: tuple[str, str], number: int, batch: list[list[Any]]) -> int:
    ledger.write(
        "INSERT INTO send_batches (issue_id, destination, batch_no, readers, size) VALUES (?, ?, ?, ?, ?)",
        (*where, number, json.dumps(batch, ensure_ascii=False), len(batch)),
    )
    return 1


def coordinate(
    ledger: Ledger,
    issue: Issue,
    factory: MessageFactory,
    subscribers: Iterator[Subscriber] | Any,
    *,
    expected: int,
    options: SendOptions,
    crew: Crew,
    settings: Settings,
    feedback: Feedback,
    signals: StopSignals,
    list_key: str,
    list_path: str,
    held: Callable[[], None],
) -> Report:
    """Run a send through worker processes and report what they all did, as run_send reports a lone one.

    The caller has recorded the issue (Ledger.start_issue), as for run_send.
    `held` raises MailerError once this process has lost the issue's lock: it is checked at every look at
    the record, before the coordinator says it is alive, so that holding the lock proves it alive.

    Raises SendAborted when a worker stopped on a problem every worker has (the server refuses the sender,
    the record cannot be written) or the local workers kept dying, and the signal's Interrupted when a signal
    stopped the send.
    """
    issue_id = issue.issue_id
    report = Report(issue_id)
    if options.retry_failed:
        report.reset = ledger.reset_failed(issue_id)
    run_id = ledger.start_run(issue_id, list_key, list_path, factory.key_mark)
    lease = settings.worker_lease
    where = (issue_id, ledger.destination)
    me = my_name()
    publish(
        ledger, issue, factory, options, subscribers, expected=expected, workers=crew.workers, lease=lease,
        coordinator=me, run_id=run_id,
    )  # fmt: skip
    # A signal must not raise in the middle of a query here (the connection would keep a statement open and
    # refuse the writes that stop the send): it is noted (StopSignals, as while a send is stopping) and seen
    # at the next look.
    signals.stopping = True
    local = LocalWorkers(issue_id, crew, settings, feedback, where)
    # until a worker has joined (its process started, the post read and rendered: seconds under load)
    plural = "" if crew.workers == 1 else "s"
    waiting = (
        f"starting {crew.workers} worker{plural}" if crew.workers else "waiting for a `mailer worker` to join"
    )
    watch = _Watch(ledger, where, lease, report, feedback, local, held, waiting)
    try:
        feedback.preparing(waiting)
        local.start(ledger)  # the record lost after a fork: the workers forked so far are stopped below
        while not signals.signum:
            local.replace_dead(ledger)
            if _finished(ledger, where, local, crew):
                break
            watch.tick()
            time.sleep(POLL)
        interrupted = Interrupted(signals.signum) if signals.signum else None
        if interrupted is not None:  # Ctrl-C or SIGTERM: every worker stops after its messages in flight
            report.stopped_because = "interrupted"
            watch.ending[0] = True
            # its own workers first: the record's write below may wait for its lock (SQLite's is the whole
            # file's) or fail, and meanwhile they would send on after the stop was said
            local.signal(signal.SIGTERM)
            feedback.stopping(
                f"{interrupted.what}: stopping every worker after the messages in flight"
                " (a second Ctrl-C or SIGTERM stops them without waiting for their replies)"
            )
            ledger.write("UPDATE sends SET state = 'stopping' WHERE issue_id = ? AND destination = ?", where)
            hurried = False
            # and the workers elsewhere, until each has said its last word (they look at the send's state
            # every LOOK seconds): a rerun, or `mailer status` on any host, then finds none still at it,
            # rather than waiting for their leases; one that went silent counts until its lease runs out
            while local.alive() or _others_at_it(ledger, where, lease):
                if signals.hurry.is_set() and not hurried:
                    hurried = (
                        True  # a second SIGTERM hurries the workers here, the send 'stopped' those elsewhere
                    )
                    ledger.write(
                        "UPDATE sends SET state = 'stopped' WHERE issue_id = ? AND destination = ?", where
                    )
                    local.signal(signal.SIGTERM)
                watch.tick()
                time.sleep(POLL)
        watch.last_counts()
        watch.tick()
        stopped = report.stopped_because  # a worker's, or the Ctrl-C's
        hurried = signals.hurry.is_set()  # a second signal: replies called off, a stop whatever is left
        conclude(ledger, where, run_id, report, options.max_attempts, why=local.gave_up, hurried=hurried)
        if interrupted is not None and not report.stopped_because:
            feedback.stopping(
                f"{interrupted.what}: the signal came after the last message had started; every reader was"
                " dealt with, so the send went to its end"
            )
            interrupted = None
        elif stopped and not report.stopped_because:
            feedback.stopping(f"a worker stopped early ({stopped}); the others dealt with every reader")
    except MailerError as exc:  # the record went away (a database restart) or the lock: stopped early
        local.signal(signal.SIGTERM)
        local.reap()
        with contextlib.suppress(MailerError), ledger.reopen() as again:  # if it is back: a rerun may start
            again.write(  # its own send only: a rerun may have put its own in the record meanwhile
                "UPDATE sends SET state = 'stopped', alive_until = 0 WHERE issue_id = ? AND destination = ?"
                " AND coordinator = ?",
                (*where, me),
            )
        raise SendAborted(f"cannot follow the send in the record: {exc}{unrecorded_line(local)}") from None
    local.reap()  # those that sent everything waited for the end in the record: they exit now
    if interrupted is not None:
        raise interrupted
    if report.stopped_because:
        raise SendAborted(report.stopped_because + unrecorded_line(local))
    return report


@dataclass(frozen=True)
class _Watch:
    """What the coordinator looks at the record with, and reports to: its send's row (`where`), its own
    workers, and the check of the issue's lock that proves it alive."""

    ledger: Ledger
    where: tuple[str, str]
    lease: float
    report: Report
    feedback: Feedback
    local: LocalWorkers
    held: Callable[[], None]
    waiting: str  # what the send waits for until a worker has joined, said instead of its progress
    said: list[float] = field(default_factory=lambda: [time.monotonic()])  # when it last said it is alive
    tally: SendTally = field(default_factory=lambda: SendTally())
    # once a signal stopped the send: no progress drawn until the counts at the end (the record lags its
    # workers' last replies by up to a quarter lease: "0/10 messages, 0 sent" came right before "10/10")
    ending: list[bool] = field(default_factory=lambda: [False])

    def tick(self) -> None:
        """Say the coordinator is alive (while it holds the issue's lock), every quarter lease as a worker
        renews its leases: a commit at every look would take the record's write lock from the workers'
        outcomes five times a second; pass on what its workers said, and show every worker's counts so far
        as one report, its readers' counts from the batches in the record (SendTally)."""
        self.held()
        self.local.relay()
        now = time.monotonic()
        if now >= self.said[0] + self.lease / 4:
            self.ledger.write(
                f"UPDATE sends SET alive_until = {self.ledger.now} + ?"
                " WHERE issue_id = ? AND destination = ?",
                (self.lease, *self.where),
                rows_only=True,
            )
            self.said[0] = now
        rows = self.ledger.rows(
            "SELECT counts FROM send_workers WHERE issue_id = ? AND destination = ?", self.where
        )
        add_up(self.report, [json.loads(row[0]) for row in rows])  # why a worker stopped, if one did
        for name, n in self.tally.read(self.ledger, self.where).items():
            setattr(self.report, name, n)
        if self.ending[0]:
            return
        if rows:
            self.feedback.progress(self.report)
        else:  # no worker has joined yet
            self.feedback.preparing(self.waiting)

    def last_counts(self) -> None:
        """Wait for every live worker's last counts (ours, until they end or write them, however long their
        row has gone without news; the others, until their row goes a lease without news, as a killed one's
        does), saying meanwhile that the coordinator is alive."""
        local = self.local
        while local.unsettled(self.ledger) or any(
            not local.gone(n) for n in alive_workers(self.ledger, self.where, self.lease)
        ):
            self.tick()
            time.sleep(ENDING)


def _finished(ledger: Ledger, where: tuple[str, str], local: LocalWorkers, crew: Crew) -> bool:
    """Every batch done; or no worker of ours left and none elsewhere holding a lease (stopped or died)."""
    if not open_batches(ledger, where):
        return True
    # local.procs, not whether one runs: a worker started a moment ago may have died already (a loaded
    # machine), and replace_dead has yet to replace it or give up
    if local.procs or not crew.workers:
        return False
    free_dead(ledger, where)
    return not live_leases(ledger, where)


def _others_at_it(ledger: Ledger, where: tuple[str, str], lease: float) -> bool:
    """Whether a worker that may still send holds a batch, or has yet to write that it stopped."""
    free_dead(ledger, where)
    return live_leases(ledger, where) or bool(alive_workers(ledger, where, lease))
