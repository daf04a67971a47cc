"""bench/record_ab.py (issue 16's cost of one commit of the record): two trees alternated, a row each; and
what both A/B scripts say of a folder that is no mailer tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench_ab import run_ab
from tests.conftest import ROOT


def test_both_trees_commit_into_a_real_file_and_each_gets_its_figures(tmp_path: Path) -> None:
    args = ["--before", str(ROOT), "--dir", str(tmp_path), *"--count 20 --prefill 30 --rounds 2".split()]
    done, rows = run_ab("record_ab.py", args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert [row[0].strip() for row in rows] == ["before", "after"]
    for row in rows:
        assert len(row[2].split(",")) == 2  # one figure per round
        cpu, wall, written = (float(row[i].replace(",", "")) for i in (1, 3, 4))
        assert cpu > 0 and wall > 0
        assert written >= 4096  # at least a page into the WAL per commit: the record was written
    assert list(tmp_path.iterdir()) == []  # the records made are gone


@pytest.mark.parametrize("script", ["record_ab.py", "send_ab.py"])
def test_a_folder_that_is_no_tree_is_one_line_and_a_non_zero_exit(tmp_path: Path, script: str) -> None:
    done, _ = run_ab(script, ["--before", str(tmp_path / "no-such-tree"), "--rounds", "1"], tmp_path)
    assert done.returncode != 0
    assert (
        done.stderr.strip() == f"{tmp_path / 'no-such-tree'}: not a mailer tree (no mailer/ledger.py in it)"
    )
