"""The cost of one commit of the delivery record, for two mailer code trees alternated on one machine.

    .venv/bin/python bench/record_ab.py --before /tmp/old --after . --count 3000 --rounds 8

What a send at one connection does per message, alone: `Ledger.record_outcomes` of one outcome into a real
SQLite file (WAL, synchronous=FULL: one fdatasync per commit), then `Ledger.in_place()` (the recorder's
check that the record is still the file at the path). Each run is a fresh process with the tree first on
PYTHONPATH and a fresh record in a temporary folder (the folder `--dir` names, default the system's), in
which `--prefill` readers are recorded first in batches; the trees take turns going first (A B, B A, ...).
Figures per commit, medians over the rounds: CPU of the thread (user + system, so the kernel's work for the
writes and the fdatasync is in it), wall time, and bytes written to the files (a WAL frame is a page of
4,096 bytes and a 24-byte header; a checkpoint writes pages once more into the database file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab  # noqa: E402  (bench/ab.py: the two trees, taking turns)

# Run in the child, with the tree under test first on PYTHONPATH: argv is folder, prefill, count.
_CHILD = """
import json, sys, time
from pathlib import Path
import mailer.ledger
from mailer.ledger import Ledger

folder, prefill, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
issue = "2026-02-09"

def email(i):
    return f"reader{i}@example{i % 40}.com"

def written():
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])

with Ledger(folder / "mailer.db") as ledger:
    ledger.start_issue(issue, "0" * 64, "A post")
    for start in range(0, prefill, 20_000):
        ledger.record_outcomes(
            issue,
            [(email(i), "sent", 250, "2.0.0 Ok: queued") for i in range(start, min(prefill, start + 20_000))],
        )
    emails = [email(i) for i in range(prefill, prefill + count)]
    before, cpu, wall = written(), time.thread_time(), time.perf_counter()
    for address in emails:
        ledger.record_outcomes(issue, [(address, "sent", 250, "2.0.0 Ok: queued as 4XyZ")])
        if not ledger.in_place():
            raise SystemExit("the record was replaced")
    cpu, wall, after = time.thread_time() - cpu, time.perf_counter() - wall, written()
figures = {"cpu": cpu / count * 1e6, "wall": wall / count * 1e6, "bytes": (after - before) / count}
print(json.dumps({**figures, "module": mailer.ledger.__file__}))
"""


def one_run(root: Path, folder: Path, prefill: int, count: int) -> dict[str, float]:
    """One fresh process of one tree: its figures per commit."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), str(prefill), str(count)],
        env=env, cwd=folder, capture_output=True, text=True, check=False,  # cwd: `-c` puts it on sys.path
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{root}: the run failed: {done.stderr.strip()[-500:]}")
    figures = json.loads(done.stdout)
    if not Path(figures.pop("module")).is_relative_to(root):  # the tree's own mailer, not an installed one
        raise SystemExit(f"{root}: the run imported another mailer than this tree's")
    return {name: float(value) for name, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ab.add_trees(parser)
    parser.add_argument("--count", type=int, default=3000, help="commits timed per run")
    parser.add_argument("--prefill", type=int, default=20_000, help="readers recorded before the timed part")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None, help="where the records are made (a real disk)")
    args = parser.parse_args()
    trees = ab.trees(args)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with ab.scratch("record-ab-", args.dir) as tmp:
        for r in range(args.rounds):
            for name, root in ab.turn(trees, r):
                folder = tmp / f"{name}-{r}"
                folder.mkdir()
                runs[name].append(one_run(root, folder, args.prefill, args.count))
                shutil.rmtree(folder)
    ab.table(
        ["tree", "CPU µs per commit (median)", "each round", "wall µs (median)", "bytes written per commit"],
        "|---|---:|---|---:|---:|",
        [
            [name, f"{statistics.median(run['cpu'] for run in runs[name]):.1f}",
             ", ".join(f"{run['cpu']:.0f}" for run in runs[name]),
             f"{statistics.median(run['wall'] for run in runs[name]):.0f}",
             f"{statistics.median(run['bytes'] for run in runs[name]):,.0f}"]
            for name in trees
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
