"""The cost of one look of a `send --workers` coordinator at the record, for its live progress line.

    .venv/bin/python bench/tick.py                      # 100,000 readers, SQLite and PostgreSQL
    .venv/bin/python bench/tick.py --readers 1000000 --looks 200

A send of N readers is put in a record as `mailer send --workers 2` puts it (batches of workers.batch_size,
their readers as JSON), on each engine (SQLite in a temporary folder; PostgreSQL in a throwaway cluster of
tests/pg.py with the server's durability settings on). Then the send is played forward in steps, as workers
make it: each step marks the next batches done with their counts and leaves two claimed with counts so far
(and one given back). At each step the coordinator's look (tally.SendTally.read) is timed, wall and this
process's CPU, and checked against the counts put in. For comparison, the look that reads every reader of
the batches not done (what the final report does once, tally._outcomes) is timed at the first step, when
they are all not done. The look runs every 0.2 s (workers.POLL) during a send.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailer.campaign import Report  # noqa: E402
from mailer.engine import Location  # noqa: E402
from mailer.ledger import Ledger  # noqa: E402
from mailer.workers import GIVEN_BACK, batch_size  # noqa: E402
from mailer.workers.tally import READERS, SendTally, _outcomes  # noqa: E402
from tests.pg import Cluster, binaries  # noqa: E402

ISSUE = "2026-02-09"


def fill(record: Location, readers: int) -> tuple[Ledger, tuple[str, str], int]:
    ledger = Ledger(record)
    where = (ISSUE, ledger.destination)
    size = batch_size(readers, 2)
    ledger.start_issue(ISSUE, "h", "Bench")
    run = ledger.start_run(ISSUE, "key", "list.csv")
    with ledger.transaction():
        ledger.write(
            "INSERT INTO sends (issue_id, destination, state, coordinator, alive_until, post_name, post,"
            " fingerprint, options, started_at) VALUES (?, ?, 'running', 'bench', 0, 'p', '', '', '{}', '')",
            where,
        )
        for number, start in enumerate(range(0, readers, size)):
            batch = [
                [f"reader{i}@example.com", f"Reader {i}", {}]
                for i in range(start, min(readers, start + size))
            ]
            ledger.write(
                "INSERT INTO send_batches (issue_id, destination, batch_no, readers, size)"
                " VALUES (?, ?, ?, ?, ?)",
                (*where, number, json.dumps(batch), len(batch)),
            )
    return ledger, where, run


def play(
    ledger: Ledger, where: tuple[str, str], batches: int, steps: int, looks: int
) -> list[tuple[float, float]]:
    """Each step: the next batches done (sent: their size), two claimed with 7 sent each, one given back
    with 3; then `looks` looks timed. Returns (wall ms, CPU ms) per look."""
    tally = SendTally()
    sizes = dict(
        ledger.rows("SELECT batch_no, size FROM send_batches WHERE issue_id = ? AND destination = ?", where)
    )
    timed: list[tuple[float, float]] = []
    per_step = max(1, batches // steps)
    finished = 0
    while finished < batches:
        upto = min(batches, finished + per_step)
        with ledger.transaction():
            for n in range(finished, upto):
                ledger.write(
                    "UPDATE send_batches SET done = 1, lease_until = 0, counts = ? WHERE issue_id = ?"
                    " AND destination = ? AND batch_no = ?",
                    (json.dumps({"sent": sizes[n], "retries": 0, "given_up": {}}), *where, n),
                )
            open_ones = [n for n in range(upto, min(batches, upto + 3))]
            for i, n in enumerate(open_ones):
                ledger.write(
                    "UPDATE send_batches SET lease_until = ?, counts = ?"
                    " WHERE issue_id = ? AND destination = ? AND batch_no = ?",
                    (
                        GIVEN_BACK if i == 2 else time.time() + 30,
                        json.dumps({"sent": 7 if i < 2 else 3}),
                        *where,
                        n,
                    ),
                )
        finished = upto
        want = sum(sizes[n] for n in range(finished)) + sum(
            7 if i < 2 else 3 for i, _ in enumerate(open_ones)
        )
        for _ in range(looks):
            wall, cpu = time.perf_counter(), time.process_time()
            got = tally.read(ledger, where)
            timed.append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
            assert got["sent"] == want and sum(got[k] for k in READERS) == want, (got, want)
    return timed


def whole_lookup(ledger: Ledger, where: tuple[str, str], run: int) -> float:
    wall = time.perf_counter()
    _outcomes(ledger, where, run, Report(ISSUE))
    return (time.perf_counter() - wall) * 1000


def bench(name: str, record: Location, readers: int, steps: int, looks: int) -> None:
    ledger, where, run = fill(record, readers)
    try:
        (batches,) = ledger.rows(
            "SELECT count(*) FROM send_batches WHERE issue_id = ? AND destination = ?", where
        )[0]
        whole = whole_lookup(ledger, where, run)
        timed = play(ledger, where, int(batches), steps, looks)
    finally:
        ledger.close()
    walls, cpus = sorted(t[0] for t in timed), sorted(t[1] for t in timed)
    p95 = walls[int(len(walls) * 0.95)]
    print(
        f"{name:<10} {readers:>9,} readers {batches:>5} batches"
        f" | look: median {statistics.median(walls):.2f} ms"
        f" (p95 {p95:.2f}, max {walls[-1]:.2f}), CPU median {statistics.median(cpus):.2f} ms"
        f" | every reader of the open batches looked up once: {whole:,.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readers", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=20, help="points of the send at which the look is timed")
    p.add_argument("--looks", type=int, default=20, help="looks timed at each point")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mailer-bench-tick-") as name:
        bench("SQLite", Path(name) / "mailer.db", a.readers, a.steps, a.looks)
        bindir = binaries()
        if bindir is None:
            print("PostgreSQL: skipped, not installed")
            return 0
        cluster = Cluster(bindir, durable=True).start()
        try:
            bench("PostgreSQL", cluster.database(), a.readers, a.steps, a.looks)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
