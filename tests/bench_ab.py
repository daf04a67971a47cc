"""What the tests of the A/B benchmarks (bench/send_ab.py, bench/record_ab.py) share: the script run as a
person runs it, and the rows of the table it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def run_ab(
    script: str, args: list[str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """The finished run of bench/SCRIPT ARGS, and the cells of each row of its Markdown table (not its head
    nor its rule)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=300,
        cwd=cwd,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    table = [line.split("|")[1:-1] for line in lines if line.startswith("| ")]
    return done, table[1:]
