"""The connections of a send: one thread drives them all, and a recorder thread commits their outcomes.

The send loop (campaign.py) hands over the messages it built, in runs; each connection's message runs as
the transport's steps (transport.Step), and the final "." of a message waits until the outcome of the
connection's message before it is committed, so that a crash repeats at most one message per connection.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import selectors
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import MailerError, TransportError
from .ledger import Ledger
from .recheck import Recheck
from .refusals import POLICY, judge
from .subscribers import Subscriber
from .transport import CONNECT, GATE, Connection, Message, Outcome, Step, Steps, Transport, Wire, take_reply


class Pace(Protocol):
    """When a connection may start its next message: campaign.RateLimiter, or a rate shared by processes."""

    interval: float  # seconds between message starts; 0: no limit

    def delay(self) -> float | None:
        """Seconds until the caller may start a message, that start time taken (0: at once); None when
        there is none to take yet (more are being reserved): ask again shortly. Called by the pool's
        driver, which must not wait."""
        ...


@dataclass(order=True)
class Job:
    """One reader's message as the loop builds it and the pool sends it; ordered by when it is due (a retry
    waits in the loop's heap)."""

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


class Unrecorded(Exception):
    """The delivery record could not be written: no further message may be delivered."""


class CalledOff(Exception):
    """A second signal hurries the stop: a message not yet past its final "." is not delivered."""


Record = tuple[Job, Outcome, threading.Lock]


class Recorder:
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
        outcomes: queue.SimpleQueue[tuple[Job, Outcome | None, str]],
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
        self.inbox: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self.error = ""
        self.opened = threading.Event()  # set once the record is open here, or cannot be: no "." before
        self._closed = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="mailer-record", daemon=True)
        self.thread.start()

    def submit(self, job: Job, outcome: Outcome, unrecorded: threading.Lock) -> None:
        """Hand an outcome over; `unrecorded`, a lock the caller holds, is released once the outcome is
        committed (or can no longer be). A bare lock, not an Event: at 8 connections the recorder wakes
        a connection per outcome, and an Event's Condition costs each side a dozen Python calls under
        the contended GIL."""
        with self._lock:
            if not self._closed:
                self.inbox.put((job, outcome, unrecorded))
                return
        self.error = self.error or CLOSED
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

    def _write(self, ledger: Ledger, batch: list[Record]) -> None:
        error = self.error  # given with each outcome of the batch: set, it says the record does not hold it
        if not error:
            rows = [
                (job.sub.email, outcome_state(outcome), outcome.code, outcome.text)
                for job, outcome, _ in batch
            ]
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
                self.error = self.error or CLOSED
                job, outcome, unrecorded = item
                unrecorded.release()
                self.outcomes.put((job, outcome, self.error))


CLOSED = "cannot record deliveries: the delivery record was closed"


HAND_OVER = 32  # jobs handed to a connection at once, at most: one wake-up of the loop per run


def outcome_state(outcome: Outcome) -> str:
    if outcome.ok:
        return "sent"
    if outcome.in_doubt:  # handed over, fate unknown: the record's 'sending', neither sent nor failed
        return "sending"
    return "failed" if outcome.permanent else "deferred"


class Lane:
    """One connection as the pool's driver runs it: its session, the jobs it took (the next one, and the one
    whose commands went ahead), and what its message's steps (Connection.steps) wait for."""

    __slots__ = (
        "conn", "unrecorded", "mine", "job", "ahead", "steps", "step", "value", "error", "wire", "out",
        "deadline", "broken", "start_at", "timer", "opened", "held", "ended",
    )  # fmt: skip

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.unrecorded = threading.Lock()  # held while its last outcome is not committed yet
        self.mine: collections.deque[Job] = collections.deque()  # taken, in order
        self.job: Job | None = None  # the message under way
        self.ahead: Job | None = None  # named by following(): its MAIL FROM went out with the "." before
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
        self.opened: tuple[Outcome | None, BaseException | None] | None = None  # how opening a session went
        self.held: tuple[Job, Outcome] | None = None  # an outcome waiting for the one before's commit
        self.ended = False


_NEVER = float("inf")
_WRITING = "writing"  # what a connection's steps wait for while the socket takes the rest of a write
_POLL = 0.25  # seconds between the driver's looks at the stop when nothing else wakes it
_ASK_AGAIN = 0.02  # seconds before a start time is asked for again when none was reserved yet
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
# bytes a session's buffer may hold unread: a socket is read whatever its connection waits for (a start time,
# the GATE), and a server that talks on must not fill the memory (a reply is at most 64 KB: transport.py)
_UNREAD_MOST = 256 * 1024


class Pool:
    """N connections driven by one thread through a selector; one recorder thread writes their outcomes.

    Each connection's message runs as steps (transport.Step): the driver writes what they write, reads
    their replies, holds them at the GATE until the outcome of that connection's message before is
    committed, and opens sessions in threads of their own (a slow server's handshake holds no other
    connection). One thread for all sockets, where a thread per connection handed the GIL and each
    other's work back and forth several times a message (docs/benchmarks.md).

    The loop hands jobs over in runs (up to HAND_OVER at a time, however many it has built while every
    connection was busy), so that it and the driver wake each other once per run, not once per message;
    the driver gives them to the connections one at a time, as each needs its next.
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
        holds: Callable[[], str] | None = None,
        run: int | None = None,
    ) -> None:
        self.jobs: queue.Queue[list[Job] | None] = queue.Queue(maxsize=connections)
        self.recheck = recheck
        self.built: list[Job] = []  # built by the loop, not handed over yet: the next run
        # a share of a send by workers (`holds`: whether its leases still hold) claims its readers batch by
        # batch as the loop asks for them: built ahead, they would be claimed by this process before another
        # could take them (workers.worker)
        self.run_size = 1 if holds is not None else HAND_OVER
        self.outcomes: queue.SimpleQueue[tuple[Job, Outcome | None, str]] = queue.SimpleQueue()
        self.stop = stop or threading.Event()  # set: stop now, calling off messages short of their "."
        self.closing = threading.Event()  # set: no new message starts; jobs held are given back undone
        self.limiter = limiter
        self.holds = holds
        self.accepted = threading.Event()  # some recipient of this send was accepted: see refusals.py
        self.in_flight = 0
        self.last = False  # the loop said there is no more (the driver's)
        self.waiting: collections.deque[Job] = collections.deque()  # a run taken, not yet any connection's
        self.live = connections  # connections not ended yet
        self.due = _NEVER  # the soonest time a connection wants a look at (_timer)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # the pipe is closed by whichever ends last, shutdown() or the driver (after a hurried stop the
        # driver goes on until its replies came), and wake() never writes to it once it is closed
        self._pipe = threading.Lock()
        self._ended = {"shutdown": False, "driver": False}
        self._closers: list[threading.Thread] = []  # the connections' QUITs, said at once (_end)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.lanes = [Lane(transport.connect()) for _ in range(connections)]
        self.recorder = Recorder(ledger, issue_id, self.outcomes, connections, run, wake=self.wake)
        self.driver = threading.Thread(target=self._drive, name="mailer-send", daemon=True)
        self.driver.start()

    def wake(self) -> None:
        """Have the driver look at every connection: a commit, a run handed over, a stop."""
        with self._pipe:
            if all(self._ended.values()):
                return
            with contextlib.suppress(BlockingIOError):  # full: it has not read the wake-ups before this one
                os.write(self._wake_w, b"\0")

    def _done(self, who: str) -> None:
        """`who` ('shutdown', 'driver') is done with the pipe; the last of the two closes it."""
        with self._pipe:
            self._ended[who] = True
            if all(self._ended.values()):
                os.close(self._wake_r)
                os.close(self._wake_w)

    def submit(self, job: Job, timeout: float) -> bool:
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

    def shutdown(self) -> list[Job]:
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
        self._done("shutdown")
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
            for closer in self._closers:
                closer.join()
            self.selector.close()
            self._done("driver")  # no session is being opened: each one's thread has been heard from

    def _timer(self, at: float) -> float:
        """Note a time a connection wants a look at (a deadline, a start time); return it."""
        if at < self.due:
            self.due = at
        return at

    def _step(self, lane: Lane, now: float) -> None:
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

    def _start(self, lane: Lane, now: float) -> bool:
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

    def _take(self, lane: Lane) -> bool:
        """Take the next job for the connection; False when there is none (yet, or any more).

        One job at a time from the run handed over, so that every connection has its share to the end: a
        whole run of 32 for one connection left the others idle at the end of a send (at 8 connections to a
        server 20 ms away, 400 messages went at 5.9 times one connection's rate, not 8)."""
        if not self.waiting:
            if self.last:
                return False
            try:
                run = self.jobs.get_nowait()
            except queue.Empty:
                return False
            if run is None:
                self.last = True
                return False
            self.waiting.extend(run)
        lane.mine.append(self.waiting.popleft())
        return True

    def _skip(self, job: Job) -> None:
        """Suppressed since its look-up: given back unstarted, counted by the loop."""
        job.suppressed = True
        self.outcomes.put((job, None, ""))

    def _following(self, lane: Lane) -> tuple[str, str] | None:
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

    def _ready(self, lane: Lane) -> None:
        """Past the GATE, just before the "." (Connection.send's `ready`): nothing stands in its way."""
        if self.recorder.error:
            raise Unrecorded(self.recorder.error)
        if self.stop.is_set():
            raise CalledOff
        lost = self.holds() if self.holds is not None else ""
        if lost:  # another process may be sending this reader now: no "." from here
            raise Unrecorded(lost)

    def _advance(self, lane: Lane) -> None:
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
                elif step is GATE:
                    if self.recorder.opened.is_set() and lane.unrecorded.acquire(blocking=False):
                        lane.unrecorded.release()  # open already: on at once
                        continue
                elif not isinstance(step, str):  # a reply, within `step` seconds
                    reply = take_reply(lane.wire.buffer) if lane.wire is not None else None
                    if reply is not None and reply[0] >= 0:  # here already (pipelined): on at once
                        lane.value = reply
                        continue
                    lane.deadline = self._timer(time.monotonic() + float(step))
                lane.step = step
                return
        except StopIteration as done:
            outcome: Outcome = done.value
        except (TransportError, Unrecorded) as exc:  # the server refuses us as a whole, or the record
            self._end(lane, str(exc), job)
            return
        except CalledOff:
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

    def _open(self, lane: Lane) -> None:
        """Open a session for the connection in a thread of its own: a slow handshake holds no other."""

        def run() -> None:
            try:
                lane.opened = (lane.conn.open_session(), None)
            except BaseException as exc:  # TransportError above all: thrown into the steps
                lane.opened = (None, exc)
            self.wake()

        threading.Thread(target=run, name="mailer-open", daemon=True).start()

    def _follow_session(self, lane: Lane) -> None:
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

    def _write(self, lane: Lane, data: bytes) -> bool:
        """Send what the steps write, keeping what the socket does not take yet (_flush); False: it failed."""
        if lane.broken is not None or lane.wire is None:
            lane.broken = lane.broken or smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            return False
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

    def _flush(self, lane: Lane) -> None:
        """The socket takes more of a write: each time it does, the write has its timeout again."""
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

    def _read(self, lane: Lane) -> None:
        """Add what the socket has to the bytes no reply took yet (a TLS layer's decrypted rest too, which
        the selector cannot see)."""
        wire = lane.wire
        if wire is None:
            return
        try:
            chunk = wire.sock.recv(65536)
            if not chunk:
                self._broken(lane, smtplib.SMTPServerDisconnected("Connection unexpectedly closed"))
                return
            wire.buffer += chunk
            while isinstance(wire.sock, ssl.SSLSocket) and wire.sock.pending():
                wire.buffer += wire.sock.recv(65536)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            self._broken(lane, exc)
            return
        if len(wire.buffer) > _UNREAD_MOST:  # more than any reply: read no more (the steps read what is here)
            self._broken(lane, OSError(0, "the server sent more than any reply holds"))

    def _broken(self, lane: Lane, exc: OSError) -> None:
        """The socket failed or the server hung up: said to the steps' next read or write; no more looks
        at it (a closed connection is always readable)."""
        lane.broken = lane.broken or exc
        if lane.wire is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(lane.wire.sock)

    def _reply(self, lane: Lane, now: float) -> bool:
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

    def _written(self, lane: Lane, now: float) -> bool:
        """Whether the write the steps wait for is done (or failed, or stalled past the timeout)."""
        if lane.broken is not None:
            lane.error = lane.broken
        elif lane.out and now >= lane.deadline:
            lane.error = TimeoutError("timed out")
        elif lane.out:
            return False
        lane.deadline = 0.0
        return True

    def _end(self, lane: Lane, error: str, job: Job | None = None) -> None:
        """The connection is done: its message (if one was under way, with `error`: '' but for a failure that
        stops the send) and its jobs never started go back to the loop; its session is closed."""
        lane.ended = True
        self.live -= 1
        lane.steps = None
        if job is not None:
            self.outcomes.put((job, None, error))
        left = [*lane.mine, *(self.waiting if not self.live else ())]
        for never in left:  # taken, never started: pending, as if still queued
            self.outcomes.put((never, None, ""))
        lane.mine.clear()
        if not self.live:
            self.waiting.clear()
        if lane.held is not None:  # its outcome waits for the commit before: it is committed after it
            job, outcome = lane.held
            lane.held = None
            lane.unrecorded.acquire()
            self.recorder.submit(job, outcome, lane.unrecorded)
        if lane.wire is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(lane.wire.sock)
            lane.wire = None
        # QUIT and its reply (up to 5 s) in a thread, as each connection's own thread said it: one after
        # another, 8 connections to a server slow to answer QUIT took 40 s
        closer = threading.Thread(target=lane.conn.close, name="mailer-close", daemon=True)
        closer.start()
        self._closers.append(closer)
