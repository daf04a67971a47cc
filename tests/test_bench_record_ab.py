"""bench/record_ab.py (issue 16's cost of one commit of the record): two trees alternated, a row each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_both_trees_commit_into_a_real_file_and_each_gets_its_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "record_ab.py"), "--before", str(ROOT), "--count", "20",
         "--prefill", "30", "--rounds", "2", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [
        line.split("|")[1:-1]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and "tree" not in line
    ]
    assert [row[0].strip() for row in rows] == ["before", "after"]
    for row in rows:
        assert len(row[2].split(",")) == 2  # one figure per round
        cpu, wall, written = (float(row[i].replace(",", "")) for i in (1, 3, 4))
        assert cpu > 0 and wall > 0
        assert written >= 4096  # at least a page into the WAL per commit: the record was written
    assert list(tmp_path.iterdir()) == []  # the records made are gone


def test_a_folder_that_is_no_tree_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "record_ab.py"), "--before", str(tmp_path / "no-such-tree"),
         "--count", "5", "--prefill", "0", "--rounds", "1", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert (
        done.stderr.strip() == f"{tmp_path / 'no-such-tree'}: not a mailer tree (no mailer/ledger.py in it)"
    )
