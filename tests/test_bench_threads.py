"""bench/threads.py (issue 16: a send's CPU and wake-ups, thread by thread): a row per kind of thread for each
tree and connection count, figures that add up to no more than the process's own, and msg/s on its row."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench_ab import run_ab
from tests.conftest import ROOT
from tests.test_bench import HAS_POSTFIX_TOOLS


@pytest.mark.skipif(not HAS_POSTFIX_TOOLS, reason="needs Debian postfix (smtp-sink)")
def test_each_kind_of_thread_gets_its_cpu_and_switches_per_message(tmp_path: Path) -> None:
    args = ["--before", str(ROOT), "--count", "40", "--rounds", "2", "--connections", "1,2"]
    done, rows = run_ab("threads.py", args, tmp_path)
    assert done.returncode == 0, done.stderr
    cells = [[cell.strip() for cell in row] for row in rows]
    kinds = ["mailer-record", "mailer-send", "main", "process"]
    assert [row[:3] for row in cells] == [
        [n, tree, kind] for n in ("1", "2") for tree in ("before", "after") for kind in kinds
    ]
    for at in range(0, len(cells), len(kinds)):
        threads, process = cells[at : at + 3], cells[at + 3]
        assert all(float(row[3]) > 0 and float(row[4]) > 0 for row in threads)  # each woke and worked
        # the process's CPU holds every thread's (a thread's is read as it ends, the process's after all)
        assert sum(float(row[3]) for row in threads) <= float(process[3]) + 0.002
        assert float(process[6]) > 0 and all(row[6] == "" for row in threads)  # msg/s: the process's row
    assert list(tmp_path.iterdir()) == []
