"""What the A/B benchmarks share: two mailer code trees named on the command line, taking turns going first.

Alternating (A B, B A, ...) spreads a machine's drift in load over both trees alike; each run puts its tree
first on PYTHONPATH, so the tree's own mailer is the one imported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def add_trees(parser: argparse.ArgumentParser) -> None:
    """--before (required) and --after (default: this tree)."""
    parser.add_argument("--before", type=Path, required=True, help="root of the older tree (holds mailer/)")
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parent.parent)


def trees(args: argparse.Namespace) -> dict[str, Path]:
    """The two trees by name; a folder without mailer/ is one line and a non-zero exit."""
    found = {"before": args.before.resolve(), "after": args.after.resolve()}
    for root in found.values():
        if not (root / "mailer" / "ledger.py").is_file():
            raise SystemExit(f"{root}: not a mailer tree (no mailer/ledger.py in it)")
    return found


def send_args(
    doc: str | None, *, count: int, rounds: int, connections: str
) -> tuple[argparse.Namespace, dict[str, Path], list[int]]:
    """The command line of a benchmark that sends with both trees: the two trees, --count messages,
    --rounds, and the --connections counts (comma-separated), with these defaults."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trees(parser)
    parser.add_argument("--count", type=int, default=count)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--connections", default=connections)
    args = parser.parse_args()
    return args, trees(args), [int(c) for c in args.connections.split(",")]


def turn(named: dict[str, Path], r: int) -> list[tuple[str, Path]]:
    """The trees in the order round `r` runs them: as named when r is even, reversed when odd."""
    order = list(named.items())
    return order if r % 2 == 0 else order[::-1]


@contextlib.contextmanager
def scratch(prefix: str, where: Path | None = None) -> Iterator[Path]:
    """A temporary folder for the runs' records and lists (in `where`, else the system's), removed after."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def table(head: list[str], rule: str, rows: list[list[str]]) -> None:
    """Print the figures as a Markdown table, after the load the machine ended with (the runs' weather)."""
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"| {' | '.join(head)} |")
    print(rule)
    for row in rows:
        print(f"| {' | '.join(row)} |")
