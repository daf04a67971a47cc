"""The send rate with the record in PostgreSQL against the same send with the record in SQLite.

    .venv/bin/python bench/postgresql.py              # 10,000 messages, 8 connections, median of 5
    .venv/bin/python bench/postgresql.py --messages 2000 --runs 1 --connections 1,8

Each run is `mailer send` of the example post as a fresh process to Postfix's smtp-sink on a loopback port
(bench/run.py's sink and settings), once with the record in a SQLite file and once in a PostgreSQL database of
a throwaway cluster started here (tests/pg.py: initdb in a temporary folder, a loopback port, stopped and
removed at the end), alternating so both see the same machine load. Unlike the test cluster, this one keeps
PostgreSQL's durability settings (fsync, synchronous_commit on), as a production server has them. The rate
is messages over the wall time of the whole process; the target (issue 16) is PostgreSQL at least 0.8x SQLite
at 8 connections.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    CHILDREN,
    EXAMPLE_POST,
    mailer_env,
    median,
    run_child,
    smtp_sink,
    write_subscribers,
)
from tests.pg import Cluster, binaries, database_env  # noqa: E402

TARGET = 0.8


def send(port: int, csv: Path, data_dir: Path, connections: int, extra: dict[str, str]) -> float:
    """Seconds one `mailer send` took, start-up included."""
    cmd = [sys.executable, "-m", "mailer", "send", str(EXAMPLE_POST), "--to", str(csv), "--yes", "--force"]
    cmd += ["--connections", str(connections)]
    done = run_child(cmd, env={**mailer_env(port, data_dir), **extra}, cwd=data_dir.parent)
    if done.rc != 0 or "Traceback" in done.stderr:
        raise RuntimeError(f"mailer send failed ({done.rc}):\n{done.stderr[-2000:]}")
    return done.wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--connections", default="8")
    a = p.parse_args(argv)
    bindir = binaries()
    if bindir is None:
        print("skipped: PostgreSQL is not installed (Debian package postgresql)")
        return 0
    with tempfile.TemporaryDirectory(prefix="mailer-bench-pg-") as name:
        tmp = Path(name)
        csv = tmp / "subscribers.csv"
        write_subscribers(csv, a.messages)
        cluster = Cluster(bindir, durable=True).start()
        try:
            with smtp_sink() as port:
                print(f"{a.messages:,} messages, median of {a.runs}; msg/s, whole process")
                print("connections | SQLite | PostgreSQL | ratio | target")
                for conns in (int(c) for c in a.connections.split(",")):
                    walls: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
                    for run in range(a.runs):
                        for engine in walls:
                            data_dir = tmp / f"{engine}-{conns}-{run}" / "state"
                            data_dir.parent.mkdir()
                            extra = database_env(cluster.database()) if engine == "postgresql" else {}
                            walls[engine].append(send(port, csv, data_dir, conns, extra))
                            shutil.rmtree(data_dir.parent)
                    lite, pg = (a.messages / median(walls[e]) for e in ("sqlite", "postgresql"))
                    met = "yes" if pg / lite >= TARGET else "no"
                    print(f"{conns:>11} | {lite:6,.0f} | {pg:10,.0f} | {pg / lite:.2f}x | ≥ {TARGET}x: {met}")
        finally:
            CHILDREN.stop_all()
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
