"""The nastiest posts in headless Chromium: the unsubscribe link is there, visible, uncovered and clickable.

test_sanitize_soup.py reads hundreds of hostile posts with html5lib; here a sample of the worst (overlays,
<style> sheets aimed at the footer, raw-text and foreign elements, table parts out of place, code URLs)
goes through a real browser, which also reports any script that runs (an alert).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailer.config import Settings
from mailer.post import parse_post
from mailer.render import render_issue

pytestmark = pytest.mark.browser

UNSUBSCRIBE = "https://news.example.com/mailer/unsubscribe?t=nasty"
NASTY = {
    "plaintext": "<plaintext><p>all that follows</p>",
    "unclosed comment": "<!-- never closed <p>",
    "fixed overlay": '<div style="position:fixed;top:0;left:0;width:100%;height:100%;background:#fff;'
    'z-index:2147483647">cover</div>',
    "escaped overlay": '<div style="\\70 osition:fixed;top:0;left:0;width:100%;height:100%;background:#fff">'
    "cover</div>",
    "sheet hides links": "<style>a { display: none !important } .footer-cell { visibility: hidden }</style>",
    "sheet in @media": "<style>@media screen { * { color: #fff !important; background: #fff !important } }"
    "</style>",
    "pulled over": '<div style="height:600px;margin-bottom:-600px;opacity:.99;background:#fff"></div>',
    "moved over": '<div style="transform:translateY(700px);height:700px;background:#fff"></div>',
    "cells out of place": "<div><td>a cell out of place</td></div><p><tr><td>row</td></tr></p>"
    "<table><table><tr><td>x",
    "foreign content": "<svg><style><img src=x onerror=alert(1)></style></svg>"
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(2)>",
    "noscript": '<noscript><p title="</noscript><img src=x onerror=alert(3)>"></noscript>',
    "code URLs": '<a href="jav&#x09;ascript:alert(4)">x</a><img src=x onerror=alert(5)>'
    '<a href="&#x6A;avascript:alert(6)">y</a>',
    "raw text nested": "<template><xmp><noembed><textarea><title><select><b>x</b>",
}
LINK = """(href) => {
  const link = [...document.querySelectorAll('a')].find((a) => a.getAttribute('href') === href);
  if (!link) return null;
  link.scrollIntoView({block: 'center'});
  const r = link.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = (c) => {
    const v = rgb(c).slice(0, 3).map((x) => x / 255)
      .map((x) => (x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4));
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
  };
  let back = 'rgb(255, 255, 255)';
  for (let e = link; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    if (rgb(c).length < 4 || rgb(c)[3] > 0) { back = c; break; }
  }
  const [a, b] = [lum(getComputedStyle(link).color), lum(back)];
  return {x: r.left + r.width / 2, y: r.top + r.height / 2, width: r.width, height: r.height,
          text: link.innerText.trim(), uncovered: hit === link || link.contains(hit),
          shown: link.checkVisibility({opacityProperty: true, visibilityProperty: true}),
          contrast: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)};
}"""


def email_file(soup: str, folder: Path) -> Path:
    raw = f"---\ntitle: Nasty\n---\nBefore the soup.\n\n{soup}\n\nAfter the soup.\n".encode()
    issue = render_issue(parse_post(raw, folder / "nasty.md"), Settings(data_dir=folder / "state"))
    path = folder / "email.html"
    path.write_bytes(issue.html.fill({"unsubscribe_url": UNSUBSCRIBE, "name": "", "email": ""}))
    return path


@pytest.mark.parametrize("case", list(NASTY))
def test_unsubscribe_link_visible_and_clickable_whatever_the_post(
    case: str, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 600, "height": 900})
    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else route.fulfill(status=200, content_type="text/plain", body="ok"))  # fmt: skip
    try:
        page.goto(email_file(NASTY[case], tmp_path).as_uri(), wait_until="load")
        link = page.evaluate(LINK, UNSUBSCRIBE)
        assert link is not None, "no unsubscribe link"
        assert link["text"] == "Unsubscribe" and link["shown"], link
        assert link["width"] > 20 and link["height"] > 8, link
        assert link["uncovered"], f"something lies over the unsubscribe link: {link}"
        assert link["contrast"] >= 3, link
        with page.expect_request(UNSUBSCRIBE, timeout=10_000):
            page.mouse.click(link["x"], link["y"])
        assert alerts == []
    finally:
        page.close()
