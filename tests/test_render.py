"""Rendering posts into the email: HTML parsed with lxml and checked structurally, and the plain-text part."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from lxml import html as lhtml
from lxml.cssselect import CSSSelector

from mailer.cli import cli
from mailer.config import Settings
from mailer.post import Post, load_post
from mailer.render import LINE_LIMIT, Issue, render_issue
from tests.conftest import EXAMPLE, ROOT
from tests.flowed import unflow

POSTS = Path(__file__).resolve().parent / "posts"
TEMPLATES = ROOT / "templates"
UNSUBSCRIBE = "https://news.example.com/mailer/unsubscribe?t=TOKEN-of-the-sample"
SUBSCRIBE = "https://news.example.com/mailer/subscribe"
BASE = "https://news.example.com/posts/"


@dataclass
class Rendered:
    """One rendered post: the issue, its filled HTML parsed, and its filled text part."""

    post: Post
    issue: Issue
    html: str
    doc: lhtml.HtmlElement
    text: str


def make_settings(tmp: Path, **changes: object) -> Settings:
    settings = Settings(
        from_name="AI 日报",
        from_email="news@example.com",
        postal_address="Example Media, 1 Example Street, Shanghai",
        web_url="https://news.example.com/mailer",
        data_dir=tmp,
    )
    return settings.replace(**changes)


def render(path: Path, settings: Settings) -> Rendered:
    post = load_post(path)
    issue = render_issue(post, settings)
    values = {"unsubscribe_url": UNSUBSCRIBE, "name": "Ada", "email": "ada@example.com"}
    html = issue.html.fill(values).decode("utf-8").replace("\r\n", "\n")
    text = issue.text.fill(values).decode("utf-8").replace("\r\n", "\n")
    return Rendered(post, issue, html, lhtml.document_fromstring(html), text)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("state"), view_url="{web_url}/issues/{issue_id}")


@pytest.fixture(scope="module")
def example(settings: Settings) -> Rendered:
    return render(EXAMPLE, settings)


@pytest.fixture(scope="module")
def english(settings: Settings) -> Rendered:
    return render(POSTS / "english.md", settings)


@pytest.fixture(scope="module")
def rich(settings: Settings) -> Rendered:
    return render(POSTS / "rich.md", settings.replace(base_url=BASE))


@pytest.fixture(scope="module")
def raw(settings: Settings) -> Rendered:
    return render(POSTS / "raw_html.md", settings)


def one(doc: lhtml.HtmlElement, selector: str) -> lhtml.HtmlElement:
    found = CSSSelector(selector)(doc)
    assert len(found) == 1, f"{selector}: {len(found)} elements"
    element: lhtml.HtmlElement = found[0]
    return element


def style_of(element: lhtml.HtmlElement) -> dict[str, str]:
    """The element's inline style as {property: value}, lower-cased, spaces removed."""
    out = {}
    for declaration in (element.get("style") or "").split(";"):
        name, _, value = declaration.partition(":")
        if name.strip():
            out[name.strip().lower()] = re.sub(r"\s+", "", value).lower()
    return out


def visible_text(doc: lhtml.HtmlElement) -> str:
    body = doc.find("body")
    assert body is not None
    return str(body.text_content())


def css_rules(css: str) -> list[tuple[str, list[str]]]:
    """(selector, [property, ...]) of every plain rule outside @media blocks."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    flat, depth, start = [], 0, 0
    for match in re.finditer(r"@media[^{]*\{|\{|\}", css):  # drop @media blocks with their nested rules
        token = match.group()
        if token.startswith("@media"):
            if depth == 0:
                flat.append(css[start : match.start()])
            depth += 1
        elif token == "{" and depth:
            depth += 1
        elif token == "}" and depth:
            depth -= 1
            if depth == 0:
                start = match.end()
    flat.append(css[start:] if depth == 0 else "")
    rules = []
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", "".join(flat)):
        props = [d.split(":")[0].strip().lower() for d in body.split(";") if ":" in d]
        for selector in selectors.split(","):
            rules.append((selector.strip(), props))
    return rules


# CSS passes these from parent to child, and a link is underlined anyway: mailer may leave them to the
# browser where the element would get the same value (test_render_browser compares the computed styles)
INHERITED = {
    "color", "font-family", "font-size", "font-style", "font-weight", "line-height", "letter-spacing",
    "text-align", "word-break", "overflow-wrap", "word-wrap", "white-space",
}  # fmt: skip


def assert_inlined(doc: lhtml.HtmlElement, css: str) -> int:
    """Every element a rule matches carries each of the rule's own (not inherited) properties inline."""
    checked = 0
    for selector, props in css_rules(css):
        for element in CSSSelector(selector)(doc):
            inline = style_of(element)
            missing = [
                p
                for p in props
                if p not in inline
                and p not in INHERITED
                and (element.tag, p) != ("a", "text-decoration")
                and not (p == "vertical-align" and element.get("valign"))
                and not (p == "background-color" and element.get("bgcolor"))
            ]
            assert not missing, f"<{element.tag} class={element.get('class')!r}> ({selector}): {missing}"
            checked += 1
    return checked


# --- the example post --------------------------------------------------------------------------


def test_no_markdown_syntax_left_in_the_visible_text(example: Rendered) -> None:
    text = visible_text(example.doc)
    assert "**" not in text
    assert "##" not in text
    assert not re.search(r"(?m)^\s*-{3,}\s*$", text)  # rules became <hr>, not dashes
    assert "**" not in example.text and "##" not in example.text


def test_cjk_bold_becomes_strong(example: Rendered) -> None:
    body = one(example.doc, "td.body-cell")
    strong = [s.text_content() for s in body.iter("strong")]
    # bold next to full-width punctuation with no spaces around it, as Chinese is written
    phrases = ("BiPS（双向感知塑形）", "6100亿美元", "蒸发了9500亿美元市值", "35%对设备端的AI功能没有兴趣")
    for phrase in phrases:
        assert phrase in strong, phrase
    assert len(strong) == example.post.body.count("**") // 2


def test_every_heading_rule_and_list_renders(example: Rendered) -> None:
    body = one(example.doc, "td.body-cell")
    h2 = [h.text_content() for h in body.iter("h2")]
    assert h2[0] == "四巨头AI豪赌6100亿美元，市场泼冷水"
    assert len(h2) == example.post.body.count("\n## ") + example.post.body.startswith("## ")
    rules = [line for line in example.post.body.split("\n") if line.strip() == "---"]
    assert len(rules) >= 9 and len(list(body.iter("hr"))) == len(rules)
    assert len(CSSSelector("ul > li")(body)) == 6
    # soft line breaks between CJK characters are not turned into spaces
    assert "数据中 心" not in body.text_content()


def test_title_shown_once_and_date_and_category(example: Rendered) -> None:
    title = one(example.doc, "h1.title")
    assert title.text_content() == example.post.title
    assert visible_text(example.doc).count(example.post.title) == 1
    assert one(example.doc, "p.meta").text_content() == "2026年2月9日 · AI 日报"
    assert example.doc.get("lang") == "zh"
    assert one(example.doc, "title").text == example.post.title


def test_summary_bullets_in_a_visible_box_above_the_body(example: Rendered) -> None:
    box = one(example.doc, "table.summary")
    items = [li.text_content().strip() for li in box.iter("li")]
    assert items == list(example.post.summary)
    assert len(items) == 8
    assert one(example.doc, "p.summary-label").text_content() == "本期要点"
    box_style = style_of(box)
    assert box_style["background-color"] not in ("", "#fff", "#ffffff", "transparent")
    assert "border-left" in box_style
    assert "display" not in box_style or box_style["display"] != "none"
    # the box comes before the body in document order
    order = [el for el in example.doc.iter() if el is box or el.get("class") == "body-cell"]
    assert order[0] is box


def test_cover_image_has_width_alt_and_auto_height(example: Rendered) -> None:
    cover = one(example.doc, "img.cover")
    assert cover.get("src") == example.post.cover_image
    assert cover.get("width") == "600"
    assert cover.get("alt") == example.post.title
    assert style_of(cover)["height"] == "auto"
    assert cover.get("height") is None  # height="auto" is not valid HTML


def test_every_image_has_alt_and_explicit_width(example: Rendered) -> None:
    images = list(example.doc.iter("img"))
    assert len(images) == 2
    for image in images:
        assert image.get("alt"), image.get("src")
        assert (image.get("width") or "").isdigit(), image.get("src")


def test_preheader_holds_the_first_summary_line_and_is_hidden(example: Rendered) -> None:
    body = example.doc.find("body")
    assert body is not None
    preheader = body[0]
    assert "preheader" in (preheader.get("class") or "")
    assert preheader.text_content().startswith(example.post.summary[0])
    style = style_of(preheader)
    assert style["display"] == "none"
    assert style["max-height"] == "0" and style["opacity"] == "0" and style["overflow"] == "hidden"
    assert example.issue.preheader == example.post.summary[0]


def test_head_meta_for_dark_mode_and_mobile(example: Rendered) -> None:
    scheme = one(example.doc, 'meta[name="color-scheme"]').get("content", "")
    assert set(scheme.split()) == {"light", "dark"}
    assert "width=device-width" in one(example.doc, 'meta[name="viewport"]').get("content", "")
    assert one(example.doc, "meta[charset]").get("charset", "").lower() == "utf-8"


def test_layout_tables_are_presentation_and_600_wide(example: Rendered) -> None:
    tables = list(example.doc.iter("table"))
    assert len(tables) >= 3
    for table in tables:
        assert table.get("role") == "presentation", table.get("class")
        assert table.get("cellpadding") == "0" and table.get("cellspacing") == "0"
    container = one(example.doc, "table.container")
    assert container.get("width") == "600"
    assert style_of(container)["max-width"] == "600px"
    # Outlook gets a fixed 600 px table of its own
    assert '<!--[if mso]><table role="presentation" width="600"' in example.html


def test_cjk_friendly_font_stack(example: Rendered) -> None:
    family = style_of(one(example.doc, "td.wrapper-cell"))["font-family"]
    for font in ("pingfangsc", "microsoftyahei", "notosanscjksc", "sans-serif"):
        assert font in family.replace('"', ""), font


def test_every_class_rule_of_email_css_is_inlined(example: Rendered) -> None:
    css = (TEMPLATES / "email.css").read_text(encoding="utf-8")
    checked = assert_inlined(example.doc, css)
    assert checked > 100
    # the post's own raw HTML (the telegram card at the end) came out styled too
    card = one(example.doc, "div.telegram-card")
    assert style_of(card)["background-color"] == "#eef6fc"
    assert "padding" in style_of(card) and "border" in style_of(card)
    cta = one(example.doc, "a.telegram-card__cta")
    assert style_of(cta)["background-color"] == "#229ed9"
    # a box of its own colours keeps them in dark mode too: !important beats the dark rules
    assert style_of(cta)["color"] in ("#fff!important", "#ffffff!important")
    qr = one(example.doc, "img.telegram-card__qr")
    assert qr.get("width") == "120" and style_of(qr)["height"] == "auto"


def test_only_media_rules_stay_in_style(example: Rendered) -> None:
    styles = [s.text or "" for s in example.doc.iter("style")]
    joined = "\n".join(styles)
    assert "@media only screen and (max-width: 620px)" in joined
    assert "prefers-color-scheme: dark" in joined
    outside_media = re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", joined)
    assert not outside_media.strip(), outside_media[:200]


def test_still_styled_when_a_client_strips_style(example: Rendered) -> None:
    doc = lhtml.document_fromstring(example.html)
    for style in list(doc.iter("style")):
        style.getparent().remove(style)
    expect = {
        "table.container": {"background-color": "#fff", "max-width": "600px"},
        "table.summary": {"background-color": "#eff6ff"},
        "td.summary-inner": {"padding": "14px16px6px"},
        "td.body-cell": {"padding": "8px24px24px", "color": "#1f2328"},
        "td.footer-cell": {"color": "#6b7280", "text-align": "center"},
        "h1.title": {"font-size": "26px", "color": "#111827"},
        "div.telegram-card": {"background-color": "#eef6fc", "padding": "18px20px"},
    }
    for selector, wanted in expect.items():
        got = style_of(one(doc, selector))
        for prop, value in wanted.items():
            assert got.get(prop) == value, (selector, prop, got.get(prop))
    for h2 in CSSSelector("td.body-cell h2")(doc):
        assert style_of(h2)["font-size"] == "20px"


def test_html_part_is_well_under_gmail_clipping(example: Rendered, settings: Settings) -> None:
    assert len(example.html.encode("utf-8")) < 102_000
    assert example.issue.html_size() < settings.clip_warn_bytes
    # mailer's markup no more than doubles the post: it was 3.8 times the markdown's bytes. The footer's
    # "subscribe" line (issue 15) is a URL and two words, not markup: it has a budget of its own.
    without = render(EXAMPLE, settings.replace(subscribe_url="")).issue.html_size()
    assert without <= 2 * EXAMPLE.stat().st_size
    assert example.issue.html_size() - without <= 150


def test_a_table_heavy_weekly_is_not_clipped(tmp_path: Path) -> None:
    """24 tables of 8 rows, a link in every row: each cell used to carry its own style (18.6 times the md)."""
    source = POSTS / "weekly_tables.md"
    rendered = render(source, make_settings(tmp_path))
    size = rendered.issue.html_size()
    assert size < Settings().clip_warn_bytes
    assert size <= 3.3 * source.stat().st_size  # 3.25 times the markdown; it was 18.6, then 4.0 times
    cells = CSSSelector("td.body-cell td")(rendered.doc)
    assert len(cells) == 24 * 8 * 5
    assert not [td for td in cells if "padding" in style_of(td) or "border" in style_of(td)]
    # the numbers are aligned by align="right" alone (Outlook, Gmail and Chromium all honour it)
    assert len([td for td in cells if td.get("align") == "right"]) == 24 * 8 * 3
    assert not [td for td in cells if "text-align" in style_of(td)]


def test_the_font_stack_is_not_repeated_on_every_element(example: Rendered) -> None:
    stacks = [el for el in example.doc.iter() if "font-family" in style_of(el)]
    assert [el.get("class") for el in stacks] == ["wrapper-cell"]


def test_footer_unsubscribe_view_in_browser_and_postal_address(example: Rendered) -> None:
    footer = one(example.doc, "td.footer-cell")
    links = {a.text_content(): a.get("href") for a in footer.iter("a")}
    assert links["退订"] == UNSUBSCRIBE
    view = "https://news.example.com/mailer/issues/2026-02-09"
    assert links["在浏览器中查看"] == view
    assert one(example.doc, "td.topbar a").get("href") == view
    assert "Example Media, 1 Example Street, Shanghai" in footer.text_content()
    assert "AI 日报" in footer.text_content()


def test_view_in_browser_defaults_to_mailers_own_archive(tmp_path: Path) -> None:
    rendered = render(EXAMPLE, make_settings(tmp_path).replace(view_url=Settings().view_url))
    web_url = make_settings(tmp_path).web_url.rstrip("/")
    assert one(rendered.doc, "td.topbar a").get("href") == f"{web_url}/issues/2026-02-09"


@pytest.mark.parametrize(
    ("source", "shown"),
    [(EXAMPLE, "朋友转发给你的？订阅"), (POSTS / "english.md", "Forwarded to you? Subscribe")],
)
def test_the_footer_offers_subscribe_to_a_reader_who_got_it_forwarded(
    source: Path, shown: str, tmp_path: Path
) -> None:
    rendered = render(source, make_settings(tmp_path))
    first = one(rendered.doc, "td.footer-cell").find("p")
    assert first is not None and first.text_content() == shown
    assert [a.get("href") for a in first.iter("a")] == [SUBSCRIBE]
    footer = rendered.text.split("-" * 72 + "\n", 1)[1]
    assert footer.splitlines()[0] == f"{shown}: {SUBSCRIBE}"


@pytest.mark.parametrize(
    "changes",
    [{"subscribe_url": ""}, {"web_url": ""}],
    ids=["subscribe_url empty", "no public address"],
)
def test_no_subscribe_line_without_a_public_address(changes: dict[str, str], tmp_path: Path) -> None:
    rendered = render(EXAMPLE, make_settings(tmp_path, **changes))
    assert "订阅:" not in rendered.text and "subscribe" not in rendered.text.replace("unsubscribe", "")
    assert "朋友转发" not in visible_text(rendered.doc)
    assert not [
        a for a in CSSSelector("td.footer-cell a")(rendered.doc) if a.get("href", "").endswith("/subscribe")
    ]


def test_subscribe_url_may_point_to_the_publishers_own_form(tmp_path: Path) -> None:
    own = "https://blog.example.com/newsletter#signup"
    rendered = render(EXAMPLE, make_settings(tmp_path, subscribe_url=own))
    assert f"朋友转发给你的？订阅: {own}" in rendered.text
    assert [a.get("href") for a in CSSSelector("td.footer-cell a")(rendered.doc)][0] == own


def test_no_view_in_browser_link_when_view_url_is_empty(tmp_path: Path) -> None:
    rendered = render(EXAMPLE, make_settings(tmp_path).replace(view_url=""))
    assert not CSSSelector("td.topbar")(rendered.doc)
    assert "在浏览器中查看" not in visible_text(rendered.doc)
    assert "在浏览器中查看" not in rendered.text
    assert [a.get("href") for a in one(rendered.doc, "td.footer-cell").iter("a")] == [SUBSCRIBE, UNSUBSCRIBE]


def test_names_from_settings_are_escaped(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, from_name="A <b>&</b>", postal_address="<script>x</script> St")
    rendered = render(POSTS / "english.md", settings)
    footer = one(rendered.doc, "td.footer-cell")
    assert "A <b>&</b>" in footer.text_content()
    assert "<script>x</script> St" in footer.text_content()
    assert not list(rendered.doc.iter("script", "b"))


# --- other posts -------------------------------------------------------------------------------


def test_english_post(english: Rendered) -> None:
    doc = english.doc
    assert doc.get("lang") == "en"
    assert one(doc, "p.summary-label").text_content() == "In this issue"
    assert [li.text_content() for li in one(doc, "table.summary").iter("li")] == list(english.post.summary)
    assert one(doc, "p.meta").text_content() == "February 10, 2026 · Engineering"
    cover = one(doc, "img.cover")
    assert cover.get("width") == "600" and cover.get("alt") == english.post.title
    body = one(doc, "td.body-cell")
    assert [s.text_content() for s in body.iter("strong")] == ["efficiency", "70%"]
    assert [e.text_content() for e in body.iter("em")] == ["more", "Good enough"]
    assert one(body, "a").get("href") == "https://bench.example.org/energy"
    assert len(CSSSelector("ul > li")(body)) == 3 and len(CSSSelector("ol > li")(body)) == 2
    assert [h.text_content() for h in body.iter("h3")] == ["Tip of the week"]
    assert len(list(body.iter("hr"))) == 1
    assert "Weekly Notes" not in body.text_content()  # the repeated H1 is gone
    footer_links = [a.text_content() for a in one(doc, "td.footer-cell").iter("a")]
    assert footer_links == ["Subscribe", "Unsubscribe", "View in browser"]
    assert english.issue.preheader == "Small language models now beat last year's giants on coding tasks"
    assert_inlined(doc, (TEMPLATES / "email.css").read_text(encoding="utf-8"))


def test_table_code_quote_and_images(rich: Rendered) -> None:
    body = one(rich.doc, "td.body-cell")
    table = one(body, "div.table-wrap > table")
    assert [th.text_content() for th in table.iter("th")] == ["Model", "Score", "Notes"]
    rows = [[td.text_content() for td in tr.iter("td")] for tr in CSSSelector("tbody tr")(table)]
    assert rows == [["Alpha", "91.2", "best overall"], ["Beta", "88.0", "fastest"]]
    assert table.get("role") is None  # a data table, not layout
    # lines and padding come from the table's attributes, not a style on every cell (Gmail's clipping size)
    assert (table.get("cellpadding"), table.get("rules")) == ("7", "rows") and "border" in style_of(table)
    code = one(body, "pre > code")
    assert code.text_content() == 'def greet(name: str) -> str:\n    return f"Hello, {name} <3"\n'
    assert "white-space" in style_of(one(body, "pre"))
    quote = one(body, "blockquote")
    assert "Simplicity is prerequisite for reliability." in quote.text_content()
    assert "border-left" in style_of(quote)
    images = {img.get("src"): img for img in body.iter("img")}
    assert set(images) == {
        BASE + "images/chart.png",
        "https://news.example.com/static/badge.svg",
        "https://cdn.example.com/logo.png",
    }
    chart = images[BASE + "images/chart.png"]
    assert chart.get("alt") == "" and chart.get("width") is None  # its natural size, up to the column
    assert style_of(chart)["height"] == "auto"
    assert images["https://cdn.example.com/logo.png"].get("alt") == "Logo"
    for img in images.values():
        assert img.get("alt") is not None
    assert len(rich.issue.findings.images_without_alt) == 2
    assert_inlined(rich.doc, (TEMPLATES / "email.css").read_text(encoding="utf-8"))


def test_a_floated_image_gets_the_align_outlook_goes_by(tmp_path: Path) -> None:
    # Outlook ignores CSS float; premailer's img align= from it is now done after inlining (render.py)
    post = tmp_path / "floats.md"
    post.write_text(
        "---\ntitle: Floats\ndate: 2026-02-20\n---\n"
        "<style>img.aside { float: left }</style>\n\n"
        '<p><img src="https://cdn.example.com/r.png" alt="r" style="width: 90px; float: right"> right</p>\n\n'
        '<p><img class="aside" src="https://cdn.example.com/l.png" alt="l" width="90"> left by a rule</p>\n\n'
        '<p><img src="https://cdn.example.com/n.png" alt="n" style="float: none"> not floated</p>\n\n'
        '<p><img src="https://cdn.example.com/p.png" alt="p"> plain</p>\n',
        encoding="utf-8",
    )
    rendered = render(post, make_settings(tmp_path))
    aligns = {img.get("alt"): img.get("align") for img in one(rendered.doc, "td.body-cell").iter("img")}
    assert aligns == {"r": "right", "l": "left", "n": None, "p": None}


def test_relative_links_and_images_become_absolute_with_base_url(rich: Rendered) -> None:
    hrefs = [a.get("href") for a in one(rich.doc, "td.body-cell").iter("a")]
    assert hrefs == [BASE + "archive/2026-02.html", "https://news.example.com/about", "#results"]
    assert one(rich.doc, "img.cover").get("src") == BASE + "images/cover.png"
    lines = rich.text.split("\n")
    assert f"[1] {BASE}archive/2026-02.html" in lines and "[2] https://news.example.com/about" in lines


def test_relative_links_stay_and_are_reported_without_base_url(tmp_path: Path) -> None:
    rendered = render(POSTS / "rich.md", make_settings(tmp_path))
    hrefs = [a.get("href") for a in one(rendered.doc, "td.body-cell").iter("a")]
    assert hrefs[:2] == ["archive/2026-02.html", "/about"]
    assert "archive/2026-02.html" in rendered.issue.findings.relative_urls


def test_raw_html_unsafe_parts_removed(raw: Rendered) -> None:
    doc = raw.doc
    for tag in ("script", "iframe", "form", "input", "button", "embed", "object", "svg"):
        assert not list(doc.iter(tag)), tag
    for element in doc.iter():
        if not isinstance(element.tag, str):
            continue
        for name, value in element.attrib.items():
            assert not name.lower().startswith("on"), (element.tag, name)
            if name in ("href", "src"):
                squashed = re.sub(r"[\x00-\x20]+", "", value).lower()
                assert not squashed.startswith(("javascript:", "data:", "vbscript:")), value
    styles = [el.get("style") or "" for el in doc.iter() if isinstance(el.tag, str)]
    styles += [s.text or "" for s in doc.iter("style")]
    for css in styles:
        squashed = re.sub(r"\s+|/\*.*?\*/", "", css).lower()
        for bad in ("expression(", "javascript:", "behavior", "-moz-binding", "\\65"):
            assert bad not in squashed, css
    assert "alert(" not in raw.html
    assert "evil.example.com" not in raw.html


def test_raw_html_iframe_and_embeds_become_links(raw: Rendered) -> None:
    links = {a.get("href"): a.text_content() for a in CSSSelector("a.embed-link")(raw.doc)}
    # the player's URL became the video's own page (mailer/embeds.py)
    assert links["https://www.youtube.com/watch?v=dQw4w9WgXcQ"] == "▶ Open: Launch video"
    assert "https://media.example.com/movie.swf" in links
    assert "https://media.example.com/applet.class" in links
    for link in CSSSelector("a.embed-link")(raw.doc):
        assert style_of(link).get("background-color")
    assert "iframe" in raw.issue.findings.removed and "script" in raw.issue.findings.removed


def test_raw_html_safe_parts_kept_and_styled(raw: Rendered) -> None:
    body = one(raw.doc, "td.body-cell")
    text = body.text_content()
    for kept in ("Some text before", "Limited offer", "Click-me paragraph.", "Text after the raw HTML."):
        assert kept in text, kept
    # the post's own <style> block is inlined like email.css; its @media rule stays in <style>
    promo = one(body, "div.promo")
    assert style_of(promo)["background-color"] == "#fff7ed"
    assert style_of(promo)["padding"] == "12px16px"
    # (the classes went: no rule left in <style> uses them)
    assert style_of(one(body, "div.promo > p:first-child"))["color"] == "#9a3412!important"
    assert "max-width: 620px" in "".join(s.text or "" for s in raw.doc.iter("style"))
    (sneaky,) = [p for p in body.iter("p") if p.text_content() == "Styled with an expression."]
    assert style_of(sneaky)["color"] == "red"


def test_long_post_renders_whole_with_short_lines(tmp_path: Path) -> None:
    rendered = render(POSTS / "long.md", make_settings(tmp_path))
    sections = CSSSelector("td.body-cell h2")(rendered.doc)
    source = (POSTS / "long.md").read_text(encoding="utf-8")
    assert len(sections) == source.count("\n## ")
    assert "**" not in visible_text(rendered.doc)
    long_paragraph = max(source.split("\n"), key=len)
    assert long_paragraph.endswith("。") and len(long_paragraph) == 4001
    assert long_paragraph in visible_text(rendered.doc)
    assert rendered.issue.html_size() > 102_000  # too big for Gmail: `render` warns (below)
    for part in (rendered.issue.html, rendered.issue.text):
        for chunk in part.chunks:
            for line in chunk.split(b"\r\n"):
                assert len(line) <= LINE_LIMIT or not part.eight_bit


def test_render_command_warns_when_gmail_would_clip(tmp_path: Path) -> None:
    env = {"MAILER_DATA_DIR": str(tmp_path)}
    args = ["render", str(POSTS / "long.md"), "-o", str(tmp_path / "o.html")]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert "clips" in result.stderr
    result = CliRunner().invoke(cli, ["render", str(EXAMPLE), "-o", str(tmp_path / "e.html")], env=env)
    assert result.exit_code == 0, result.output
    assert "clips" not in result.stderr


# --- the plain-text part -----------------------------------------------------------------------


def display_width(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def test_text_part_is_readable_on_its_own(example: Rendered) -> None:
    text = example.text
    lines = text.split("\n")
    assert lines[0] == example.post.title
    assert set(lines[1]) == {"="}
    assert "本期要点" in lines
    for item in example.post.summary:
        assert f"- {item}" in lines, item
    # headings are underlined, not marked up
    heading = "四巨头AI豪赌6100亿美元，市场泼冷水"
    at = lines.index(heading)
    assert set(lines[at + 1]) == {"-"}
    assert f"退订: {UNSUBSCRIBE}" in lines
    assert "Example Media, 1 Example Street, Shanghai" in lines
    assert "https://t.me/ai_news_plus" in text  # the telegram card's link, as a URL
    assert "在浏览器中查看: https://news.example.com/mailer/issues/2026-02-09" in lines
    # a paragraph's sentences are all there, without the bold markers
    assert "合计投入6100亿美元用于数据中心" in unflow(text)  # format=flowed: as a reader joins the lines


def test_text_part_has_no_html_and_wrapped_lines(
    example: Rendered, english: Rendered, rich: Rendered
) -> None:
    for rendered in (example, english, rich):
        text = rendered.text
        assert not re.search(r"</?[a-zA-Z][^>]*>", text), re.search(r"</?[a-zA-Z][^>]*>", text)
        assert "&amp;" not in text and "&lt;" not in text
        for line in text.split("\n"):
            if "://" not in line and not line.startswith("    "):  # URLs and code are not broken
                assert display_width(line) <= 76, line
    assert max(len(line) for line in example.text.split("\n")) < 200  # long paragraphs were wrapped


def test_english_text_part_links_as_urls(english: Rendered) -> None:
    text = english.text
    assert "benchmark announcement[1]" in text and "\n[1] https://bench.example.org/energy\n" in text
    lines = text.split("\n")
    assert "In this issue" in lines
    assert "- Tip of the week: pin your dependencies" in lines
    assert "Small models catch up" in lines and "Tip of the week" in lines  # an H3, underlined with ~
    assert "- Faster inference on a laptop" in lines and "1. Download the weights" in lines
    assert f"Unsubscribe: {UNSUBSCRIBE}" in lines
    assert "*" not in text


def test_text_part_of_tables_code_and_raw_html(rich: Rendered, raw: Rendered) -> None:
    lines = rich.text.split("\n")
    assert "Model | Score | Notes" in lines and "Beta | 88.0 | fastest" in lines
    assert '        return f"Hello, {name} <3"' in lines
    assert any(line.startswith("> Simplicity is prerequisite") for line in lines)
    text = raw.text
    assert "Limited offer" in text and "Text after the raw HTML." in text
    # a raw HTML link is cited like a markdown one: text[n], the URL at the end
    assert "Launch video[1]" in text and "\n[1] https://www.youtube.com/watch?v=dQw4w9WgXcQ\n" in text
    assert "alert" not in text and "Send" not in text and "password" not in text


def test_preheader_without_summary_is_the_first_words(settings: Settings) -> None:
    rendered = render(POSTS / "no_front_matter.md", settings)
    assert rendered.issue.preheader.startswith("The title comes from the heading above")
    preheader = one(rendered.doc, "div.preheader")
    assert preheader.text_content().startswith(rendered.issue.preheader)
    assert not CSSSelector("table.summary")(rendered.doc)
    assert one(rendered.doc, "h1.title").text_content() == "A post without front matter"
    assert "A post without front matter" not in one(rendered.doc, "td.body-cell").text_content()


def test_image_sizes_for_outlook_are_the_posts_own_clamped_to_the_column(tmp_path: Path) -> None:
    """Outlook on Windows goes by width/height attributes: a raw <img width="800"> broke the layout."""
    rendered = render(POSTS / "images.md", make_settings(tmp_path))
    images = {img.get("alt"): img for img in one(rendered.doc, "td.body-cell").iter("img")}
    wide = images["A wide diagram"]
    assert (wide.get("width"), wide.get("height")) == ("552", "276")  # 800x400, scaled to the column
    for name in ("build", "The settings dialog", "The office at night"):  # no size given: natural, no width
        assert images[name].get("width") is None and style_of(images[name])["max-width"] == "100%"


def test_footnotes_are_numbered_notes_at_the_end(tmp_path: Path) -> None:
    rendered = render(POSTS / "footnotes.md", make_settings(tmp_path))
    body = one(rendered.doc, "td.body-cell")
    assert "[^" not in body.text_content()
    assert [sup.text_content() for sup in body.iter("sup")] == ["[1]", "[2]", "[1]"]
    notes = [li.text_content().strip() for li in one(body, "ol.footnotes").iter("li")]
    assert notes == ["See the cargo book.", "The full list is on the blog."]
    assert not [a for a in body.iter("a") if (a.get("href") or "").startswith("#")]  # no in-page links
    text = rendered.text
    assert "cargo info[1], and the release notes say more[2]." in " ".join(text.split())
    assert "[1] See the cargo book" in text and "[2] The full list is on the blog." in text
    assert "[^" not in text


def test_text_part_has_every_heading_level_without_markup(tmp_path: Path) -> None:
    lines = render(POSTS / "footnotes.md", make_settings(tmp_path)).text.split("\n")
    assert not [line for line in lines if line.startswith("#")]
    why = lines.index("Why it matters")
    assert lines[why + 1] == "~" * len("Why it matters")
    assert "Smaller heading" in lines


def test_text_part_links_are_numbered_references_at_the_end(tmp_path: Path) -> None:
    """Not `text (https://...)` in the middle of a Chinese sentence: `text[n]`, and the URLs at the end."""
    post = tmp_path / "links.md"
    post.write_text(
        "---\ntitle: 链接\n---\n这是[一个链接](https://example.org/a)的例子，还有[另一个](https://example.org/b)。\n\n"
        "A note[^1] and the [same page](https://example.org/a) again.\n\n[^1]: The note.\n",
        encoding="utf-8",
    )
    text = render(post, make_settings(tmp_path)).text
    assert "这是一个链接[2]的例子，还有另一个[3]。" in text  # [1] is the footnote
    assert "A note[1] and the same page[4] again." in text
    lines = text.split("\n")
    assert lines.index("[1] The note.") < lines.index("[2] https://example.org/a")
    assert "[3] https://example.org/b" in lines and "[4] https://example.org/a" in lines
    assert "(https://" not in text.split("------------------------")[0]  # no URL inside the body's text
