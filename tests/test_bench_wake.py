"""bench/wake.py (issue 16: what a thread's wake-up costs on this machine): a row per way of waiting, each
with a figure per round, the fsync on the disk named, and nothing left there."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench_ab import run_ab

WAYS = [
    "hot (back to back)",
    "after a 0.5 ms sleep",
    "after 0.5 ms of other Python",
    "after a 16 MB copy (caches evicted)",
    "after a pwrite + fdatasync",
]


def test_every_way_of_waiting_gets_its_figures_and_the_folder_is_left_empty(tmp_path: Path) -> None:
    done, rows = run_ab("wake.py", ["--count", "20", "--rounds", "2", "--dir", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert [row[0].strip() for row in rows] == WAYS
    for row in rows:
        assert float(row[1]) > 0
        assert len(row[2].split(",")) == 2  # one figure per round
    assert rows[0][3].strip() == "1.00x"  # the hot row is the yardstick of the others
    fsync = rf"fdatasync of 4 KB in {re.escape(str(tmp_path))}: wall \d+ µs, CPU \d+ µs"
    assert re.search(fsync, done.stdout), done.stdout
    assert "(medians of 40)" in done.stdout  # one fsync before each message built, 20 a round
    assert re.search(r"a plain Python loop: [\d.]+ ns a turn", done.stdout)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_there_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    done, _ = run_ab("wake.py", ["--count", "5", "--dir", str(tmp_path / "gone")], tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip() == f"{tmp_path / 'gone'}: not a folder"
