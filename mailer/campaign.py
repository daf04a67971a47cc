"""The send loop: skip delivered and suppressed, build, send on N connections, record, retry, report.

One recorder thread commits the outcomes of all connections, many per fsync. A connection sends the final
"." of a message only once the outcome of its previous message is committed, so a crash can repeat at most
the one message per connection that the server took but the record does not show yet.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import os
import queue
import re
import selectors
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .bounces import HARD
from .errors import MailerError, SendAborted, TransportError
from .ledger import Ledger
from .message import MessageFactory
from .policy import record_bounces
from .recheck import Recheck
from .refusals import POLICY, judge, refusal_bounce
from .stopping import StopSignals
from .subscribers import Subscriber
from .transport import CONNECT, GATE, Connection, Message, Outcome, Step, Steps, Transport, Wire, take_reply


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


class Pace(Protocol):
    """When a connection may start its next message: RateLimiter here, or a rate shared by processes."""

    interval: float  # seconds between message starts; 0: no limit

    def delay(self) -> float | None:
        """Seconds until the caller may start a message, that start time taken (0: at once); None when
        there is none to take yet (more are being reserved): ask again shortly. Called by the pool's
        driver, which must not wait."""
        ...


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


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    sub: Subscriber = field(compare=False)
    attempt: int = field(compare=False, default=1)
    data: Message = field(compare=False, default=b"")
    sender: str = field(compare=False, default="")  # MAIL FROM: its own signed bounce address (VERP)
    doubted: bool = field(compare=False, default=False)  # an earlier attempt was in doubt
    # refused by policy (5.7.x) before any recipient of this send was accepted: not recorded, held
    held: Outcome | None = field(compare=False, default=None)
    key: str = field(compare=False, default="")  # the reader's dedupe_key, as the suppressions know it
    tag: bytes = field(compare=False, default=b"")  # the message's tag (envelope.message_tag), for the record
    suppressed: bool = field(compare=False, default=False)  # suppressed after its look-up: not started


class _Unrecorded(Exception):
    """The delivery record could not be written: no further message may be delivered."""


class _CalledOff(Exception):
    """A second signal hurries the stop: a message not yet past its final "." is not delivered."""


_Record = tuple[_Job, Outcome, threading.Lock]


class _Recorder:
    """Writer threads that write every connection's outcomes to the delivery record, many per commit.

    A worker hands its outcome over and goes on with its next message up to the final "." of DATA;
    there it waits until the outcome before is committed (Transport `ready`). So no message is
    delivered while the one before it on the same connection is unrecorded, and a crash still
    repeats at most one message per connection, while the commit overlaps the next message's
    transfer and the outcomes waiting when a commit starts share it.

    An engine with one writer at a time (SQLite) gets one writer thread. On one that takes concurrent
    writers (PostgreSQL, whose commit waits for the server's WAL flush), an outcome that arrives while a
    commit is under way would wait for that commit and then its own; several writers, each with its own
    connection, start its commit at once instead, and the server flushes concurrent commits together.
    """

    BATCH = 1000

    def __init__(
        self,
        ledger: Ledger,
        issue_id: str,
        outcomes: queue.SimpleQueue[tuple[_Job, Outcome | None, str]],
        connections: int = 1,
        run: int | None = None,
        wake: Callable[[], None] = lambda: None,
    ):
        self.ledger = ledger  # the loop's; the writers write through connections of their own to its record
        self.wake = wake  # told of each commit (and of the record opened): the pool's driver looks again
        self.issue_id = issue_id
        self.run = run  # the run the outcomes are recorded as
        self.outcomes = outcomes
        # at most one outcome per connection is waiting: more writers than connections would idle
        self.writers = max(1, min(connections, ledger.concurrent_writers))
        self.inbox: queue.SimpleQueue[_Record | None] = queue.SimpleQueue()
        self.error = ""
        self.opened = threading.Event()  # set once the record is open here, or cannot be: no "." before
        self._closed = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="mailer-record", daemon=True)
        self.thread.start()

    def submit(self, job: _Job, outcome: Outcome, unrecorded: threading.Lock) -> None:
        """Hand an outcome over; `unrecorded`, a lock the caller holds, is released once the outcome is
        committed (or can no longer be). A bare lock, not an Event: at 8 connections the recorder wakes
        a connection per outcome, and an Event's Condition costs each side a dozen Python calls under
        the contended GIL."""
        with self._lock:
            if not self._closed:
                self.inbox.put((job, outcome, unrecorded))
                return
        self.error = self.error or _CLOSED
        unrecorded.release()  # the recorder is gone: the next ready() raises, nothing more is sent
        self.outcomes.put((job, outcome, self.error))
        self.wake()

    def stop(self) -> None:
        """Commit what was handed over, then end the threads."""
        self.inbox.put(None)
        self.thread.join()

    def _run(self) -> None:
        ledgers: list[Ledger] = []
        helpers: list[threading.Thread] = []
        try:
            for _ in range(self.writers):
                ledgers.append(self.ledger.reopen())
            self.opened.set()
            helpers = [
                threading.Thread(target=self._drain, args=(own,), name=f"mailer-record-{i}", daemon=True)
                for i, own in enumerate(ledgers[1:], 1)
            ]
            self.wake()
            for helper in helpers:
                helper.start()
            self._drain(ledgers[0])
        except MailerError as exc:  # the record cannot be opened: said once, by the main loop
            self.error = self.error or f"cannot record deliveries: {exc}"
        except BaseException as exc:  # never leave a worker waiting for a commit that will not come
            self.error = self.error or f"cannot record deliveries: {exc!r}"
            raise
        finally:
            for helper in helpers:
                helper.join()
            self.opened.set()  # after the error, if any, is set: a connection waiting to send sees it
            self._fail_rest()
            self.wake()
            for own in ledgers:
                own.close()

    def _drain(self, ledger: Ledger) -> None:
        """One writer: commit what is waiting, batch after batch, until stop()'s None (passed on to the
        other writers)."""
        try:
            stopping = False
            while not stopping:
                item = self.inbox.get()
                if item is None:
                    break
                batch = [item]
                while len(batch) < self.BATCH:
                    try:
                        item = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                self._write(ledger, batch)
            self.inbox.put(None)
        except BaseException as exc:  # never leave a worker waiting for a commit that will not come
            self.error = self.error or f"cannot record deliveries: {exc!r}"
            self.inbox.put(None)
            raise

    def _write(self, ledger: Ledger, batch: list[_Record]) -> None:
        error = self.error  # given with each outcome of the batch: set, it says the record does not hold it
        if not error:
            rows = [(job.sub.email, _state(outcome), outcome.code, outcome.text) for job, outcome, _ in batch]
            try:
                ledger.record_outcomes(self.issue_id, rows, self.run, tags=[job.tag for job, _, _ in batch])
                if not ledger.in_place():  # one stat per commit: the record must be the file at the path
                    ledger.let_go_of_replaced()
                    raise MailerError(
                        f"{ledger.path}: the database file was replaced or deleted during the send"
                    )
            except MailerError as exc:
                error = f"cannot record deliveries: {exc}"
                self.error = self.error or error
        for job, outcome, unrecorded in batch:
            unrecorded.release()
            self.outcomes.put((job, outcome, error))
        self.wake()

    def _fail_rest(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self.error = self.error or _CLOSED
                job, outcome, unrecorded = item
                unrecorded.release()
                self.outcomes.put((job, outcome, self.error))


_CLOSED = "cannot record deliveries: the delivery record was closed"
UNRECORDED = re.compile(r"(\d+) message\(s\) accepted by the server may not be in the record")


def unrecorded_words(count: int) -> str:
    """What a send that stopped says of its messages whose outcome's write failed (UNRECORDED finds the
    count in a worker's error line, for its coordinator to add up)."""
    return (
        f"{count} message(s) accepted by the server may not be in the record (its write failed or got no"
        " answer), so not counted as sent here: `mailer status` says what the record holds, and the rerun"
        " mails again any reader it does not"
    )


def _state(outcome: Outcome) -> str:
    if outcome.ok:
        return "sent"
    if outcome.in_doubt:  # handed over, fate unknown: the record's 'sending', neither sent nor failed
        return "sending"
    return "failed" if outcome.permanent else "deferred"


class _Lane:
    """One connection as the pool's driver runs it: its session, the run of jobs it took, and what its
    message's steps (Connection.steps) wait for."""

    __slots__ = (
        "conn", "unrecorded", "mine", "job", "ahead", "steps", "step", "value", "error", "wire", "out",
        "deadline", "broken", "start_at", "timer", "opened", "held", "ended",
    )  # fmt: skip

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.unrecorded = threading.Lock()  # held while its last outcome is not committed yet
        self.mine: collections.deque[_Job] = collections.deque()  # the run taken, in order
        self.job: _Job | None = None  # the message under way
        self.ahead: _Job | None = None  # named by following(): its MAIL FROM went out with the "." before
        self.steps: Steps | None = None
        self.step: Step | None = None  # what the steps wait for; None: they run on
        self.value: Any = None  # what to send into the steps next
        self.error: BaseException | None = None  # or to throw in
        self.wire: Wire | None = None  # the session's socket, as registered with the selector
        self.out = bytearray()  # written by the steps, not taken by the socket yet
        self.deadline = 0.0  # when the write or reply waited for is late (0: not waiting for one)
        self.broken: OSError | None = None  # the socket failed: said to the steps' next read or write
        self.start_at: float | None = None  # the rate limit's start time for its next message, if reserved
        self.timer = 0.0  # when to look again: that start time, or when to ask for one again (0: no need)
        self.opened: tuple[Outcome | None, BaseException | None] | None = None  # and what came of it
        self.held: tuple[_Job, Outcome] | None = None  # an outcome waiting for the one before's commit
        self.ended = False


_NEVER = float("inf")
_WRITING = "writing"  # what a connection's steps wait for while the socket takes the rest of a write
_POLL = 0.25  # seconds between the driver's looks at the stop when nothing else wakes it
_ASK_AGAIN = 0.02  # seconds before a start time is asked for again when none was reserved yet
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Pool:
    """N connections driven by one thread through a selector; one recorder thread writes their outcomes.

    Each connection's message runs as steps (transport.Step): the driver writes what they write, reads
    their replies, holds them at the GATE until the outcome of that connection's message before is
    committed, and opens sessions in threads of their own (a slow server's handshake holds no other
    connection). One thread for all sockets, where a thread per connection handed the GIL and each
    other's work back and forth several times a message (docs/benchmarks.md).

    The loop hands jobs over in runs (up to HAND_OVER at a time, however many it has built while every
    connection was busy), so that it and the driver wake each other once per run, not once per message;
    a connection takes its next run when it needs a message and has none.
    """

    def __init__(
        self,
        transport: Transport,
        ledger: Ledger,
        issue_id: str,
        connections: int,
        limiter: Pace,
        recheck: Recheck,
        stop: threading.Event | None = None,
        share: Share | None = None,
        run: int | None = None,
    ) -> None:
        self.jobs: queue.Queue[list[_Job] | None] = queue.Queue(maxsize=connections)
        self.recheck = recheck
        self.built: list[_Job] = []  # built by the loop, not handed over yet: the next run
        # a share claims its readers batch by batch as the loop asks for them: built ahead, they would be
        # claimed by this process before another could take them (workers.worker)
        self.run_size = 1 if share is not None else HAND_OVER
        self.outcomes: queue.SimpleQueue[tuple[_Job, Outcome | None, str]] = queue.SimpleQueue()
        self.stop = stop or threading.Event()  # set: stop now, calling off messages short of their "."
        self.closing = threading.Event()  # set: no new message starts; jobs held are given back undone
        self.limiter = limiter
        self.share = share
        self.accepted = threading.Event()  # some recipient of this send was accepted: see refusals.py
        self.in_flight = 0
        self.last = False  # the loop said there is no more (the driver's)
        self.live = connections  # connections not ended yet
        self.due = _NEVER  # the soonest time a connection wants a look at (_timer)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.lanes = [_Lane(transport.connect()) for _ in range(connections)]
        self.recorder = _Recorder(ledger, issue_id, self.outcomes, connections, run, wake=self.wake)
        self.driver = threading.Thread(target=self._drive, name="mailer-send", daemon=True)
        self.driver.start()

    def wake(self) -> None:
        """Have the driver look at every connection: a commit, a run handed over, a stop."""
        with contextlib.suppress(BlockingIOError):  # full: it has not read the wake-ups before this one
            os.write(self._wake_w, b"\0")

    def submit(self, job: _Job, timeout: float) -> bool:
        """Add a job to the next run; False when a full run could not be handed over within `timeout`."""
        if len(self.built) >= self.run_size and not self.hand_over(timeout):
            return False
        self.built.append(job)
        self.in_flight += 1
        self.hand_over(0.0)
        return True

    def hand_over(self, timeout: float) -> bool:
        """Queue the jobs built so far as one run; False when the queue stayed full for `timeout` seconds."""
        if self.built:
            try:
                self.jobs.put(self.built, block=timeout > 0, timeout=timeout or None)
            except queue.Full:
                return False
            self.built = []
            self.wake()
        return True

    def shutdown(self) -> list[_Job]:
        """Stop after the messages in flight; return the jobs that were queued but never sent."""
        self.closing.set()
        unsent, self.built = self.built, []
        while True:
            try:
                run = self.jobs.get_nowait()
            except queue.Empty:
                break
            if run is not None:
                unsent.extend(run)
        self.in_flight -= len(unsent)
        self.jobs.put(None)
        self.wake()
        # a hurried stop (self.stop) does not wait for replies still out: those messages are in doubt, the
        # crash window; every outcome already handed to the recorder is still committed below
        while self.driver.is_alive() and not self.stop.is_set():
            self.driver.join(0.05)
        self.recorder.stop()
        if not self.driver.is_alive():  # no one writes to the pipe any more (no session is being opened)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return unsent

    # The driver's thread from here on.

    def _drive(self) -> None:
        """Run every connection's messages until each has none left.

        After a wait, only the connections whose sockets are ready are looked at, unless a wake-up (a
        commit, a run handed over, a stop), a timer or the wait's end asks for a look at every one."""
        selector, lanes = self.selector, self.lanes
        try:
            while self.live:
                now = time.monotonic()
                events = selector.select(min(_POLL, max(0.0, self.due - now)))
                everyone = not events
                for key, mask in events:
                    lane = key.data
                    if lane is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        everyone = True
                        continue
                    if mask & selectors.EVENT_WRITE:
                        self._flush(lane)
                    if mask & selectors.EVENT_READ:
                        self._read(lane)
                now = time.monotonic()
                if now >= self.due:
                    everyone = True
                    # the times still to come: one gone by waits on something else (a commit, a wake-up)
                    self.due = min(
                        [at for lane in lanes for at in (lane.deadline, lane.timer) if at > now] or [_NEVER]
                    )
                for lane in lanes if everyone else [key.data for key, _ in events]:
                    if not lane.ended:
                        self._step(lane, now)
        except BaseException as exc:  # never leave the loop waiting for outcomes that will not come
            for lane in lanes:
                if not lane.ended:
                    self._end(lane, f"internal error: {exc!r}", lane.job)
            raise
        finally:
            self.selector.close()

    def _timer(self, at: float) -> float:
        """Note a time a connection wants a look at (a deadline, a start time); return it."""
        if at < self.due:
            self.due = at
        return at

    def _step(self, lane: _Lane, now: float) -> None:
        """Take the connection as far as it can go without waiting."""
        while True:
            if lane.held is not None:  # an outcome that waits for the commit of the one before
                if not lane.unrecorded.acquire(blocking=False):
                    return
                job, outcome = lane.held
                lane.held = None
                self.recorder.submit(job, outcome, lane.unrecorded)
            if lane.steps is None and not self._start(lane, now):
                return
            step = lane.step
            if step is not None:
                if step is GATE:
                    if not self.recorder.opened.is_set() or not lane.unrecorded.acquire(blocking=False):
                        return
                    lane.unrecorded.release()
                elif step is CONNECT:
                    if lane.opened is None:
                        return
                    (lane.value, lane.error), lane.opened = lane.opened, None
                elif step is _WRITING:
                    if not self._written(lane, now):
                        return
                elif not self._reply(lane, now):
                    return
                lane.step = None
            self._advance(lane)
            if lane.ended:
                return

    def _start(self, lane: _Lane, now: float) -> bool:
        """Start the connection's next message (False: none can start now)."""
        while True:
            if not lane.mine and not self._take(lane):
                if self.last or self.closing.is_set():
                    self._end(lane, "")
                return False
            if self.closing.is_set():  # the loop is shutting down: what is held never starts
                self._end(lane, "")
                return False
            if self.stop.is_set():
                self.outcomes.put((lane.mine.popleft(), None, ""))
                continue
            if self.limiter.interval:
                if lane.start_at is None:
                    if now < lane.timer:
                        return False
                    wait = self.limiter.delay()
                    if wait is None:  # none reserved yet, more are asked for
                        lane.timer = self._timer(now + _ASK_AGAIN)
                        return False
                    lane.start_at = lane.timer = self._timer(now + wait)
                if now < lane.start_at:
                    return False
                lane.start_at, lane.timer = None, 0.0
            job = lane.mine.popleft()
            if job is not lane.ahead and not self.recheck.starts(job.key):
                self._skip(job)
                continue
            lane.job = job
            lane.steps = lane.conn.steps(
                job.sender, job.sub.email, job.data, lambda: self._ready(lane), lambda: self._following(lane)
            )
            lane.value = lane.error = None
            return True

    def _take(self, lane: _Lane) -> bool:
        """Take the next run into the connection's jobs; False when there is none (yet, or any more)."""
        if self.last:
            return False
        try:
            run = self.jobs.get_nowait()
        except queue.Empty:
            return False
        if run is None:
            self.last = True
            return False
        lane.mine.extend(run)
        return True

    def _skip(self, job: _Job) -> None:
        """Suppressed since its look-up: given back unstarted, counted by the loop."""
        job.suppressed = True
        self.outcomes.put((job, None, ""))

    def _following(self, lane: _Lane) -> tuple[str, str] | None:
        """The next job, whose commands may go with this one's "." (Connection.send's `following`)."""
        if self.limiter.interval or self.stop.is_set() or self.closing.is_set():
            return None  # a rate limit says when a message starts
        while True:
            if not lane.mine and not self._take(lane):
                return None
            if self.recheck.starts(lane.mine[0].key):
                break
            self._skip(lane.mine.popleft())
        lane.ahead = lane.mine[0]
        return lane.ahead.sender, lane.ahead.sub.email

    def _ready(self, lane: _Lane) -> None:
        """Past the GATE, just before the "." (Connection.send's `ready`): nothing stands in its way."""
        if self.recorder.error:
            raise _Unrecorded(self.recorder.error)
        if self.stop.is_set():
            raise _CalledOff
        lost = self.share.holds() if self.share is not None else ""
        if lost:  # another process may be sending this reader now: no "." from here
            raise _Unrecorded(lost)

    def _advance(self, lane: _Lane) -> None:
        """Run the message's steps to the next one that waits; on its outcome, hand it over."""
        steps, job = lane.steps, lane.job
        assert steps is not None and job is not None
        try:
            while True:
                value, error = lane.value, lane.error
                lane.value = lane.error = None
                step = steps.send(value) if error is None else steps.throw(error)
                if lane.conn.wire() is not lane.wire:
                    self._follow_session(lane)
                if isinstance(step, bytes):
                    if not self._write(lane, step):
                        lane.error = lane.broken
                        continue
                    if not lane.out:  # all of it taken: the steps go on
                        continue
                    step = _WRITING  # the rest goes as the socket takes it; the steps wait, as sendall does
                elif step is CONNECT:
                    self._open(lane)
                elif not isinstance(step, str):  # a reply, within `step` seconds
                    lane.deadline = self._timer(time.monotonic() + float(step))
                lane.step = step
                return
        except StopIteration as done:
            outcome: Outcome = done.value
        except (TransportError, _Unrecorded) as exc:  # the server refuses us as a whole, or the record
            self._end(lane, str(exc), job)
            return
        except _CalledOff:
            self._end(lane, "", job)
            return
        except Exception as exc:  # never let a connection fail silently: the loop must hear of it
            self._end(lane, f"internal error: {exc!r}", job)
            return
        finally:
            if lane.conn.wire() is not lane.wire:
                self._follow_session(lane)
        lane.steps = lane.job = None
        if outcome.ok:
            if not self.accepted.is_set():  # set() alone takes a Condition's lock each time
                self.accepted.set()
        elif not self.accepted.is_set() and judge(outcome) == POLICY:
            job.held = outcome  # the sender's problem, or the reader's: not known yet
            self.outcomes.put((job, None, ""))
            return
        lane.held = (job, outcome)  # to the recorder once the outcome before is committed (_step)

    def _open(self, lane: _Lane) -> None:
        """Open a session for the connection in a thread of its own: a slow handshake holds no other."""

        def run() -> None:
            try:
                lane.opened = (lane.conn.open_session(), None)
            except BaseException as exc:  # TransportError above all: thrown into the steps
                lane.opened = (None, exc)
            self.wake()

        threading.Thread(target=run, name="mailer-open", daemon=True).start()

    def _follow_session(self, lane: _Lane) -> None:
        """Register the connection's socket once its session changed (opened, dropped)."""
        wire = lane.conn.wire()
        if lane.wire is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(lane.wire.sock)
        lane.wire, lane.broken = wire, None
        lane.out.clear()
        lane.deadline = 0.0
        if wire is not None:
            wire.sock.setblocking(False)
            self.selector.register(wire.sock, selectors.EVENT_READ, lane)

    def _write(self, lane: _Lane, data: bytes) -> bool:
        """Send what the steps write, keeping what the socket does not take yet; False if it failed."""
        if lane.broken is not None or lane.wire is None:
            lane.broken = lane.broken or smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            return False
        if lane.out:
            lane.out += data
            return True
        try:
            sent = lane.wire.sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        except OSError as exc:
            self._broken(lane, exc)
            return False
        if sent < len(data):
            lane.out += data[sent:]
            lane.deadline = self._timer(time.monotonic() + lane.wire.timeout)
            self.selector.modify(lane.wire.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, lane)
        return True

    def _flush(self, lane: _Lane) -> None:
        wire = lane.wire
        if wire is None or not lane.out:
            return
        try:
            sent = wire.sock.send(lane.out)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            self._broken(lane, exc)
            return
        del lane.out[:sent]
        if lane.out:  # it took some: the write may stall again for as long
            lane.deadline = self._timer(time.monotonic() + wire.timeout)
        else:
            self.selector.modify(wire.sock, selectors.EVENT_READ, lane)

    def _read(self, lane: _Lane) -> None:
        wire = lane.wire
        if wire is None:
            return
        try:
            chunk = wire.sock.recv(65536)
            while isinstance(wire.sock, ssl.SSLSocket) and wire.sock.pending():
                chunk += wire.sock.recv(65536)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            self._broken(lane, exc)
            return
        if not chunk:
            self._broken(lane, smtplib.SMTPServerDisconnected("Connection unexpectedly closed"))
            return
        wire.buffer += chunk

    def _broken(self, lane: _Lane, exc: OSError) -> None:
        """The socket failed or the server hung up: said to the steps' next read or write; no more looks
        at it (a closed connection is always readable)."""
        lane.broken = lane.broken or exc
        if lane.wire is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(lane.wire.sock)

    def _reply(self, lane: _Lane, now: float) -> bool:
        """Whether the reply the steps wait for is in (or will not come): sent into them."""
        wire = lane.wire
        reply = take_reply(wire.buffer) if wire is not None else None
        if reply is not None:
            if reply[0] < 0:
                lane.conn.cut()  # what follows cannot be trusted to line up with the commands
            lane.value = reply
        elif wire is None:
            lane.error = smtplib.SMTPServerDisconnected("please run connect() first")
        elif lane.broken is not None:
            lane.error = lane.broken
        elif lane.deadline and now >= lane.deadline:
            lane.error = TimeoutError("timed out")
        else:
            return False
        lane.deadline = 0.0
        return True

    def _written(self, lane: _Lane, now: float) -> bool:
        """Whether the write the steps wait for is done (or failed, or stalled past the timeout)."""
        if lane.broken is not None:
            lane.error = lane.broken
        elif lane.out and now >= lane.deadline:
            lane.error = TimeoutError("timed out")
        elif lane.out:
            return False
        lane.deadline = 0.0
        return True

    def _end(self, lane: _Lane, error: str, job: _Job | None = None) -> None:
        """The connection is done: its message (if one was under way, with `error`: '' but for a failure that
        stops the send) and its jobs never started go back to the loop; its session is closed."""
        lane.ended = True
        self.live -= 1
        lane.steps = None
        if job is not None:
            self.outcomes.put((job, None, error))
        for left in lane.mine:  # taken, never started: pending, as if still queued
            self.outcomes.put((left, None, ""))
        lane.mine.clear()
        if lane.held is not None:  # its outcome waits for the commit before: it is committed after it
            job, outcome = lane.held
            lane.held = None
            lane.unrecorded.acquire()
            self.recorder.submit(job, outcome, lane.unrecorded)
        if lane.wire is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(lane.wire.sock)
            lane.wire = None
        lane.conn.close()


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
HAND_OVER = 32  # jobs handed to a connection at once, at most: one wake-up of the loop per run


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
        self.retries: list[_Job] = []
        self.seq = itertools.count()
        self.consecutive_failures = 0
        self.fatal = ""
        self.held: list[_Job] = []  # refused by policy before anyone was accepted (see refusals.py)
        self.parked: list[_Job] = []  # suppressed when their turn came: asked about again at the end
        limiter = share.pace() if share is not None else RateLimiter(options.rate, clock)
        self.recheck = Recheck(ledger, clock.now)
        self.pool = _Pool(
            transport, ledger, issue_id, options.connections, limiter, self.recheck, signals.hurry, share, run
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

    def _first(self, sub: Subscriber) -> _Job:
        return _Job(0.0, next(self.seq), sub, self._first_attempt(sub))

    def _first_attempt(self, sub: Subscriber) -> int:
        """The reader's first attempt in this process: it counts on from a holder of its batch before (its
        retry counted as this one took the batch over)."""
        return 1 + (self.share.tried(sub) if self.share is not None else 0)

    def _submit(self, job: _Job) -> None:
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

    def _handle(self, job: _Job, outcome: Outcome | None, error: str, *, drain: bool) -> None:
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

    def _settled(self, job: _Job, counted: str, reason: str = "") -> None:
        if self.share is not None:
            self.share.settled(job.sub, counted, reason)

    def _bounce(self, job: _Job, outcome: Outcome) -> bool:
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

    def _hold(self, job: _Job, *, drain: bool) -> None:
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
            heapq.heappush(self.retries, _Job(self.clock.now(), next(self.seq), job.sub, job.attempt))
        self.held.clear()

    def _refused_all(self) -> str:
        held = self.held[-1].held
        return (
            f"stopped: the server refused the first {len(self.held)} recipient(s) ({held}) and accepted"
            " none, so it refuses this sender or client, not the readers (a relay that does not relay"
            " for you?); no reader was marked failed or suppressed"
        )

    def _retry(self, job: _Job, outcome: Outcome) -> _Job:
        if outcome.code in (0, 421):  # the connection, not the recipient: try again soon on a new one
            delay = min(self.options.retry_delay, 1.0 * job.attempt)
        else:
            delay = self.options.retry_delay * 2 ** (job.attempt - 1)
        doubted = job.doubted or outcome.in_doubt
        return _Job(self.clock.now() + delay, next(self.seq), job.sub, job.attempt + 1, doubted=doubted)
