"""Issue 13's figures for every fixture post: bytes, Gmail clipping, refusals, text contrast light and dark.

    .venv/bin/python bench/posts.py                 # the posts of tests/posts and the example, this checkout
    .venv/bin/python bench/posts.py --mailer DIR    # the same posts rendered by the mailer in DIR
    .venv/bin/python bench/posts.py --json out.json

For each post: its markdown bytes, the HTML part's bytes as Gmail counts them (`Issue.html_size`), their
ratio, whether Gmail would clip it (over `clip_warn_bytes`, 102,000), whether `send` would refuse it and why
(a post that cannot be read, or a pre-send check that fails), and the lowest WCAG contrast of any text and of
any button label in headless Chromium at 600 px, light and dark (tests/chromium.py, the code of the dark-mode
test). Rendered offline: remote images are not fetched, and the contrasts leave images out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chromium import ARGS, CHROMIUM, text_contrasts  # noqa: E402 (before --mailer puts a path first)

POSTS = ROOT / "tests" / "posts"
EXAMPLE = ROOT / "examples" / "2026-02-09.md"
SITE = {  # a publisher whose settings pass the checks, so only the post can make a send refuse
    "from_name": "AI Daily",
    "from_email": "news@aidaily.news",
    "web_url": "https://aidaily.news/mailer",
    "base_url": "https://blog.aidaily.news/",
    "postal_address": "AI Daily, 9 Harbour Road, Hong Kong",
    "secret_key": "bench-secret-key-0123456789abcdef",
}


def posts() -> list[Path]:
    """The example first, then every fixture post (not the broken ones, which are refused by design)."""
    return [EXAMPLE, *sorted(POSTS.glob("*.md"))]


def measure(path: Path, settings: Any, browser: Any) -> dict[str, Any]:
    """One post's row; `browser` None leaves the contrasts out."""
    from mailer.checks import check_issue
    from mailer.errors import MailerError
    from mailer.post import load_post
    from mailer.render import render_issue

    row: dict[str, Any] = {"post": path.name, "markdown": path.stat().st_size}
    try:
        issue = render_issue(load_post(path), settings)
    except MailerError as exc:
        return {**row, "refused": str(exc).replace(str(path), path.name)}
    size = issue.html_size()
    failed = [c for c in check_issue(issue, settings) if c.level == "error"]  # what stops `send`
    row.update(
        html=size,
        ratio=round(size / row["markdown"], 1),
        clipped=size > settings.clip_warn_bytes,
        refused="; ".join(f"{c.code}: {c.message}" for c in failed),
    )
    if browser is not None:
        html = issue.html.fill({"unsubscribe_url": f"{SITE['web_url']}/u?t=x", "name": "", "email": ""})
        for scheme in ("light", "dark"):
            texts = text_contrasts(browser, html.decode("utf-8"), dark=scheme == "dark")
            for kind, button in (("text", False), ("button", True)):
                some = [t for t in texts if t["button"] == button]
                lowest = min(some, key=lambda t: t["ratio"]) if some else None
                row[f"{kind}_{scheme}"] = round(lowest["ratio"], 2) if lowest else None
                row[f"{kind}_{scheme}_lowest"] = f"<{lowest['tag']}> {lowest['text']}" if lowest else None
    return row


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a markdown table."""

    def num(value: Any, suffix: str = "") -> str:
        return "" if value is None else f"{value:,}{suffix}" if isinstance(value, int) else f"{value}{suffix}"

    lines = [
        "| post | markdown | HTML | ratio | clipped | refused | text light | text dark | button light"
        " | button dark |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        refused = (r.get("refused") or "").replace("|", "\\|")
        clipped = "" if "html" not in r else "yes" if r["clipped"] else "no"
        lines.append(
            f"| {r['post']} | {num(r['markdown'])} | {num(r.get('html'))} | {num(r.get('ratio'), 'x')}"
            f" | {clipped} | {refused[:120] or 'no'} | {num(r.get('text_light'))} | {num(r.get('text_dark'))}"
            f" | {num(r.get('button_light'))} | {num(r.get('button_dark'))} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailer", type=Path, help="render with the mailer package in this checkout instead")
    parser.add_argument("--no-browser", action="store_true", help="leave out the contrasts (no Chromium)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    if args.mailer:
        sys.path.insert(0, str(args.mailer.resolve()))
    import tempfile
    from dataclasses import fields

    import mailer
    from mailer.config import Settings

    where = Path(mailer.__file__).resolve().parent.parent
    print(f"# mailer from {where}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="mailer-posts-") as tmp:
        known = {f.name for f in fields(Settings)}
        extra = {"offline": True} if "offline" in known else {}  # older mailers fetched nothing anyway
        settings = Settings(
            **SITE,
            data_dir=Path(tmp),
            templates_dir=where / "templates",
            **extra,  # type: ignore[arg-type]
        )
        rows = []
        if args.no_browser:
            rows = [measure(path, settings, None) for path in posts()]
        else:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
                try:
                    rows = [measure(path, settings, browser) for path in posts()]
                finally:
                    browser.close()
    print("\n".join(table(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
