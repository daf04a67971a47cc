"""The plain-text part's pieces: blocks and lists, link references, and folding lines under 998 octets."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from lxml import html as lhtml

from mailer.fold import fold
from mailer.markdown import parse
from mailer.plaintext import to_text


def text_of(body: str) -> str:
    return to_text(parse(body), lambda html: "")


def test_lists_are_tight_and_stand_apart_from_what_follows() -> None:
    text = text_of("Intro\n\n3. one\n4. two\n   - inner\n\n> - quoted\n> - list\n\n- a\n\n- b\n\nafter")
    assert text == "Intro\n\n3. one\n4. two\n   - inner\n\n> - quoted\n> - list\n\n- a\n- b\n\nafter\n"


def test_an_item_that_opens_with_a_nested_list_keeps_its_own_number_for_its_paragraph() -> None:
    assert text_of("1. -\n\n   b\n2. c") == "1. b\n2. c\n"


def test_a_footnote_defined_inside_another_does_not_stop_the_text_part() -> None:
    """The footnote plugin drops the inner definition's opening tokens but keeps their closing ones."""
    assert text_of("See[^2].\n\n[^2]: other\n    - [^1]: note\n").startswith("See[1].\n")
    assert text_of("x[^2]\n\n[^2]: other\n    > [^1]: note\n").startswith("x[1]\n")


def test_link_urls_are_numbered_after_the_footnotes() -> None:
    text = text_of(
        "A[^n] [b](https://b.example) [c](https://c.example)\n\n[^n]: Note [d](https://d.example)."
    )
    assert text.split("\n")[0] == "A[1] b[2] c[3]"
    assert text.endswith(
        "[1] Note d[4].\n\n[2] https://b.example\n[3] https://c.example\n[4] https://d.example\n"
    )


def octets(line: str) -> int:
    return len(line.encode("utf-8"))


@given(st.lists(st.sampled_from(["word", " ", "  ", "中文字", "x" * 40]), max_size=200), st.integers(20, 120))
def test_folded_text_joins_back_at_its_spaces(pieces: list[str], limit: int) -> None:
    line = "".join(pieces)
    folded = fold(line, html=False, cost=octets, limit=limit)
    if folded is None:  # only when some word is longer than the limit
        assert max(octets(w) for w in line.split(" ")) > limit
        return
    assert all(octets(piece) <= limit for piece in folded.split("\n"))
    assert folded.replace("\n", " ") == line


HTML_PIECES = [
    "text ",
    "中文，",
    "<a href=\"https://example.org/a b\" title='x > y'>",
    "</a> ",
    '<p style="color: red; margin: 0 0 8px; padding: 4px">',
    "</p>",
    "<pre>keep  these   spaces</pre>",
    "<b>bold</b> ",
]


@given(st.lists(st.sampled_from(HTML_PIECES), max_size=60), st.integers(60, 200))
def test_folded_html_parses_to_the_same_document(pieces: list[str], limit: int) -> None:
    line = "<div>" + "".join(pieces) + "</div>"
    folded = fold(line, html=True, cost=octets, limit=limit)
    if folded is None:
        return
    assert all(octets(piece) <= limit for piece in folded.split("\n"))

    def shape(source: str) -> list[tuple[str, dict[str, str], str, str]]:
        """Tags, attributes and text; whitespace runs as one space where HTML treats them so."""

        def space(text: str | None) -> str:
            return re.sub(r"\s+", " ", text or "")

        out = []
        for el in lhtml.fromstring(source).iter():
            attrs = {name: space(value) if name == "style" else value for name, value in el.attrib.items()}
            text = el.text or "" if el.tag == "pre" else space(el.text)  # spaces in <pre> show
            out.append((el.tag, attrs, text, space(el.tail)))
        return out

    assert shape(folded) == shape(line)


def test_a_footnote_that_opens_with_a_heading_underlines_nothing_after_it() -> None:
    assert text_of("x[^1]\n\n[^1]: # Title\n\n    More.\n").endswith("\n[1] Title\n\nMore.\n")


def test_raw_html_links_inside_a_paragraph_are_numbered_references_too() -> None:
    """`<a href><strong style=...>` as an editor pastes it: the text part lost the URL."""
    text = text_of(
        '这是<a href="https://a.example/x?a=1&amp;b=2"><strong style="color:#111">加粗的链接</strong></a>，'
        "还有<a href='javascript:alert(1)'>坏链接</a>和[普通链接](https://b.example)。"
    )
    assert text.split("\n")[0] == "这是加粗的链接[1]，还有坏链接和普通链接[2]。"
    assert text.endswith("[1] https://a.example/x?a=1&b=2\n[2] https://b.example\n")


def test_raw_html_block_links_are_numbered_references_not_urls_in_the_sentence() -> None:
    """The example's Telegram card read '群组 @ai_news_plus (https://t.me/ai_news_plus)，抢先获取'."""
    body = '<div>欢迎加入群组 <a href="https://t.me/x">@x</a>，抢先获取。<a href="https://t.me/x">加入</a></div>\n'
    text = to_text(parse(body), lambda html: html)  # the HTML as the sanitiser would keep it
    assert text.split("\n")[0] == "欢迎加入群组 @x[1]，抢先获取。加入[2]"
    assert text.endswith("\n[1] https://t.me/x\n[2] https://t.me/x\n")
