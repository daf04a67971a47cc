"""Gmail clips an HTML part over ~102 KB: a post's own bytes must decide that, not mailer's markup.

The post's own share is what no markup choice can remove: the UTF-8 bytes of its visible text (title,
summary, body; one space between words) and of the URLs its links and images point to (href, src). Each
post here is generated with its own share counted as it is written, filled to just under a budget, and
rendered by the real `render_issue`; `Issue.html_size` (the bytes as Gmail counts them) must stay under the
limit. The budgets are the figures docs/writing.md gives publishers per kind of post.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailer.config import Settings
from mailer.post import load_post
from mailer.render import render_issue

LIMIT = Settings().clip_warn_bytes  # 102,000: where Gmail cuts the message off
WORDS = ("model data release engineer product market privacy research center team user chip investment "
         "open source weekly figures benchmark latency memory").split()  # fmt: skip
HANZI = "数据模型发布工程师产品市场隐私研究中心团队用户芯片投资开源每周基准延迟内存训练推理"


@dataclass
class Post:
    """A generated post and its own share, counted while it is written."""

    lines: list[str] = field(default_factory=list)
    own: int = 0

    def text(self, words: str) -> str:
        self.own += len(words.encode())
        return words

    def url(self, n: int) -> str:
        url = f"https://example.com/articles/{n}?ref=newsletter"
        self.own += len(url.encode())
        return url


def prose(post: Post, rng: random.Random, n: int) -> None:
    """A paragraph of English prose, a link every ~300 characters; a heading every tenth."""
    if n % 10 == 0:
        post.lines += [f"## {post.text(f'Section {n // 10 + 1}')}", ""]
    sentences = []
    for k in range(2):
        words = " ".join(rng.choice(WORDS) for _ in range(40))  # ~300 characters
        sentences.append(f"{post.text(words)} [{post.text(f'link {n}.{k}')}]({post.url(n * 2 + k)})")
    post.own += 2  # the spaces between the sentences: before the second link's text and after it
    post.lines += [" ".join(sentences) + ".", ""]
    post.own += 1


def chinese(post: Post, rng: random.Random, n: int) -> None:
    """A Chinese daily's paragraph: ~200 characters, a bold phrase and a link every other paragraph."""
    if n % 10 == 0:
        post.lines += [f"## {post.text(f'第{n // 10 + 1}节')}", ""]
    body = post.text("".join(rng.choice(HANZI) for _ in range(180)))
    bold = post.text("".join(rng.choice(HANZI) for _ in range(12)))
    link = f"，见[{post.text('原文')}]({post.url(n)})" if n % 2 else ""
    post.own += len("，".encode()) if link else 0
    post.lines += [f"{body}**{bold}**{link}。", ""]
    post.own += len("。".encode())


def weekly(post: Post, rng: random.Random, n: int) -> None:
    """One table of a weekly: 8 rows of 5 columns, numbers aligned right, a link in every row."""
    post.lines += [f"## {post.text(f'Section {n + 1}')}", ""]
    post.lines += ["| 排名 | 项目 | 本周星标 | 变化 | 语言 |", "|---:|---|---:|---:|---|"]
    post.own += len("排名 项目 本周星标 变化 语言".encode())
    for row in range(1, 9):
        name = post.text(rng.choice(("Grafana", "Zola", "Deno", "Axum", "Hugo", "Kubernetes")))
        cells = [post.text(str(row)), f"[{name}]({post.url(n * 8 + row)})",
                 post.text(f"{rng.randrange(1000, 99999):,}"), post.text(f"{rng.uniform(-9, 9):+.1f}%"),
                 post.text(rng.choice(("Rust", "Go", "Python", "TypeScript", "C")))]  # fmt: skip
        post.own += 4  # one space between the cells' texts
        post.lines.append("| " + " | ".join(cells) + " |")
    post.lines.append("")


def generate(part: Callable[[Post, random.Random, int], None], budget: int) -> tuple[str, int]:
    """The markdown of a post of `part`s whose own share is just under `budget` bytes, and that share."""
    rng = random.Random(13)
    head = Post()
    title, summary = head.text("Clipping test: a long issue"), head.text("The one summary line")
    body: list[str] = []
    n = 0
    while True:
        post = Post()
        part(post, rng, n)
        if head.own + post.own + 1 > budget:
            break
        body += post.lines
        head.own += post.own + 1  # one space between blocks
        n += 1
    md = f'---\ntitle: "{title}"\ndate: 2026-02-16\nsummary:\n  - {summary}\n---\n\n' + "\n".join(body)
    return md, head.own


# the own share up to which each kind of post renders under Gmail's limit (docs/writing.md)
BUDGETS = {"prose": (prose, 78_000), "chinese": (chinese, 83_000), "weekly": (weekly, 23_500)}


@pytest.mark.parametrize("kind", sorted(BUDGETS))
def test_a_post_within_its_budget_is_not_clipped(tmp_path: Path, kind: str) -> None:
    part, budget = BUDGETS[kind]
    md, own = generate(part, budget)
    path = tmp_path / f"{kind}.md"
    path.write_text(md, encoding="utf-8")
    issue = render_issue(load_post(path), Settings(data_dir=tmp_path, offline=True))
    size = issue.html_size()
    assert budget - 2_000 < own <= budget  # the post is as big as its budget allows
    assert size <= LIMIT, f"{kind}: own {own:,} bytes became {size:,} bytes of HTML ({size / own:.2f}x)"
