"""bench/render_ab.py (issue 12's render CPU before and after) alternates two interpreters, reports both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_both_installs_render_both_posts_and_the_rest_is_total_minus_inlining(tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "render_ab.py"), "--before", sys.executable,
         "--rounds", "1", "--runs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = json.loads(out.read_text(encoding="utf-8"))
    posts = ("2026-02-09.md", "2026-02-10-long.md")
    keys = [f"{label} {post}" for label in ("before", "after") for post in posts]
    assert list(table) == keys
    for row in table.values():
        assert 0 < row["inlining"] < row["total"]
        assert abs(row["all but inlining"] - (row["total"] - row["inlining"])) < 1e-6  # one render each
    assert done.stdout.splitlines()[0].startswith("render CPU ms") and len(done.stdout.splitlines()) == 6
