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


def test_weigh_puts_every_byte_in_one_bucket() -> None:
    """bench/weigh.py: the buckets add up to the part's size, and text/urls are what a hand count gives."""
    from bench.weigh import weigh

    html = (
        '<html><head><style>a{color:red}</style></head><body class="b">'
        '<div class="preheader">hidden</div>\r\n<p style="margin:0;color:#111">Hello   world '
        '<a href="https://x.example/é">link</a></p>\r\n<!--[if mso]>x<![endif]--></body></html>'
    )
    w = weigh(html)
    parts = ("text", "urls", "attrs", "tags", "space", "head", "hidden")
    styles = sum(v for k, v in w.items() if k.startswith("style"))
    assert sum(w[k] for k in parts) + styles == w["total"] == len(html.encode())
    assert w["text"] == len("Hello world link") and w["urls"] == len("https://x.example/é".encode())
    assert w["style:margin"] == len("margin:0;") and w["style:color"] == len("color:#111;")
    assert w["own"] == w["text"] + w["urls"]
