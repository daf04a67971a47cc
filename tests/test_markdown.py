"""CJK-friendly emphasis: bold next to Chinese punctuation works; ASCII text parses as CommonMark says."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from mailer.markdown import parse, to_html
from mailer.plaintext import to_text


@pytest.mark.parametrize(
    ("source", "bold"),
    [
        ("微软亚洲研究院提出**BiPS（双向感知塑形）**新方法", "BiPS（双向感知塑形）"),
        ("A**（括号）**B", "（括号）"),
        ("他说**“这很重要”**然后离开", "“这很重要”"),
        ("发明了**火焰图**（Flame Graphs）", "火焰图"),
        ("合计**蒸发了9500亿美元市值**。", "蒸发了9500亿美元市值"),
    ],
)
def test_bold_next_to_cjk_punctuation(source: str, bold: str) -> None:
    html = to_html(parse(source))
    assert f"<strong>{bold}</strong>" in html
    assert "**" not in html


@pytest.mark.parametrize(
    "source",
    ["a **b** c", "**foo**bar", "x ** y ** z", "**(a)**b", "2*3*4", "*a*b*c*", "__init__.py", "a_b_c"],
)
def test_ascii_text_parses_as_commonmark(source: str) -> None:
    reference = MarkdownIt("commonmark").render(source)
    assert to_html(parse(source)) == reference


def test_a_line_break_between_chinese_characters_is_not_a_space() -> None:
    html = to_html(parse("第一行\n第二行 and\nEnglish"))
    assert "第一行第二行" in html
    assert "and\nEnglish" in html


def test_plain_text_wraps_cjk_by_width_and_keeps_urls_whole() -> None:
    url = "https://example.com/" + "a" * 90
    text = to_text(parse("中" * 100 + f"\n\n[link]({url})"), lambda html: "")
    lines = text.splitlines()
    assert all(len(line) <= 38 for line in lines if line.startswith("中"))  # 2 columns each, 76 wide
    assert "link[1]" in lines and f"[1] {url}" in lines  # listed at the end, never broken
