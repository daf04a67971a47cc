"""bench/send_ab.py (issue 12's send CPU before and after): two trees alternated, smtp-source beside them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench_ab import run_ab
from tests.conftest import ROOT
from tests.test_bench import HAS_POSTFIX_TOOLS


@pytest.mark.skipif(not HAS_POSTFIX_TOOLS, reason="needs Debian postfix (smtp-sink, smtp-source)")
def test_both_trees_send_every_message_and_each_gets_a_row_per_connection_count(tmp_path: Path) -> None:
    args = ["--before", str(ROOT), "--count", "30", "--rounds", "1", "--connections", "1,2"]
    done, rows = run_ab("send_ab.py", args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (n, who) for n in ("1", "2") for who in ("smtp-source", "before", "after")
    ]
    for row in rows:
        assert float(row[2]) > 0 and float(row[4]) > 0  # CPU per 1,000 and msg/s measured
