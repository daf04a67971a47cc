"""Where a send's CPU and its threads' wake-ups go, thread by thread, two mailer trees alternated.

    .venv/bin/python bench/threads.py --before /tmp/old --after . --count 4000 --rounds 3 --connections 1,8

On a machine where the Python that runs right after a thread wakes costs two to four times what it costs
back to back (bench/wake.py), a send's CPU follows the number of times its threads wake per message. Each
round sends `--count` messages of the example post to one smtp-sink with each tree's `mailer send
--connections N` in turn (A B, B A, ...), with a `sitecustomize` module put on PYTHONPATH that reads, as
each thread ends, its CPU time and its voluntary and involuntary context switches (getrusage
RUSAGE_THREAD). The rows: per message, medians over the rounds, the threads of a kind summed (the
connections, the recorder's writers); `main` has the start-up and the render in it (~0.4 s of CPU), and
`process` is the whole of it. Needs Debian's postfix (smtp-sink), as bench/run.py does.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab  # noqa: E402  (bench/ab.py: the two trees, taking turns)
import run as bench  # noqa: E402  (bench/run.py: the sink and the send it times)

# written as sitecustomize.py into a folder on the send's PYTHONPATH: each thread's figures as it ends
HOOK = """
import atexit, json, os, resource, threading

def _figures(name):
    used = resource.getrusage(resource.RUSAGE_THREAD)
    return [name, used.ru_utime + used.ru_stime, used.ru_nvcsw, used.ru_nivcsw]

_rows, _run = [], threading.Thread.run

def _counted(self):
    try:
        _run(self)
    finally:
        _rows.append(_figures(self.name))

def _write():
    _rows.append(_figures("main"))
    whole = resource.getrusage(resource.RUSAGE_SELF)
    _rows.append(["process", whole.ru_utime + whole.ru_stime, whole.ru_nvcsw, whole.ru_nivcsw])
    with open(os.environ["BENCH_THREADS_OUT"], "w") as out:
        json.dump(_rows, out)

threading.Thread.run = _counted
atexit.register(_write)
"""

Figures = dict[str, list[float]]  # a kind of thread -> [CPU s, voluntary, involuntary switches]


def one_send(
    root: Path, hook: Path, port: int, csv: Path, state: Path, connections: int
) -> tuple[Figures, float]:
    """One tree's send: its threads' figures summed by kind, and its msg/s over the whole process."""
    out = state.parent / "threads.json"
    os.environ["PYTHONPATH"] = f"{root}{os.pathsep}{hook}"
    os.environ["BENCH_THREADS_OUT"] = str(out)
    try:
        sent, _ = bench.mailer_send(port, csv, state, connections)
    finally:
        del os.environ["PYTHONPATH"], os.environ["BENCH_THREADS_OUT"]
    kinds: Figures = defaultdict(lambda: [0.0, 0.0, 0.0])
    for name, cpu, voluntary, involuntary in json.loads(out.read_text()):
        # mailer-record-1 -> mailer-record; a session's opener and closer (mailer-open, mailer-close) are the
        # connections' work, as the thread that drives them (mailer-send) is; an older tree's thread per
        # connection is mailer-conn-N
        kind_name = re.sub(r"-\d+$", "", name)
        kind = kinds["mailer-send" if kind_name in ("mailer-open", "mailer-close") else kind_name]
        kind[0] += cpu
        kind[1] += voluntary
        kind[2] += involuntary
    return kinds, sent.sent / sent.wall


def main() -> None:
    args, trees, counts = ab.send_args(__doc__, count=4000, rounds=3, connections="1,8")
    per_message: dict[tuple[int, str, str], list[list[float]]] = defaultdict(list)
    rates: dict[tuple[int, str], list[float]] = defaultdict(list)
    with ab.scratch("threads-") as tmp:
        hook = tmp / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(HOOK)
        csv = tmp / "subs.csv"
        bench.write_subscribers(csv, args.count)
        with bench.smtp_sink() as port:
            for r in range(args.rounds):
                for n in counts:
                    for name, root in ab.turn(trees, r):
                        state = tmp / f"{name}-{n}-{r}" / "state"
                        state.parent.mkdir()
                        kinds, rate = one_send(root, hook, port, csv, state, n)
                        rates[(n, name)].append(rate)
                        for kind, figures in kinds.items():
                            per_message[(n, name, kind)].append([x / args.count for x in figures])
    rows = []
    for (n, name, kind), runs in sorted(per_message.items(), key=lambda item: _order(*item[0])):
        cpu, voluntary, involuntary = (statistics.median(run[i] for run in runs) for i in range(3))
        rate = f"{statistics.median(rates[(n, name)]):.0f}" if kind == "process" else ""
        rows.append([str(n), name, kind, f"{cpu * 1e3:.3f}", f"{voluntary:.2f}", f"{involuntary:.2f}", rate])
    ab.table(
        ["connections", "tree", "thread", "CPU ms per message", "voluntary switches", "involuntary", "msg/s"],
        "|---:|---|---|---:|---:|---:|---:|",
        rows,
    )


def _order(connections: int, tree: str, kind: str) -> tuple[int, bool, bool, str]:
    """Rows by connections, then tree (before, after), the process's own row last of each."""
    return connections, tree == "after", kind == "process", kind


if __name__ == "__main__":
    main()
