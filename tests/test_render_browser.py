"""The rendered example email in headless Chromium at 375 and 600 px: layout, summary box, CJK font.

Needs Debian's chromium (and fonts-noto-cjk); Playwright drives it and never downloads a browser.
Set MAILER_DOCS_SCREENSHOTS=1 to also refresh the screenshots in docs/.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailer.config import Settings
from mailer.post import load_post
from mailer.render import render_issue
from tests.chromium import CONTRAST, text_contrasts
from tests.conftest import EXAMPLE, ROOT

pytestmark = pytest.mark.browser

UNSUBSCRIBE = "https://news.example.com/mailer/unsubscribe?t=sample"


def placeholder(width: int, height: int, label: str) -> bytes:
    """An SVG stand-in for a remote image, with its real size, so no test touches the network."""
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">
<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">
<stop offset="0" stop-color="#1e3a8a"/><stop offset="1" stop-color="#0ea5e9"/></linearGradient></defs>
<rect width="100%" height="100%" fill="url(#g)"/>
<text x="50%" y="50%" fill="#ffffff" font-family="sans-serif" font-size="{height // 10}"
 text-anchor="middle" dominant-baseline="middle">{label}</text></svg>""".encode()


@pytest.fixture(scope="module")
def email_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example's HTML part as a subscriber gets it, and the same with every <style> removed."""
    folder = tmp_path_factory.mktemp("browser")
    settings = Settings(
        from_name="AI 日报",
        postal_address="Example Media, 1 Example Street, Shanghai",
        web_url="https://news.example.com/mailer",
        view_url="{web_url}/issues/{issue_id}",
        data_dir=folder,
    )
    issue = render_issue(load_post(EXAMPLE), settings)
    html = issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}).decode("utf-8")
    plain = re.sub(r"<style[^>]*>.*?</style>", "", html, flags=re.S)
    assert plain != html and "<style" not in plain
    files = {"email": folder / "email.html", "no-style": folder / "no-style.html"}
    files["email"].write_text(html, encoding="utf-8")
    files["no-style"].write_text(plain, encoding="utf-8")
    return files


@pytest.fixture(scope="module")
def open_page(browser: Any, email_files: dict[str, Path]) -> Iterator[Any]:
    """open_page(width, which) -> a page showing the email at that width; remote images are local."""
    images = {"cover": placeholder(1200, 630, "cover image"), "other": placeholder(240, 240, "QR")}
    pages: dict[str, Any] = {}
    requested: list[str] = []

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url.startswith("file://"):
            request_route.continue_()
            return
        requested.append(url)
        body = images["cover"] if "n8n" in url else images["other"]
        request_route.fulfill(status=200, content_type="image/svg+xml", body=body)

    def open_(width: int, which: str = "email") -> Any:
        page = pages.get(which)
        if page is None:
            page = pages[which] = browser.new_page(viewport={"width": width, "height": 900})
            page.route("**/*", route)
            page.goto(email_files[which].as_uri(), wait_until="load")
        elif page.viewport_size["width"] != width:
            page.set_viewport_size({"width": width, "height": 900})  # media queries re-apply
        page.wait_for_function(f"window.innerWidth === {width} && document.fonts.status === 'loaded'")
        return page

    yield open_
    for page in pages.values():
        page.close()
    assert all(u.startswith("https://ssl.aicode.cc/") for u in requested), requested


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.query_selector(selector)
    assert found is not None, selector
    rect: dict[str, float] = found.bounding_box()
    assert rect is not None, f"{selector} is not rendered"
    return rect


@pytest.mark.parametrize("width", [375, 600])
def test_layout_fits_the_screen(open_page: Any, width: int) -> None:
    page = open_page(width)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width
    container = box(page, "table.container")
    assert container["width"] <= 600
    assert container["x"] >= 0 and container["x"] + container["width"] <= width
    if width == 375:
        assert container["width"] == pytest.approx(375, abs=1)  # fills a phone's width
    cover = box(page, "img.cover")
    assert cover["width"] == pytest.approx(container["width"], abs=1)
    assert cover["height"] == pytest.approx(cover["width"] * 630 / 1200, abs=2)  # height:auto keeps the ratio
    # no element of the body sticks out of the container
    overflow = page.evaluate(
        """(right) => [...document.querySelectorAll('td.body-cell *')]
            .filter(e => e.getBoundingClientRect().right > right + 0.5).map(e => e.tagName)""",
        container["x"] + container["width"],
    )
    assert overflow == []


def test_wide_screen_container_is_600(open_page: Any) -> None:
    page = open_page(1024)
    container = box(page, "table.container")
    assert container["width"] == pytest.approx(600, abs=1)
    assert container["x"] == pytest.approx((1024 - 600) / 2, abs=2)  # centred


@pytest.mark.parametrize("width", [375, 600])
def test_summary_box_visible_above_the_first_heading(open_page: Any, width: int) -> None:
    page = open_page(width)
    summary = page.locator("table.summary")
    assert summary.is_visible()
    rect = box(page, "table.summary")
    first_h2 = box(page, "td.body-cell h2")
    assert rect["height"] > 100 and rect["width"] > width / 2
    assert rect["y"] + rect["height"] <= first_h2["y"]
    items = page.locator("table.summary li")
    assert items.count() == 8
    for i in range(items.count()):
        assert items.nth(i).is_visible()
    background = page.evaluate("getComputedStyle(document.querySelector('table.summary')).backgroundColor")
    assert background == "rgb(239, 246, 255)"
    # the preheader is in the DOM but takes no space and is not shown
    assert not page.locator("div.preheader").is_visible()


def test_cjk_text_uses_a_real_cjk_font(open_page: Any) -> None:
    page = open_page(600)
    sample = "人工智能日报测试文字"
    widths = page.evaluate(
        """(sample) => {
            const cell = document.querySelector('td.body-cell');
            const measure = (text) => {
                const span = document.createElement('span');
                span.textContent = text;
                span.style.whiteSpace = 'nowrap';
                cell.appendChild(span);
                const width = span.getBoundingClientRect().width;
                span.remove();
                return width;
            };
            return {cjk: measure(sample), latin: measure('0'.repeat(sample.length)),
                    size: parseFloat(getComputedStyle(cell).fontSize)};
        }""",
        sample,
    )
    # a CJK font draws every ideograph one em wide, about twice a Latin digit
    assert widths["cjk"] == pytest.approx(len(sample) * widths["size"], rel=0.05)
    assert 1.6 <= widths["cjk"] / widths["latin"] <= 2.3
    # and Chromium says which font it used for the first heading's glyphs
    session = page.context.new_cdp_session(page)
    session.send("DOM.enable")
    session.send("CSS.enable")
    root = session.send("DOM.getDocument")["root"]["nodeId"]
    node = session.send("DOM.querySelector", {"nodeId": root, "selector": "td.body-cell h2"})["nodeId"]
    fonts = session.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    families = {font["familyName"]: font["glyphCount"] for font in fonts}
    cjk = [name for name in families if re.search(r"CJK|Han|PingFang|YaHei|Hei|Song|Ming", name)]
    assert cjk, families
    assert families[cjk[0]] >= 10
    session.detach()


def test_still_styled_without_style_element(open_page: Any) -> None:
    page = open_page(600, "no-style")
    style = page.evaluate(
        """() => {
            const get = (s) => getComputedStyle(document.querySelector(s));
            return {
                summary: get('table.summary').backgroundColor,
                container: get('table.container').backgroundColor,
                page: get('table.wrapper').backgroundColor,
                padding: get('td.body-cell').paddingLeft,
                card: get('div.telegram-card').backgroundColor,
                cta: get('a.telegram-card__cta').backgroundColor,
                title: get('h1.title').fontSize,
            };
        }"""
    )
    assert style == {
        "summary": "rgb(239, 246, 255)",
        "container": "rgb(255, 255, 255)",
        "page": "rgb(243, 244, 246)",
        "padding": "24px",
        "card": "rgb(238, 246, 252)",
        "cta": "rgb(34, 158, 217)",
        "title": "26px",
    }
    assert 580 <= box(page, "table.container")["width"] <= 600  # the page keeps its 8 px gutter


def test_screenshots_for_the_readme(open_page: Any, tmp_path: Path) -> None:
    """Take the top at 600 and 375 px and the end at 600; MAILER_DOCS_SCREENSHOTS=1 puts them in docs/."""
    shots = []
    for name, width, top, height in (
        ("600", 600, 0, 1300),
        ("375", 375, 0, 1100),
        ("600-end", 600, -760, 760),
    ):
        page = open_page(width)
        if top < 0:
            top = page.evaluate("document.scrollingElement.scrollHeight") + top
        path = tmp_path / f"email-{name}.png"
        page.screenshot(
            path=str(path), full_page=True, clip={"x": 0, "y": top, "width": width, "height": height}
        )
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        shots.append(path)
    if os.environ.get("MAILER_DOCS_SCREENSHOTS"):
        for path in shots:
            shutil.copyfile(path, ROOT / "docs" / path.name)


def test_dark_mode_rules_win_over_inline_styles(open_page: Any) -> None:
    page = open_page(600)
    colours = (
        "() => [getComputedStyle(document.querySelector('table.container')).backgroundColor,"
        " getComputedStyle(document.querySelector('table.summary')).backgroundColor]"
    )
    try:
        page.emulate_media(color_scheme="dark")
        assert page.evaluate(colours) == ["rgb(27, 30, 36)", "rgb(30, 42, 61)"]
    finally:
        page.emulate_media(color_scheme="light")
    assert page.evaluate(colours) == ["rgb(255, 255, 255)", "rgb(239, 246, 255)"]


COMPUTED = """() => [...document.querySelectorAll('body, body *')].map(e => {
    const s = getComputedStyle(e), r = e.getBoundingClientRect();
    return [e.tagName, s.color, s.fontFamily, s.fontSize, s.fontWeight, s.fontStyle, s.lineHeight,
            s.letterSpacing, s.textAlign, s.textDecorationLine, s.margin, s.padding, s.backgroundColor,
            s.borderTop, s.borderLeft, Math.round(r.x), Math.round(r.y), Math.round(r.width),
            Math.round(r.height)].join(' | ');
})"""


@pytest.mark.parametrize("name", ["example", "english.md", "rich.md", "hugo_toml.md", "weekly_tables.md"])
def test_inline_styles_look_like_the_css_rules(browser: Any, tmp_path: Path, name: str) -> None:
    """Dropping inherited inline CSS (to stay under Gmail's clipping size) changes no computed style or box.

    The reference is the email with email.css applied as rules (as a browser would apply it); the candidate
    is the email as a client without <style> support shows it: inline styles only.
    """
    path = EXAMPLE if name == "example" else ROOT / "tests" / "posts" / name
    settings = Settings(web_url="https://news.example.com/mailer", base_url="https://blog.example.org/",
                        data_dir=tmp_path)  # fmt: skip
    issue = render_issue(load_post(path), settings)
    html = issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}).decode("utf-8")
    inline_only = re.sub(r"<style[^>]*>.*?</style>", "", html, flags=re.S)
    css = (ROOT / "templates" / "email.css").read_text(encoding="utf-8")
    with_rules = inline_only.replace("</head>", f"<style>{css}</style></head>")
    computed = []
    for variant in (with_rules, inline_only):
        page = browser.new_page(viewport={"width": 600, "height": 900})
        page.route("**/*", lambda route: route.fulfill(status=200, content_type="image/svg+xml",
                                                       body=placeholder(240, 120, "img")))  # fmt: skip
        page.set_content(variant, wait_until="load")
        computed.append(page.evaluate(COMPUTED))
        page.close()
    assert len(computed[0]) > 20
    differ = [(a, b) for a, b in zip(*computed, strict=True) if a != b]
    assert not differ, differ[:1]


CONTRAST_POSTS = ["example", "raw_html.md", "rich.md", "english.md", "hugo_toml.md", "pelican.md",
                  "2024-10-02-toml-h1.md", "weekly_tables.md", "footnotes.md", "images.md",
                  "phone.md", "styled_links.md"]  # fmt: skip


@pytest.mark.parametrize("name", CONTRAST_POSTS)
def test_dark_mode_text_is_readable_on_its_actual_background(browser: Any, tmp_path: Path, name: str) -> None:
    """WCAG contrast of every piece of text against the background it is drawn on, in dark mode:
    4.5:1 for text and links, 3:1 for a button's label (the Telegram "join" button was 1.67:1)."""
    path = EXAMPLE if name == "example" else ROOT / "tests" / "posts" / name
    settings = Settings(base_url="https://blog.example.org/", data_dir=tmp_path)
    issue = render_issue(load_post(path), settings)
    html = issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}).decode("utf-8")
    texts = text_contrasts(browser, html, dark=True)
    buttons = [t for t in texts if t["button"]]
    assert len(texts) >= 9  # title, date, footer, ... at least
    low = [t for t in texts if t["ratio"] < (3 if t["button"] else 4.5)]
    assert not low, low[:5]
    if name == "example":
        (join,) = buttons
        assert join["text"] == "立即加入群组" and join["ratio"] >= 3


BROKEN_WORDS = """() => {
  const rects = (node, start, end) => {
    const range = document.createRange();
    range.setStart(node, start);
    range.setEnd(node, end);
    return [...range.getClientRects()].filter((r) => r.width > 0);
  };
  const broken = [];
  for (const el of document.querySelectorAll('td.body-cell td, td.body-cell th, td.body-cell code')) {
    const block = el.parentElement.closest('p, li, td, th, pre, div') || el;
    const room = block.clientWidth - parseFloat(getComputedStyle(block).paddingLeft)
      - parseFloat(getComputedStyle(block).paddingRight);
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.textContent.matchAll(/\\S+/g)) {
        const cjk = /[\\u3400-\\u9fff]/.test(m[0]);
        if (cjk ? m[0].length > 4 : m[0].length < 2) continue;  // a Latin word or identifier, a CJK label
        const boxes = rects(node, m.index, m.index + m[0].length);
        const lines = new Set(boxes.map((r) => Math.round(r.top))).size;
        const width = boxes.reduce((sum, r) => sum + r.width, 0);
        // cut across two lines although it fits on one: the text could have wrapped elsewhere
        if (lines > 1 && width <= room) broken.push(el.tagName + ': ' + m[0]);
      }
    }
  }
  return broken;
}"""


@pytest.mark.parametrize("name", ["phone.md", "weekly_tables.md", "rich.md", "example", "raw_html.md"])
def test_phone_width_breaks_no_word_and_nothing_sticks_out(browser: Any, tmp_path: Path, name: str) -> None:
    """At 375 px: no word cut inside a table cell or identifier, no sideways scrolling of the page; a table
    too wide for the screen scrolls inside its own box."""
    path = EXAMPLE if name == "example" else ROOT / "tests" / "posts" / name
    issue = render_issue(load_post(path), Settings(base_url="https://blog.example.org/", data_dir=tmp_path))
    html = issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}).decode("utf-8")
    page = browser.new_page(viewport={"width": 375, "height": 800})
    try:
        page.route("**/*", lambda route: route.fulfill(status=200, content_type="image/svg+xml",
                                                       body=placeholder(1200, 630, "img")))  # fmt: skip
        page.set_content(html, wait_until="load")
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 375
        broken = page.evaluate(BROKEN_WORDS)
        assert broken == [], broken
        cell = box(page, "td.body-cell")
        right = cell["x"] + cell["width"]
        # nothing but the inside of a scrolling table box reaches past the body's right edge
        out = page.evaluate(
            """(right) => [...document.querySelectorAll('td.body-cell *')]
                .filter(e => !e.closest('.table-wrap') || e.classList.contains('table-wrap'))
                .filter(e => e.getBoundingClientRect().right > right + 0.5).map(e => e.tagName)""",
            right,
        )
        assert out == []
        wide = page.evaluate(
            """() => [...document.querySelectorAll('.table-wrap')].filter(w => w.scrollWidth > w.clientWidth)
                .map(w => getComputedStyle(w).overflowX)"""
        )
        assert set(wide) <= {"auto", "scroll"}
        if name == "phone.md":
            assert wide  # the seven-column table is wider than a phone and scrolls
    finally:
        page.close()


def test_images_keep_their_size_up_to_the_column(browser: Any, tmp_path: Path) -> None:
    """Badges and small screenshots are not blown up to the column; wide ones are clamped to it."""
    issue = render_issue(load_post(ROOT / "tests" / "posts" / "images.md"), Settings(data_dir=tmp_path))
    html = issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}).decode("utf-8")
    sizes = {
        "build": (90, 20),
        "licence": (78, 20),
        "dialog": (300, 200),
        "wide": (800, 400),
        "office": (1200, 630),
    }

    def route(request_route: Any) -> None:
        name = next(key for key in sizes if key in request_route.request.url)
        body = placeholder(*sizes[name], name)
        request_route.fulfill(status=200, content_type="image/svg+xml", body=body)

    page = browser.new_page(viewport={"width": 700, "height": 900})  # wider than the phone rules
    try:
        page.route("**/*", route)
        page.set_content(html, wait_until="load")
        shown = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('td.body-cell img')].map(i => {
                const r = i.getBoundingClientRect();
                return [i.alt, [Math.round(r.width), Math.round(r.height)]];
            }))"""
        )
        column = page.evaluate("document.querySelector('td.body-cell').clientWidth - 48")
    finally:
        page.close()
    assert column == 552
    assert shown["build"] == [90, 20] and shown["licence"] == [78, 20]
    assert shown["The settings dialog"] == [300, 200]
    assert shown["A wide diagram"] == [552, 276]
    assert shown["The office at night"] == [552, 290]


LINK_TEXT = """() => {
  const painted = (e) => !/rgba\\(0, 0, 0, 0\\)|transparent/.test(getComputedStyle(e).backgroundColor);
  const out = [];
  for (const a of document.querySelectorAll('td.body-cell a[href]')) {
    if (painted(a)) continue;  // a button: its own colours (the dark-mode contrast test reads those)
    for (const e of [a, ...a.querySelectorAll('*')]) {
      if (![...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
      let box = null;  // a badge with a background of its own between the text and the link
      for (let n = e; n !== a; n = n.parentElement) if (painted(n)) box = n;
      const own = [...e.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join('');
      out.push({text: own.trim().slice(0, 30), color: getComputedStyle(e).color,
                link: getComputedStyle(a).color, own: box !== null,
                underline: getComputedStyle(a).textDecorationLine});
    }
  }
  return out;
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_links_look_like_links_whatever_colour_is_set_inside(
    browser: Any, tmp_path: Path, scheme: str
) -> None:
    """`<a><strong style="color:#111827">` showed a link as black bold text: the text inside a link has the
    link's colour and underline in light and dark mode; a badge with its own background keeps its colours."""
    issue = render_issue(load_post(ROOT / "tests" / "posts" / "styled_links.md"), Settings(data_dir=tmp_path))
    html = issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}).decode("utf-8")
    page = browser.new_page(viewport={"width": 600, "height": 900})
    try:
        page.emulate_media(color_scheme=scheme)
        page.set_content(html, wait_until="load")
        texts = page.evaluate(LINK_TEXT)
    finally:
        page.close()
    link = {"light": "rgb(29, 78, 216)", "dark": "rgb(147, 197, 253)"}[scheme]
    shown = {t["text"]: t for t in texts}
    words = [
        "这是一个加粗的链接",
        "a bold link",
        "code in a link",
        "emphasis",
        "quiet words",
        "an old font tag",
    ]
    for text in [*words, "a new release"]:
        assert shown[text]["link"] == link and shown[text]["color"] == link, shown[text]
        assert shown[text]["underline"] == "underline", shown[text]
    assert shown["新"]["own"] and shown["新"]["color"] == "rgb(146, 64, 14)"  # #92400e on its #fef3c7


# raw_html.md is left out: its `<p style="color: red">` (4.0:1 on white) is the post's own colour, not the
# templates'; the dark-mode test above reads it, on the background that dark mode gives it
@pytest.mark.parametrize("name", [name for name in CONTRAST_POSTS if name != "raw_html.md"])
def test_light_mode_text_is_readable_on_its_actual_background(
    browser: Any, tmp_path: Path, name: str
) -> None:
    """WCAG contrast of every piece of text against the background it is drawn on, in light mode, as in dark
    mode: 4.5:1 for text and links (the Telegram card's @handle link was 2.76:1 on its card), 3:1 for a
    button's label (its white on Telegram blue is 3.02:1)."""
    path = EXAMPLE if name == "example" else ROOT / "tests" / "posts" / name
    settings = Settings(base_url="https://blog.example.org/", view_url="{web_url}/issues/{issue_id}",
                        web_url="https://news.example.com/mailer", data_dir=tmp_path)  # fmt: skip
    issue = render_issue(load_post(path), settings)
    html = issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}).decode("utf-8")
    page = browser.new_page(viewport={"width": 600, "height": 900})
    try:
        page.emulate_media(color_scheme="light")
        page.route("**/*", lambda route: route.fulfill(status=404, body=""))  # images stay away: text only
        page.set_content(html, wait_until="load")
        texts = page.evaluate(CONTRAST)
    finally:
        page.close()
    assert len(texts) >= 10  # the view-in-browser link, title, date, footer, ... at least
    low = sorted((round(t["ratio"], 2), t["text"]) for t in texts if t["ratio"] < (3 if t["button"] else 4.5))
    assert not low, low[:5]
