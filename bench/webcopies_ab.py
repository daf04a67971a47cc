"""What an issue page costs `mailer serve`, this tree against another, on SQLite and PostgreSQL.

    .venv/bin/python bench/webcopies_ab.py --before /tmp/base-d25dae2            # a few minutes
    .venv/bin/python bench/webcopies_ab.py --before /tmp/base-d25dae2 --quick    # seconds

Each round, for each tree in turn (alternated, so load on the machine falls on both alike): a fresh data
folder, one issue sent to the local outbox (its web copy in the folder and the record), a real `mailer serve`
of that tree on 127.0.0.1, then GETs one after another, a new connection each as a browser's: the issue's
page (its file is the record's copy), and unknown issue ids (a bot walking ids). The table gives the median
milliseconds per request of each kind over the rounds' medians, and how many rounds each tree was the faster.
PostgreSQL is a throwaway cluster of tests/pg.py with its default settings (left out where not installed).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.pg import Cluster, binaries  # noqa: E402

HOST = "127.0.0.1"
ISSUE = "2026-02-10"
POST = "---\ntitle: A bench issue\ndate: 2026-02-10\nlang: en\n---\nHello, reader.\n"


def get(port: int, path: str) -> tuple[float, int]:
    """Seconds for one GET (its connection included), and its status."""
    start = time.perf_counter()
    conn = HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        return time.perf_counter() - start, answer.status
    finally:
        conn.close()


@contextmanager
def served(tree: Path, env: dict[str, str], cwd: Path) -> Iterator[int]:
    """`mailer serve` of `tree` (its package first on the path) until the block ends; its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "serve", "--host", HOST, "--port", "0"],
        env={**env, "PYTHONPATH": str(tree)}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        match = re.search(rf"http://{re.escape(HOST)}:(\d+)/", proc.stdout.readline().decode())
        assert match, "serve did not start"
        yield int(match[1])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def one_round(tree: Path, database: dict[str, str], requests: int) -> dict[str, float]:
    """Median milliseconds per GET of each kind for one fresh folder served by `tree`."""
    with tempfile.TemporaryDirectory(prefix="mailer-bench-webcopies-") as tmp:
        root = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
        env.update(
            MAILER_DATA_DIR=str(root / "state"), MAILER_WEB_URL="https://news.example.org",
            MAILER_FROM_EMAIL="news@example.org", MAILER_FROM_NAME="Bench", MAILER_SECRET_KEY="k" * 40,
            PYTHONPATH=str(tree), **database,
        )  # fmt: skip
        (root / "posts").mkdir()
        (root / "posts" / f"{ISSUE}.md").write_text(POST, encoding="utf-8")
        (root / "list.csv").write_text("email\nreader@example.org\n", encoding="utf-8")
        send = ["send", f"posts/{ISSUE}.md", "--to", "list.csv", "--yes", "--force"]
        subprocess.run(
            [sys.executable, "-m", "mailer", *send], env=env, cwd=root, check=True, capture_output=True
        )
        times: dict[str, list[float]] = {"issue": [], "unknown": []}
        with served(tree, env, root) as port:
            get(port, f"/issues/{ISSUE}")  # the first, which may write or read what later ones find
            for n in range(requests):
                took, status = get(port, f"/issues/{ISSUE}")
                assert status == 200, status
                times["issue"].append(took)
                took, status = get(port, f"/issues/2026-01-{n:04d}")
                assert status == 404, status
                times["unknown"].append(took)
        return {kind: statistics.median(values) * 1000 for kind, values in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other tree (a checkout of mailer)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="GETs of each kind per round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 20 requests")
    args = parser.parse_args(argv)
    rounds, requests = (2, 20) if args.quick else (args.rounds, args.requests)
    trees = {"before": args.before.resolve(), "this tree": ROOT}
    engines: dict[str, Cluster | None] = {"sqlite": None}
    bindir = binaries()
    if bindir is not None:
        engines["postgresql"] = Cluster(bindir, durable=True).start()
    try:
        for engine, cluster in engines.items():
            medians: dict[str, dict[str, list[float]]] = {n: {"issue": [], "unknown": []} for n in trees}
            for r in range(rounds):
                order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
                for name, tree in order:
                    database = {}
                    if cluster is not None:
                        where = cluster.database()
                        database = {"MAILER_DATABASE": where.url, "MAILER_DATABASE_PASSWORD": where.password}
                    for kind, ms in one_round(tree, database, requests).items():
                        medians[name][kind].append(ms)
            for kind in ("issue", "unknown"):
                before, after = medians["before"][kind], medians["this tree"][kind]
                lower = sum(a < b for a, b in zip(after, before, strict=True))
                print(
                    f"{engine:10} {kind:8} before {statistics.median(before):6.2f} ms, this tree"
                    f" {statistics.median(after):6.2f} ms (lower in {lower} of {rounds} rounds)"
                )
    finally:
        for cluster in engines.values():
            if cluster is not None:
                cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
