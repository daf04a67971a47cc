"""`send --workers N` against a lone send, of two mailer code trees alternated on one machine.

    .venv/bin/python bench/workers_ab.py --before /tmp/old --messages 5000 --rounds 3
    .venv/bin/python bench/workers_ab.py --before /tmp/old --engines sqlite --workers 0,2 --relay 0

Each round runs, for each engine (SQLite; PostgreSQL in a throwaway cluster, as bench/postgresql.py) and each
`--workers` count (0: a lone send), `mailer send --connections C` of the example post to `--messages`
generated readers on one smtp-sink, once per tree (the tree put first on PYTHONPATH), in turn first (A B, B A,
...); then `--relay` messages to bench/slowsink.py (every reply 20 ms late) with 1 and 2 workers of one
connection each, the record in each engine. Figures: msg/s over the whole command (start-up, render and the
workers' start included), and smtp-source -s C sending the same message as often to the same sink in each
round, the reference of issue 16's targets; CPU seconds per 1,000 messages of the command and every worker
it started (wait4 of the command counts the workers it reaped), the median over the rounds; and the load
average meanwhile, since the machine is shared. Needs Debian's postfix (smtp-sink, smtp-source) and, for
the PostgreSQL rows, its server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from slowsink import SlowSink  # noqa: E402

from bench.postgresql import make_record, send  # noqa: E402
from bench.run import CHILDREN, one_message, smtp_sink, smtp_source, write_subscribers  # noqa: E402
from tests.pg import Cluster, binaries, database_env  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="root of the older tree (holds mailer/)")
    p.add_argument("--after", type=Path, default=ROOT)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--workers", default="0,2", help="comma-separated; 0 is a lone send")
    p.add_argument("--engines", default="sqlite,postgresql")
    p.add_argument("--relay", type=int, default=400, help="messages to the 20 ms sink (0: none)")
    a = p.parse_args()
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    engines = a.engines.split(",")
    bindir = binaries() if "postgresql" in engines else None
    if "postgresql" in engines and bindir is None:
        engines.remove("postgresql")
        print("no PostgreSQL here: SQLite only")
    rate: dict[tuple[str, ...], list[float]] = {}
    cpu: dict[tuple[str, ...], list[float]] = {}
    loads: list[float] = []
    tmp = Path(tempfile.mkdtemp(prefix="workers-ab-"))
    cluster = Cluster(bindir, durable=True).start() if bindir else None

    def one(key: tuple[str, ...], run: int, root: Path, port: int, csv: Path, n: int, conns: int) -> None:
        """One send of this key (engine or "relay ENGINE", workers, tree), timed into rate and cpu."""
        engine, workers = key[0].removeprefix("relay "), int(key[1])
        data_dir = tmp / f"{'-'.join(key)}-{run}" / "state"
        data_dir.parent.mkdir()
        extra = {"PYTHONPATH": str(root)}
        if engine == "postgresql":
            assert cluster is not None
            extra |= database_env(cluster.database())
        make_record(port, data_dir, extra)
        done = send(port, csv, data_dir, conns, workers, extra)
        rate.setdefault(key, []).append(n / done.wall)
        cpu.setdefault(key, []).append(done.cpu / n * 1000)
        loads.append(os.getloadavg()[0])
        shutil.rmtree(data_dir.parent)

    try:
        csv = tmp / "readers.csv"
        write_subscribers(csv, a.messages)
        message = tmp / "message.txt"
        message.write_bytes(one_message(tmp).replace(b"\r\n", b"\n"))  # smtp-source adds CRLF to each line
        relay_csv = tmp / "relay.csv"
        write_subscribers(relay_csv, a.relay)
        with smtp_sink() as port:
            sink = SlowSink(0, 0.02).start() if a.relay else None
            try:
                for r in range(a.rounds):
                    order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
                    done = smtp_source(port, message, a.messages, a.connections)
                    key = ("smtp-source", f"-s {a.connections}", "")
                    rate.setdefault(key, []).append(a.messages / done.wall)
                    cpu.setdefault(key, []).append(done.cpu / a.messages * 1000)
                    for engine in engines:
                        for workers in (int(w) for w in a.workers.split(",")):
                            for name, root in order:
                                key = (engine, str(workers), name)
                                one(key, r, root, port, csv, a.messages, a.connections)
                    for engine in engines if sink is not None else ():
                        for workers in (1, 2):
                            for name, root in order:
                                key = (f"relay {engine}", str(workers), name)
                                one(key, r, root, sink.port, relay_csv, a.relay, 1)
            finally:
                if sink is not None:
                    sink.stop()
    finally:
        CHILDREN.stop_all()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average: median {statistics.median(loads):.1f}, {min(loads):.1f}-{max(loads):.1f}")
    print(f"{a.messages:,} messages at {a.connections} conn.; relay: {a.relay}, 1 connection per worker")
    print("| engine | workers | tree | msg/s (median) | each round | CPU s per 1,000 (median) |")
    print("|---|---:|---|---:|---|---:|")
    for key in sorted(rate):
        each = ", ".join(f"{x:.0f}" for x in rate[key])
        print(f"| {key[0]} | {key[1]} | {key[2]} | {statistics.median(rate[key]):.0f} | {each}"
              f" | {statistics.median(cpu[key]):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
