"""A worker of a send by workers (`mailer worker`, or a coordinator's own): claims batches with leases,
sends them through the lone send's loop, keeps its leases and its share of the rate limit."""

from __future__ import annotations

import _thread
import contextlib
import functools
import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..campaign import Feedback, Report, SendOptions, run_share
from ..config import Settings
from ..console import Console
from ..errors import Interrupted, MailerError, NotUpYet, SendAborted
from ..ledger import Ledger
from ..pool import Pace
from ..stopping import StopSignals
from ..subscribers import Subscriber, dedupe_key
from . import ENDING, GIVEN_BACK, POLL, fingerprint
from .alive import alive_workers, coordinator_ended, free_dead, my_name
from .local import stop_with_coordinator
from .tally import Batch, add_up, conclude, counted_readers, tried_before, worker_counts

if TYPE_CHECKING:  # for annotations only
    from ..message import MessageFactory
    from ..transport import Transport


@dataclass(frozen=True)
class Plan:
    """What the record says about a send that workers make."""

    issue_id: str
    post_name: str
    post: str
    fingerprint: str
    options: dict[str, Any]
    coordinator: str


def find_plan(ledger: Ledger, issue_id: str) -> Plan | None:
    """The running send of the issue ('' : of any issue, the oldest) to this ledger's destination."""
    sql = (
        "SELECT issue_id, post_name, post, fingerprint, options, coordinator FROM sends"
        " WHERE destination = ? AND state = 'running'"
    )
    params: tuple[Any, ...] = (ledger.destination,)
    if issue_id:
        sql += " AND issue_id = ?"
        params += (issue_id,)
    rows = ledger.rows(sql + " ORDER BY started_at, issue_id LIMIT 1", params)
    if not rows:
        return None
    issue, name, post, mark, options, coordinator = rows[0]
    return Plan(issue, name, post, mark, json.loads(options), coordinator)


@dataclass
class WorkResult:
    """What one worker did, for `mailer worker`'s report."""

    issue_id: str
    report: Report
    batches: int = 0
    takeovers: int = 0
    lost: list[str] = field(default_factory=list)  # each time this worker lost its lease


WAITING = 1.0  # seconds between a waiting worker's looks for a send


def work(
    settings: Settings,
    console: Console,
    feedback: Feedback,
    *,
    issue_id: str = "",
    connections: int = 0,
    wait: bool = False,
) -> WorkResult:
    """`mailer worker`: join the running send of the issue, send batches until none is left, report.

    With no send running, a MailerError that names the database (a worker pointed at another one, or
    started before the send, must not pass for one that finished its work); with `wait`, it waits for one.
    SIGTERM is handled like Ctrl-C (stopping.py); the coordinator's stop reaches it the same way.
    """
    from ..keymarks import joining_keyring
    from ..message import make_factory
    from ..post import parse_post
    from ..render import render_issue
    from ..transport import make_transport

    signals = StopSignals()
    with signals.install():
        stop_with_coordinator(signals)
        transport = make_transport(settings, console)
        # a record an older mailer keeps is left as it is: its send's processes would refuse it upgraded
        record = functools.partial(
            Ledger, settings.db_path, create=False, destination=transport.destination, upgrade=False
        )
        with _reach(record, console) if wait else record() as ledger:
            which = f"of issue {issue_id} " if issue_id else ""
            plan = find_plan(ledger, issue_id)
            if plan is None and wait:
                with _record_lost():
                    plan = _wait_for_plan(ledger, issue_id, console, signals, which)
            if plan is None:
                raise MailerError(
                    f"{settings.db_path}: no send {which}is running there to join (is it the database of"
                    " the host that starts the send, and has the send started? --wait waits for one)"
                )
            issue = render_issue(parse_post(plan.post.encode("utf-8"), Path(plan.post_name)), settings)
            keyring = joining_keyring(settings, ledger, plan.options.get("run"), console)
            factory = make_factory(issue, settings, console=console, keyring=keyring)
            mine, theirs = fingerprint(issue, factory).split(), plan.fingerprint.split()
            if len(mine) != len(theirs) or mine[0] != theirs[0]:
                raise MailerError(
                    f"{plan.post_name}: this host renders issue {plan.issue_id} otherwise than the host that"
                    " started the send (another mailer version, configuration or templates?); not joining"
                )
            if mine[2] != theirs[2]:
                raise MailerError(
                    f"{plan.post_name}: this host would sign the readers' unsubscribe links of issue"
                    f" {plan.issue_id} otherwise than the host that started the send, and the web pages would"
                    " refuse them (another secret_key or key file, list_id, or bounce_address?); not joining"
                )
            if mine != theirs:
                raise MailerError(
                    f"{plan.post_name}: this host would say who issue {plan.issue_id}'s messages are from, or"
                    " sign them, otherwise than the host that started the send (another from_email, reply_to,"
                    " list_name, or DKIM key, selector or domain?); not joining"
                )
            worker = _Worker(ledger, plan, factory, transport, feedback, signals, connections)
            with _record_lost():
                return worker.run()


REACH_FIRST, REACH_MOST = 1.0, 15.0  # seconds between a waiting worker's tries to reach its record: doubled


def _reach(record: Callable[[], Ledger], console: Console) -> Ledger:
    """The record, once its server answers: a worker started with the host (a service at boot) may start
    before its database, and must send once it is up, not exit for a person to restart it. A server that
    answers and refuses (a wrong password, no such database) is not waited for: record() raises that.

    A signal ends the wait at once: StopSignals raises it, in the sleep or the try (nothing is held yet)."""
    delay = REACH_FIRST
    while True:
        try:
            return record()
        except NotUpYet as exc:
            if delay == REACH_FIRST:  # said once: the journal of a host that booted first is not flooded
                console.note(
                    f"Waiting for the database to answer ({exc}); trying again, at least every"
                    f" {REACH_MOST:g} s"
                )
            time.sleep(delay)
            delay = min(2 * delay, REACH_MOST)


@contextlib.contextmanager
def _record_lost() -> Iterator[None]:
    """A worker that reached its record and then lost it (a database restart, a fail-over, a cut network)
    stops early, exit 4, whichever statement met the loss: a commit of the send loop's (SendAborted
    already), or a look-up between batches, a claim, a lease, its last word. It is a failure every worker
    meets, which a supervisor restarts it for (docs/workers.md), not a refusal (exit 1) for a person."""
    try:
        yield
    except SendAborted:
        raise
    except MailerError as exc:
        raise SendAborted(f"cannot follow the send in the record: {exc}") from None


def _wait_for_plan(ledger: Ledger, issue_id: str, console: Console, signals: StopSignals, which: str) -> Plan:
    """Look for the send every WAITING seconds until it runs; a signal ends the wait (Interrupted)."""
    console.note(f"Waiting for a send {which}to start in {ledger.path}")
    signals.stopping = True  # a signal is noted, not raised in the middle of a query, and seen below
    while True:
        time.sleep(WAITING)
        if signals.signum:
            raise Interrupted(signals.signum)
        plan = find_plan(ledger, issue_id)
        if plan is not None:
            signals.stopping = False
            return plan


def _options(plan: Plan, connections: int) -> SendOptions:
    o = plan.options
    return SendOptions(
        connections=connections or int(o["connections"]), rate=float(o["rate"]),
        max_attempts=int(o["max_attempts"]), retry_delay=float(o["retry_delay"]),
        max_consecutive_failures=int(o["max_consecutive_failures"]), retry_failed=bool(o["retry_failed"]),
    )  # fmt: skip


class _Worker:
    """One worker process: rounds of the send loop over the batches it can claim, until none is left."""

    def __init__(
        self,
        ledger: Ledger,
        plan: Plan,
        factory: MessageFactory,
        transport: Transport,
        feedback: Feedback,
        signals: StopSignals,
        connections: int,
    ) -> None:
        self.ledger = ledger
        self.plan = plan
        self.where = (plan.issue_id, ledger.destination)
        self.factory = factory
        self.transport = transport
        self.feedback = feedback
        self.signals = signals
        self.options = _options(plan, connections)
        self.lease = float(plan.options["lease"])
        self.name = my_name()
        self.held = False  # whether it holds its lock in the record (_dead)
        self.reports: list[Report] = []
        self.result = WorkResult(plan.issue_id, Report(plan.issue_id))

    def run(self) -> WorkResult:
        ledger = self.ledger
        # before its row and its first claim: until its last session ends, no one takes it for dead (_dead)
        self.held = ledger.hold_worker(self.name)
        ledger.write(
            "INSERT INTO send_workers (issue_id, destination, worker, state, counts, updated_at)"
            f" VALUES (?, ?, ?, 'running', ?, {ledger.stamp})",
            (*self.where, self.name, json.dumps(self.counts()), 0.0),
            rows_only=True,
        )
        # the coordinator stops its own workers with a signal: the record's 'stopping' would be a second stop,
        # which hurries (stopping.py); the others learn of the stop from the record
        child = self.plan.coordinator.startswith(f"{socket.gethostname()} pid {os.getppid()} ")
        keeper = _Keeper(ledger, self.where, self.name, self.lease, self.options.rate, self.counts, child)
        self.keeper = keeper
        state = "stopped"
        self.signals.stopping = True  # between rounds a signal is noted, not raised in a query: see _round
        try:
            while not keeper.stopping:
                if self.signals.signum:
                    raise Interrupted(self.signals.signum)
                left, free, running = ledger.rows(
                    "SELECT count(*), coalesce(sum(CASE WHEN lease_until < "
                    f"{ledger.now} THEN 1 ELSE 0 END), 0), (SELECT count(*) FROM sends WHERE issue_id = ?"
                    " AND destination = ? AND state = 'running') FROM send_batches WHERE issue_id = ?"
                    " AND destination = ? AND done = 0",
                    (*self.where, *self.where),
                )[0]
                if left and not running:  # stopped by its coordinator: as on its signal (or the keeper's)
                    raise Interrupted(signal.SIGTERM)
                if not left:
                    state = "done"
                    break
                if not free:  # every batch left is another worker's: wait for it to finish or lose it
                    time.sleep(min(POLL, self.lease / 4))
                    free_dead(ledger, self.where)
                    continue
                self._round()
            if keeper.state == "done":  # the others finished it while this one looked
                state = "done"
        except BaseException:
            keeper.close()
            # what stopped it is what it says (and how it exits): a last word that cannot be written either
            # said so as it tried, and must not take the place of the first failure (or of the signal)
            with contextlib.suppress(MailerError):
                self.last_word(state)
            raise
        keeper.close()
        self.last_word(state)
        while state == "done" and not self.signals.signum and not self.end_if_abandoned(ledger):
            time.sleep(ENDING)  # nothing left: until the coordinator (or, if it is gone, this one) ends it
        self.result.report = self.total()
        return self.result

    def last_word(self, state: str) -> None:
        """Free this worker's batches and write its end, on a new connection (a signal may have stopped a
        query of this one half-way).

        Until this is written, a rerun on another host must wait for this worker's lease to run out (it
        cannot tell it from one that still sends). What stopped the worker may be the record going away for
        a moment (a restart, a fail-over), so the write is tried again, every second, for as long as the
        lease would have made a rerun wait anyway; a further signal gives up at once."""
        until, before = time.monotonic() + self.lease, self.signals.signum
        for tries in itertools.count():
            try:
                with self.ledger.reopen() as last:
                    self.release(last)
                    self.write_counts(state, last)
                    if state != "done":  # stopped: if the coordinator and all the others are gone, say so
                        self.end_if_abandoned(last)
                return
            except MailerError as exc:
                if time.monotonic() >= until or self.signals.signum != before or self.signals.hurry.is_set():
                    raise
                if not tries:  # say why it waits
                    self.feedback.stopping(
                        f"cannot write this worker's end to the record ({exc}); trying again every second"
                        f" for {self.lease:g} s (worker_lease), so that a rerun need not wait for the lease"
                    )
                time.sleep(1.0)

    def end_if_abandoned(self, ledger: Ledger) -> bool:
        """Whether the send has ended in the record; if its coordinator is gone (not heard of for a lease:
        killed, its host down; or it let go of the issue's lock, coordinator_ended) and no other worker is
        left, end it here, as the coordinator would have."""
        rows = ledger.rows(
            f"SELECT state, CASE WHEN alive_until >= {ledger.now} THEN 1 ELSE 0 END, coordinator FROM sends"
            " WHERE issue_id = ? AND destination = ?",
            self.where,
        )
        if not rows or rows[0][0] not in ("running", "stopping"):
            return True
        _, heard, coordinator = rows[0]
        ended = coordinator_ended(ledger, self.where[0])
        if (heard and not ended) or alive_workers(ledger, self.where, self.lease, but=self.name):
            return False
        report = Report(self.plan.issue_id)
        counts = ledger.rows(
            "SELECT counts FROM send_workers WHERE issue_id = ? AND destination = ?", self.where
        )
        add_up(report, [json.loads(row[0]) for row in counts])
        run = self.plan.options.get("run")
        gone = f"its coordinator ({coordinator}) is gone"
        why = f"{gone} and every worker stopped"
        attempts = self.options.max_attempts
        if conclude(ledger, self.where, run, report, attempts, why=why, gone=coordinator, ended=ended):
            end = report.stopped_because or f"done, {report.sent} sent in all"
            self.feedback.stopping(
                f"{self.plan.issue_id}: {gone}: this worker, the last, ended the send: {end}"
            )
        return True

    def _round(self) -> None:
        self.signals.stopping = False  # in the loop a signal raises, as in a lone send
        report = Report(self.plan.issue_id)
        self.reports.append(report)
        share = _Share(self, report)
        try:
            run_share(
                issue_id=self.plan.issue_id, factory=self.factory, transport=self.transport,
                batches=share.batches(), ledger=self.ledger, options=self.options,
                feedback=self.feedback, signals=self.signals, share=share, report=report,
                run=self.plan.options.get("run"),
            )  # fmt: skip
        except SendAborted:
            if not self.keeper.lost:
                raise
            self.result.lost.append(self.keeper.lost)
            self.feedback.stopping(f"{self.keeper.lost}; taking up the batches still free")
            report.stopped_because = ""
            report.pending = 0  # another worker sends them now
        self.signals.stopping = True
        self.release(self.ledger)
        self.keeper.lost = ""

    def release(self, ledger: Ledger) -> None:
        """Give up the leases this worker holds: its batches not done are free for anyone at once."""
        with self.keeper.lock, ledger.transaction(rows_only=True):
            write_partial(ledger, self.where, self.name, self.keeper.batches)
            ledger.write(
                "UPDATE send_batches SET lease_until = ?, owner = ''"
                " WHERE issue_id = ? AND destination = ? AND owner = ? AND done = 0",
                (GIVEN_BACK, *self.where, self.name),
            )
            self.keeper.held.clear()
            self.keeper.batches.clear()

    def total(self) -> Report:
        """This worker's counts over all its rounds."""
        total = Report(self.plan.issue_id)
        if self.reports:  # its rate is over all its rounds, not from now (it said 39,130 msg/s)
            total.started = self.reports[0].started
        add_up(total, [worker_counts(r) for r in self.reports])
        total.pending = sum(r.pending for r in self.reports)
        return total

    def counts(self) -> dict[str, Any]:
        """What the record says this worker did, so far, and whether it holds its lock (_dead)."""
        return {**worker_counts(self.total()), **({"held": True} if self.held else {})}

    def write_counts(self, state: str = "running", ledger: Ledger | None = None) -> None:
        """Write this worker's counts to the record (the coordinator adds them up)."""
        db = ledger or self.ledger
        db.write(
            f"UPDATE send_workers SET counts = ?, state = ?, updated_at = {db.stamp}"
            " WHERE issue_id = ? AND destination = ? AND worker = ?",
            (json.dumps(self.counts()), state, 0.0, *self.where, self.name),
            rows_only=True,
        )


class _Share:
    """One round's share of the send (campaign.Share): claims batches as the loop asks for readers."""

    def __init__(self, worker: _Worker, report: Report) -> None:
        self.worker = worker
        self.keeper = worker.keeper
        self.report = report
        self.batch_of: dict[int, Batch] = {}  # id(subscriber) -> its batch (the loop passes the same object)

    def batches(self) -> Iterator[list[Subscriber]]:
        """The readers of each batch claimed, one batch after the other, until none is free; the loop asks
        for the next only once it has handed out the readers of this one."""
        while not (self.keeper.lost or self.keeper.stopping):
            batch = self._claim()
            if batch is None:
                return
            for sub in batch.readers:
                self.batch_of[id(sub)] = batch
            yield batch.readers

    def _claim(self) -> Batch | None:
        w, keeper = self.worker, self.keeper
        with keeper.lock:
            now = w.ledger.lease_clock()  # before the lease is written: it ends no sooner than a lease after
            found = claim(w.ledger, w.where, w.name, w.lease)
            if found is None:
                return None
            number, readers, owner, counts, fresh = found
            if not keeper.held:
                keeper.valid_until = now + w.lease * (1 - MARGIN)
            keeper.held.add(number)
            batch = keeper.batches[number] = Batch.taken(number, readers, counts)
            if not fresh:  # held before (a holder's name or counts stay with a batch)
                self._take_over(batch)
        w.result.batches += 1
        w.result.takeovers += bool(owner)
        return batch

    def _take_over(self, batch: Batch) -> None:
        """Count the readers of a batch that had another holder as the record has them, and write that at
        once (the caller holds the keeper's lock: no renewal comes between): the live count (SendTally) would
        show the counts that holder last wrote (a killed one's lag its outcomes) until this one's next
        renewal, and a renewal that came before the loop counted them would show none. A reader the other
        refused for now in this run, and this one tries again, is a retry of the batch's from here, its
        attempt counting on from the attempts this run made (tried_before)."""
        w = self.worker
        emails = [sub.email for sub in batch.readers]
        tried_before(w.ledger, w.where, w.plan.options.get("run"), batch, w.options.max_attempts)
        counted, again = counted_readers(
            w.ledger, w.where, w.plan.options.get("run"), emails, batch.given_up, w.options.retry_failed
        )
        for name in counted.values():
            batch.counts[name] = batch.counts.get(name, 0) + 1
        batch.counted = set(counted)
        batch.retries += again
        with w.ledger.transaction(rows_only=True):
            write_partial(w.ledger, w.where, w.name, {batch.number: batch})

    def settled(self, sub: Subscriber, counted: str, reason: str = "") -> None:
        batch = self.batch_of.pop(id(sub), None)
        if batch is None:
            return
        if sub.key in batch.counted:  # counted as the batch was taken over
            batch.counted.discard(sub.key)
        else:
            batch.counts[counted] = batch.counts.get(counted, 0) + 1
        if reason:
            batch.given_up[sub.key] = reason
        batch.left -= 1
        w = self.worker
        if batch.left:
            if reason:  # given up: written at once, so that a holder killed before its next renewal leaves
                # the reader given up for the next one (a rare write: only after a reader's last retry)
                with self.keeper.lock, w.ledger.transaction(rows_only=True):
                    write_partial(w.ledger, w.where, w.name, {batch.number: batch})
            return
        with self.keeper.lock:
            done(w.ledger, w.where, w.name, batch.number, batch.record())
            self.keeper.held.discard(batch.number)
            self.keeper.batches.pop(batch.number, None)

    def retried(self, sub: Subscriber) -> None:
        """Counted in the record as the retry starts (a rare write: after a reader was refused for now and
        its retry delay has passed), so that a holder killed before its next renewal leaves it counted."""
        batch = self.batch_of.get(id(sub))
        if batch is not None:
            w = self.worker
            with self.keeper.lock, w.ledger.transaction(rows_only=True):
                batch.retries += 1
                write_partial(w.ledger, w.where, w.name, {batch.number: batch})

    def given_up(self, sub: Subscriber) -> bool:
        batch = self.batch_of.get(id(sub))
        return batch is not None and sub.key in batch.given_up

    def tried(self, sub: Subscriber) -> int:
        batch = self.batch_of.get(id(sub))
        return batch.tried.get(sub.key, 0) if batch is not None else 0

    def holds(self) -> str:
        return self.keeper.holds()

    def pace(self) -> Pace:
        return self.keeper


def claim(
    ledger: Ledger, where: tuple[str, str], name: str, lease: float
) -> tuple[int, str, str, str, bool] | None:
    """Lease the first batch not done whose lease ran out (or never was) to `name` for `lease` seconds, both
    on the record's clock (Ledger.now: no host's clock, which may be off or stepped, decides): its number,
    readers (JSON), former owner ('' if none), counts (JSON: see Batch) and whether it was never claimed
    before; or None when no batch is free or the send no longer runs (its coordinator stopped it: no batch
    is begun after the stop, whenever the worker hears of it). A batch never claimed gets the record's
    attempts of its readers so far in its counts (`attempts_before`): this run's are the attempts since.

    On PostgreSQL the SELECT locks the row it finds and passes over rows other workers are claiming (FOR
    UPDATE SKIP LOCKED), so workers claim side by side and never the same batch; SQLite's one writer at a
    time does the same one claim after the other.
    """
    with ledger.transaction(rows_only=True):
        rows = ledger.rows(
            "SELECT batch_no, readers, owner, counts FROM send_batches WHERE issue_id = ? AND destination = ?"
            f" AND done = 0 AND lease_until < {ledger.now} AND EXISTS (SELECT 1 FROM sends"
            " WHERE sends.issue_id = ? AND sends.destination = ? AND sends.state = 'running')"
            " ORDER BY batch_no LIMIT 1" + ledger.skip_locked,
            (*where, *where),
        )
        if not rows:
            return None
        number, readers, owner, counts = rows[0]
        fresh = not (owner or counts)
        if fresh:
            emails = [dedupe_key(r[0]) for r in json.loads(readers)]
            counts = json.dumps({"attempts_before": _attempts(ledger, where, emails)})
        ledger.write(
            f"UPDATE send_batches SET owner = ?, lease_until = {ledger.now} + ?, counts = ?"
            " WHERE issue_id = ? AND destination = ? AND batch_no = ?",
            (name, lease, counts, *where, number),
        )
    return int(number), str(readers), str(owner), str(counts or ""), fresh


def _attempts(ledger: Ledger, where: tuple[str, str], keys: list[str]) -> dict[str, int]:
    """The record's attempts of these readers (dedupe keys) that have any, every run's."""
    marks = ", ".join("?" * len(keys))
    found = ledger.rows(
        "SELECT email, attempts FROM deliveries WHERE issue_id = ? AND destination = ? AND attempts > 0"
        f" AND email IN ({marks})",
        (*where, *keys),
    )
    return {str(key): int(n) for key, n in found}


def done(ledger: Ledger, where: tuple[str, str], name: str, number: int, counts: dict[str, Any]) -> bool:
    """Mark a batch done with its readers' outcomes (`counts`, what the report adds up), if `name` still
    holds it: one row, one statement, no database-wide lock."""
    changed = ledger.write(
        "UPDATE send_batches SET done = 1, lease_until = 0, counts = ?"
        " WHERE issue_id = ? AND destination = ? AND batch_no = ? AND owner = ?",
        (json.dumps(counts), *where, number, name),
        rows_only=True,
    )
    return changed == 1


def write_partial(ledger: Ledger, where: tuple[str, str], name: str, batches: dict[int, Batch]) -> None:
    """Write the counts so far of the batches `name` holds (for the live count, and for whoever takes one of
    them over), in the caller's transaction."""
    for batch in list(batches.values()):
        ledger.write(
            "UPDATE send_batches SET counts = ? WHERE issue_id = ? AND destination = ? AND batch_no = ?"
            " AND owner = ? AND done = 0",
            (json.dumps(batch.record()), *where, batch.number, name),
        )


MARGIN = 0.25  # of the lease: a worker stops delivering this long before another may take its batch
# a step back of the record's clock: by more than STEPPED seconds plus SLEW of the time since a worker's last
# reservation (NTP slews a clock by 0.05% at most, chrony by up to 8.3%: a slewed clock is not stepped)
STEPPED = 1.0
SLEW = 0.1


def _step_floor(then: float, at: float, now: float) -> float:
    """The earliest the record's clock may read at `now` (time.monotonic()) unless it was stepped back
    since it read `then` at `at`."""
    return then + (now - at) * (1 - SLEW) - STEPPED


LOOK = 1.0  # seconds between a worker's looks at its send's state (a stop, an end); at most a quarter lease


class _Keeper:
    """A worker's own thread and connection to the record: renews its leases every quarter lease, watches
    the send's state, writes its counts, and reserves its share of the rate limit's start times."""

    def __init__(
        self,
        ledger: Ledger,
        where: tuple[str, str],
        name: str,
        lease: float,
        rate: float,
        counts: Any,
        signalled: bool,
    ) -> None:
        self.ledger = ledger
        self.signalled = signalled  # the coordinator's stop comes as a signal, not through this thread
        self.where = where
        self.name = name
        self.lease = lease
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.chunk = max(1, int(rate / 4)) if rate > 0 else 0  # a quarter second of the rate at a time
        self.counts = counts
        self.lock = threading.Lock()  # the claims, the done marks and the renewals, one at a time
        self.held: set[int] = set()
        self.batches: dict[int, Batch] = {}  # those held, by number: their counts go to the record
        self.valid_until = 0.0  # on ledger.lease_clock(): no "." after this unless renewed
        self.lost = ""
        self.stopping = False
        self.hurried = False
        self.state = "running"  # the send's, as last read
        # start times on time.monotonic() (no step of any wall clock moves them); the last reservation as
        # (the record's time, time.monotonic()) to tell a step back of the record's clock (_reserve)
        self.slots: list[float] = []
        self.reserved: tuple[float, float] | None = None
        self.cond = threading.Condition()
        self.wanted = False
        self.closing = False
        self.error = ""
        self.thread = threading.Thread(target=self._run, name="mailer-leases", daemon=True)
        self.thread.start()

    def holds(self) -> str:
        """'' while this worker may deliver; else why not."""
        if self.lost:
            return self.lost
        if self.held and self.ledger.lease_clock() > self.valid_until:
            self.lost = f"the lease on batches {sorted(self.held)} ran out before it was renewed"
        return self.lost

    def delay(self) -> float | None:
        """The shared rate limit: seconds until the next start time reserved, taken; None when none is left
        (more are asked for: the caller asks again shortly).

        A start time more than an interval gone is dropped, as a lone send's limiter does: a worker held up
        (its server slow to answer) must not send the start times it missed back to back, on top of the
        other workers' messages on schedule."""
        if not self.interval:
            return 0.0
        with self.cond:
            now = time.monotonic()
            while self.slots and self.slots[0] < now - self.interval:
                self.slots.pop(0)
            if not self.slots:
                if self.closing:
                    return 0.0
                self.wanted = True
                self.cond.notify_all()
                return None
            slot = self.slots.pop(0)
        return max(0.0, slot - now)

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.thread.join()

    def _run(self) -> None:
        try:
            with self.ledger.reopen() as ledger:
                due = look = time.monotonic()  # paced on the time elapsed here: no clock step delays them
                while True:
                    with self.cond:
                        self.cond.wait_for(
                            lambda: self.closing or self.wanted, max(0.0, min(due, look) - time.monotonic())
                        )
                        if self.closing:
                            return
                        wanted, self.wanted = self.wanted, False
                    if wanted:
                        self._reserve(ledger)
                    if time.monotonic() >= due:
                        self._renew(ledger)
                        due = time.monotonic() + self.lease / 4
                    if time.monotonic() >= look:
                        self._look(ledger)
                        look = time.monotonic() + min(LOOK, self.lease / 4)
        except MailerError as exc:  # the record cannot be reached: the leases run out, no "." is sent
            self.error = str(exc)

    def _reserve(self, ledger: Ledger) -> None:
        """Reserve the next chunk of start times: on the record's clock, kept here as times of
        time.monotonic() no sooner than they come there (measured from after the statement).

        The record's clock stepped back since this worker's last reservation (its time below _step_floor)
        makes the schedule start again from now: the next free start time was reserved on the clock before
        the step, and every worker would otherwise wait out the step (ten minutes back held a send ten
        minutes). Each worker that reserved before the step starts it again once: at most a chunk of start
        times each sent early."""
        span = self.chunk * self.interval
        now = ledger.now
        floor = _step_floor(*self.reserved, time.monotonic()) if self.reserved else 0.0
        with ledger.transaction(rows_only=True):  # one row: concurrent reservations queue on its lock
            end, then = ledger.rows(
                f"UPDATE sends SET next_slot = CASE WHEN {now} >= ? AND next_slot > {now} THEN next_slot"
                f" ELSE {now} END + ? WHERE issue_id = ? AND destination = ? RETURNING next_slot, {now}",
                (floor, span, *self.where),
            )[0]
        at = time.monotonic()
        self.reserved = (float(then), at)
        here = at - float(then)
        with self.cond:  # the send's driver takes them (delay()), asking again until they are here
            self.slots.extend(here + end - span + i * self.interval for i in range(self.chunk))

    def _look(self, ledger: Ledger) -> None:
        """Follow the send's state: a stop of the coordinator's stops this worker within LOOK seconds (its
        messages in flight finished), not at the next renewal, a quarter lease away, while it went on."""
        rows = ledger.rows("SELECT state FROM sends WHERE issue_id = ? AND destination = ?", self.where)
        state = self.state = rows[0][0] if rows else "stopped"
        if state != "running" and not self.stopping:
            self.stopping = True
            if state != "done" and not self.signalled:  # the coordinator stops the send: as on a SIGTERM
                _thread.interrupt_main(signal.SIGTERM)
        if state == "stopped" and not self.hurried and not self.signalled:  # its second signal: hurry
            self.hurried = True
            _thread.interrupt_main(signal.SIGTERM)

    def _renew(self, ledger: Ledger) -> None:
        with self.lock:
            now = ledger.lease_clock()  # before the lease is written: it ends no sooner than a lease after
            if self.held:
                with ledger.transaction(rows_only=True):
                    kept = ledger.rows(
                        f"UPDATE send_batches SET lease_until = {ledger.now} + ? WHERE issue_id = ?"
                        " AND destination = ? AND owner = ? AND done = 0 RETURNING batch_no",
                        (self.lease, *self.where, self.name),
                    )
                    write_partial(ledger, self.where, self.name, self.batches)
                gone = self.held - {row[0] for row in kept}
                if gone:
                    self.lost = f"another worker took over batches {sorted(gone)} (this one was too slow)"
                else:  # no one else took any of them: whenever it comes, the renewal keeps them ours
                    self.valid_until = now + self.lease * (1 - MARGIN)
        counts = json.dumps(self.counts())
        ledger.write(
            f"UPDATE send_workers SET counts = ?, updated_at = {ledger.stamp} WHERE issue_id = ?"
            " AND destination = ? AND worker = ?",
            (counts, 0.0, *self.where, self.name),
            rows_only=True,
        )
