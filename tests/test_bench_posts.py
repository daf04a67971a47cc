"""bench/posts.py, the issue-13 figures per fixture post, runs and gives a row for every post."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLE, ROOT


def test_a_row_for_every_post_with_its_bytes_and_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "posts.py"), "--no-browser", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {row["post"]: row for row in json.loads(out.read_text(encoding="utf-8"))}
    posts = [EXAMPLE, *sorted((ROOT / "tests" / "posts").glob("*.md"))]
    assert list(rows) == [p.name for p in posts]
    for path in posts:
        row = rows[path.name]
        assert row["markdown"] == path.stat().st_size
        assert row["html"] > row["markdown"] / 2 and row["ratio"] == round(row["html"] / row["markdown"], 1)
        assert row["clipped"] == (row["html"] > 102_000)
        assert ("html-size" in row["refused"]) == row["clipped"]  # send refuses a clipped issue
    table = done.stdout.splitlines()
    assert table[0].startswith("| post | markdown | HTML |") and len(table) == 2 + len(posts)
