"""What a thread's wake-up costs on this machine: the send's own Python per message, hot and after a wait.

    .venv/bin/python bench/wake.py --count 3000 --dir /path/on/the/records/disk

A send at one connection wakes a thread about ten times per message (the reply, the commit, the fsync, the
hand-overs), and the Python that runs next finds the caches and the branch predictors cold if anything else
ran meanwhile. The same CPU costs two or three times as much per message on one machine as on another when
its caches are small, shared with other VMs, or its memory far. Timed here, each in this one thread (its
CPU time, `time.thread_time`), `--count` times each, the modes taking turns (`--rounds`), medians:

- a reader's message as the send builds it (`build_pieces` and `envelope_sender` of the example post), run
  back to back ("hot"), after a 0.5 ms sleep (what a thread waiting for a reply or a commit does), after a
  busy 0.5 ms in other Python code, and after a 16 MB copy (the caches evicted, no sleep);
- a 4 KB `pwrite` and `fdatasync` in `--dir` (the record's commit at `synchronous=FULL`): its wall time and
  its CPU, and the same message's build right after it;
- the interpreter itself: a plain loop, nanoseconds per turn, to tell a slow interpreter from a slow machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab  # noqa: E402  (bench/ab.py: the table)
import run as bench  # noqa: E402  (bench/run.py: the example post and the settings every bench uses)

_BIG = bytearray(16 << 20)  # larger than this VM's L3 (8 MB)


def _sleep() -> None:
    time.sleep(0.0005)


def _busy() -> None:
    end = time.perf_counter() + 0.0005
    while time.perf_counter() < end:
        pass


def _evict() -> None:
    bytes(_BIG)


def _loop_ns() -> float:
    """Nanoseconds per turn of a plain Python loop: the interpreter's speed, not mailer's."""
    start = time.thread_time_ns()
    total = 0
    for i in range(1_000_000):
        total += i & 7
    return (time.thread_time_ns() - start) / 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=3000, help="messages built per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to fsync (the record's disk)")
    args = parser.parse_args()
    if args.dir is not None and not args.dir.is_dir():
        raise SystemExit(f"{args.dir}: not a folder")
    from mailer.message import make_factory
    from mailer.post import load_post
    from mailer.render import render_issue

    with ab.scratch("wake-", args.dir) as tmp:
        settings = bench.bench_settings(tmp / "state", bounce_address=bench.BOUNCE_ADDRESS)
        factory = make_factory(render_issue(load_post(bench.EXAMPLE_POST), settings), settings)
        readers = [(f"reader{i}@example{i % 40}.com", f"Reader {i}") for i in range(args.count)]
        fd = os.open(tmp / "fsync.bin", os.O_RDWR | os.O_CREAT, 0o600)
        page = b"x" * 4096
        fsync_wall: list[float] = []
        fsync_cpu: list[float] = []

        def fsync() -> None:
            wall, cpu = time.perf_counter(), time.thread_time()
            os.pwrite(fd, page, 0)
            os.fdatasync(fd)
            fsync_cpu.append(time.thread_time() - cpu)
            fsync_wall.append(time.perf_counter() - wall)

        before: dict[str, Callable[[], None] | None] = {
            "hot (back to back)": None,
            "after a 0.5 ms sleep": _sleep,
            "after 0.5 ms of other Python": _busy,
            "after a 16 MB copy (caches evicted)": _evict,
            "after a pwrite + fdatasync": fsync,
        }
        per: dict[str, list[float]] = {name: [] for name in before}
        loops: list[float] = []
        try:
            for r in range(args.rounds):
                loops.append(_loop_ns())
                names = list(before) if r % 2 == 0 else list(before)[::-1]
                for name in names:
                    wait = before[name]
                    spent = 0
                    for email, reader in readers:
                        if wait is not None:
                            wait()
                        start = time.thread_time_ns()
                        factory.build_pieces(email, reader, {})
                        factory.envelope_sender(email)
                        spent += time.thread_time_ns() - start
                    per[name].append(spent / len(readers) / 1000)
        finally:
            os.close(fd)
    hot = statistics.median(per["hot (back to back)"])
    rows = [
        [name, f"{statistics.median(us):.1f}", ", ".join(f"{x:.1f}" for x in us),
         f"{statistics.median(us) / hot:.2f}x"]
        for name, us in per.items()
    ]  # fmt: skip
    head = ["a reader's message built", "CPU µs (median)", "each round", "x hot"]
    ab.table(head, "|---|---:|---|---:|", rows)
    print()
    print(f"pwrite + fdatasync of 4 KB in {args.dir or tempfile.gettempdir()}: wall"
          f" {statistics.median(fsync_wall) * 1e6:.0f} µs, CPU {statistics.median(fsync_cpu) * 1e6:.0f} µs"
          f" (medians of {len(fsync_wall)})")  # fmt: skip
    print(f"a plain Python loop: {statistics.median(loops):.1f} ns a turn ({sys.version.split()[0]},"
          f" {sys.executable})")  # fmt: skip


if __name__ == "__main__":
    main()
