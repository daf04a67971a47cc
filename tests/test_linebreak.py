"""CJK lines in the text part: Unicode line breaking with kinsoku, two columns per wide character, and
format=flowed (RFC 3676, delsp=yes) so that a reader can join a paragraph's lines without a stray space."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailer.linebreak import wrap
from tests.conftest import EXAMPLE
from tests.flowed import unflow
from tests.test_render import POSTS, make_settings, render

# the brief's kinsoku sets: no line starts with these, no line ends with those
CLOSING = set("，。、；：？！）」』》】〕〉”’…%,.;:?!)")
OPENING = set("（「『《【〔〈“‘([")
WIDE_LIMIT = 76


def columns(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def breakable(before: str, after: str) -> bool:
    """Where the brief lets a line break inside a run of text with no space: next to a wide character,
    never before closing or after opening punctuation, never inside a "——"."""
    if after in CLOSING or before in OPENING or before + after == "——":
        return False
    return unicodedata.east_asian_width(before) in "WF" or unicodedata.east_asian_width(after) in "WF"


def unbreakable(text: str) -> bool:
    return " " not in text and not any(breakable(a, b) for a, b in zip(text, text[1:], strict=False))


CHINESE = [EXAMPLE, POSTS / "long.md"]


@pytest.mark.parametrize("path", CHINESE, ids=lambda p: p.stem)
def test_chinese_posts_wrap_by_width_with_kinsoku_and_join_without_spaces(path: Path, tmp_path: Path) -> None:
    text = render(path, make_settings(tmp_path)).text
    lines = text.split("\n")
    for line in lines:
        if columns(line) > WIDE_LIMIT:
            # code, a line with a URL (never broken), or one long word
            assert line.startswith("    ") or "://" in line or unbreakable(line.strip()), line
    for line, after in zip(lines, lines[1:], strict=False):
        if line.endswith(" ") and not line.endswith("  "):  # a break inside a run of text: kinsoku
            head = after.lstrip(" >")
            assert head[:1] not in CLOSING and line.rstrip()[-1:] not in OPENING, (line, after)
            assert breakable(line.rstrip()[-1], head[0]), (line, after)
    # every paragraph of the post comes back whole, as one line, without a stray space
    joined = unflow(text).split("\n")
    source = path.read_text(encoding="utf-8").split("\n---\n", 1)[1]
    paragraphs = [p for p in source.split("\n\n") if re.fullmatch(r"[^#\-|<>\[\]`!\n*]\S[^\n\[\]`]+", p)]
    assert paragraphs
    for para in paragraphs:
        assert para.replace("**", "") in joined, para


def test_the_example_is_wrapped_wide_and_a_flowed_reader_gets_whole_paragraphs(tmp_path: Path) -> None:
    """Lines up to 76 columns (37 Chinese characters and the flow space), not narrow ones; joined by a
    format=flowed reader into one line per paragraph, which the phone wraps to its own width."""
    text = render(EXAMPLE, make_settings(tmp_path)).text
    body = [line for line in text.split("\n") if re.match(r"[\u4e00-\u9fff]", line)]
    assert max(columns(line) for line in body) >= 74
    paragraph = "微软、谷歌、亚马逊、Meta四家科技巨头计划在2026年合计投入6100亿美元用于数据中心"
    assert any(line.startswith(paragraph) and columns(line) > 200 for line in unflow(text).split("\n"))


def test_the_text_part_is_sent_format_flowed_delsp(tmp_path: Path) -> None:
    from mailer.message import make_factory

    settings = make_settings(tmp_path, secret_key="test-key-0123456789abcdef")
    rendered = render(EXAMPLE, settings)
    data = make_factory(rendered.issue, settings).build("ada@example.com", "Ada")
    head = data.split(b"\r\n\r\n--", 2)[1].split(b"\r\n\r\n", 1)[0]
    assert b"Content-Type: text/plain; format=flowed; delsp=yes;" in head


PIECES = st.one_of(
    st.sampled_from(list("中文字词句段落汉语日本語かなカナ한국어")),
    st.sampled_from(sorted(CLOSING | OPENING | {"——", "…", "ー", "っ"})),
    st.sampled_from(["word", "GPT-5.2", "6100", "https://example.com/a/very/long/path?q=1", "e-mail", "AI"]),
    st.sampled_from([" ", "  ", "\t"]),
)


@given(st.lists(PIECES, max_size=80).map("".join), st.integers(8, 80), st.booleans())
@example("微软、谷歌（重点）。" * 8, 20, True)
@example("他说“这很重要”然后离开——真的。", 10, False)
def test_wrapped_lines_fit_keep_kinsoku_and_keep_the_text(text: str, width: int, flowed: bool) -> None:
    lines = wrap(text, width, flowed=flowed)
    for line in lines:
        assert columns(line) <= width or unbreakable(line.strip()), (line, width)
    for line, after in zip(lines, lines[1:], strict=False):
        if flowed:
            assert line.endswith(" ")
        if flowed and not line.endswith("  "):  # broken inside a run of text, not at a space: kinsoku
            assert breakable(line[-2], after[0]), (line, after)
    if flowed:
        assert unflow("\n".join(lines)) == " ".join(text.split())
    else:
        assert "".join("".join(lines).split()) == "".join(text.split())
    assert not lines or not lines[-1].endswith(" ")


def test_from_lines_are_stuffed_and_fixed_lines_never_end_in_a_space(tmp_path: Path) -> None:
    post = tmp_path / "p.md"
    post.write_text(
        "---\ntitle: Flowed\n---\nFrom the editor: " + "words " * 20 + "\n\n```\ncode   \n\n  more\n```\n\n"
        "| a | b |\n|---|---|\n| 1 |  |\n\n- an item " + "that wraps " * 10 + "\n",
        encoding="utf-8",
    )
    lines = render(post, make_settings(tmp_path)).text.split("\n")
    assert lines[lines.index("") + 1].startswith(" From the editor: words")  # RFC 3676 4.4: stuffed
    assert "From the editor: " + "words " * 19 + "words" in unflow("\n".join(lines)).split("\n")
    assert lines[lines.index("    code") + 1] == ""  # a blank code line has no spaces left to flow on
    for fixed in ("    code", "      more", "1 |", "- an item that wraps"):
        assert any(line.startswith(fixed) and not line.endswith(" ") for line in lines), fixed
    item = next(i for i, line in enumerate(lines) if line.startswith("- an item"))
    assert not lines[item].endswith(" ") and lines[item + 1].startswith("  that")  # hanging indent, fixed
