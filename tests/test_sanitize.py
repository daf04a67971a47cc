"""The sanitiser's allow-lists, one rule at a time: tags, attributes, CSS (attributes and sheets), URLs.

Each case is something a post may hold and what must become of it; the output is parsed back with lxml,
never compared with a string the sanitiser printed. What is removed is reported, as `mailer check` shows.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from lxml import html as lhtml

from mailer.cli import cli
from mailer.sanitize import Findings, clean_css, clean_style, sanitize

BASE = "https://blog.example.org/posts/"


def clean(fragment: str, base_url: str = BASE) -> tuple[lhtml.HtmlElement, Findings]:
    findings = Findings()
    out = sanitize(fragment, base_url=base_url, embed_label=lambda s: f"Open: {s}", findings=findings,
                   style_scope=".body-cell")  # fmt: skip
    return lhtml.fragment_fromstring(out, create_parent="div"), findings


def style(declarations: str) -> str:
    return clean_style(declarations, BASE, Findings())


# --- tags ---------------------------------------------------------------------------------------------------


def test_tags_off_the_list_are_unwrapped_their_text_kept_and_reported() -> None:
    root, findings = clean(
        "<p>a<marquee>b</marquee><section>c</section><isindex><image src=x>d<blink>e</blink>"
        "<my-widget>f</my-widget><form>g</form></p>"
    )
    assert root.text_content() == "abcdefg"
    assert {el.tag for el in root.iter()} == {"div", "p"}
    assert {"marquee", "isindex", "image", "blink", "my-widget", "form"} <= set(findings.removed)
    assert "section" not in findings.removed  # a container that reads the same without it: no warning


@pytest.mark.parametrize("opener", ["plaintext", "xmp", "noembed", "listing", "noframes"])
def test_raw_text_switches_are_gone_and_what_follows_stays_markup(opener: str) -> None:
    root, findings = clean(f"<{opener}><p>after</p>")
    assert opener in findings.removed
    assert not [el for el in root.iter() if el.tag == opener]
    assert "after" in root.text_content()


def test_code_forms_and_foreign_content_go_with_their_content() -> None:
    root, findings = clean(
        "<p>keep</p><script>alert(1)</script><svg><text>svg</text></svg><math><mi>x</mi></math>"
        "<textarea>typed</textarea><template><p>t</p></template><noscript>n</noscript><title>t</title>"
    )
    assert root.text_content() == "keep"
    assert {"script", "svg", "math", "textarea", "template", "noscript", "title"} <= set(findings.removed)


@pytest.mark.parametrize(
    "fragment",
    [
        "<div><td>a cell out of place</td></div>",
        "<p><tr><td>a row out of place</td></tr></p>",
        "<table><table><tr><td>a table in a table</td></tr></table></table>",
        "<table><caption><table><tr><td>in a caption</td></tr></table></caption></table>",
        "<ul><li><tbody><tr><th>a body in a list</th></tr></tbody></li></ul>",
        "<table><tr><div><td>a div in a row</td></div></tr></table>",
    ],
)
def test_table_parts_only_where_a_browser_keeps_them(fragment: str) -> None:
    """Out of place, a <td>, <tr> or <table> would close the template's cell around the post."""
    root, _ = clean(fragment)
    table_parts = {"tr": {"table", "tbody", "thead", "tfoot"}, "td": {"tr"}, "th": {"tr"}, "tbody": {"table"}}
    for el in root.iter():
        if el.tag in table_parts:
            assert el.getparent().tag in table_parts[el.tag], lhtml.tostring(root)
        if el.tag in ("table", "tbody", "tr"):
            assert all(child.tag in ("tbody", "thead", "tr", "td", "th") for child in el), lhtml.tostring(
                root
            )
    assert "out of place" in root.text_content() or "in a" in root.text_content()


def test_document_tags_in_a_post_do_not_crash_it() -> None:
    root, _ = clean('<html style="x"><html><body onload="alert(1)"><p>text</p></body></html>')
    assert root.text_content() == "text" and root.find(".//p") is not None


def test_long_runs_are_read_in_one_pass() -> None:
    """A 100 KB word in a style value, 20,000 `<html` openers: each took minutes (a regex retried from
    every position), and `mailer render` seemed to hang."""
    root, _ = clean(f'<p style="color: {"a" * 100_000}">x</p>' + "<html" * 20_000 + "<p>after</p>")
    assert root.find(".//p").get("style") == "color: " + "a" * 100_000 and "after" in root.text_content()


def test_control_characters_in_unwrapped_text_do_not_crash_it() -> None:
    root, _ = clean('<plaintext><a href=" \x01javascript:alert(1)">x\x0b</a>')
    assert "x" in root.text_content() and "\x01" not in lhtml.tostring(root, encoding="unicode")


# --- attributes ---------------------------------------------------------------------------------------------


def test_attributes_are_kept_per_tag() -> None:
    root, findings = clean(
        '<p align="center" href="https://x.example/" src="https://x.example/i.png" width="9" data-x="1" '
        'onclick="alert(1)" class="lead" title="t" id="p1">p</p>'
        '<a href="https://x.example/" rel="opener" name="n" ping="https://track.example/" download>a</a>'
        '<img src="https://x.example/i.png" alt="i" width="40" height="20" border="0" srcset="x 2x" '
        'onerror="alert(1)" usemap="#m">'
        '<table bgcolor="#fff" background="https://x.example/bg.png"><tr><td colspan="2" valign="top" '
        "nowrap>c</td></tr></table>"
    )
    p, a, img, td = root.find(".//p"), root.find(".//a"), root.find(".//img"), root.find(".//td")
    assert dict(p.attrib) == {"align": "center", "class": "lead", "title": "t", "id": "p1"}
    assert dict(a.attrib) == {"href": "https://x.example/", "name": "n", "target": "_blank"}
    assert dict(img.attrib) == {
        "src": "https://x.example/i.png", "alt": "i", "width": "40", "height": "20", "border": "0"
    }  # fmt: skip
    assert dict(root.find(".//table").attrib).keys() == {"bgcolor", "cellpadding", "rules"}
    assert dict(td.attrib) == {"colspan": "2", "valign": "top"}
    assert {"p onclick=", "img onerror="} <= set(findings.removed)


# --- URLs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)", "JaVaScRiPt:alert(1)", "java\tscript:alert(1)", "&#x6A;avascript:alert(1)",
        "jav&#x09;ascript:alert(1)", " &#14;javascript:alert(1)", "java&NewLine;script&colon;alert(1)",
        "vbscript:msgbox(1)", "data:text/html;base64,PHNjcmlwdD4=", "livescript:x", "file:///etc/passwd",
    ],
)  # fmt: skip
def test_links_with_other_schemes_lose_their_href_and_are_reported(url: str) -> None:
    root, findings = clean(f'<p><a href="{url}">x</a><blockquote cite="{url}">q</blockquote></p>')
    assert root.find(".//a").get("href") is None and root.find(".//blockquote").get("cite") is None
    assert len(findings.bad_links) == 2


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://example.org/a?b=c#d", "https://example.org/a?b=c#d"),
        ("mailto:ada@example.org", "mailto:ada@example.org"),
        ("tel:+44123", "tel:+44123"),
        ("#fn1", "#fn1"),
        ("archive/2026.html", BASE + "archive/2026.html"),
        ("//cdn.example.org/x", "https://cdn.example.org/x"),
        ("https://example.org/my file.pdf", "https://example.org/my%20file.pdf"),
        (" https://example.org/\n", "https://example.org/"),
        (
            "ｊａｖａｓｃｒｉｐｔ:alert(1)",
            BASE + quote("ｊａｖａｓｃｒｉｐｔ") + ":alert(1)",
        ),  # a relative path
    ],
)
def test_links_with_allowed_schemes_are_kept_absolute(url: str, kept: str) -> None:
    root, findings = clean(f'<a href="{url}">x</a>')
    assert root.find(".//a").get("href") == kept
    assert findings.bad_links == []


@pytest.mark.parametrize(
    "src",
    [
        "data:image/png;base64,iVBORw0KGgo=", "data:image/svg+xml,<svg onload=alert(1)>", "cid:logo@example",
        "javascript:alert(1)", "mailto:a@example.org",
    ],
)  # fmt: skip
def test_images_only_from_the_web(src: str) -> None:
    root, findings = clean(f'<p><img src="{src}" alt="x">text</p>')
    assert root.find(".//img") is None and root.text_content() == "text"
    assert "img with unsafe src" in findings.removed


def test_relative_urls_without_base_url_stay_and_are_reported() -> None:
    root, findings = clean('<a href="/about">a</a><img src="i.png" alt="i">', base_url="")
    assert root.find(".//a").get("href") == "/about" and root.find(".//img").get("src") == "i.png"
    assert findings.relative_urls == ["/about", "i.png"]


# --- CSS in style attributes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declarations", "kept"),
    [
        ("color: red", "color: red"),
        ("COLOR:#123456 ; padding: 4px 8px", "color: #123456; padding: 4px 8px"),
        ("font-family: '\\5FAE\\8F6F\\96C5\\9ED1', sans-serif", "font-family: '微软雅黑', sans-serif"),
        ("background: #fff url(https://x.example/b.png)", 'background: #fff url("https://x.example/b.png")'),
        ("background-image: url('bg.png')", f'background-image: url("{BASE}bg.png")'),
        ("color: rgb(0, 0, 0) !important; margin: 0 auto", "color: rgb(0, 0, 0) !important; margin: 0 auto"),
        ("text-align:right", "text-align: right"),
        ("width: 100%; max-width: 600px", "width: 100%; max-width: 600px"),
    ],
)  # fmt: skip
def test_declarations_on_the_list_stay(declarations: str, kept: str) -> None:
    assert style(declarations) == kept


@pytest.mark.parametrize(
    "declarations",
    [
        "position: fixed", "position:absolute; top: 0", "\\70 osition: fixed", "pos/**/ition: fixed",
        "ｐｏｓｉｔｉｏｎ: fixed", "z-index: 9", "transform: translateY(500px)", "opacity: .99",
        "box-shadow: 0 0 0 9999px #fff", "outline: 9999px solid #fff", "filter: blur(0)",
        "width: expression(alert(1))", "width: expr/**/ession(alert(1))", "width: \\65 xpression(alert(1))",
        "width: ｅｘｐｒｅｓｓｉｏｎ(alert(1))", "width: calc(1px)", "behavior: url(x.htc)",
        "-moz-binding: url(x.xml#x)", "\\2d moz-binding: url(x)", "background: url(javascript:alert(1))",
        "background: url(\\6a avascript:alert(1))", "background: url('java\\\nscript:alert(1)')",
        "background: url(data:image/png;base64,iVBORw0KGgo=)", "background: url(java&#x09;script:x)",
        "color: url(https://x.example/a.png)", "java\tscript:alert(1)", "color: red\\3b position: fixed",
        "margin: -900px 0 0 0", "margin-bottom: -.5em", "content: '\\22</style>'", "--x: 1",
        "font-family: \\22</style><script>alert(1)</script>", "color", ": red",
    ],
)  # fmt: skip
def test_declarations_off_the_list_go_and_are_reported(declarations: str) -> None:
    findings = Findings()
    assert clean_style(f"{declarations}; color: blue", BASE, findings) == "color: blue"
    assert [r for r in findings.removed if r.startswith("style")], findings.removed


def test_a_style_attribute_with_nothing_left_goes() -> None:
    root, findings = clean('<p style="position: fixed; z-index: 9">x</p>')
    assert root.find(".//p").get("style") is None
    assert {"style position", "style z-index"} <= set(findings.removed)


# --- CSS in <style> sheets ----------------------------------------------------------------------------------


def test_sheet_rules_reach_only_into_the_post() -> None:
    css = "a, .footer-cell a { display: none } @media screen and (max-width: 620px) { td { color: #fff } }"
    out = clean_css(css, scope=".body-cell")
    assert out == (
        ".body-cell a, .body-cell .footer-cell a { display: none }\n"
        "@media screen and (max-width: 620px) { .body-cell td { color: #fff } }"
    )


@pytest.mark.parametrize(
    "css",
    [
        "@import url(https://evil.example/x.css);",
        "@font-face { font-family: x; src: url(https://evil.example/x.woff) }",
        "@media screen { @media print { p { color: red } } }",
        "a:not(.x) { display: none }",
        ":is(a) { display: none }",
        "\\61 { display: none }",
        "~ td, + td { display: none }",
        "p { position: fixed }",
        "p { color: red\\3b position: fixed }",
    ],
)
def test_sheet_rules_off_the_list_go(css: str) -> None:
    findings = Findings()
    out = clean_css(f"{css} p {{ color: blue }}", scope=".body-cell", findings=findings)
    assert out == ".body-cell p { color: blue }"
    assert any(r.startswith("style") for r in findings.removed)


def test_a_sheet_nested_ten_thousand_deep_is_no_crash() -> None:
    assert clean_css("@media x {" * 10_000 + "p { color: red }" + "}" * 10_000, scope=".body-cell") == ""


def test_an_unbalanced_brace_does_not_unscope_the_next_rule() -> None:
    out = clean_css("p { color: red } } .footer-cell { display: none }", scope=".body-cell")
    assert ".footer-cell" not in out.replace(".body-cell .footer-cell", "")


# --- reported by `mailer check` -----------------------------------------------------------------------------


def test_mailer_check_lists_what_was_removed(tmp_path: Path) -> None:
    post = tmp_path / "2026-02-09.md"
    post.write_text(
        "---\ntitle: Removed\nsummary: One point.\n---\nText.\n\n"
        '<div style="position:fixed;top:0;width:expression(1)">cover</div><marquee>m</marquee>'
        '<p onclick="x()">p</p>\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["check", str(post)], env={"MAILER_DATA_DIR": str(tmp_path / "state")})
    [line] = [line for line in result.output.splitlines() if "removed what email clients do not run" in line]
    for name in ("marquee", "p onclick=", "style position", "style top", "style width value"):
        assert name in line, line
