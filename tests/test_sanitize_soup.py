"""Random tag soup in a post never reaches past the body: the footer and the unsubscribe link survive.

A stray <plaintext> turned the whole footer, unsubscribe link included, into escaped text; <xmp>,
<noembed> and <listing> switch browsers into raw text the same way, and unclosed comments swallow what
follows. The sanitiser keeps only an allow-list of tags, so none of them reaches the email.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from lxml import html as lhtml

from mailer.config import Settings
from mailer.post import parse_post
from mailer.render import render_issue
from tests.conftest import examples

UNSUBSCRIBE = "https://news.example.com/mailer/unsubscribe?t=soup"
TRICKY = [
    "plaintext", "xmp", "noembed", "noframes", "listing", "noscript", "textarea", "title", "style", "script",
    "iframe", "template", "marquee", "image", "isindex", "svg", "math", "select", "object", "table", "td",
    "a", "b", "p", "div", "frameset", "head", "body", "html",
]  # fmt: skip
# what a browser reads as raw text (everything after it, to the end of the page for <plaintext>)
RAW_TEXT = re.compile(
    r"<\s*(plaintext|xmp|noembed|noframes|listing|textarea|title|script|iframe|noscript)\b", re.I
)

pieces = st.one_of(
    st.sampled_from(TRICKY).map(lambda t: f"<{t}>"),
    st.sampled_from(TRICKY).map(lambda t: f"</{t}>"),
    st.sampled_from(TRICKY).map(lambda t: f'<{t} style="java\tscript:x" href="javascript:alert(1)">'),
    st.sampled_from(["<!--", "-->", "<!-->", "--!>", "<![CDATA[", "]]>", "<!", "<?", "&lt;", "&amp;", "<"]),
    st.text(alphabet="ab <>/=\"'&;-!", max_size=8),
)


def rendered_html(soup: str, tmp_path: Path) -> str:
    raw = f"---\ntitle: Soup\n---\nBefore the soup.\n\n{soup}\n\nAfter the soup.\n".encode()
    issue = render_issue(parse_post(raw, tmp_path / "soup.md"), Settings(data_dir=tmp_path))
    return issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}).decode("utf-8")


def assert_footer_intact(html: str) -> None:
    body = html[html.index("<body") :]
    assert not RAW_TEXT.search(body), RAW_TEXT.search(body)
    content = html[html.index('class="body-cell"') : html.index('class="footer-cell"')]
    assert "<!--" not in content  # an unclosed comment would hide the footer
    doc = lhtml.document_fromstring(html)
    (footer,) = doc.xpath("//td[contains(@class, 'footer-cell')]")
    links = [a.get("href") for a in footer.iter("a")]
    assert UNSUBSCRIBE in links, links
    assert footer.getparent().getparent().get("class") == "container"  # not nested inside the post's soup


@settings(max_examples=examples(60))
@given(st.lists(pieces, max_size=12).map("".join))
@example("<plaintext><p>all that follows</p>")
@example("<xmp><b>x</b>")
@example("<noembed><a href=x>q</a>")
@example("<!-- never closed <p>")
@example("<!-- c -->&lt;plaintext&gt;&lt;script&gt;alert(1)&lt;/script&gt;")
@example("<xmp><img src=x onerror=alert(1)><plaintext></xmp>")
@example("<marquee>m</marquee><image src=x><isindex>")
def test_tag_soup_never_reaches_the_footer(soup: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        assert_footer_intact(rendered_html(soup, Path(folder)))


def test_escaped_tags_stay_text(tmp_path: Path) -> None:
    """`&lt;script&gt;` after a removed comment, or inside a removed <xmp>, is text, not a tag."""
    html = rendered_html(
        "<!-- c -->&lt;script&gt;alert(1)&lt;/script&gt;\n\n<xmp><img src=x onerror=alert(2)></xmp>", tmp_path
    )
    doc = lhtml.document_fromstring(html)
    assert not doc.xpath("//script") and not doc.xpath("//img[@onerror]")
    text = doc.xpath("//td[contains(@class, 'body-cell')]")[0].text_content()
    assert "<script>alert(1)</script>" in text and "<img src=x onerror=alert(2)>" in text
