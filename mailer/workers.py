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
batches in the record (each batch's holder writes its counts there, see _Tally) and stops the workers: a
signal sets the send's state to 'stopping', which every worker sees within a renewal and stops on, as on its
own SIGTERM, after the messages in flight.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import functools
import gc
import hashlib
import itertools
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

from .campaign import THIS_RUN, UNRECORDED, Feedback, Pace, Report, SendOptions, run_share, unrecorded_words
from .config import Settings
from .console import Console
from .errors import ExitStatus, Interrupted, MailerError, NotUpYet, SendAborted
from .ledger import Ledger
from .stopping import SIGNALS, StopSignals
from .subscribers import Subscriber, dedupe_key

if TYPE_CHECKING:  # `mailer status` reads under_way() without loading the renderer
    from .message import MessageFactory
    from .render import Issue
    from .transport import Transport

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


def _me() -> str:
    """This process's name in the record: 'HOST pid N TOKEN', the token's first half this host's (_here)."""
    return f"{socket.gethostname()} pid {os.getpid()} {_here()}{secrets.token_hex(3)}"


@functools.cache
def _here() -> str:
    """What tells this kernel boot and process namespace from any other that has the same host name (two
    containers may): where a process of that name is one whose pid can be looked up from here."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        space = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: no proof from here, the leases decide
        return secrets.token_hex(3)
    return hashlib.sha256(f"{boot} {space}".encode()).hexdigest()[:6]


def _beside(name: str) -> bool:
    """Whether the process of this name runs (or ran) in this kernel and namespace."""
    host, _, rest = name.partition(" pid ")
    return host == socket.gethostname() and rest.partition(" ")[2].startswith(_here())


def _gone_from_here(name: str) -> bool:
    """Whether the process of this name ran in this kernel and namespace and has ended: provably sends
    nothing more (a pid is not reused within the few seconds this matters)."""
    pid = name.partition(" pid ")[2].partition(" ")[0]
    if not _beside(name) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, someone else's
    return False


# --- the coordinator ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crew:
    """How many processes send, and whether others may join."""

    workers: int  # local worker processes this command starts
    distributed: bool  # `mailer worker` on other hosts may join
    config_file: Path | None = None  # the configuration the workers load (the coordinator's)


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
        left = _alive_workers(ledger, where, float(options["lease"]))
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
    me = _me()
    publish(
        ledger, issue, factory, options, subscribers, expected=expected, workers=crew.workers, lease=lease,
        coordinator=me, run_id=run_id,
    )  # fmt: skip
    # A signal must not raise in the middle of a query here (the connection would keep a statement open and
    # refuse the writes that stop the send): it is noted (StopSignals, as while a send is stopping) and seen
    # at the next look.
    signals.stopping = True
    local = _Locals(issue_id, crew, settings, feedback, where)
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
        _conclude(ledger, where, run_id, report, options.max_attempts, why=local.gave_up, hurried=hurried)
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
        raise SendAborted(f"cannot follow the send in the record: {exc}{_unrecorded(local)}") from None
    local.reap()  # those that sent everything waited for the end in the record: they exit now
    if interrupted is not None:
        raise interrupted
    if report.stopped_because:
        raise SendAborted(report.stopped_because + _unrecorded(local))
    return report


def _unrecorded(local: _Locals) -> str:
    """What the coordinator's error adds of the local workers' messages that may not be in the record (their
    own error lines, which said so, are held back): the rerun may mail those readers again."""
    count = local.unrecorded()
    return f"; the workers: {unrecorded_words(count)}" if count else ""


RESTARTS = 3  # local workers replaced in a row while the send got no further, before no more are started


class _Locals:
    """The coordinator's own worker processes: each one that dies while readers are left (kill -9, the OOM
    killer, a crash) is replaced, so that the send keeps its N workers; but once RESTARTS replacements in a
    row died before the send got any further (one more outcome recorded, one more batch done), no more are
    started: a worker that cannot run would otherwise be started for ever."""

    def __init__(
        self, issue_id: str, crew: Crew, settings: Settings, feedback: Feedback, where: tuple[str, str]
    ) -> None:
        self.issue_id = issue_id
        self.crew = crew
        self.settings = settings
        self.feedback = feedback
        self.where = where
        self.procs: list[tuple[_Forked, int]] = []  # each live one, the progress at its start
        self.ended: list[_Forked] = []
        self.stderr: dict[int, _Stderr] = {}  # by pid
        self.futile = 0  # workers that died in a row while the send got no further
        self.gave_up = ""
        # this process's stderr, for a worker to speak on once this process is gone (stop_with_coordinator)
        self.own_stderr: int | None = None
        with contextlib.suppress(OSError):  # no stderr to share
            self.own_stderr = os.dup(2)

    def start(self, ledger: Ledger) -> None:
        mark = _progress(ledger, self.where)
        for _ in range(self.crew.workers):
            self._spawn(ledger, mark)

    def _spawn(self, ledger: Ledger, mark: int) -> _Forked:
        """Start a worker, followed (in procs) from the fork on: if the record cannot be reached again
        after it, the coordinator stops it with the others."""
        stderr = _Stderr()

        def started(proc: _Forked) -> None:
            stderr.pid = proc.pid
            self.stderr[proc.pid] = stderr
            self.procs.append((proc, mark))

        return _spawn(self.issue_id, self.crew, self.settings, stderr, self.own_stderr, ledger, started)

    def relay(self) -> None:
        """Pass on what the workers said since the last call, but for their `Error:` lines (see _Stderr)."""
        for stderr in self.stderr.values():
            stderr.relay()

    def replace_dead(self, ledger: Ledger) -> None:
        """Start a worker in the place of each one that died while readers are left."""
        for one in list(self.procs):
            proc, mark = one
            code = proc.poll()
            if code is None:
                continue
            self.procs.remove(one)
            self.ended.append(proc)
            # 0: nothing left; 4: a stop every worker meets (its counts say why); 129, 130, 143: a signal,
            # ours (passed on: the send stops) or from outside the send (an admin's kill: it is replaced)
            signalled = (ExitStatus.INTERRUPTED, ExitStatus.TERMINATED, ExitStatus.HUNG_UP)
            ours = bool(self.stderr[proc.pid].passed_on)
            if code in (0, ExitStatus.STOPPED) or code in signalled and ours:
                continue
            if not _open_batches(ledger, self.where):
                continue
            _free_batches_of(ledger, self.where, proc.pid)
            if code < 0:
                how = f"was killed by signal {-code} ({signal.strsignal(-code)})"
            elif code in signalled:
                how = f"was stopped by {signal.Signals(code - 128).name} from outside the send"
            else:
                how = f"exited {code}"
            said = self.stderr[proc.pid].relay()
            how += f" ({said})" if said else ""
            now = _progress(ledger, self.where)
            self.futile = 0 if now > mark else self.futile + 1
            if self.futile > RESTARTS:
                if not self.gave_up:
                    self.gave_up = (
                        f"the workers on this host died {self.futile} times in a row before the send got any"
                        f" further (the last, pid {proc.pid}, {how}); no more are started"
                    )
                    self.feedback.stopping(self.gave_up)
                continue
            new = self._spawn(ledger, now)
            self.feedback.stopping(f"worker pid {proc.pid} {how}; pid {new.pid} takes its place")

    def alive(self) -> bool:
        return any(proc.poll() is None for proc, _ in self.procs)

    def signal(self, signum: int) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                self.stderr[proc.pid].passed_on = Interrupted(signum).what.encode()
                proc.send_signal(signum)

    def gone(self, worker: str) -> bool:
        """Whether the worker of this name ('HOST pid N TOKEN') is one of ours that has ended."""
        host = socket.gethostname()
        return any(
            proc.poll() is not None and worker.startswith(f"{host} pid {proc.pid} ")
            for proc in [*self.ended, *(p for p, _ in self.procs)]
        )

    def unsettled(self, ledger: Ledger) -> bool:
        """Whether a worker of ours runs without having written its last counts: its row says 'running'
        (after a lease without news too: a loaded machine may have starved it), or it has yet to join (it
        may yet, and count). Taken for dead, its 'running' row would make the run incomplete."""
        mine, here = f"{socket.gethostname()} pid ", _here()
        states = {}
        for name, state in ledger.rows(
            "SELECT worker, state FROM send_workers WHERE issue_id = ? AND destination = ?", self.where
        ):
            named, _, token = name.rpartition(" ")  # 'HOST pid N TOKEN'
            if named.startswith(mine) and token.startswith(here):
                states[named.removeprefix(mine)] = state
        return any(
            proc.poll() is None and states.get(str(proc.pid), "running") == "running"
            for proc, _ in self.procs
        )

    def unrecorded(self) -> int:
        """How many messages the servers accepted whose outcome the workers could not write, as their
        `Error:` lines (held back from the publisher, see _Stderr) say."""
        return sum(int(m[1]) for stderr in self.stderr.values() if (m := UNRECORDED.search(stderr.error)))

    def reap(self) -> None:
        for proc, _ in self.procs:
            proc.wait()
        self.relay()
        for stderr in self.stderr.values():
            stderr.close()
        if self.own_stderr is not None:
            os.close(self.own_stderr)
            self.own_stderr = None


def _free_batches_of(ledger: Ledger, where: tuple[str, str], pid: int) -> None:
    """Give back the batches a worker of ours held when it died without giving them back itself (kill -9,
    the OOM killer, a crash), for the others to take at once rather than once its lease runs out: reaped, it
    provably sends nothing more. What it wrote of their counts stays with them (its retries, the readers it
    gave up), and its name as their owner: the next holder takes them over from it and counts their readers
    from the record at once (_Share._take_over)."""
    name = f"{socket.gethostname()} pid {pid} {_here()}"  # 'HOST pid N TOKEN', the token's first half ours
    ledger.write(
        "UPDATE send_batches SET lease_until = ? WHERE issue_id = ? AND destination = ?"
        " AND done = 0 AND substr(owner, 1, ?) = ?",
        (GIVEN_BACK, *where, len(name), name),
        rows_only=True,
    )


class _Stderr:
    """A local worker's stderr, relayed by the coordinator to its own but for the worker's `Error:` line, and
    its lines that name the stop its coordinator passed on.

    A worker that meets a failure the coordinator meets too (the record lost or not answering) says so as
    the coordinator does: the publisher would read the same error once per process. The coordinator says it
    once, and a worker's own error where it concerns that worker alone (in the line about its replacement).
    So with a stop: after a Ctrl-C the coordinator says it stops every worker, and each worker's
    "Terminated (SIGTERM): stopping ..." and "Terminated (SIGTERM)." would only repeat it (a worker
    signalled by someone else still says so, named: `worker pid 4242: Terminated (SIGTERM).` read alone in
    the coordinator's log as the end of the send, which went on).
    A file, unlinked, not a pipe: a worker outlives a coordinator killed with -9, and would die of a pipe
    with no reader the next time it writes. The file is open twice: the worker appends to one description
    (`write`); the coordinator reads the other (`read`), whose offset is where the lines it passed on end,
    and which the worker inherits too, so that once the coordinator is gone the worker passes on the rest
    itself (stop_with_coordinator): the lines it wrote since the coordinator's last look are not lost.
    """

    def __init__(self) -> None:
        self.read, path = tempfile.mkstemp(prefix="mailer-worker-", suffix=".err")
        try:
            self.write = os.open(path, os.O_WRONLY | os.O_APPEND)
        finally:
            os.unlink(path)
        self.error = ""
        self.passed_on = b""  # the name of the signal the coordinator passed on (Interrupted.what)
        self.pid = 0  # the worker's, once forked

    def relay(self) -> str:
        """Write the whole lines the worker added since the last call to this process's stderr, keeping back
        its `Error:` line; return that line ('' while it has said none). The read offset moves past them
        only once they are written: a coordinator killed in between has them said twice, not lost."""
        while True:
            at = os.lseek(self.read, 0, os.SEEK_CUR)
            chunk = os.pread(self.read, _CHUNK, at)
            whole = chunk.rfind(b"\n") + 1 or (len(chunk) if len(chunk) == _CHUNK else 0)  # a line > _CHUNK
            if not whole:
                return self.error
            for line in chunk[:whole].splitlines(keepends=True):
                if line.startswith(b"Error: "):
                    self.error = line.rstrip(b"\n").decode("utf-8", "replace")
                elif not self._echoes_the_stop(line):
                    sys.stderr.buffer.write(self._named(line))
            sys.stderr.flush()
            os.lseek(self.read, at + whole, os.SEEK_SET)

    def _echoes_the_stop(self, line: bytes) -> bool:
        """Whether the line (past its time stamp) only names the stop the coordinator passed on."""
        return bool(self.passed_on) and _names_stop(_unstamped(line)[1], self.passed_on)

    def _named(self, line: bytes) -> bytes:
        """The line, with the worker named in front of its words if they name a stop of its own."""
        stamp, text = _unstamped(line)
        if any(_names_stop(text, Interrupted(signum).what.encode()) for signum in SIGNALS):
            return stamp + f"worker pid {self.pid}: ".encode() + text
        return line

    def close(self) -> None:
        os.close(self.write)
        os.close(self.read)


_CHUNK = 1 << 16


def _unstamped(line: bytes) -> tuple[bytes, bytes]:
    """A worker's line as its time stamp with the space after it (empty on a line with none) and the rest."""
    if line[:1].isdigit():
        stamp, _, text = line.partition(b" ")
        return stamp + b" ", text
    return b"", line


def _names_stop(text: bytes, what: bytes) -> bool:
    """Whether the words are a send's own lines of its stop by a signal named `what` (Interrupted.what)."""
    return text.startswith(what + b":") or text.rstrip() == what + b"."


def _progress(ledger: Ledger, where: tuple[str, str]) -> int:
    """A number that grows with every message handed to the server or answered and every batch done."""
    (attempts,) = ledger.rows(
        "SELECT coalesce(sum(attempts), 0) FROM deliveries WHERE issue_id = ? AND destination = ?", where
    )[0]
    (batches,) = ledger.rows(
        "SELECT count(*) FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 1", where
    )[0]
    return int(attempts) + int(batches)


def _spawn(
    issue_id: str,
    crew: Crew,
    settings: Settings,
    stderr: _Stderr,
    own_stderr: int | None,
    ledger: Ledger,
    started: Callable[[_Forked], None],
) -> _Forked:
    """One local worker: `mailer worker` for this issue, with this command's configuration and environment,
    its stderr to a file of the coordinator's (_Stderr), and the coordinator's own stderr (`own_stderr`)
    for when the coordinator is gone (stop_with_coordinator).

    Forked, not started anew: a new Python process would spend some 0.3 s of CPU importing and loading
    what this one has loaded already (a third of a 2-worker send's CPU at 5,000 readers), and its readers
    would wait for it. The child keeps nothing of the coordinator's but its modules: its record connection
    is closed over the fork (Ledger.closed_for_fork), every other descriptor it inherited is pointed at
    /dev/null (the issue's lock, the database's sockets: the coordinator's alone, as an exec'd process's
    close_fds made them), and it runs the `worker` command as a new process would and ends with os._exit
    (neither the coordinator's exit handlers nor its objects' finalizers run there).

    In a session of its own, so that a Ctrl-C at the terminal reaches the coordinator alone, which passes
    one SIGTERM on (a second would hurry the worker's stop)."""
    env = {}
    if crew.config_file is not None:
        env["MAILER_CONFIG"] = str(crew.config_file.absolute())
    if settings.offline:
        env["MAILER_OFFLINE"] = "1"
    keep = {stderr.write}
    if own_stderr is not None:
        env[COORDINATOR] = f"{os.getpid()}:{own_stderr}:{stderr.read}"
        keep |= {own_stderr, stderr.read}
    argv = ["worker", "--issue", issue_id, "--quiet"]
    for stream in (sys.stdout, sys.stderr):  # what is buffered is the coordinator's to write, once
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    gc.collect()  # a connection to the record left for the collector is closed here, not carried over
    with ledger.closed_for_fork():
        # the stop signals wait (pending) across the fork: in the child until the worker's own handlers
        # are in place (StopSignals.install unblocks them), in the coordinator until it follows the child
        with _held(SIGNALS):
            pid = os.fork()
            if pid == 0:
                _become_worker(argv, env, stderr.write, keep)
            proc = _Forked(pid)
            started(proc)  # before the record is reconnected, which may fail (the database gone meanwhile)
    return proc


@contextlib.contextmanager
def _held(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """Block these signals in this thread for the block: one that comes meanwhile waits, pending, and is
    handled as the block ends (a forked child inherits the mask, and keeps them blocked until it unblocks).

    Without it a SIGTERM or SIGINT that reached a worker between the fork and its own handlers ran the
    coordinator's handler copied into it, which only noted it (the worker then sent on, out of reach), or,
    after the child's reset of the handlers, killed it without its clean stop."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _become_worker(argv: list[str], env: dict[str, str], stderr: int, keep: set[int]) -> NoReturn:
    """In the forked child: be a `mailer worker` process as one started anew would be, then end.

    The stop signals are blocked (_held) until the worker's StopSignals are installed: one sent meanwhile
    (the coordinator's SIGTERM, a Ctrl-C at the terminal before setsid) waits for them, and stops the worker
    cleanly (exit 130, 143) rather than killing it or being noted by the coordinator's handler and lost."""
    code: Any = 1
    try:
        for signum in SIGNALS:  # the coordinator's handlers: not ours (a blocked signal stays pending)
            signal.signal(signum, signal.SIG_DFL)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(stderr, 2)
        for name in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"):  # macOS
            fd = int(name)
            if fd > 2 and fd != null and fd not in keep:
                with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                    os.dup2(null, fd)
        os.environ.update(env)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
        from .cli import cli

        cli.main(args=argv, prog_name="mailer")
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # what a new process would have said before dying of it
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code if isinstance(code, int) else 0 if code is None else 1)


class _Forked:
    """A forked worker, as the coordinator follows it: its pid, and its exit code once it has ended (minus
    the signal that killed it), as subprocess.Popen has them."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # not reaped: the pid is still this worker's
            os.kill(self.pid, signum)


# a local worker's coordinator: "PID:FD:READ", FD the coordinator's stderr, READ the description of the
# worker's own stderr file that the coordinator reads it from (_Stderr), both inherited
COORDINATOR = "MAILER_COORDINATOR"


def stop_with_coordinator(signals: StopSignals) -> None:
    """In a worker of `send --workers N`: stop as on SIGTERM when the coordinator dies, however it dies.

    The worker runs in a session of its own, so once its coordinator is killed (kill -9, the OOM killer)
    nothing else would stop it: it would send on, out of the publisher's reach (a Ctrl-C no longer gets to
    it), unseen (its stderr goes into a file only the coordinator read), and a rerun would be refused
    until it ended. So the kernel signals it when its parent dies (PR_SET_PDEATHSIG; the coordinator starts
    its workers from its main thread, whose end is what counts), and it says so on the coordinator's own
    stderr, where its later lines go too, after the lines the coordinator had yet to pass on (those of the
    last 0.2 s: see _Stderr), then stops after the messages in flight. Linux only; elsewhere such a worker
    finishes the send, as a `mailer worker` of another host does.
    """
    pid, fd, unread = (os.environ.pop(COORDINATOR, "").split(":") + ["", ""])[:3]
    if not (pid.isdigit() and fd.isdigit() and unread.isdigit()) or not sys.platform.startswith("linux"):
        return

    def gone(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # once
        _pass_on(int(unread), int(fd))
        os.dup2(int(fd), 2)
        _pass_on(int(unread), int(fd))  # what another thread of this worker wrote in the meantime
        os.write(
            2,
            f"worker pid {os.getpid()}: its coordinator (pid {pid}) is gone: stopping after the messages in"
            " flight; run the same send command again to send the rest\n".encode(),
        )
        signals.handle(signal.SIGTERM, frame)

    signal.signal(signal.SIGUSR1, gone)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGUSR1)
    if os.getppid() != int(pid):  # it died before the kernel was told
        gone(signal.SIGUSR1, None)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _pass_on(unread: int, out: int) -> None:
    """Copy what is left to read of this worker's stderr file to `out` (the coordinator's stderr)."""
    while chunk := os.read(unread, _CHUNK):
        while chunk:
            chunk = chunk[os.write(out, chunk) :]


@dataclass(frozen=True)
class _Watch:
    """What the coordinator looks at the record with, and reports to: its send's row (`where`), its own
    workers, and the check of the issue's lock that proves it alive."""

    ledger: Ledger
    where: tuple[str, str]
    lease: float
    report: Report
    feedback: Feedback
    local: _Locals
    held: Callable[[], None]
    waiting: str  # what the send waits for until a worker has joined, said instead of its progress
    said: list[float] = field(default_factory=lambda: [time.monotonic()])  # when it last said it is alive
    tally: _Tally = field(default_factory=lambda: _Tally())
    # once a signal stopped the send: no progress drawn until the counts at the end (the record lags its
    # workers' last replies by up to a quarter lease: "0/10 messages, 0 sent" came right before "10/10")
    ending: list[bool] = field(default_factory=lambda: [False])

    def tick(self) -> None:
        """Say the coordinator is alive (while it holds the issue's lock), every quarter lease as a worker
        renews its leases: a commit at every look would take the record's write lock from the workers'
        outcomes five times a second; pass on what its workers said, and show every worker's counts so far
        as one report, its readers' counts from the batches in the record (_Tally)."""
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
            not local.gone(n) for n in _alive_workers(self.ledger, self.where, self.lease)
        ):
            self.tick()
            time.sleep(ENDING)


class _Tally:
    """The live count of a send's readers, from the record: the counts of the batches done, and those so far
    of the batches claimed and not done (written by their holders with each lease renewal, and as a holder
    gives one back). Each reader is in one batch and counted there once, by whoever holds it last (the next
    holder counts the readers dealt with before it from the record's outcomes, campaign._unsent), and only
    once its outcome is in the record: the count never passes the record's and never counts a reader twice;
    it lags it by at most a quarter lease of a batch's holder, and by nothing once a batch is done.

    Cheap at every look: the batches done are added up once each (those below the first batch not done,
    `frontier`, are folded into `base`); a look reads the batches done since the last one, and the few
    claimed and not done (an index range: done = 0 and lease_until > 0), not the readers of the send."""

    def __init__(self) -> None:
        self.frontier = 0
        self.base = dict.fromkeys(READERS, 0)
        self.folded: set[int] = set()  # batches done at or above the frontier, in `base` already

    def read(self, ledger: Ledger, where: tuple[str, str]) -> dict[str, int]:
        """The readers' counts now. The batches done first, then those open: a batch done in between is in
        neither, never in both (on PostgreSQL each statement sees the record of its own moment)."""
        skip = sorted(self.folded)
        finished = ledger.rows(
            "SELECT batch_no, counts FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 1"
            " AND batch_no >= ?" + (f" AND batch_no NOT IN ({','.join('?' * len(skip))})" if skip else ""),
            (*where, self.frontier, *skip),
        )
        for number, counts in finished:
            _add(self.base, counts)
            self.folded.add(int(number))
        while self.frontier in self.folded:
            self.folded.remove(self.frontier)
            self.frontier += 1
        now = dict(self.base)
        for (counts,) in ledger.rows(
            "SELECT counts FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 0"
            " AND lease_until > 0",
            where,
        ):
            _add(now, counts)
        return now


def _add(totals: dict[str, int], counts: str | None) -> None:
    """Add a batch's counts of readers (its JSON in the record) to `totals`."""
    found = json.loads(counts or "{}")
    for name in READERS:
        totals[name] += int(found.get(name, 0))


def _alive_workers(ledger: Ledger, where: tuple[str, str], lease: float, but: str = "") -> list[str]:
    """The workers that are still at the send: their row says 'running' and is younger than a lease (each
    writes it every quarter lease), on the record's clock, and no sign says it has ended (_dead,
    _gone_from_here)."""
    rows = ledger.rows(
        "SELECT worker, counts FROM send_workers WHERE issue_id = ? AND destination = ? AND state = 'running'"
        f" AND updated_at >= {ledger.stamp} AND worker != ?",
        (*where, lease + 1.0, but),
    )
    dead = _dead(ledger, rows)
    # one of this host whose process has ended (killed, or stopped with the record unwritable) is not
    return [name for name, _ in rows if name not in dead and not _gone_from_here(name)]


def _dead(ledger: Ledger, workers: list[Any]) -> set[str]:
    """Those of the (name, counts) of workers that have ended, on any host, as the record's engine tells
    (PostgreSQL): each holds its lock on every session it has (Ledger.hold_worker, and its counts say so),
    and the server lets go of it once the last of them has ended, at once when the process dies (kill -9,
    a crash: the kernel closes its sockets). One whose host vanished (a power cut, a network cut) keeps its
    sessions until the server notices, and its lease decides. A worker alive whose sessions all ended (an
    administrator, the server's keepalives) commits no outcome, so sends no further "." than the one per
    connection a kill -9 leaves: taken for dead, it repeats no more than one killed would."""
    marked = [name for name, counts in workers if json.loads(counts or "{}").get("held")]
    held = ledger.held_workers(marked)
    return set() if held is None else set(marked) - held


def _free_dead(ledger: Ledger, where: tuple[str, str]) -> None:
    """End the leases of workers that have ended (_dead), for the others to take their batches over at once
    rather than once the leases run out (the coordinator does so for its own, _free_batches_of). The owner
    stays: the next holder takes the batch over from it (WorkResult.takeovers)."""
    if ledger.held_workers(()) is None:  # the engine cannot tell: the leases decide
        return
    holders = ledger.rows(
        "SELECT DISTINCT w.worker, w.counts FROM send_batches AS b JOIN send_workers AS w"
        " ON w.issue_id = b.issue_id AND w.destination = b.destination AND w.worker = b.owner"
        f" WHERE b.issue_id = ? AND b.destination = ? AND b.done = 0 AND b.lease_until > {ledger.now}",
        where,
    )
    for name in sorted(_dead(ledger, holders)):
        ledger.write(
            "UPDATE send_batches SET lease_until = ? WHERE issue_id = ? AND destination = ? AND owner = ?"
            " AND done = 0",
            (GIVEN_BACK, *where, name),
            rows_only=True,
        )


def _finished(ledger: Ledger, where: tuple[str, str], local: _Locals, crew: Crew) -> bool:
    """Every batch done; or no worker of ours left and none elsewhere holding a lease (stopped or died)."""
    if not _open_batches(ledger, where):
        return True
    # local.procs, not whether one runs: a worker started a moment ago may have died already (a loaded
    # machine), and replace_dead has yet to replace it or give up
    if local.procs or not crew.workers:
        return False
    _free_dead(ledger, where)
    return not _live_leases(ledger, where)


def _others_at_it(ledger: Ledger, where: tuple[str, str], lease: float) -> bool:
    """Whether a worker that may still send holds a batch, or has yet to write that it stopped."""
    _free_dead(ledger, where)
    return _live_leases(ledger, where) or bool(_alive_workers(ledger, where, lease))


def _open_batches(ledger: Ledger, where: tuple[str, str]) -> int:
    (left,) = ledger.rows(
        "SELECT count(*) FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 0", where
    )[0]
    return int(left)


def _live_leases(ledger: Ledger, where: tuple[str, str]) -> bool:
    rows = ledger.rows(
        "SELECT 1 FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 0"
        f" AND lease_until > {ledger.now} LIMIT 1",
        where,
    )
    return bool(rows)


def _conclude(
    ledger: Ledger,
    where: tuple[str, str],
    run_id: int | None,
    report: Report,
    max_attempts: int,
    *,
    why: str = "",
    gone: str = "",
    ended: bool = False,
    hurried: bool = False,
) -> bool:
    """End the send in the record: 'done' when every reader was dealt with, else 'stopped'; and the run
    complete when every message went out. The report's counts of readers are the record's (_outcomes).
    With `gone` (a worker ends it in the coordinator's place), only a send still open of that coordinator,
    which has not been heard of for a lease, or, `ended`, whose session has ended (_coordinator_ended).
    `hurried`: a stop that called replies off stays one, even with every reader dealt with.
    Whether this call ended it."""
    _outcomes(ledger, where, run_id, report, max_attempts)
    if not report.pending and not hurried:
        # a worker's own stop (a failure the others did not meet), or a signal that came as the last
        # replies did (see coordinate): every reader was dealt with, no reply called off
        report.stopped_because = ""
    if report.pending and not report.stopped_because:
        report.stopped_because = (
            f"{report.pending} reader(s) not sent:"
            f" {why or 'every worker stopped or died before them (their errors are above)'};"
            " run the same command again to resume"
        )
    state = "done" if report.pending == 0 and not report.stopped_because else "stopped"
    sql = "UPDATE sends SET state = ?, alive_until = 0 WHERE issue_id = ? AND destination = ?"
    params: tuple[Any, ...] = (state, *where)
    if gone:
        sql += " AND state IN ('running', 'stopping') AND coordinator = ?"
        params += (gone,)
    if gone and not ended:
        sql += f" AND alive_until < {ledger.now}"
    with ledger.transaction():
        ended = bool(ledger.rows(sql + " RETURNING state", params))
        if ended and run_id is not None:
            ledger.count_run(run_id, report.suppressed)
        if ended and report.complete and run_id is not None:
            ledger.finish_run(run_id)
    return ended


def add_up(report: Report, counts: list[dict[str, Any]]) -> None:
    """The report's counts as the sum of the workers' (what each last wrote to the record)."""
    for name in COUNTED:
        setattr(report, name, sum(int(c.get(name, 0)) for c in counts))
    report.failures = {}
    for c in counts:
        for reason, n in c.get("failures", {}).items():
            report.failures[reason] = report.failures.get(reason, 0) + n
        if c.get("stopped") and not report.stopped_because:
            report.stopped_because = c["stopped"]


def _outcomes(
    ledger: Ledger, where: tuple[str, str], run_id: int | None, report: Report, max_attempts: int
) -> None:
    """Set the report's counts of readers (sent, already sent, suppressed, failed, in doubt, not sent) as
    the record has them, which add up to the send's readers whoever dealt with them: a batch done has the
    counts of the worker that finished it (written with its done mark; readers a worker stopped or killed
    half-way through it had mailed count as this run's outcomes, see campaign._unsent); the readers of a
    batch not done count as their state in the record says, this run's outcome or one from before it, or
    as not sent (pending), but for one given up after its retries (the batch's counts say so, or the record's
    `max_attempts` attempts in this run when its holder stopped before it could write that). Not the
    workers' own counts: a killed worker's last ones die with it. So are the retries (the batches'), the
    failure reasons and the readers refused for good and suppressed (_failures)."""
    totals = dict.fromkeys(READERS, 0)
    given_up: list[str] = []
    retries = 0
    for (counts,) in ledger.rows(
        "SELECT counts FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 1", where
    ):
        _add(totals, counts)
        found = json.loads(counts or "{}")
        retries += int(found.get("retries", 0))
        given_up += found.get("given_up", {}).values()
    pending = 0
    for readers, counts in ledger.rows(
        "SELECT readers, counts FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 0", where
    ):
        emails = [r[0] for r in json.loads(readers)]
        batch = _Batch.taken(0, readers, counts)
        retries += batch.retries
        _tried_before(ledger, where, run_id, batch, max_attempts)
        gave_up = batch.given_up
        counted, _ = _counted(ledger, where, run_id, emails, gave_up)
        for key, name in counted.items():
            totals[name] += 1
            if name == "failed_temporary":
                given_up.append(gave_up[key])
        pending += len({dedupe_key(e) for e in emails}) - len(counted)
    for name, n in totals.items():
        setattr(report, name, n)
    report.pending = pending
    report.retries = retries
    _failures(ledger, where, run_id, report, given_up)


def _counted(
    ledger: Ledger,
    where: tuple[str, str],
    run_id: int | None,
    emails: list[str],
    given_up: dict[str, str],
    retry_failed: bool = False,
) -> tuple[dict[str, str], int]:
    """How the send counts each reader of a batch the record has an answer for now (dedupe key -> a READERS
    name), as the send loop does (campaign._unsent): this run's outcome, or given up after its retries
    (`given_up`, the batch's), suppressed, or what a run before this one did; not those still to be mailed.
    And how many of those are to be tried again: refused for now in this run (by a holder before)."""
    suppressed, states, ours = ledger.looked_up(where[0], emails, run_id)
    counted = {}
    again = 0
    for key in {dedupe_key(e) for e in emails}:
        state = states.get(key)
        if key in ours and state in THIS_RUN:
            counted[key] = THIS_RUN[state]
        elif key in ours and state == "deferred" and key in given_up:
            counted[key] = "failed_temporary"
        elif key in suppressed:
            counted[key] = "suppressed"
        elif state == "sent" or (state in BEFORE and not retry_failed):
            counted[key] = BEFORE[str(state)]
        elif key in ours and state == "deferred":
            again += 1
    return counted, again


def _failures(
    ledger: Ledger, where: tuple[str, str], run_id: int | None, report: Report, given_up: list[str]
) -> None:
    """The report's failure reasons and bounces as the record has them: this run's deliveries that failed
    for good or were left in doubt, by reply (as the send loop names them: str(Outcome)), the readers given
    up (`given_up`, their batches' reasons), and of those failed, the ones suppressed (refused as readers)."""
    report.failures = {}
    for reason in given_up:
        report.failures[reason] = report.failures.get(reason, 0) + 1
    if run_id is None:
        return
    for code, reply, n in ledger.rows(
        "SELECT last_code, last_reply, count(*) FROM deliveries WHERE issue_id = ? AND destination = ?"
        " AND state IN ('failed', 'sending') AND run_id = ? GROUP BY last_code, last_reply",
        (*where, run_id),
    ):
        reason = _reason(code, reply)
        report.failures[reason] = report.failures.get(reason, 0) + int(n)
    ((bounced,),) = ledger.rows(
        "SELECT count(*) FROM deliveries AS d JOIN suppressions AS s ON s.email = d.email"
        " WHERE d.issue_id = ? AND d.destination = ? AND d.state = 'failed' AND d.run_id = ?",
        (*where, run_id),
    )
    report.bounced = int(bounced)


def _reason(code: object, reply: object) -> str:
    """A failure as the send loop names it (str(Outcome), cut as the report's keys are) from the record's
    last code and reply."""
    return (f"{code} {reply}" if code else str(reply))[:120]


# the Report fields that count readers, each reader once (with `pending`); a state recorded before this run
READERS = (
    "sent", "already_sent", "suppressed", "failed_before", "failed_temporary", "failed_permanent", "in_doubt",
    "in_doubt_before",
)  # fmt: skip
BEFORE = {"sent": "already_sent", "failed": "failed_before", "sending": "in_doubt_before"}


def under_way(ledger: Ledger, issue_id: str) -> dict[str, Any] | None:
    """A send of the issue by workers that is running or stopping (for `mailer status`), or None.

    `coordinator_heard_ago`: the seconds since its coordinator last said it is alive (it does every quarter
    `lease`, on the record's clock); `coordinator_gone`: that is more than a lease ago (killed, its host down,
    and no word since: until then it may be only slow or stopped, and may yet send), or it is a process of
    this host that has ended (it stopped on an error with the record away, so could not say so there), or
    its session with the record has ended (_coordinator_ended); its workers then finish the send and the
    last of them ends it, or, with no worker left ("workers": 0), it waits for a rerun."""
    where = (issue_id, ledger.destination)
    found = ledger.rows(
        f"SELECT s.state, s.coordinator, s.started_at, s.alive_until - {ledger.now}, s.options,"
        " count(b.batch_no), coalesce(sum(b.done), 0)"
        " FROM sends AS s LEFT JOIN send_batches AS b USING (issue_id, destination)"
        " WHERE s.issue_id = ? AND s.destination = ? AND s.state IN ('running', 'stopping')"
        " GROUP BY s.issue_id, s.destination, s.state, s.coordinator, s.started_at, s.alive_until, s.options",
        where,
    )
    if not found:
        return None
    state, coordinator, started, left, options, batches, done = found[0]
    lease = float(json.loads(options)["lease"])
    workers = _alive_workers(ledger, where, lease)
    heard_ago = max(0.0, lease - float(left))
    return {
        "state": state, "coordinator": coordinator, "started_at": started, "batches": int(batches),
        "batches_done": int(done), "workers": len(workers), "lease": lease,
        "coordinator_heard_ago": round(heard_ago, 1),
        "coordinator_gone": left < 0 or _gone_from_here(coordinator)
        or _coordinator_ended(ledger, issue_id),
    }  # fmt: skip


def _coordinator_ended(ledger: Ledger, issue_id: str) -> bool:
    """Whether the coordinator of the issue's send has ended, on any host, as the record's engine tells
    (PostgreSQL): it holds the issue's lock from before it puts the send in the record until it has ended
    it there (send.py, issue_lock), and the server lets go of the lock once its session has ended, at once
    when the process dies on a host that stays up (kill -9, the OOM killer: the kernel closes its sockets).
    One stopped (kill -STOP, a paused VM) or whose host vanished keeps its session: its lease decides. One
    whose session ended under it stops at its next look (`lost the lock`), before it says it is alive."""
    return ledger.issue_locked(issue_id) is False


def under_way_line(send: dict[str, Any]) -> str:
    """under_way()'s answer for a person: with how long ago the coordinator last said it is alive, and the
    lease after which it is taken for gone, so that a silent one shows as such before its lease runs out."""
    done = f"{send['batches_done']} of {send['batches']} batches done"
    heard = f"last heard from {send['coordinator_heard_ago']:.0f} s ago"
    lease = f"{send['lease']:g} s"
    doing = "sending" if send["state"] == "running" else "stopping"
    if not send["coordinator_gone"]:
        return (
            f"  {doing} now: {send['workers']} worker(s), {done} (coordinated by {send['coordinator']}, since"
            f" {send['started_at']}; {heard}: it says so every {send['lease'] / 4:g} s, and is taken for gone"
            f" after {lease} without a word)"
        )
    late = send["coordinator_heard_ago"] > send["lease"]
    here = _beside(send["coordinator"])
    why = (
        f"past its {lease} lease"
        if late
        else "its process here ended"
        if here
        else "it no longer holds the issue's lock"
    )
    who = f"its coordinator ({send['coordinator']}; {heard}, {why})"
    if send["workers"]:
        return (
            f"  {doing} now: {send['workers']} worker(s), {done}; {who} is gone: the workers finish the send"
            " and the last one records its end"
        )
    return (
        f"  stopped half-way: {done}; {who} and every worker are gone: run the same send command again to"
        " send the rest"
    )


# --- a worker ----------------------------------------------------------------------------------------------


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
    from .keymarks import joining_keyring
    from .message import make_factory
    from .post import parse_post
    from .render import render_issue
    from .transport import make_transport

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
        self.name = _me()
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
                    _free_dead(ledger, self.where)
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
        killed, its host down; or it let go of the issue's lock, _coordinator_ended) and no other worker is
        left, end it here, as the coordinator would have."""
        rows = ledger.rows(
            f"SELECT state, CASE WHEN alive_until >= {ledger.now} THEN 1 ELSE 0 END, coordinator FROM sends"
            " WHERE issue_id = ? AND destination = ?",
            self.where,
        )
        if not rows or rows[0][0] not in ("running", "stopping"):
            return True
        _, heard, coordinator = rows[0]
        ended = _coordinator_ended(ledger, self.where[0])
        if (heard and not ended) or _alive_workers(ledger, self.where, self.lease, but=self.name):
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
        if _conclude(ledger, self.where, run, report, attempts, why=why, gone=coordinator, ended=ended):
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
        add_up(total, [_counts(r) for r in self.reports])
        total.pending = sum(r.pending for r in self.reports)
        return total

    def counts(self) -> dict[str, Any]:
        """What the record says this worker did, so far, and whether it holds its lock (_dead)."""
        return {**_counts(self.total()), **({"held": True} if self.held else {})}

    def write_counts(self, state: str = "running", ledger: Ledger | None = None) -> None:
        """Write this worker's counts to the record (the coordinator adds them up)."""
        db = ledger or self.ledger
        db.write(
            f"UPDATE send_workers SET counts = ?, state = ?, updated_at = {db.stamp}"
            " WHERE issue_id = ? AND destination = ? AND worker = ?",
            (json.dumps(self.counts()), state, 0.0, *self.where, self.name),
            rows_only=True,
        )


def _counts(report: Report) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(report, name) for name in COUNTED}
    out["failures"] = dict(report.failures)
    if report.stopped_because and report.stopped_because != "interrupted":
        out["stopped"] = report.stopped_because
    return out


@dataclass
class _Batch:
    """A batch claimed, and what its holders did with it so far: what the record keeps in its `counts`, as
    its holder writes them (as it claims it, with every lease renewal, as it gives a reader up or the batch
    back, with its done mark) and the next holder takes them up (the retries, the readers given up and each
    reader's attempts before this run; the readers' counts it makes again from the record's outcomes, see
    campaign._unsent)."""

    number: int
    readers: list[Subscriber]
    left: int
    counts: dict[str, int] = field(default_factory=dict)  # its readers' outcomes so far (Share.settled)
    retries: int = 0
    given_up: dict[str, str] = field(default_factory=dict)  # reader (dedupe key) -> its last failure
    # reader (dedupe key) -> the record's attempts before this run, as the batch was first claimed: a next
    # holder counts this run's from them (the record's attempts count every run's)
    before: dict[str, int] = field(default_factory=dict)
    # readers counted in `counts` as the batch was taken over (_Share._take_over): settled, not counted again
    counted: set[str] = field(default_factory=set)
    tried: dict[str, int] = field(default_factory=dict)  # reader -> this run's attempts by holders before

    @classmethod
    def taken(cls, number: int, readers: str, counts: str) -> _Batch:
        subs = [Subscriber(e, n, MappingProxyType(f), 0) for e, n, f in json.loads(readers)]
        before = json.loads(counts or "{}")
        given_up = dict(before.get("given_up", {}))
        attempts = dict(before.get("attempts_before", {}))
        return cls(number, subs, len(subs), {}, int(before.get("retries", 0)), given_up, attempts)

    def record(self) -> dict[str, Any]:
        """Its counts as the record keeps them (copies: the loop's thread adds to them meanwhile)."""
        return {
            **dict(self.counts), "retries": self.retries, "given_up": dict(self.given_up),
            "attempts_before": dict(self.before),
        }  # fmt: skip


class _Share:
    """One round's share of the send (campaign.Share): claims batches as the loop asks for readers."""

    def __init__(self, worker: _Worker, report: Report) -> None:
        self.worker = worker
        self.keeper = worker.keeper
        self.report = report
        self.batch_of: dict[int, _Batch] = {}  # id(subscriber) -> its batch (the loop passes the same object)

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

    def _claim(self) -> _Batch | None:
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
            batch = keeper.batches[number] = _Batch.taken(number, readers, counts)
            if not fresh:  # held before (a holder's name or counts stay with a batch)
                self._take_over(batch)
        w.result.batches += 1
        w.result.takeovers += bool(owner)
        return batch

    def _take_over(self, batch: _Batch) -> None:
        """Count the readers of a batch that had another holder as the record has them, and write that at
        once (the caller holds the keeper's lock: no renewal comes between): the live count (_Tally) would
        show the counts that holder last wrote (a killed one's lag its outcomes) until this one's next
        renewal, and a renewal that came before the loop counted them would show none. A reader the other
        refused for now in this run, and this one tries again, is a retry of the batch's from here, its
        attempt counting on from the attempts this run made (_tried_before)."""
        w = self.worker
        emails = [sub.email for sub in batch.readers]
        _tried_before(w.ledger, w.where, w.plan.options.get("run"), batch, w.options.max_attempts)
        counted, again = _counted(
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


def _tried_before(
    ledger: Ledger, where: tuple[str, str], run_id: int | None, batch: _Batch, max_attempts: int
) -> None:
    """The attempts this run made at each reader of a batch taken over that is refused for now and not given
    up (the record's attempts since the batch was first claimed): one tried `max_attempts` times is given up
    with its last reply, as its holder would have written had it lived or had the record taken that write;
    the others are tried on from the attempt after them (Share.tried). Before, such a reader was tried
    `max_attempts` times more by each holder."""
    keys = [sub.key for sub in batch.readers if sub.key not in batch.given_up]
    if run_id is None or not keys:
        return
    marks = ", ".join("?" * len(keys))
    for key, attempts, code, reply in ledger.rows(
        "SELECT email, attempts, last_code, last_reply FROM deliveries WHERE issue_id = ? AND destination = ?"
        f" AND run_id = ? AND state = 'deferred' AND email IN ({marks})",
        (*where, run_id, *keys),
    ):
        made = int(attempts) - batch.before.get(str(key), 0)
        if made >= max_attempts:
            batch.given_up[str(key)] = _reason(code, reply)
        else:
            batch.tried[str(key)] = max(made, 1)


def claim(
    ledger: Ledger, where: tuple[str, str], name: str, lease: float
) -> tuple[int, str, str, str, bool] | None:
    """Lease the first batch not done whose lease ran out (or never was) to `name` for `lease` seconds, both
    on the record's clock (Ledger.now: no host's clock, which may be off or stepped, decides): its number,
    readers (JSON), former owner ('' if none), counts (JSON: see _Batch) and whether it was never claimed
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


def write_partial(ledger: Ledger, where: tuple[str, str], name: str, batches: dict[int, _Batch]) -> None:
    """Write the counts so far of the batches `name` holds (for the live count, and for whoever takes one of
    them over), in the caller's transaction."""
    for batch in list(batches.values()):
        ledger.write(
            "UPDATE send_batches SET counts = ? WHERE issue_id = ? AND destination = ? AND batch_no = ?"
            " AND owner = ? AND done = 0",
            (json.dumps(batch.record()), *where, batch.number, name),
        )


# the lease_until of a batch given back: free at once (it is in the past), and told from one never claimed
# (0), whose counts are none, so that the live count reads only the batches claimed (_Tally)
GIVEN_BACK = 1.0

MARGIN = 0.25  # of the lease: a worker stops delivering this long before another may take its batch
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
        self.batches: dict[int, _Batch] = {}  # those held, by number: their counts go to the record
        self.valid_until = 0.0  # on ledger.lease_clock(): no "." after this unless renewed
        self.lost = ""
        self.stopping = False
        self.hurried = False
        self.state = "running"  # the send's, as last read
        self.slots: list[float] = []
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

    def wait(self, stop: threading.Event) -> None:
        """The shared rate limit: take the next start time reserved, reserving more when none is left.

        A start time more than an interval gone is dropped, as a lone send's limiter does: a worker held up
        (its server slow to answer) must not send the start times it missed back to back, on top of the
        other workers' messages on schedule."""
        if not self.interval:
            return
        with self.cond:
            while True:
                now = self.ledger.lease_clock()
                while self.slots and self.slots[0] < now - self.interval:
                    self.slots.pop(0)
                if self.slots or stop.is_set() or self.closing:
                    break
                self.wanted = True
                self.cond.notify_all()
                self.cond.wait(0.5)
            if not self.slots:
                return
            slot = self.slots.pop(0)
        delay = slot - now
        if delay > 0:
            stop.wait(delay)

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
        ledger.lease_clock() no sooner than they come there (measured from after the statement).

        Each worker holds at most one chunk ahead, so the next free time is never further off than a chunk
        per worker; one that is was reserved before the record's clock was stepped back, and is dropped for
        now: else every worker would wait out the step (ten minutes back held a send ten minutes)."""
        span = self.chunk * self.interval
        now = ledger.now
        workers = "(SELECT COUNT(*) FROM send_workers WHERE issue_id = ? AND destination = ?)"
        with ledger.transaction(rows_only=True):  # one row: concurrent reservations queue on its lock
            end, then = ledger.rows(
                f"UPDATE sends SET next_slot = CASE WHEN next_slot > {now}"
                f" AND next_slot <= {now} + ? * (1 + {workers}) THEN next_slot ELSE {now} END + ?"
                f" WHERE issue_id = ? AND destination = ? RETURNING next_slot, {now}",
                (span, *self.where, span, *self.where),
            )[0]
        here = ledger.lease_clock() - float(then)
        with self.cond:
            self.slots.extend(here + end - span + i * self.interval for i in range(self.chunk))
            self.cond.notify_all()

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


__all__ = ["Crew", "Interrupted", "WorkResult", "coordinate", "work"]
