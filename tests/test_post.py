"""Reading posts: every front matter field, the title from an H1, and one clear line for each broken post."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from mailer.cli import cli
from mailer.errors import PostError
from mailer.post import _LOOK, load_post, parse_post
from tests.conftest import EXAMPLE

POSTS = Path(__file__).resolve().parent / "posts"
BROKEN = POSTS / "broken"


def test_example_post_every_field() -> None:
    post = load_post(EXAMPLE)
    assert post.title == "四巨头6100亿美元豪赌AI 市场泼冷水蒸发9500亿市值"
    assert post.date == dt.date(2026, 2, 9)
    assert post.category == "AI 日报"
    assert post.tags == ("AI", "AI 日报")
    assert post.cover_image == "https://ssl.aicode.cc/n8n/2026/02-08/23-31-44-hOrghSfV.png"
    # the summary is one YAML string of "- " lines: eight bullets, markers stripped
    assert len(post.summary) == 8
    assert post.summary[0] == "四巨头豪掷6100亿美元AI投资，市值却蒸发9500亿美元"
    assert post.summary[-1] == "三分之一美国消费者不需要设备端AI功能，隐私是最大担忧"
    assert not any(item.startswith(("-", " ")) for item in post.summary)
    assert post.lang == "zh"
    assert post.issue_id == "2026-02-09"
    assert len(post.content_hash) == 64
    # the leading H1 repeats the title: it is removed from the body, the H2s stay
    assert "# 四巨头6100亿美元豪赌AI" not in post.body
    assert post.body.lstrip().startswith("## 四巨头AI豪赌6100亿美元")
    assert 'class="telegram-card"' in post.body
    # the body starts after the closing --- of the front matter
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    assert lines[post.body_line - 2] == "---"


def test_english_post_summary_as_yaml_list() -> None:
    post = load_post(POSTS / "english.md")
    assert post.title == "Weekly Notes: Small Models, Big Wins"
    assert post.date == dt.date(2026, 2, 10)
    assert post.category == "Engineering"
    assert post.tags == ("AI", "Open source")
    assert post.cover_image == "https://images.example.com/covers/2026-02-10.png"
    assert post.summary == (
        "Small language models now beat last year's giants on coding tasks",
        "A new open benchmark measures energy per answer",
        "Tip of the week: pin your dependencies",
    )
    assert post.lang == "en"
    assert "# Weekly Notes" not in post.body
    assert "## Small models catch up" in post.body


def test_summary_string_and_list_give_the_same_bullets(tmp_path: Path) -> None:
    as_string = b'---\ntitle: T\nsummary: "- one\\n- two\\n\\n* three"\n---\nBody\n'
    as_list = b"---\ntitle: T\nsummary:\n  - one\n  - two\n  - three\n---\nBody\n"
    as_block = b"---\ntitle: T\nsummary: |\n  - one\n  - two\n  - three\n---\nBody\n"
    summaries = {parse_post(raw, tmp_path / "p.md").summary for raw in (as_string, as_list, as_block)}
    assert summaries == {("one", "two", "three")}


def test_title_from_first_h1_without_front_matter() -> None:
    post = load_post(POSTS / "no_front_matter.md")
    assert post.title == "A post without front matter"
    assert post.date is None
    assert post.tags == () and post.summary == () and post.category == "" and post.cover_image == ""
    assert "A post without front matter" not in post.body  # not shown twice
    assert "## A section" in post.body


def test_h1_that_differs_from_the_title_is_kept(tmp_path: Path) -> None:
    post = parse_post(b"---\ntitle: The title\n---\n# Another heading\n\nText\n", tmp_path / "p.md")
    assert post.title == "The title"
    assert "# Another heading" in post.body


def test_h1_repeating_the_title_with_markup_is_removed(tmp_path: Path) -> None:
    post = parse_post(b"---\ntitle: The **big** title\n---\n\n# The big title\n\nText\n", tmp_path / "p.md")
    assert "big title" not in post.body
    assert "Text" in post.body


def test_title_fields_cannot_hold_line_breaks(tmp_path: Path) -> None:
    raw = b'---\ntitle: "Hello\\r\\nBcc: evil@example.com\\u0000"\ncategory: "a\\nb"\n---\nBody\n'
    post = parse_post(raw, tmp_path / "p.md")
    assert post.title == "Hello Bcc: evil@example.com"
    assert post.category == "a b"


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    raw = "\ufeff---\r\ntitle: 标题\r\ndate: 2026-02-09\r\n---\r\n正文\r\n".encode()
    post = parse_post(raw, tmp_path / "p.md")
    assert post.title == "标题"
    assert post.date == dt.date(2026, 2, 9)
    assert "\r" not in post.body


def test_datetime_and_quoted_dates(tmp_path: Path) -> None:
    for value in ("2026-02-09 08:30:00", '"2026-02-09"', "2026-02-09T08:30:00+08:00"):
        raw = f"---\ntitle: T\ndate: {value}\n---\nBody\n".encode()
        assert parse_post(raw, tmp_path / "p.md").date == dt.date(2026, 2, 9), value


def test_hugo_post_with_toml_front_matter() -> None:
    post = load_post(POSTS / "hugo_toml.md")
    assert post.title == "Announcing Rust 1.82.0"
    assert post.date == dt.date(2024, 10, 17)
    # description: is the summary, images[0] the cover
    assert post.summary == ("The Rust team is happy to announce a new version of Rust, 1.82.0.",)
    assert post.cover_image == "https://blog.example.org/images/2024-10-17-rust-1.82.png"
    assert post.tags == ("release", "rust")
    assert post.category == "Releases"
    assert post.lang == "en"
    assert "+++" not in post.body and "[extra]" not in post.body
    assert post.body.startswith("The Rust team is happy")
    assert load_post(POSTS / "hugo_toml.md").body_line == 13


def test_toml_post_titled_by_its_first_h1_dated_by_its_file_name() -> None:
    post = load_post(POSTS / "2024-10-02-toml-h1.md")
    assert post.title == "Zola weekly: week 40"
    assert post.date == dt.date(2024, 10, 2)
    assert post.tags == ("zola", "weekly")  # [taxonomies]
    assert post.cover_image == "https://zola.example.org/covers/week-40.png"  # [extra] cover
    assert "# Zola weekly" not in post.body
    assert "## Releases" in post.body


def test_pelican_header_lines() -> None:
    post = load_post(POSTS / "pelican.md")
    assert post.title == "This Week in Rust 567"
    assert post.date == dt.date(2024, 10, 2)
    assert post.category == "This Week in Rust"
    assert post.tags == ("rust", "weekly")
    assert post.summary == ("Hello and welcome to another issue of This Week in Rust!",)
    assert post.cover_image == "https://this-week-in-rust.example.org/images/twir.png"
    assert post.body.startswith("Hello and welcome") and "Title:" not in post.body
    assert post.body_line == 9


def test_first_line_with_a_colon_is_text_not_a_header(tmp_path: Path) -> None:
    post = parse_post(b"# Title\n\nNote: this is the first paragraph.\n", tmp_path / "p.md")
    assert post.title == "Title"
    assert "Note: this is the first paragraph." in post.body
    raw = b"Note: read this first.\nIt is a paragraph.\n\n# Title\n"
    with pytest.raises(PostError, match="no title"):
        parse_post(raw, tmp_path / "p.md")


def test_title_from_an_h1_after_badges_and_comments(tmp_path: Path) -> None:
    raw = (
        b"---\ndate: 2026-01-05\n---\n<!-- generated -->\n\n"
        b"[![build](https://ci.example.org/badge.svg)](https://ci.example.org)\n\n"
        b"Title\n=====\n\nFirst paragraph.\n"
    )
    post = parse_post(raw, tmp_path / "p.md")
    assert post.title == "Title"
    assert "=====" not in post.body and "badge.svg" in post.body and "First paragraph." in post.body


def test_date_from_the_file_name_only_when_the_front_matter_has_none(tmp_path: Path) -> None:
    named = tmp_path / "2024-10-02-this-week-in-rust.md"
    assert parse_post(b"# T\n\nBody\n", named).date == dt.date(2024, 10, 2)
    assert parse_post(b"---\ndate: 2025-01-01\n---\n# T\n", named).date == dt.date(2025, 1, 1)
    assert parse_post(b"# T\n", tmp_path / "2024-13-45-not-a-date.md").date is None


BROKEN_CASES = [
    # file, line named in the message (None: no line applies), words the message must contain
    ("invalid_yaml.md", 5, "not valid YAML"),
    ("front_matter_list.md", 2, "key: value"),
    ("unclosed.md", 1, "no closing `---`"),
    ("bad_date.md", 4, "not a date"),
    ("no_title.md", None, "no title"),
    ("empty.md", None, "empty"),
    ("binary.md", None, "binary"),
    ("latin1.md", 2, "not UTF-8"),
    ("invalid_toml.md", 4, "not valid TOML"),
    ("no_title_anywhere.md", None, "no title"),
]


# made at test time: ruff (which formats markdown) refuses non-UTF-8 .md files in the tree
NOT_TEXT = {
    "binary.md": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01",
    "latin1.md": b"---\ntitle: Caf\xe9 cr\xe8me\n---\nLatin-1 text\n",
}


def broken(name: str, tmp_path: Path) -> Path:
    """The broken post's path: a file in tests/posts/broken, or the bytes above written to tmp_path."""
    if name not in NOT_TEXT:
        return BROKEN / name
    path = tmp_path / name
    path.write_bytes(NOT_TEXT[name])
    return path


@pytest.mark.parametrize(("name", "line", "words"), BROKEN_CASES)
def test_broken_post_is_one_clear_line(name: str, line: int | None, words: str, tmp_path: Path) -> None:
    path = broken(name, tmp_path)
    with pytest.raises(PostError) as info:
        load_post(path)
    message = str(info.value)
    assert "\n" not in message
    prefix = f"{path}:{line}: " if line else f"{path}: "
    assert message.startswith(prefix), message
    assert words in message


def test_impossible_calendar_date_names_the_date_line(tmp_path: Path) -> None:
    path = tmp_path / "p.md"
    with pytest.raises(PostError) as info:
        parse_post(b"---\ntitle: T\ncategory: c\ndate: 2026-02-30\n---\nBody\n", path)
    assert str(info.value).startswith(f"{path}:4: ")
    assert "date" in str(info.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(PostError, match="no such file"):
        load_post(tmp_path / "missing.md")
    with pytest.raises(PostError, match="folder"):
        load_post(tmp_path)


def test_wrong_field_types_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "p.md"
    cases = {
        b"---\ntitle: T\ncategory: c\ntags: {a: 1}\n---\nB\n": (4, "tags"),
        b"---\ntitle: T\nsummary: {a: 1}\n---\nB\n": (3, "summary"),
        b"---\ntitle: [a, b]\n---\nB\n": (2, "title"),
    }
    for raw, (line, field) in cases.items():
        with pytest.raises(PostError) as info:
            parse_post(raw, path)
        assert str(info.value).startswith(f"{path}:{line}: {field}"), str(info.value)


@pytest.mark.parametrize(("name", "line", "words"), BROKEN_CASES)
def test_render_command_on_broken_post_exits_1_without_traceback(
    name: str, line: int | None, words: str, tmp_path: Path
) -> None:
    path = broken(name, tmp_path)
    result = CliRunner().invoke(
        cli, ["render", str(path)], env={"MAILER_DATA_DIR": str(tmp_path / "state")}, catch_exceptions=False
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    error_lines = [row for row in result.stderr.splitlines() if row.strip()]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith(f"Error: {path}")
    assert words in error_lines[0]
    assert "Traceback" not in result.output


# How posts start: a block each, some of them running on past a blank line (a comment, a fence, a footnote).
_STARTS = [
    "# Title",
    "# Another title",
    "Title\n=====",
    "## A subheading",
    "---",
    "<!-- a comment\n\nover a blank line -->",
    "<!-- a comment left open",
    "-->",
    "<div>\nraw\n</div>",
    "<script>\n\n# not a heading\n</script>",
    "[![badge](https://img.shields.io/b.svg)](https://ci.example.com)",
    "![picture](https://example.com/p.png)",
    "Some text.",
    "```\ncode\n\n# not a heading\n```",
    "```\na fence left open",
    "[^1]: a note\n\n    # its second paragraph",
    "Text with a note[^1].",
    "> # a quoted heading",
    "    indented code",
    "- item\n\n  # a heading in the item",
    "[ref]: https://example.com/ref",
]


@given(
    st.lists(st.sampled_from(_STARTS), min_size=1, max_size=8),
    st.lists(st.sampled_from(["\n\n", "\n"]), min_size=8, max_size=8),
    st.booleans(),
)
def test_the_leading_h1_is_the_same_however_much_of_the_start_is_parsed(
    blocks: list[str], gaps: list[str], titled: bool
) -> None:
    """parse_post parses only a post's first few KB (up to a blank line) when they show how it starts. A
    one-line comment in front moves where that look ends to each line of the start in turn; the title
    and the body are those of a whole parse (the look ending inside a longer comment) every time."""
    start = "".join(block + gap for block, gap in zip(blocks, gaps, strict=False)) + "The end.\n"

    def read(filler: int) -> tuple[str, str] | str:
        comment = "<!--" + "x" * (filler - 9) + "-->\n\n"  # `filler` characters
        raw = ("---\ntitle: Title\n---\n" if titled else "") + comment + start
        try:
            post = parse_post(raw.encode(), Path("p.md"))
        except PostError as exc:
            return str(exc)
        assert post.body.startswith(comment)
        return post.title, post.body.removeprefix(comment)

    whole = read(_LOOK + 100)
    for at in [0, *(i + 1 for i, char in enumerate(start) if char == "\n")]:
        assert read(_LOOK - at) == whole, start[:at]
