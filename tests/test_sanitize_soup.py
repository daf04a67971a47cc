"""Random tag soup in a post never reaches past the body: the footer and the unsubscribe link survive.

A stray <plaintext> turned the whole footer, unsubscribe link included, into escaped text; <xmp>,
<noembed> and <listing> switch browsers into raw text the same way, and unclosed comments swallow what
follows. The sanitiser keeps only an allow-list of tags, so none of them reaches the email.

The email is read back as a browser reads it (html5lib: the WHATWG parsing rules, not libxml2's), and
everything outside the post's cell (head, footer, the layout table) must be exactly as it is for a plain
post; a <style> sheet's rules stay confined to the post's cell; no script, handler or code-running URL or
style survives anywhere. test_sanitize_browser.py checks the nastiest cases in Chromium.
"""

from __future__ import annotations

import re
import tempfile
import unicodedata
from functools import cache
from pathlib import Path
from xml.etree import ElementTree

import html5lib
from hypothesis import example, given, settings
from hypothesis import strategies as st
from lxml import html as lhtml

from mailer.config import Settings
from mailer.post import parse_post
from mailer.render import render_issue
from tests.conftest import examples
from tests.test_hostile import URL_ATTRIBUTES, css_is_dangerous, url_scheme

UNSUBSCRIBE = "https://news.example.com/mailer/unsubscribe?t=soup"
TRICKY = [
    "plaintext", "xmp", "noembed", "noframes", "listing", "noscript", "textarea", "title", "style", "script",
    "iframe", "template", "marquee", "image", "isindex", "svg", "math", "select", "object", "table", "td",
    "a", "b", "p", "div", "frameset", "head", "body", "html",
]  # fmt: skip
# what moves a box of the post over the footer, or paints it above the footer
OVERLAY = re.compile(
    r"(^|;)(position|transform|z-index|opacity|filter|top|bottom):|(^|;)margin[a-z-]*:[^;]*-[\d.]"
)
# CSS that runs code in some client (test_hostile's check, with fullwidth letters folded too)
CODE = re.compile(r"expression\(|javascript:|vbscript:|behaviou?r:|-moz-binding|@import")
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


# URLs and styles a browser or an old mail client decodes into code (entities are decoded by the parser)
URL_TRICKS = [
    "javascript:alert(1)", "java\tscript:alert(1)", "&#x6A;avascript:alert(1)", "jav&#x09;ascript:alert(1)",
    "&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)", " \x01javascript:alert(1)",
    "JaVaScRiPt&colon;alert(1)", "java&NewLine;script:alert(1)", "ｊａｖａｓｃｒｉｐｔ:alert(1)", "vbscript:",
    "data:text/html,<script>alert(1)</script>", "data:image/svg+xml,<svg onload=alert(1)>",
    "data:image/png;base64,iVBORw0KGgo=", "cid:part1@example.com", "livescript:x", "//evil.example/x",
    "https://ok.example/a b", "#top", "mailto:a@example.com",
]  # fmt: skip
CSS_TRICKS = [
    "java\tscript:alert(1)", "background:url(javascript:alert(1))", "background:url(\\6a avascript:x)",
    "background:url(java&#x09;script:x)", "width:expression(alert(1))", "width:expr/**/ession(alert(1))",
    "width:\\65 xpression(alert(1))", "width:ｅｘｐｒｅｓｓｉｏｎ(alert(1))", "behavior:url(x.htc)",
    "-moz-binding:url(x.xml#x)", "\\2d moz-binding:url(x)", "position:fixed;top:0;width:99%",
    "position:absolute;top:0", "\\70 osition:fixed", "pos/**/ition:fixed", "ｐｏｓｉｔｉｏｎ:fixed",
    "transform:translateY(400px)", "opacity:.99;margin-bottom:-900px", "margin:-2000px 0 0 0", "z-index:99",
    "color:red\\3b position:fixed", "color:red;/*", "background:url('java\\\nscript:x')", "@import 'x.css'",
    "font-family:\\22</style><script>alert(1)</script>", "color:#123;display:block",
]  # fmt: skip
ATTRIBUTES = [
    "href", "src", "style", "onclick", "ONERROR", "background", "srcdoc", "formaction", "xlink:href",
    "poster", "data", "action", "cite", "dynsrc", "lowsrc",
]  # fmt: skip
# selectors and declarations a post's <style> could aim at the footer and its unsubscribe link
STYLE_SELECTORS = ["a", "td", "*", ".footer-cell", ".footer-cell a", "table", "tr", "p", "body", ":root",
                   ".container", "a:not(.x)", "td ~ td", "a[href]", "\\61", "html body a", "~ td",
                   "+ tr td"]  # fmt: skip
STYLE_DECLARATIONS = [
    "display:none", "visibility:hidden", "font-size:0", "color:#fff!important", "position:fixed",
    "height:0;overflow:hidden", "opacity:0", "pointer-events:none", "line-height:0", "transform:scale(0)",
    "background:url(javascript:alert(1))",
]  # fmt: skip
RAW_OPENERS = [
    "plaintext", "xmp", "noembed", "noscript", "noframes", "template", "style", "title", "textarea", "svg",
    "math", "listing", "iframe", "script", "select", "option", "table", "a", "p",
]  # fmt: skip


@st.composite
def spelled_url(draw: st.DrawFn) -> str:
    """`javascript:` spelled as a browser still reads it: any case, letters as entities, tabs and newlines
    (also as entities) between them, spaces or control characters before."""
    out = [draw(st.sampled_from(["", " ", "\x01", "&#14;", "\n"]))]
    for ch in "javascript:":
        ch = ch.upper() if draw(st.booleans()) else ch
        out.append(draw(st.sampled_from([ch, ch, f"&#{ord(ch)};", f"&#x{ord(ch):x};", f"&#x{ord(ch):06X};"])))
        out.append(draw(st.sampled_from(["", "", "", "\t", "\n", "&#x09;", "&Tab;", "&NewLine;"])))
    return "".join(out).replace(":", draw(st.sampled_from([":", "&colon;", "&#58;"]))) + "alert(1)"


@st.composite
def spelled_css(draw: st.DrawFn) -> str:
    """`position:fixed` or `width:expression(` spelled as an old client still reads it: CSS escapes,
    comments inside, fullwidth letters."""
    word = draw(st.sampled_from(["position", "expression", "behavior", "javascript"]))
    out = []
    for ch in word:
        out.append(
            draw(
                st.sampled_from(
                    [ch, ch, f"\\{ord(ch):x} ", f"\\{ord(ch):06x}", chr(ord(ch) + 0xFEE0), "\\" + ch]
                )
            )
        )
        out.append(draw(st.sampled_from(["", "", "", "/**/", "/* x */"])))
    spelled = "".join(out)
    return {
        "position": f"{spelled}:fixed;top:0",
        "expression": f"width:{spelled}(alert(1))",
        "behavior": f"{spelled}:url(x.htc)",
        "javascript": f"background:url({spelled}:alert(1))",
    }[word]


@st.composite
def attribute_trick(draw: st.DrawFn) -> str:
    """An element with hostile attributes, the value in double, single or no quotes."""
    tag = draw(st.sampled_from(["a", "img", "div", "p", "td", "table", "span", "iframe", "blockquote", "q"]))
    attrs = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(ATTRIBUTES))
        if name == "style":
            value = draw(st.one_of(st.sampled_from(CSS_TRICKS), spelled_css()))
        else:
            value = draw(st.one_of(st.sampled_from(URL_TRICKS), spelled_url()))
        quote = draw(st.sampled_from(['"', "'", ""]))
        attrs.append(f"{name}={quote}{value}{quote}")
    return f"<{tag} {' '.join(attrs)}>x</{tag}>"


@st.composite
def raw_nesting(draw: st.DrawFn) -> str:
    """Raw-text and foreign elements nested in each other, closed in any order or not at all."""
    opened = draw(st.lists(st.sampled_from(RAW_OPENERS), min_size=1, max_size=4))
    inner = draw(
        st.sampled_from(
            [
                "<b>x</b>",
                "</textarea><img src=x onerror=alert(1)>",
                "<!--",
                "]]>",
                "-->",
                "<p title='</noscript><img src=x onerror=alert(1)>'>",
                "<![CDATA[<a>",
                "</",
            ]
        )
    )
    closers = draw(st.permutations(opened).map(lambda tags: "".join(f"</{t}>" for t in tags)))
    return "".join(f"<{t}>" for t in opened) + inner + draw(st.sampled_from([closers, ""]))


@st.composite
def style_sheet(draw: st.DrawFn) -> str:
    """A <style> element whose rules aim at the footer, some inside @media or after a broken rule."""
    rules = []
    for _ in range(draw(st.integers(1, 3))):
        selectors = ", ".join(draw(st.lists(st.sampled_from(STYLE_SELECTORS), min_size=1, max_size=2)))
        declarations = ";".join(draw(st.lists(st.sampled_from(STYLE_DECLARATIONS), min_size=1, max_size=3)))
        rule = f"{selectors} {{ {declarations} }}"
        wrap = draw(
            st.sampled_from(
                ["{}", "@media screen {{ {} }}", "@import 'x.css'; {}", "p {{ color: red }} }} {}"]
            )
        )
        rules.append(wrap.format(rule))
    return f"<style>{' '.join(rules)}</style>"


soups = st.lists(
    st.one_of(pieces, attribute_trick(), raw_nesting(), style_sheet()), min_size=1, max_size=8
).map("".join)


def rendered_html(soup: str, tmp_path: Path) -> str:
    raw = f"---\ntitle: Soup\n---\nBefore the soup.\n\n{soup}\n\nAfter the soup.\n".encode()
    issue = render_issue(parse_post(raw, tmp_path / "soup.md"), Settings(data_dir=tmp_path))
    return issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}).decode("utf-8")


def parse5(html: str) -> ElementTree.Element:
    """The email as a browser's parser builds it (the WHATWG rules, via html5lib)."""
    return html5lib.parse(html, treebuilder="etree", namespaceHTMLElements=False)


def cells(doc: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [td for td in doc.iter("td") if name in (td.get("class") or "").split()]


def outside_the_post(html: str) -> tuple[bytes, list[str]]:
    """Everything but the post: the document with the post's cell and the preheader emptied and its <style>
    sheets taken out; and, apart, the text of those sheets."""
    doc = parse5(html)
    sheets = []
    for parent in list(doc.iter()):
        for child in list(parent):
            if child.tag == "style":
                sheets.append(child.text or "")
                parent.remove(child)
    for el in cells(doc, "body-cell") + [d for d in doc.iter("div") if d.get("class") == "preheader"]:
        el.clear()
    return ElementTree.tostring(doc), sheets


def selectors(sheet: str) -> list[str]:
    """The selectors of a sheet's rules, @media rules' included."""
    preludes = re.findall(r"([^{}]+)\{", sheet)
    return [" ".join(s.split()) for p in preludes if not p.strip().startswith("@") for s in p.split(",")]


def inside_the_post(selector: str) -> bool:
    """A selector that matches only elements inside the post's cell: `.body-cell X`, not `.body-cell ~ X`."""
    return selector.startswith(".body-cell ") and selector.split()[1] not in ("~", "+")


@cache
def plain_post() -> tuple[bytes, list[str]]:
    with tempfile.TemporaryDirectory() as folder:
        return outside_the_post(rendered_html("A plain paragraph.", Path(folder)))


def assert_as_a_browser_reads_it(html: str) -> None:
    """Head, footer and layout as for a plain post; no script, handler or code-running URL or style."""
    outside, sheets = outside_the_post(html)
    plain, plain_sheets = plain_post()
    assert outside == plain
    for sheet in sheets:  # the template's own, or the post's, whose rules reach only into the post's cell
        assert sheet in plain_sheets or all(inside_the_post(s) for s in selectors(sheet)), sheet
    doc = parse5(html)
    [footer] = cells(doc, "footer-cell")
    assert UNSUBSCRIBE in [a.get("href") for a in footer.iter("a")]
    for el in doc.iter():
        if not isinstance(el.tag, str):
            continue
        tag = el.tag.rpartition("}")[2].lower()  # svg and math elements are namespaced
        assert tag not in ("script", "iframe", "object", "embed", "svg", "math", "form", "base"), tag
        for name, value in el.attrib.items():
            lower = name.rpartition("}")[2].lower()
            assert not lower.startswith("on"), f"<{tag} {name}=...>"
            if lower in URL_ATTRIBUTES or lower == "href":
                assert url_scheme(value) not in ("javascript", "vbscript", "data", "livescript"), value
            if lower == "style":
                assert not css_is_dangerous(value) and not CODE.search(plain_css(value)), value
        if tag == "style":
            assert not css_is_dangerous(el.text or "") and not CODE.search(plain_css(el.text or "")), el.text
    for el in cells(doc, "body-cell")[0].iter():
        assert not OVERLAY.search(plain_css(el.get("style") or "")), el.get("style")


def plain_css(css: str) -> str:
    """CSS as the most lenient client reads it: no comments, escapes decoded, fullwidth folded, no spaces."""
    css = re.sub(r"/\*.*?(\*/|$)", "", css, flags=re.S)
    css = re.sub(r"\\([0-9a-fA-F]{1,6})\s?", lambda m: chr(min(int(m.group(1), 16), 0x10FFFF) or 0xFFFD), css)
    css = re.sub(r"\\(.)", r"\1", css, flags=re.S)
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", css)).lower()


def assert_footer_intact(html: str) -> None:
    assert_as_a_browser_reads_it(html)
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


@settings(max_examples=examples(100))
@given(soups)
@example('<div style="position:fixed;top:0;left:0;width:100%;height:100%;background:#fff">cover</div>')
@example(
    '<div style="\\70 osition:fixed;top:0">cover</div><p style="width:ｅｘｐｒｅｓｓｉｏｎ(alert(1))">x</p>'
)
@example("<style>a { display: none } .footer-cell { visibility: hidden }</style>")
@example("<style>@media screen { td { display: none } }</style>")
@example("<style>@media screen { ~ td, + tr td { display: none } }</style>")
@example("<div><td>a cell out of place</td></div><table><tr><td>in</td></tr></table>")
@example("<p><tr><td>row</td></tr><table><tr><td>x</td></tr></table></p>")
@example('<a href="jav&#x09;ascript:alert(1)">x</a><a href="&#x6A;avascript:alert(1)">y</a>')
@example("<svg><style><img src=x onerror=alert(1)></style></svg><math><mtext><table><mglyph><style><img>")
@example('<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>')
@example("<template><plaintext><xmp><noembed><textarea><title>")
@example('<div style="opacity:.99;height:300px;margin-bottom:-300px;background:#fff"></div>')
def test_hostile_html_leaves_the_rest_of_the_email_as_it_was(soup: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        assert_footer_intact(rendered_html(soup, Path(folder)))


def test_the_browser_reading_catches_what_it_looks_for() -> None:
    """Each kind of damage fails the check: hidden footer, script, code URL, overlay, moved cell, sheet."""
    with tempfile.TemporaryDirectory() as folder:
        html = rendered_html("A plain paragraph.", Path(folder))
    assert_as_a_browser_reads_it(html)
    footer = re.search(r'<td class="footer-cell"[^>]*>', html)
    assert footer is not None
    broken = [
        html.replace(footer.group(0), footer.group(0).replace("<td ", '<td hidden="" ')),
        html.replace("</body>", "<script>alert(1)</script></body>"),
        html.replace("A plain paragraph.", '<a href="java&#9;script:alert(1)">x</a>'),
        html.replace("A plain paragraph.", '<div style="position: fixed">x</div>'),
        html.replace("A plain paragraph.", '<div style="width: ｅｘｐｒｅｓｓｉｏｎ(alert(1))">x</div>'),
        html.replace("A plain paragraph.", "</td></tr><tr><td>moved"),
        html.replace("</head>", "<style>a { display: none }</style></head>"),
    ]
    for case in broken:
        try:
            assert_as_a_browser_reads_it(case)
        except AssertionError:
            continue
        raise AssertionError(f"not caught: {case[:200]}")


def test_escaped_tags_stay_text(tmp_path: Path) -> None:
    """`&lt;script&gt;` after a removed comment, or inside a removed <xmp>, is text, not a tag."""
    html = rendered_html(
        "<!-- c -->&lt;script&gt;alert(1)&lt;/script&gt;\n\n<xmp><img src=x onerror=alert(2)></xmp>", tmp_path
    )
    doc = lhtml.document_fromstring(html)
    assert not doc.xpath("//script") and not doc.xpath("//img[@onerror]")
    text = doc.xpath("//td[contains(@class, 'body-cell')]")[0].text_content()
    assert "<script>alert(1)</script>" in text and "<img src=x onerror=alert(2)>" in text
