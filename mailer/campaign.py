"""The send loop: skip delivered and suppressed, build, send on N connections, record, retry, report.

The loop looks readers up, builds their messages and hands them to the connections (pool.py: one thread
drives them all, one recorder thread commits their outcomes, many per fsync), then counts each outcome,
retries what may succeed later and reports. A connection sends the final "." of a message only once the
outcome of its previous message is committed, so a crash can repeat at most the one message per connection
that the server took but the record does not show yet.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from .bounces import HARD
from .errors import MailerError, SendAborted
from .ledger import Ledger
from .message import MessageFactory
from .policy import record_bounces
from .pool import Job, Pace, Pool
from .recheck import Recheck
from .refusals import POLICY, judge, refusal_bounce
from .stopping import StopSignals
from .subscribers import Subscriber
from .transport import Outcome, Transport


@dataclass(frozen=True)
class SendOptions:
    """How one send behaves; from Settings, overridden by command-line options."""

    connections: int = 1
    rate: float = 0.0  # messages per second across all connections; 0 = no limit
    max_attempts: int = 5
    retry_delay: float = 30.0  # first retry after a 4xx; doubles with each attempt
    max_consecutive_failures: int = 50
    dry_run: bool = False
    retry_failed: bool = False
    allow_changed: bool = False
    allow_resend: bool = False  # the same post was already sent under another issue id


@dataclass
class Report:
    """What a send did; the final report and the progress bar read it."""

    issue_id: str
    sent: int = 0
    already_sent: int = 0
    suppressed: int = 0
    failed_before: int = 0  # permanently failed in an earlier run (use --retry-failed)
    would_send: int = 0  # dry run
    failed_temporary: int = 0  # still deferred after max_attempts
    failed_permanent: int = 0
    in_doubt: int = 0  # no reply to the end of the message, twice (or once when the run stopped)
    in_doubt_before: int = 0  # left in doubt by an earlier run (use --retry-failed)
    bounced: int = 0  # refused for good as readers (refusals.py) and so suppressed by this run
    retries: int = 0
    reset: int = 0
    pending: int = 0  # not sent because the run stopped early
    # accepted by the server, but the write of that outcome failed (the record went away): counted in
    # `pending`, not `sent`, as the record has them; the rerun mails them again
    unrecorded: int = 0
    seen: int = 0
    started: float = field(default_factory=time.monotonic)
    stopped_because: str = ""
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Messages of this run that were not delivered."""
        return self.failed_temporary + self.failed_permanent

    @property
    def complete(self) -> bool:
        """Every deliverable message of this run went out."""
        return self.failed == 0 and self.pending == 0 and self.in_doubt == 0 and not self.stopped_because

    def rate(self) -> float:
        """Messages sent per second so far."""
        elapsed = time.monotonic() - self.started
        return self.sent / elapsed if elapsed > 0 else 0.0


class Feedback:
    """What the send loop tells its user; the CLI overrides these (progress bar, log lines)."""

    def progress(self, report: Report) -> None:
        """Called after each outcome and each skipped subscriber."""

    def problem(self, line: str) -> None:
        """A failed address or a reply worth a line of its own."""

    def preparing(self, what: str) -> None:
        """Before any message can start: what the send is doing meanwhile (its workers starting)."""

    def would_send(self, subscriber: Subscriber) -> None:
        """Dry run: this subscriber would get the issue."""

    def stopping(self, line: str) -> None:
        """A signal stops the send: said at once, since the messages in flight may take a while."""

    def suppressed_meanwhile(self, email: str) -> None:
        """A reader looked up earlier in the send was suppressed since: no message of theirs starts now."""

    def subscribed_again(self, email: str) -> None:
        """A reader suppressed_meanwhile() was said of is not suppressed any more: mailed after all."""


class Clock:
    """The send loop's time: when a retry falls due, when the rate limit lets a message start.

    Passed in, so a test can give the loop a clock whose waits pass at once (a 30 s retry delay in no time).
    """

    def now(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """Let `seconds` pass, fewer if `stop` is set meanwhile."""
        stop.wait(seconds)


class RateLimiter:
    """A start-time schedule shared by all connections: message k starts no sooner than k / rate."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock = clock
        self.next = clock.now()

    def delay(self) -> float | None:
        """Seconds until the caller may start a message, that start time taken (0: at once)."""
        if not self.interval:
            return 0.0
        now = self.clock.now()
        slot = max(now, self.next)
        self.next = slot + self.interval
        return slot - now


class Share(Protocol):
    """A share of a send that several processes make together (workers/): the readers come in batches
    leased from the record, and a lease that runs out hands the rest of them to another process."""

    def holds(self) -> str:
        """'' while this process may deliver; else why not (its lease ran out), checked before each "."."""
        ...

    def settled(self, sub: Subscriber, counted: str, reason: str = "") -> None:
        """This reader has its outcome for this run, counted as the Report field `counted` ('sent',
        'suppressed', ...): its batch may be done, and its counts are the batch's. `reason`: why it was
        given up after its retries ('failed_temporary'), which the record's deliveries do not tell from a
        retry still to come."""
        ...

    def retried(self, sub: Subscriber) -> None:
        """This reader is tried again (counted in its batch's `retries`)."""
        ...

    def given_up(self, sub: Subscriber) -> bool:
        """Whether a worker of this run gave this reader up after its retries: its batch says so."""
        ...

    def tried(self, sub: Subscriber) -> int:
        """How many attempts this run made at this reader before this process took its batch over (a holder
        stopped or killed after a refusal for now): its next attempt is the one after them."""
        ...

    def pace(self) -> Pace:
        """The rate limit that holds across every process of the send."""
        ...


UNRECORDED = re.compile(r"(\d+) message\(s\) accepted by the server may not be in the record")


def unrecorded_words(count: int) -> str:
    """What a send that stopped says of its messages whose outcome's write failed (UNRECORDED finds the
    count in a worker's error line, for its coordinator to add up)."""
    return (
        f"{count} message(s) accepted by the server may not be in the record (its write failed or got no"
        " answer), so not counted as sent here: `mailer status` says what the record holds, and the rerun"
        " mails again any reader it does not"
    )


def run_send(
    *,
    issue_id: str,
    factory: MessageFactory,
    transport: Transport,
    subscribers: Iterable[Subscriber],
    ledger: Ledger,
    options: SendOptions,
    feedback: Feedback,
    signals: StopSignals,
    check_lock: Callable[[], None],
    clock: Clock | None = None,
    list_key: str = "",
    list_path: str = "",
) -> Report:
    """Send (or dry-run) one issue to a subscriber stream; resumable, never mailing anyone twice.

    `ledger` is the delivery record, opened for the transport's destination by the caller (who closes
    it); the loop reads it in this thread, and a recorder thread writes it through a connection of its
    own. `list_key` names the list (a fingerprint of its contents): a run that reaches everyone on it is
    recorded as complete for that list only. `check_lock` raises MailerError once the issue's lock is lost
    (engine.issue_lock: the caller holds it); the loop calls it before each batch and every LOCK_CHECK s.
    The caller has recorded the issue (Ledger.start_issue, with its refusals of a changed or renamed post).
    """
    report = Report(issue_id)
    if options.retry_failed and not options.dry_run:
        report.reset = ledger.reset_failed(issue_id)
    if options.dry_run:
        for sub in _unsent(
            ledger, issue_id, _chunked(subscribers), report, retry_failed=options.retry_failed
        ):
            if sub is not None:
                report.would_send += 1
                feedback.would_send(sub)
        return report
    # fails on a full disk: nothing sent yet
    run_id = ledger.start_run(issue_id, list_key, list_path, factory.key_mark)
    loop = _Loop(
        ledger, issue_id, factory, transport, options, feedback, report, signals, clock or Clock(),
        check_lock, run=run_id,
    )  # fmt: skip
    try:
        loop.run(_chunked(subscribers))
    finally:  # stopped early too: what it found so far (a record that failed under it takes no count)
        with contextlib.suppress(MailerError):
            ledger.count_run(run_id, report.suppressed)
    if report.complete:
        ledger.finish_run(run_id)
    return report


def run_share(
    *,
    issue_id: str,
    factory: MessageFactory,
    transport: Transport,
    batches: Iterable[list[Subscriber]],
    ledger: Ledger,
    options: SendOptions,
    feedback: Feedback,
    signals: StopSignals,
    share: Share,
    report: Report,
    run: int | None,
) -> None:
    """One process's share of a send that several make (workers.worker), counted in `report`: the send loop
    alone, since the issue and the run (`run`) are recorded, and the run finished, by the process that
    coordinates them. Each batch of readers is asked for (and so claimed) only once the one before is handed
    out."""
    loop = _Loop(
        ledger, issue_id, factory, transport, options, feedback, report, signals, Clock(), _unlocked, share,
        run,
    )  # fmt: skip
    loop.run(batches)


def _unlocked() -> None:
    """A worker's share holds no lock of its own: the coordinator holds the issue's, and checks it."""


HELD_LIMIT = 5  # policy refusals (5.7.x) with no one accepted that stop the send: see refusals.py
LOCK_CHECK = 1.0  # seconds between a send's looks at its issue lock (engine.issue_lock), at most
LOOKUP_BATCH = 256  # subscribers looked up in the record per query: a fraction of a second of sending


def _chunked(subscribers: Iterable[Subscriber]) -> Iterator[list[Subscriber]]:
    it = iter(subscribers)
    while batch := list(itertools.islice(it, LOOKUP_BATCH)):
        yield batch


def _unsent(
    ledger: Ledger,
    issue_id: str,
    batches: Iterable[list[Subscriber]],
    report: Report,
    *,
    retry_failed: bool,
    share: Share | None = None,
    before_batch: Callable[[], None] | None = None,
    run: int | None = None,
    recheck: Recheck | None = None,
) -> Iterator[Subscriber | None]:
    """The subscribers to mail, in order; None for each one skipped (suppressed, sent, failed before).

    The record is asked about a batch of subscribers at a time (two queries per batch, not two per
    subscriber), just before the batch is sent, so an unsubscribe made during the send still counts.
    `before_batch`, a real send's checks (see _Loop._before_batch), is called before each look-up.
    `recheck` (a real send's) asks again about the batch's readers while they wait (recheck.py): one
    suppressed since the look-up is held back by the loop, or where their message starts.

    A reader whose outcome this run (`run`) recorded already was dealt with by another worker of the send,
    stopped or killed half-way through the batch this one took over: not this one's to count, nor "before"
    this run, but its batch's (Share.settled), as what that worker's outcome was; one it gave up after its
    retries ('deferred' in the record, and in the batch's given-up list) stays given up.
    """
    for batch in batches:
        if before_batch is not None:
            before_batch()
        suppressed, states, ours = ledger.looked_up(issue_id, [sub.email for sub in batch], run)
        keys = [sub.key for sub in batch]
        if recheck is not None:
            recheck.looked_up([key for key in keys if key not in suppressed])
        for sub, key in zip(batch, keys, strict=True):
            state = states.get(key)
            if key in ours and state in THIS_RUN:
                if share is not None:
                    share.settled(sub, THIS_RUN[state])
                yield None
                continue
            if key in ours and state == "deferred" and share is not None and share.given_up(sub):
                share.settled(sub, "failed_temporary")  # given up by a worker that gave the batch back
                yield None
                continue
            report.seen += 1
            if key in suppressed:
                counted = "suppressed"
            elif state == "sent":
                counted = "already_sent"
            elif state == "failed" and not retry_failed:
                counted = "failed_before"
            elif state == "sending" and not retry_failed:  # in doubt: it may have arrived already
                counted = "in_doubt_before"
            else:
                yield sub
                continue
            setattr(report, counted, getattr(report, counted) + 1)
            if share is not None:
                share.settled(sub, counted)
            yield None


# a reader's outcome recorded by this run, as the Report counts it
THIS_RUN = {"sent": "sent", "failed": "failed_permanent", "sending": "in_doubt"}


class _Loop:
    def __init__(
        self,
        ledger: Ledger,
        issue_id: str,
        factory: MessageFactory,
        transport: Transport,
        options: SendOptions,
        feedback: Feedback,
        report: Report,
        signals: StopSignals,
        clock: Clock,
        check_lock: Callable[[], None],
        share: Share | None = None,
        run: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.run_id = run  # the outcomes are recorded as this run's
        self.check_lock = check_lock
        self.next_lock_check = clock.now() + LOCK_CHECK
        self.share = share
        self.clock = clock
        self.signals = signals
        self.issue_id = issue_id
        self.factory = factory
        self.options = options
        self.feedback = feedback
        self.report = report
        self.retries: list[Job] = []
        self.seq = itertools.count()
        self.consecutive_failures = 0
        self.fatal = ""
        self.held: list[Job] = []  # refused by policy before anyone was accepted (see refusals.py)
        self.parked: list[Job] = []  # suppressed when their turn came: asked about again at the end
        limiter = share.pace() if share is not None else RateLimiter(options.rate, clock)
        self.recheck = Recheck(ledger, clock.now)
        holds = share.holds if share is not None else None
        self.pool = Pool(
            transport, ledger, issue_id, options.connections, limiter, self.recheck, signals.hurry, holds, run
        )

    def run(self, batches: Iterable[list[Subscriber]]) -> None:
        self.signals.polled = True  # a signal is noted, and raised at the loop's next step (stopping.py)
        try:
            self._run(batches)
        finally:
            self.signals.polled = False

    def _run(self, batches: Iterable[list[Subscriber]]) -> None:
        interrupted: KeyboardInterrupt | None = None
        through = False  # every reader handed out: a signal from here stops only the messages in flight
        try:
            retry_failed = self.options.retry_failed
            for sub in _unsent(
                self.ledger, self.issue_id, batches, self.report, retry_failed=retry_failed,
                share=self.share, before_batch=self._before_batch, run=self.run_id, recheck=self.recheck,
            ):  # fmt: skip
                self.signals.raise_if_signalled()
                self._still_held()
                if self.fatal:
                    break
                if sub is None:
                    self.feedback.progress(self.report)
                    continue
                late = self.recheck.late  # empty but for readers suppressed since their look-up
                if late and sub.key in late and not self.recheck.starts(sub.key):
                    self.parked.append(self._first(sub))  # suppressed since its look-up
                    continue
                self._submit(self._first(sub))
            through = not self.fatal
            while not self.fatal and (self.pool.in_flight or self.retries or self.parked):
                self.signals.raise_if_signalled()
                self._still_held()
                if self.parked and not self.pool.in_flight:
                    self._unpark()
                    continue
                self._submit_due_retries()
                self.pool.hand_over(0.0)  # the last run built, once a connection has room for it
                if self.pool.in_flight:
                    self._collect(0.2)
                elif self.retries:  # nothing out: only the clock can bring the next retry
                    self.clock.wait(
                        max(0.0, min(1.0, self.retries[0].due - self.clock.now())), self.pool.stop
                    )
            self.signals.raise_if_signalled()  # one that came as the last replies did (or hurried them in)
            if self.held and not self.fatal:
                self.fatal = self._refused_all()
            self.signals.stopping = True  # from here a signal must not raise: it would abandon the pool
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (StopSignals), or Ctrl-C outside the main thread
            interrupted = exc
            self.pool.closing.set()  # no message starts after the stop is said (shutdown() below waits)
            self.report.stopped_because = "interrupted"
            self.feedback.stopping(
                f"{getattr(exc, 'what', 'Interrupted')}: stopping after the messages in flight"
                " (a second Ctrl-C or SIGTERM stops without waiting for their replies)"
            )
        except MailerError as exc:  # a look-up in the record failed, or it has no room left: messages may
            self.fatal = self.fatal or str(exc)  # have gone, so stopped early (exit 4) as on a failed commit
        finally:
            self.signals.stopping = True
            unsent = self.pool.shutdown()
            self._collect(0.0, drain=True)
            # and the readers found suppressed at their turn, not asked about again (_unpark): not sent, and
            # not settled, so that a worker's batch stays open for the one that takes it over to ask (or the
            # rerun): one may have subscribed again since
            self.report.pending += len(unsent) + len(self.retries) + len(self.held) + len(self.parked)
        to_the_end = through and not self.report.pending and not self.signals.hurry.is_set()
        if interrupted is not None and to_the_end and not self.fatal and self.share is None:
            # every reader was dealt with, no reply called off: the send went to its end, whatever the
            # signal asked (a worker's stop is its coordinator's to tell: others may hold readers still)
            self.report.stopped_because = ""
            self.feedback.stopping(
                f"{getattr(interrupted, 'what', 'Interrupted')}: the signal came after the last message had"
                " started; every reader was dealt with, so the send went to its end"
            )
            interrupted = None
        if self.fatal and not self.report.stopped_because:
            self.report.stopped_because = self.fatal
        if self.report.unrecorded and self.report.stopped_because:
            self.report.stopped_because += f"; {unrecorded_words(self.report.unrecorded)}"
        if interrupted is not None:
            if self.report.unrecorded:  # said too when a signal stops it: its lines name no failure
                self.feedback.stopping(unrecorded_words(self.report.unrecorded))
            raise interrupted
        if self.report.stopped_because:
            raise SendAborted(self.report.stopped_because)

    def _before_batch(self) -> None:
        """Before the record is asked about the next readers: that it has room for their outcomes, and
        that this send still holds the issue's lock. Each time, so that no batch starts once either fails."""
        self.ledger.room()
        self.check_lock()
        self.next_lock_check = self.clock.now() + LOCK_CHECK

    def _still_held(self) -> None:
        """Check the issue's lock every LOCK_CHECK seconds between batches (a slow or rate-limited send takes
        minutes over one): once its session has ended, the server has let go of it and another send of
        the issue may start, so this one must stop (MailerError, exit 4)."""
        if self.clock.now() >= self.next_lock_check:
            self.next_lock_check = self.clock.now() + LOCK_CHECK
            self.check_lock()

    def _first(self, sub: Subscriber) -> Job:
        return Job(0.0, next(self.seq), sub, self._first_attempt(sub))

    def _first_attempt(self, sub: Subscriber) -> int:
        """The reader's first attempt in this process: it counts on from a holder of its batch before (its
        retry counted as this one took the batch over)."""
        return 1 + (self.share.tried(sub) if self.share is not None else 0)

    def _submit(self, job: Job) -> None:
        sub = job.sub
        job.data = self.factory.build_pieces(sub.email, sub.name, sub.fields)
        job.sender = self.factory.envelope_sender(sub.email)
        job.tag = self.factory.tag(sub.email)  # made for the two lines above: the record takes it as it is
        job.key = sub.key
        self.recheck.waiting.add(job.key)
        while not self.pool.submit(job, timeout=0.05):
            if self.signals.signum:  # stopping: this one is not handed over
                self.report.pending += 1
                self.signals.raise_if_signalled()
            self._collect(0.0)
            self._submit_due_retries()
            if self.fatal:
                self.report.pending += 1
                return
        self._collect(0.0)

    def _submit_due_retries(self) -> None:
        now = self.clock.now()
        while self.retries and self.retries[0].due <= now and not self.fatal:
            job = heapq.heappop(self.retries)
            if self.ledger.is_suppressed(job.sub.email):  # unsubscribed while waiting for its retry
                self.parked.append(job)
                continue
            self.report.retries += 1
            if self.share is not None:
                self.share.retried(job.sub)
            self._submit(job)

    def _collect(self, timeout: float, *, drain: bool = False) -> None:
        if not drain:
            gone, back = self.recheck.refresh()
            for email in gone:
                self.feedback.suppressed_meanwhile(email)
            for email in back:
                self.feedback.subscribed_again(email)
        block = timeout > 0
        while True:
            try:
                job, outcome, error = self.pool.outcomes.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            block = False
            self.pool.in_flight -= 1
            self._handle(job, outcome, error, drain=drain)

    def _handle(self, job: Job, outcome: Outcome | None, error: str, *, drain: bool) -> None:
        report = self.report
        if error and not self.fatal:  # authentication refused, the record unwritable: nothing can go on
            self.fatal = error
        if job.held is not None:
            self._hold(job, drain=drain)
            return
        if outcome is not None and error:  # its write failed: the record does not hold it, as for the rerun
            report.pending += 1
            report.unrecorded += outcome.ok
            self.feedback.progress(report)
            return
        if job.suppressed:
            job.suppressed = False
            self.parked.append(job)
            return
        if outcome is None:
            report.pending += 1
            return
        if outcome.ok:
            report.sent += 1
            self.consecutive_failures = 0
            self._settled(job, "sent")
            self._release_held(drain=drain)
        else:
            self.consecutive_failures += 1
            key = str(outcome)[:120]
            if outcome.permanent:
                report.failed_permanent += 1
                report.failures[key] = report.failures.get(key, 0) + 1
                suppressed = self._bounce(job, outcome)
                self._settled(job, "failed_permanent")
                self.feedback.problem(f"{job.sub.email}: {outcome}{'; suppressed' if suppressed else ''}")
            elif outcome.in_doubt and (
                job.doubted or drain or self.fatal or job.attempt >= self.options.max_attempts
            ):  # a message in doubt is sent again at most once: each try may be a copy in the inbox
                report.in_doubt += 1
                report.failures[key] = report.failures.get(key, 0) + 1
                self._settled(job, "in_doubt")
                self.feedback.problem(f"{job.sub.email}: {outcome}; not sent again")
            elif job.attempt >= self.options.max_attempts or drain or self.fatal:
                if drain or self.fatal:
                    report.pending += 1
                else:
                    report.failed_temporary += 1
                    report.failures[key] = report.failures.get(key, 0) + 1
                    self._settled(job, "failed_temporary", key)
                    gave_up = f"gave up after {job.attempt} attempts"
                    self.feedback.problem(f"{job.sub.email}: {outcome} ({gave_up})")
            else:
                heapq.heappush(self.retries, self._retry(job, outcome))
                if (
                    outcome.in_doubt
                ):  # a reader who may get two copies: said by name, as one not sent again is
                    self.feedback.problem(
                        f"{job.sub.email}: {outcome}; sent again once (the first may have arrived)"
                    )
            limit = self.options.max_consecutive_failures
            if limit and self.consecutive_failures >= limit and not self.fatal:
                self.fatal = (
                    f"stopped after {self.consecutive_failures} failures in a row "
                    f"(last: {outcome}); is the server up and the configuration right?"
                )
        self.feedback.progress(report)

    def _unpark(self) -> None:
        """Nothing is out: ask once more about the readers who were suppressed when their turn came. Those
        subscribed again since are mailed now, once (no message of theirs went in this send; a worker's
        batch stays open until then); the rest are counted as suppressed."""
        still = self.ledger.suppressed_among({job.sub.key for job in self.parked})
        parked, self.parked = self.parked, []
        self.recheck.back({job.sub.key for job in parked} - still)
        for job in parked:
            if job.sub.key in still:
                self.report.suppressed += 1
                self._settled(job, "suppressed")
                continue
            self.feedback.subscribed_again(job.sub.email)
            if job.attempt > self._first_attempt(job.sub):  # it was waiting for a retry of this process's
                self.report.retries += 1
                if self.share is not None:
                    self.share.retried(job.sub)
            self._submit(job)
        self.feedback.progress(self.report)

    def _settled(self, job: Job, counted: str, reason: str = "") -> None:
        """Tell a share (its batch may be done: a write to the record). A record gone meanwhile stops the
        send, as a failed look-up does; it must not cut short the counting of the outcomes still to come
        (the stop's own, whose count of messages that may not be in the record the rerun needs)."""
        if self.share is None:
            return
        try:
            self.share.settled(job.sub, counted, reason)
        except MailerError as exc:
            self.fatal = self.fatal or str(exc)

    def _bounce(self, job: Job, outcome: Outcome) -> bool:
        """Record a refusal that is about the reader (refusals.py) as a bounce; True if it suppressed them."""
        kind = judge(outcome)
        if not kind:
            return False
        bounce = refusal_bounce(self.issue_id, job.sub.email, outcome, HARD if kind == POLICY else kind)
        try:
            done = record_bounces(self.ledger, [bounce], self.factory.settings)
        except MailerError as exc:
            self.fatal = self.fatal or f"cannot record a bounce: {exc}"
            return False
        self.report.bounced += len(done.suppressed)
        return bool(done.suppressed)

    def _hold(self, job: Job, *, drain: bool) -> None:
        """A policy refusal before anyone was accepted: try again once someone is, else stop."""
        assert job.held is not None
        self.held.append(job)
        if self.pool.accepted.is_set():
            self._release_held(drain=drain)
        elif len(self.held) >= HELD_LIMIT and not self.fatal:
            self.fatal = self._refused_all()
        self.feedback.progress(self.report)

    def _release_held(self, *, drain: bool) -> None:
        """Someone was accepted: the held readers' refusals may be theirs after all; ask again now."""
        if drain or self.fatal:
            return
        for job in self.held:
            heapq.heappush(self.retries, Job(self.clock.now(), next(self.seq), job.sub, job.attempt))
        self.held.clear()

    def _refused_all(self) -> str:
        held = self.held[-1].held
        return (
            f"stopped: the server refused the first {len(self.held)} recipient(s) ({held}) and accepted"
            " none, so it refuses this sender or client, not the readers (a relay that does not relay"
            " for you?); no reader was marked failed or suppressed"
        )

    def _retry(self, job: Job, outcome: Outcome) -> Job:
        if outcome.code in (0, 421):  # the connection, not the recipient: try again soon on a new one
            delay = min(self.options.retry_delay, 1.0 * job.attempt)
        else:
            delay = self.options.retry_delay * 2 ** (job.attempt - 1)
        doubted = job.doubted or outcome.in_doubt
        return Job(self.clock.now() + delay, next(self.seq), job.sub, job.attempt + 1, doubted=doubted)
