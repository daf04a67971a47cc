"""The floor of a send with one thread driving every connection: a bare prototype against `mailer send`.

    .venv/bin/python bench/select_floor.py --count 10000 --connections 1,8 --rounds 3

mailer's send ran a thread per connection, a recorder thread and the loop's thread: at 8 connections, ten
threads handing the GIL and each other's work back and forth (about 8 context switches per message). This
prototype measured the other shape, which mailer's send has had since (pool.Pool: one thread drives the
connections, the loop builds in its own, a recorder thread commits); it stays as the floor of that shape, what
the send costs without its loop, its checks and its SMTP rules. It sends the same messages to the same
smtp-sink: one thread drives every connection's non-blocking socket through a selector, builds each message
there, and a recorder thread commits the outcomes in batches
(`Ledger.record_outcomes`, SQLite with synchronous=FULL) and hands each committed batch back with one byte
on a pipe. The parts are mailer's own: the rendered example post, `MessageFactory.build_pieces`, the VERP
sender, `DotStuffer`, the per-batch lookup of `Ledger.states`. The guarantee is kept: a connection's "."
goes out only once the outcome of its previous message is committed. What it leaves out: everything but the
happy path of a PIPELINING server in plain text (no TLS, AUTH, BDAT, timeouts, refusals, retries,
reconnects, signals, rate limit), which a real loop of this shape would need.

Each round runs the prototype and then `mailer send --connections N` (this tree) against one smtp-sink, and
prints for each the CPU per 1,000 messages of the whole process and of the send alone (for the prototype,
from the first connection to the last commit; for `mailer send`, the whole process less that of a send to a
tenth of the list, at most 100 readers, scaled), and msg/s over the whole process. Either exits non-zero
unless every message is recorded as sent.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: the sink, the list and the send it times)


@dataclass(slots=True)
class _Job:
    email: str
    sender: str
    data: bytes


@dataclass
class _Conn:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    job: _Job | None = None
    ahead: _Job | None = None  # its MAIL, RCPT and DATA went out behind this job's "."
    waiting: int = 0  # replies still to come for the commands sent
    phase: str = "idle"  # 'commands' (MAIL, RCPT, DATA), 'gate' (body sent, "." waits), 'end', 'idle'
    committed: bool = True  # the outcome of its previous message is committed


class _Recorder:
    """Commit what the connections hand over, batch after batch; say each commit with one byte on a pipe."""

    def __init__(self, ledger: object, issue_id: str) -> None:
        self.parent = ledger
        self.issue_id = issue_id
        self.cv = threading.Condition()
        self.inbox: list[tuple[_Conn, _Job, int, str]] = []
        self.done: collections.deque[list[tuple[_Conn, _Job, int, str]]] = collections.deque()
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, item: tuple[_Conn, _Job, int, str]) -> None:
        with self.cv:
            self.inbox.append(item)
            if len(self.inbox) == 1:
                self.cv.notify()

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify()
        self.thread.join()

    def _run(self) -> None:
        ledger = self.parent.reopen()  # type: ignore[attr-defined]
        while True:
            with self.cv:
                while not self.inbox and not self.stopping:
                    self.cv.wait()
                if not self.inbox:
                    return
                batch, self.inbox = self.inbox, []
            ledger.record_outcomes(
                self.issue_id, [(j.email, "sent", code, text) for _, j, code, text in batch]
            )
            ledger.in_place()
            self.done.append(batch)
            os.write(self.wake_w, b".")


def _open(port: int) -> _Conn:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock.makefile("rb") as f:
        if not f.readline().startswith(b"220"):
            raise SystemExit("no greeting from the sink")
        sock.sendall(b"EHLO bench.example\r\n")
        while f.readline()[3:4] != b" ":
            pass
    sock.setblocking(False)
    return _Conn(sock)


def prototype(port: int, count: int, connections: int, tmp: Path) -> tuple[float, float, float]:
    """Send `count` messages; return (process CPU s, send CPU s, send wall s)."""
    cpu0 = time.process_time()
    from mailer.ledger import SMTP, Ledger
    from mailer.message import make_factory
    from mailer.post import load_post
    from mailer.render import render_issue
    from mailer.subscribers import Subscriber
    from mailer.transport import DotStuffer

    settings = bench.bench_settings(tmp, smtp_host="127.0.0.1", bounce_address=bench.BOUNCE_ADDRESS)
    issue = render_issue(load_post(bench.EXAMPLE_POST), settings)
    factory = make_factory(issue, settings)
    stuff = DotStuffer()
    tmp.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(settings.db_path, destination=SMTP)
    ledger.start_issue(issue.issue_id, "bench", issue.subject)
    readers: Iterator[Subscriber] = (
        Subscriber(bench.subscriber_email(i), f"Reader {i}", {}, i + 2) for i in range(count)
    )
    queued: collections.deque[Subscriber] = collections.deque()
    sel = selectors.DefaultSelector()
    send0, wall0 = time.process_time(), time.perf_counter()
    recorder = _Recorder(ledger, issue.issue_id)
    sel.register(recorder.wake_r, selectors.EVENT_READ, None)
    conns = [_open(port) for _ in range(connections)]
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)

    def build() -> _Job | None:
        if not queued:
            batch = [sub for _, sub in zip(range(256), readers, strict=False)]
            if batch:
                ledger.states(issue.issue_id, [sub.email for sub in batch])  # as the loop asks, per batch
            queued.extend(batch)
        if not queued:
            return None
        sub = queued.popleft()
        pieces = factory.build_pieces(sub.email, sub.name, sub.fields)
        return _Job(sub.email, factory.envelope_sender(sub.email), stuff(pieces))

    def commands(job: _Job) -> bytes:
        return b"MAIL FROM:<%s> BODY=8BITMIME\r\nRCPT TO:<%s>\r\nDATA\r\n" % (
            job.sender.encode(),
            job.email.encode(),
        )

    def write(conn: _Conn, data: bytes) -> None:
        if not conn.out:
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
            sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        conn.out += data

    def start(conn: _Conn, job: _Job | None) -> None:
        conn.job = job
        if job is None:
            conn.phase = "idle"
            return
        if conn.ahead is None:
            write(conn, commands(job))
        conn.ahead = None
        conn.phase, conn.waiting = "commands", 3

    def end(conn: _Conn) -> None:
        """The "." once the previous outcome is committed, with the next message's commands behind it."""
        if not conn.committed:
            conn.phase = "gate"
            return
        conn.ahead = build()
        write(conn, b".\r\n" + (commands(conn.ahead) if conn.ahead else b""))
        conn.phase, conn.waiting = "end", 1

    for conn in conns:
        start(conn, build())
    while any(c.phase != "idle" or not c.committed for c in conns):
        for key, events in sel.select():
            conn = key.data
            if conn is None:  # a commit: its connections may send their "."
                os.read(recorder.wake_r, 4096)
                while recorder.done:
                    for done, _, _, _ in recorder.done.popleft():
                        done.committed = True
                        if done.phase == "gate":
                            end(done)
                continue
            if events & selectors.EVENT_WRITE and conn.out:
                try:
                    del conn.out[: conn.sock.send(conn.out)]
                except BlockingIOError:
                    pass
                if not conn.out:
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
            if not events & selectors.EVENT_READ:
                continue
            chunk = conn.sock.recv(65536)
            if not chunk:
                raise SystemExit("the sink closed a connection")
            conn.inbuf += chunk
            while (eol := conn.inbuf.find(b"\n")) >= 0:
                line = bytes(conn.inbuf[: eol + 1])
                del conn.inbuf[: eol + 1]
                if line[3:4] == b"-":
                    continue
                conn.waiting -= 1
                if conn.waiting:
                    continue
                assert conn.job is not None
                if conn.phase == "commands":
                    write(conn, conn.job.data)
                    end(conn)
                else:  # the reply to the end: to the recorder, and on to the next message
                    conn.committed = False
                    recorder.submit((conn, conn.job, int(line[:3]), line[4:].strip().decode()))
                    start(conn, conn.ahead if conn.ahead is not None else build())
    recorder.stop()
    send_cpu, wall = time.process_time() - send0, time.perf_counter() - wall0
    sent = ledger.rows("SELECT count(*) FROM deliveries WHERE state = 'sent'", ())[0][0]
    if sent != count:
        raise SystemExit(f"prototype: {sent} of {count} recorded as sent")
    for conn in conns:
        conn.sock.close()
    ledger.close()
    return time.process_time() - cpu0, send_cpu, wall


def _child(port: int, count: int, connections: int, tmp: Path) -> tuple[float, float, float]:
    """The prototype in a fresh process, as `mailer send` runs: its import and render costs included."""
    cmd = [sys.executable, __file__, "--child", str(port), str(count), str(connections), str(tmp)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return process, float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        port, count, connections, folder = args.child
        _, send_cpu, wall = prototype(int(port), int(count), int(connections), Path(folder))
        print(send_cpu, wall)
        return
    tmp = Path(tempfile.mkdtemp(prefix="select-floor-"))
    figures: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    try:
        csv = tmp / "subs.csv"
        bench.write_subscribers(csv, args.count)
        few = max(1, min(100, args.count // 10))  # a send this short is mostly start-up and render
        small = tmp / "small.csv"
        bench.write_subscribers(small, few)
        with bench.smtp_sink() as port:
            for r in range(args.rounds):
                for n in [int(c) for c in args.connections.split(",")]:
                    process, send_cpu, wall = _child(port, args.count, n, tmp / f"proto-{n}-{r}")
                    figures.setdefault(("prototype", n), []).append((process, send_cpu, args.count / wall))
                    fixed, _ = bench.mailer_send(port, small, tmp / f"fixed-{n}-{r}", n)
                    run, _ = bench.mailer_send(port, csv, tmp / f"mailer-{n}-{r}", n)
                    if run.sent != args.count:
                        raise SystemExit(f"mailer send: {run.sent} of {args.count} sent")
                    loop_cpu = (run.cpu - fixed.cpu) * args.count / (args.count - few)
                    figures.setdefault(("mailer send", n), []).append(
                        (run.cpu, loop_cpu, args.count / run.wall)
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"load average at the end: {os.getloadavg()[0]:.1f}; {args.count} messages, medians of {args.rounds}"
    )
    print("| connections | who | CPU s per 1,000, process | the send alone | msg/s |")
    print("|---:|---|---:|---:|---:|")
    per = 1000 / args.count
    for (who, n), runs in sorted(figures.items(), key=lambda item: (item[0][1], item[0][0])):
        process, loop, rate = (statistics.median(x[i] for x in runs) for i in range(3))
        print(f"| {n} | {who} | {process * per:.3f} | {loop * per:.3f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
