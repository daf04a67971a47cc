"""A coordinator's own workers (`send --workers N`): forked, their stderr passed on, stopped with it."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from ..campaign import UNRECORDED, Feedback, unrecorded_words
from ..config import Settings
from ..errors import ExitStatus, Interrupted
from ..ledger import Ledger
from ..stopping import SIGNALS, StopSignals
from . import GIVEN_BACK, Crew
from .alive import namespace_token, open_batches


def unrecorded_line(local: LocalWorkers) -> str:
    """What the coordinator's error adds of the local workers' messages that may not be in the record (their
    own error lines, which said so, are held back): the rerun may mail those readers again."""
    count = local.unrecorded()
    return f"; the workers: {unrecorded_words(count)}" if count else ""


RESTARTS = 3  # local workers replaced in a row while the send got no further, before no more are started


class LocalWorkers:
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
            if not open_batches(ledger, self.where):
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
        mine, here = f"{socket.gethostname()} pid ", namespace_token()
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
        return sum(stderr.unrecorded for stderr in self.stderr.values())

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
    # 'HOST pid N TOKEN', the token's first half ours
    name = f"{socket.gethostname()} pid {pid} {namespace_token()}"
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
        # what its last line that said so counts of messages that may not be in the record: its `Error:` line,
        # or one said as a signal stopped it (the coordinator's, as the record went away)
        self.unrecorded = 0
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
                if said := UNRECORDED.search(line.decode("utf-8", "replace")):
                    self.unrecorded = int(said[1])
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
        from ..cli import cli

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
