"""Headless Chromium as the tests and bench/posts.py use it, and the WCAG contrast of every text it shows.

Debian's chromium, driven by Playwright, which never downloads a browser of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# How long a browser test waits for what a page shows after a server renders a post (conftest's `browser`
# makes it Playwright's default): the example's render alone took seconds at load 15-29, where 8 s ran out
WAIT_MS = 60_000

# Every element with text of its own: its WCAG contrast ratio against the nearest element that paints a
# background (what the text is actually on), and whether it is a button (a link shown as a box).
CONTRAST = """() => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    const p = m ? m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number) : [0, 0, 0, 0];
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const ratio = (a, b) => (Math.max(lum(a), lum(b)) + 0.05) / (Math.min(lum(a), lum(b)) + 0.05);
  const shown = (e) => {
    for (let n = e; n; n = n.parentElement) {
      const s = getComputedStyle(n);
      if (s.display === 'none' || parseFloat(s.opacity) === 0) return false;
    }
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.height > 1;
  };
  const out = [];
  for (const e of document.querySelectorAll('body *')) {
    if (![...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim()) || !shown(e)) continue;
    let holder = e;  // the nearest element that paints a background: what the text is actually on
    while (holder.parentElement && parse(getComputedStyle(holder).backgroundColor).a === 0) {
      holder = holder.parentElement;
    }
    const button = holder.tagName === 'A' && getComputedStyle(holder).display !== 'inline';
    const on = parse(getComputedStyle(holder).backgroundColor);
    out.push({text: e.textContent.trim().slice(0, 40), tag: e.tagName, button,
              ratio: ratio(parse(getComputedStyle(e).color), on)});
  }
  return out;
}"""


def text_contrasts(browser: Any, html: str, *, dark: bool, width: int = 600) -> list[dict[str, Any]]:
    """{text, tag, button, ratio} for every piece of text of the email, images left out (text only)."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.emulate_media(color_scheme="dark" if dark else "light")
        page.route("**/*", lambda route: route.fulfill(status=404, body=""))
        page.set_content(html, wait_until="load")
        found: list[dict[str, Any]] = page.evaluate(CONTRAST)
        return found
    finally:
        page.close()
