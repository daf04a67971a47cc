"""bench/select_floor.py (issue 16's prototype of one thread driving every connection): it and `mailer send`
each deliver and record every message, at each connection count asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_bench import HAS_POSTFIX_TOOLS


@pytest.mark.skipif(not HAS_POSTFIX_TOOLS, reason="needs Debian postfix (smtp-sink, smtp-source)")
def test_the_prototype_and_mailer_send_each_get_a_row_per_connection_count(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "select_floor.py"), "--count", "60", "--rounds", "1",
         "--connections", "1,3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # either recording fewer than 60 as sent exits non-zero
    rows = [
        line.split("|")[1:-1]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and "who" not in line
    ]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (n, who) for n in ("1", "3") for who in ("mailer send", "prototype")
    ]
    for row in rows:
        assert float(row[2]) > 0 and float(row[4]) > 0  # CPU per 1,000 and msg/s measured
