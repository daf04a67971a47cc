"""CJK-friendly emphasis: bold next to Chinese punctuation works; ASCII text parses as CommonMark says."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.common.normalize_url import normalizeLink

from mailer.markdown import parse, parser, to_html
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


URL_PARTS = st.one_of(
    st.sampled_from(["https://", "http://", "HTTPS://", "ftp://", "mailto:", "//", "javascript:", "https:"]),
    st.sampled_from(
        ["example.com", "a.b-c.io", "xn--fsq.com", "例子.测试", "EXAMPLE.COM", "host:8080", "[::1]"]
    ),
    st.sampled_from(
        ["a" * 64, "b" * 63 + ".c", ".", "..", "-", "@", "user:pw@", "%", "%2F", "%zz", "~", "_"]
    ),
    st.sampled_from(["/", "/path/to", "?q=1&r=2", "#frag", "(x)", "*!$,;:=+", "'", '"', " ", "\\", "^", "|"]),
    st.sampled_from(["é", "中", "\t", "\n", "<", ">", "`", "{", "}", "[", "]"]),
    st.text(alphabet="abcXYZ019-._~/?#&=+,;:!*()$%@'", max_size=12),
)


@given(st.lists(URL_PARTS, max_size=8).map("".join))
@example("https://example.com/releases/1")
@example("https://example.com/100%zz")  # escaped: %25zz
@example("https://example.com/é?q=a b")  # escaped: %C3%A9, %20
@example("https://例子.测试/")  # punycode
@example("https://" + "a" * 63 + ("." + "a" * 63) * 4 + "/x")  # a host name over 255 characters
def test_links_are_normalized_as_markdown_it_does(url: str) -> None:
    """mailer skips markdown-it's normalizeLink for plain links; every link still comes out as it would."""
    assert parser().normalizeLink(url) == normalizeLink(url)
