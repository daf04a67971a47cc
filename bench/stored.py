"""Time and memory of a list kept in mailer's database: import, import again, export, a dry run to it.

    .venv/bin/python bench/stored.py                    # 100,000 readers, median of 3 runs
    .venv/bin/python bench/stored.py --readers 20000 --runs 1

Each step is `mailer` as a fresh process on a list of generated readers (name and one field each), state in
a temporary folder that is removed at the end. Per step: the wall time, the CPU time (user + system) and the
peak RSS of the process, as the kernel reports them (wait4). CPU time is the figure to compare on a shared
machine; wall time moves with the load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POST = ROOT / "examples" / "2026-02-09.md"
STEPS = {
    "import (new)": ["subscribers", "import", "{list}", "-q"],
    "import again (no change)": ["subscribers", "import", "{list}", "-q"],
    "export": ["subscribers", "export"],
    "send --list --dry-run": ["send", str(POST), "--list", "main", "--dry-run", "--force", "-q"],
}


def measure(args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one `mailer` process."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mailer", *args], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"mailer {' '.join(args)}: exit {proc.returncode}")
    return time.monotonic() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mailer-bench-stored-"))
    try:
        listing = folder / "readers.csv"
        with listing.open("w", encoding="utf-8") as out:
            out.write("email,name,city\n")
            for i in range(opts.readers):
                out.write(f"reader{i}@example.com,Reader {i},City {i % 97}\n")
        results: dict[str, list[tuple[float, float, float]]] = {step: [] for step in STEPS}
        for run in range(opts.runs):
            env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
            env["MAILER_DATA_DIR"] = str(folder / f"state{run}")
            for step, args in STEPS.items():
                results[step].append(measure([a.format(list=listing) for a in args], env))
        print(f"{opts.readers:,} readers, median of {opts.runs} run(s)")
        print(f"{'step':<26} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
        for step, rows in results.items():
            wall, cpu, rss = (statistics.median(r[i] for r in rows) for i in range(3))
            print(f"{step:<26} {wall:>8.2f} {cpu:>8.2f} {rss:>12.0f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
