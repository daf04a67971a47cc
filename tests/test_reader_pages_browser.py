"""The reader pages in headless Chromium at a phone's 375 px, in Chinese and English: nothing sticks out,
every text is readable in light and dark mode. The pages come from a real `mailer serve` (test_reader_pages).

Set MAILER_SCREENSHOTS=folder to keep a picture of each page there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.chromium import CONTRAST
from tests.test_reader_pages import Site, _site

pytestmark = pytest.mark.browser
WIDTH = 375
# an address with no place to break, as long as a real one gets: the page must wrap it, not scroll
LONG_ADDRESS = "firstname.middlename.lastname.department.team" + "@subdomain.example-organisation.org"


@pytest.fixture(scope="module", params=["zh", "en"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with _site(tmp_path_factory.mktemp(f"browser-{request.param}"), request.param) as running:
        yield running


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
@pytest.mark.parametrize("which", ["archive", "unsubscribe", "subscribe", "signup-error"])
def test_a_reader_page_fits_a_phone_and_reads_well(browser: Any, site: Site, which: str, dark: bool) -> None:
    path = {
        "archive": "/issues/",
        "unsubscribe": f"/unsubscribe?t={quote(site.token(LONG_ADDRESS))}",
        "subscribe": "/subscribe",
        "signup-error": "/subscribe/confirm?t=not-a-link",  # the error and the form to sign up again
    }[which]
    page = browser.new_page(viewport={"width": WIDTH, "height": 800})
    try:
        page.emulate_media(color_scheme="dark" if dark else "light")
        page.goto(f"http://127.0.0.1:{site.served.port}{path}", wait_until="load")
        assert page.evaluate("document.scrollingElement.scrollWidth") <= WIDTH
        sticking_out = page.evaluate(
            """(width) => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > width + 0.5).map(e => e.tagName)""",
            WIDTH,
        )
        assert sticking_out == []
        texts = page.evaluate(CONTRAST)
        assert texts, "no text found"
        assert [t for t in texts if t["ratio"] < 4.5] == []  # WCAG AA for normal text
        if folder := os.environ.get("MAILER_SCREENSHOTS"):
            name = f"{which}-{site.lang}-{WIDTH}{'-dark' if dark else ''}.png"
            page.screenshot(path=str(Path(folder) / name), full_page=True)
    finally:
        page.close()
