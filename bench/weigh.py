"""Where the bytes of each fixture's HTML part go: the post's own text and links, and mailer's markup.

    .venv/bin/python bench/weigh.py                 # every post of bench/posts.py, this checkout
    .venv/bin/python bench/weigh.py --mailer DIR    # rendered by the mailer in DIR (a before/after)

The HTML part is taken as sent (CRLF lines, slots filled with empty values). Each byte falls in one bucket:
`text` (visible text in <body>, a run of whitespace as one space), `urls` (href and src values),
`style:PROP` (each inline declaration, `;` included), `style=""` (the attribute's own bytes), `attrs` (every
other attribute), `tags` (`<td`, `>`, `</td>`), `space` (whitespace between tags and beyond one space inside
text, line breaks included), `head` (everything before <body>: <style>, meta, conditional comments) and
`hidden` (the preheader, which only the inbox list shows). `own` = text + urls: the post's share that no
markup choice removes.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.posts import SITE, posts  # noqa: E402

_TOKEN = re.compile(r"<!--.*?-->|<[^>]*>|[^<]+", re.S)
_ATTR = re.compile(r"""\s+([^\s=>/]+)(?:=("[^"]*"|'[^']*'|[^\s>]+))?""")
_HIDDEN = re.compile(r'<div class="preheader".*?</div>', re.S)


def weigh(html: str) -> Counter[str]:
    """Bytes of `html` per bucket (see the module's docstring)."""
    out: Counter[str] = Counter()
    head, body_tag, body = html.partition("<body")
    out["head"] = len(head.encode())
    body = body_tag + body
    hidden = _HIDDEN.search(body)
    if hidden:
        out["hidden"] = len(hidden.group(0).encode())
        body = body[: hidden.start()] + body[hidden.end() :]
    for token in _TOKEN.findall(body):
        size = len(token.encode())
        if not token.startswith("<"):  # runs of whitespace as one space; between tags only, none
            words = re.sub(r"\s+", " ", token) if token.strip() else ""
            out["text"] += len(words.encode())
            out["space"] += size - len(words.encode())
        elif token.startswith("<!--"):
            out["head"] += size
        else:
            _weigh_tag(token, out)
    out["own"] = out["text"] + out["urls"]
    out["total"] = len(html.encode())
    return out


def _weigh_tag(token: str, out: Counter[str]) -> None:
    name = re.match(r"</?[^\s>]*", token)
    rest = token[name.end() if name else 0 :]
    out["tags"] += len(token.encode())
    for match in _ATTR.finditer(rest):
        key, value = match.group(1).lower(), (match.group(2) or "").strip("\"'")
        size = len(match.group(0).encode())
        out["tags"] -= size
        if key in ("href", "src"):
            out["urls"] += len(value.encode())
            out["attrs"] += size - len(value.encode())
        elif key == "style":
            parts = [p for p in value.split(";") if p.strip()]
            for part in parts:
                out["style:" + part.split(":")[0].strip().lower()] += len(part.encode()) + 1
            out['style=""'] += size - sum(len(p.encode()) + 1 for p in parts)
        else:
            out["attrs"] += size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailer", type=Path, help="render with the mailer package in this checkout instead")
    parser.add_argument("--styles", type=int, default=4, help="how many style properties to list per post")
    args = parser.parse_args(argv)
    if args.mailer:
        sys.path.insert(0, str(args.mailer.resolve()))
    import tempfile
    from dataclasses import fields

    import mailer
    from mailer.config import Settings
    from mailer.post import load_post
    from mailer.render import render_issue

    where = Path(mailer.__file__).resolve().parent.parent
    print(f"# mailer from {where}", file=sys.stderr)
    cols = ["total", "own", "text", "urls", "style", "attrs", "tags", "space", "head", "hidden"]
    print("| post | " + " | ".join(cols) + " | HTML/own | largest style properties |")
    print("|---|" + "---:|" * (len(cols) + 1) + "---|")
    with tempfile.TemporaryDirectory(prefix="mailer-weigh-") as tmp:
        known = {f.name for f in fields(Settings)}
        extra = {"offline": True} if "offline" in known else {}
        settings = Settings(**SITE, data_dir=Path(tmp), templates_dir=where / "templates", **extra)  # type: ignore[arg-type]
        for path in posts():
            try:
                issue = render_issue(load_post(path), settings)
            except Exception as exc:  # a refused post: its reason, as bench/posts.py shows it
                print(f"| {path.name} | refused: {str(exc)[:60]} |")
                continue
            w = weigh(issue.html.fill({"unsubscribe_url": "", "name": "", "email": ""}).decode())
            w["style"] = sum(v for k, v in w.items() if k.startswith("style"))
            styles = sorted(((v, k[6:]) for k, v in w.items() if k.startswith("style:")), reverse=True)
            listed = ", ".join(f"{k} {v:,}" for v, k in styles[: args.styles])
            print(f"| {path.name} | " + " | ".join(f"{w[c]:,}" for c in cols)
                  + f" | {w['total'] / max(w['own'], 1):.2f}x | {listed} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
