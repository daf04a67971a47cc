"""Image sizes: read from the first bytes of real image files, fetched from a server the test starts (which
also hangs, never ends, lies and loops on purpose), cached in the data folder, never fetched offline, and
set as width/height on every image of the email, held to the column."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from lxml import html as lhtml

from mailer.cli import cli
from mailer.config import Settings
from mailer.imagefetch import CACHE_NAME, CAP, Failed, fetch_size, look_up
from mailer.imageheader import NotAnImage, Size, read_size
from mailer.post import load_post
from mailer.render import render_issue
from tests.conftest import Disk
from tests.imageserver import (
    ImageServer,
    gif,
    jpeg_header,
    png,
    png_header,
    seed_sizes,
    svg,
    webp_header,
)

ONLINE = {"MAILER_OFFLINE": "0"}  # conftest makes every mailer offline; these tests fetch from 127.0.0.1


@pytest.fixture
def server() -> Iterator[ImageServer]:
    started = ImageServer().start()
    yield started
    started.stop()


def sizes_in_steps(data: bytes) -> tuple[int, Size]:
    """Feed the bytes one at a time (past 4 KB, 1000 at a time): how many it took, and the size then."""
    for n in [*range(1, min(len(data), 4096) + 1), *range(4096, len(data), 1000), len(data)]:
        size = read_size(data[:n])
        if size is not None:
            return n, size
    raise AssertionError("no size from the whole file")


# --- reading the size from the first bytes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (png(300, 200), Size(300, 200)),
        (gif(90, 20), Size(90, 20)),
        (jpeg_header(1200, 630), Size(1200, 630)),
        (jpeg_header(4000, 3000, orientation=6), Size(3000, 4000)),  # a phone photo held upright
        (jpeg_header(4000, 3000, orientation=3), Size(4000, 3000)),  # upside down: same size
        (jpeg_header(640, 480, padding=100_000), Size(640, 480)),  # the frame after 100 KB of metadata
        (webp_header("VP8 ", 800, 600), Size(800, 600)),
        (webp_header("VP8L", 16, 16), Size(16, 16)),
        (webp_header("VP8X", 3000, 2000), Size(3000, 2000)),
        (svg(88, 31), Size(88, 31)),
        (svg("2in", "1in"), Size(192, 96)),
        (svg("", "", view_box="0 0 24 16"), Size(24, 16)),
        (svg(48, "", view_box="0 0 24 16"), Size(48, 32)),
    ],
)
def test_the_size_is_read_from_the_first_bytes(data: bytes, expected: Size) -> None:
    used, size = sizes_in_steps(data)
    assert size == expected
    assert used <= len(data)
    if data.startswith(b"\x89PNG"):
        assert used == 24  # the signature and the IHDR fields: no more


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"<!DOCTYPE html><html><head><title>Not found</title>", "an HTML page"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\x0dIDAT" + b"\0" * 16, "corrupt PNG"),
        (png_header(0, 200), "corrupt header"),
        (png_header(100_000, 100_000), "claims 100000x100000 px"),
        (gif(20_000, 20_000), "claims 20000x20000 px"),
        (webp_header("VP8X", 16_000_000, 2), "claims"),
        (b"\xff\xd8\xff\xda" + b"\0" * 20, "no frame header"),
        (b"%PDF-1.7\n" + b"\0" * 20, "not a PNG, JPEG, GIF, WebP or SVG"),
        (svg("100%", "100%"), "without a size in pixels"),
    ],
)
def test_what_is_not_an_image_of_known_size_says_why(data: bytes, why: str) -> None:
    with pytest.raises(NotAnImage, match=re.escape(why)):
        for n in range(1, len(data) + 1):
            read_size(data[:n])


# --- fetching ---------------------------------------------------------------------------------------------


def test_a_fetched_size_is_cached_privately_and_never_fetched_again(
    server: ImageServer, tmp_path: Path
) -> None:
    url = server.image("/shot.png", png(300, 200))
    data_dir = tmp_path / "state"
    first = look_up([url], data_dir, offline=False)
    assert first.sizes == {url: Size(300, 200)} and not first.unknown and not first.cache_problem
    assert server.requests == ["/shot.png"]
    cache = data_dir / CACHE_NAME
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600 and stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert json.loads(cache.read_text())["sizes"] == {url: [300, 200]}
    again = look_up([url, url], data_dir, offline=False)
    assert again.sizes == {url: Size(300, 200)}
    assert server.requests == ["/shot.png"]  # once, ever
    assert not [p for p in data_dir.iterdir() if p.name != CACHE_NAME]  # no temporary file left behind


def test_offline_nothing_is_fetched_and_the_cache_still_serves(server: ImageServer, tmp_path: Path) -> None:
    cached, other = server.image("/a.png", png(10, 10)), server.image("/b.png", png(20, 20))
    seed_sizes(tmp_path, {cached: (640, 480)})
    found = look_up([cached, other], tmp_path, offline=True)
    assert found.sizes == {cached: Size(640, 480)}
    assert "offline" in found.unknown[other]
    assert server.requests == []


def test_a_damaged_cache_is_read_as_empty_and_replaced(server: ImageServer, tmp_path: Path) -> None:
    url = server.image("/a.png", png(12, 34))
    (tmp_path / CACHE_NAME).write_text('{"sizes": {"x": [1, "two"]', encoding="utf-8")
    assert look_up([url], tmp_path, offline=False).sizes == {url: Size(12, 34)}
    assert json.loads((tmp_path / CACHE_NAME).read_text())["sizes"] == {url: [12, 34]}


def test_only_the_first_bytes_are_read_of_a_huge_image(server: ImageServer) -> None:
    """A redirect to a picture that never ends: the size is in its first 24 bytes, and the reading stops."""
    huge = server.stream("/huge.png", png_header(5000, 3000)[:24], b"\0" * 65_536)
    url = server.redirect("/big", huge)
    assert fetch_size(url, time.monotonic() + 30) == Size(5000, 3000)
    assert server.ended["/huge.png"].wait(30)  # the client went away; the server did not stop on its own
    assert server.sent["/huge.png"] < 64 * 1024 * 1024


def test_a_body_without_end_or_size_is_read_up_to_the_cap(server: ImageServer) -> None:
    """An XML prolog with an endless comment might still become an SVG: read on, but not past CAP."""
    url = server.stream("/endless.svg", b'<?xml version="1.0"?><!-- ', b"a" * 65_536)
    with pytest.raises(Failed, match=f"no size in its first {CAP // 1024} KB") as failed:
        fetch_size(url, time.monotonic() + 30)
    assert failed.value.definite
    assert server.ended["/endless.svg"].wait(30)


def test_a_server_that_hangs_costs_the_budget_and_is_not_cached(server: ImageServer, tmp_path: Path) -> None:
    urls = [server.hang(f"/hang{i}.png") for i in range(8)]  # more than the fetching threads
    found = look_up(urls, tmp_path, offline=False, budget=0.5)
    assert set(found.unknown) == set(urls)
    assert all(why.startswith("timed out") for why in found.unknown.values()), found.unknown
    assert not (tmp_path / CACHE_NAME).exists()  # a slow server may answer next time


def test_a_server_trickling_its_headers_is_cut_off_at_the_deadline(server: ImageServer) -> None:
    def trickle(h: object) -> None:
        wfile = h.wfile  # type: ignore[attr-defined]
        wfile.write(b"HTTP/1.1 200 OK\r\n")
        while not server.release.wait(0.05):
            wfile.write(b"X-Slow: y\r\n")
            wfile.flush()

    server.routes["/slow.png"] = trickle
    with pytest.raises(Failed, match="timed out"):
        fetch_size(server.url("/slow.png"), time.monotonic() + 0.5)


@pytest.mark.parametrize(
    ("make", "why", "definite"),
    [
        (lambda s: s.image("/page.png", b"<!doctype html><html><body>Moved</body></html>", "image/png"),
         "an HTML page, not an image", True),
        (lambda s: s.raw("/short.png", b"Content-Length: 10\r\n", png(300, 200)),
         "it ended after 10 bytes, before its size", True),
        (lambda s: s.raw("/long.png", b"Content-Length: 100000\r\nConnection: close\r\n", png(300, 200)[:16]),
         "it ended after 16 bytes, before its size", True),
        (lambda s: s.raw("/held.png", b"Content-Length: 100000\r\n", png(300, 200)[:16], hold=True),
         "timed out", False),
        (lambda s: s.image("/bad.png", b"\x89PNG\r\n\x1a\n\0\0\0\x0dIDAT" + b"\0" * 40),
         "a corrupt PNG", True),
        (lambda s: s.image("/bomb.png", png_header(100_000, 100_000) + b"\0" * 1000),
         "claims 100000x100000 px", True),
        (lambda s: s.redirect("/loop", s.redirect("/loop2", "/loop")), "a redirect loop", True),
        (lambda s: [s.redirect(f"/r{i}", f"/r{i + 1}") for i in range(9)][0], "more than 5 redirects", True),
        (lambda s: s.redirect("/ftp", "ftp://127.0.0.1/x.png"), "redirected to a ftp URL", True),
        (lambda s: s.redirect("/file", "file:///etc/passwd"), "redirected to a file URL", True),
        (lambda s: s.url("/missing.png"), "HTTP 404", True),
    ],
    ids=["html", "short-length", "long-length", "long-length-held", "corrupt-png", "bomb", "redirect-loop",
         "redirect-chain", "to-ftp", "to-file", "404"],
)  # fmt: skip
def test_hostile_servers_leave_the_size_unknown_and_say_why(
    server: ImageServer, make: object, why: str, definite: bool
) -> None:
    url = make(server)  # type: ignore[operator]
    with pytest.raises(Failed, match=re.escape(why)) as failed:
        fetch_size(url, time.monotonic() + (0.5 if not definite else 30))
    assert failed.value.definite == definite
    assert all(not path.startswith(("/etc", "ftp")) for path in server.requests)


def test_a_definite_failure_is_remembered_not_refetched(server: ImageServer, tmp_path: Path) -> None:
    url = server.image("/page.png", b"<html><body>Please log in</body></html>")
    first = look_up([url], tmp_path, offline=False)
    assert first.unknown == {url: "an HTML page, not an image"}
    second = look_up([url], tmp_path, offline=True)
    assert second.unknown == {url: "an HTML page, not an image"}  # the reason, from the cache
    look_up([url], tmp_path, offline=False)
    assert server.requests == ["/page.png"]


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_cache_that_cannot_be_written_still_sizes_the_images(
    server: ImageServer,
    disk: Disk,
    fault: str,
) -> None:
    url = server.image("/a.png", png(300, 200))
    data_dir = disk.path / "state"
    data_dir.mkdir()
    if fault == "full":
        disk.fill()
    else:
        disk.read_only()
    found = look_up([url], data_dir, offline=False)
    assert found.sizes == {url: Size(300, 200)}
    expected = {"full": "No space left on device", "read-only": "Read-only file system"}[fault]
    assert found.cache_problem.startswith(f"{data_dir / CACHE_NAME}: cannot save image sizes ({expected})")
    if fault == "full":
        assert [p.name for p in data_dir.iterdir()] == []  # the temporary file is gone


# --- the email ---------------------------------------------------------------------------------------------


def write_post(folder: Path, body: str, front: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "2026-03-02-images.md"
    head = f"title: Images\ndate: 2026-03-02\nsummary: Sizes\n{front}"
    path.write_text(f"---\n{head}---\n{body}\n", encoding="utf-8")
    return path


def body_images(html: bytes) -> dict[str, lhtml.HtmlElement]:
    doc = lhtml.document_fromstring(html.decode("utf-8"))
    return {img.get("alt"): img for img in doc.iter("img")}


def style_of(img: lhtml.HtmlElement) -> dict[str, str]:
    pairs = (part.partition(":") for part in (img.get("style") or "").split(";") if ":" in part)
    return {name.strip(): value.strip() for name, _, value in pairs}


def test_every_image_gets_width_and_height_held_to_the_column(server: ImageServer, tmp_path: Path) -> None:
    badge = server.image("/badge.svg", svg(90, 20), "image/svg+xml")
    icon = server.image("/icon.gif", gif(16, 16), "image/gif")
    shot = server.image("/shot.png", png(300, 200))
    photo = server.image("/photo.jpg", jpeg_header(1200, 630), "image/jpeg")
    upright = server.image("/upright.jpg", jpeg_header(4000, 3000, orientation=6), "image/jpeg")
    cover = server.image("/cover.webp", webp_header("VP8X", 1200, 600), "image/webp")
    half = server.image("/half.png", png(1000, 500))
    post = write_post(
        tmp_path / "posts",
        f"[![build]({badge})](https://ci.example.org) ![icon]({icon}) text\n\n"
        f"![A screenshot]({shot})\n\n"
        f"![A photo]({photo})\n\n"
        f"![Upright]({upright})\n\n"
        f"![Sized in markdown]({photo}){{width=200 height=100}}\n\n"
        f"![Width only in markdown]({half}){{width=400}}\n\n"
        f'<img src="{photo}" width="800" height="400" alt="Raw wide">\n\n'
        f'<img src="{half}" style="width:900px;height:450px" alt="Styled wide">\n\n'
        f'<img src="{half}" width="100%" alt="Percent">\n',
        front=f"cover: {cover}\n",
    )
    issue = render_issue(load_post(post), Settings(data_dir=tmp_path / "state"))
    images = body_images(b"".join(issue.html.chunks))
    shown = {alt: (int(img.get("width")), int(img.get("height"))) for alt, img in images.items()}
    assert shown == {
        "build": (90, 20),
        "icon": (16, 16),
        "A screenshot": (300, 200),
        "A photo": (552, 290),  # 1200x630 held to the column, 630 * 552 / 1200 = 289.8
        "Upright": (552, 736),  # shown 3000x4000 (EXIF orientation 6)
        "Sized in markdown": (200, 100),  # the post's own, not the picture's
        "Width only in markdown": (400, 200),
        "Raw wide": (552, 276),
        "Styled wide": (552, 276),
        "Percent": (552, 276),
        "Images": (600, 300),  # the cover: the template's 600, the height from the picture
    }
    assert style_of(images["Styled wide"])["height"] == "auto"  # a phone shrinks it evenly
    assert style_of(images["Styled wide"])["width"] == "100%"  # fills a phone's column, up to 552 px
    assert issue.images.unknown == {} and issue.images.sized == 11
    assert len(server.requests) == len(set(server.requests)) == 7  # each image once


def test_an_image_of_unknown_size_keeps_todays_layout_and_check_says_why(
    server: ImageServer, tmp_path: Path
) -> None:
    page = server.image("/login.png", b"<!DOCTYPE html><html><body>Log in</body></html>", "text/html")
    gone = server.url("/gone.png")
    wide = server.image("/wide.png", png(1600, 800))
    post = write_post(
        tmp_path / "posts",
        f"![Behind a login]({page})\n\n![Gone]({gone})\n\n"
        f'<img src="{page}" width="900" alt="Raw wide, unknown height">\n\n![Wide]({wide})\n',
    )
    config = tmp_path / "mailer.toml"
    config.write_text(f'data_dir = "{tmp_path / "state"}"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "check", str(post)], env=ONLINE)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if ": image-size: " in line]
    assert lines == [
        f"{post}: warning: image-size: {page}: size unknown (an HTML page, not an image);"
        " Outlook may show it full size",
        f"{post}: warning: image-size: {gone}: size unknown (HTTP 404 Not Found);"
        " Outlook may show it full size",
    ]
    rendered = CliRunner().invoke(cli, ["--config", str(config), "render", str(post)], env=ONLINE)
    images = body_images(rendered.stdout.encode())
    assert images["Behind a login"].get("width") is None and images["Gone"].get("height") is None
    assert style_of(images["Gone"])["max-width"] == "100%"  # as before: natural size up to the column
    assert (
        images["Raw wide, unknown height"].get("width"),
        images["Raw wide, unknown height"].get("height"),
    ) == (
        "552",
        None,
    )
    assert (images["Wide"].get("width"), images["Wide"].get("height")) == ("552", "276")


@pytest.mark.parametrize("command", ["render", "check", "send"])
def test_offline_flag_fetches_nothing(server: ImageServer, tmp_path: Path, command: str) -> None:
    url = server.image("/shot.png", png(300, 200))
    post = write_post(tmp_path / "posts", f"![A screenshot]({url})")
    config = tmp_path / "mailer.toml"
    config.write_text(f'data_dir = "{tmp_path / "state"}"\n', encoding="utf-8")
    subscribers = tmp_path / "list.csv"
    subscribers.write_text("email\nreader@example.com\n", encoding="utf-8")
    more = ["--to", str(subscribers), "--dry-run", "--force"] if command == "send" else []
    args = ["--config", str(config), command, str(post), *more]
    offline = CliRunner().invoke(cli, [*args, "--offline"], env=ONLINE)
    assert offline.exit_code == 0, offline.output
    assert server.requests == []
    if command == "check":
        assert f"{url}: size unknown (not in the image-size cache, and offline" in offline.stdout
    online = CliRunner().invoke(cli, args, env=ONLINE)
    assert online.exit_code == 0, online.output
    assert server.requests == ["/shot.png"]


def test_the_offline_setting_fetches_nothing(server: ImageServer, tmp_path: Path) -> None:
    url = server.image("/shot.png", png(300, 200))
    post = write_post(tmp_path / "posts", f"![A screenshot]({url})")
    config = tmp_path / "mailer.toml"
    config.write_text(f'data_dir = "{tmp_path / "state"}"\noffline = true\n', encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["--config", str(config), "render", str(post)], env={"MAILER_OFFLINE": None}
    )
    assert result.exit_code == 0, result.output
    assert server.requests == []


@pytest.mark.browser
@pytest.mark.parametrize("width", [600, 375])
def test_in_chromium_small_images_stay_small_and_large_ones_fit(
    browser: Any,
    server: ImageServer,
    tmp_path: Path,
    width: int,
) -> None:
    """The attributes mailer sets agree with the picture Chromium decodes, and lay it out right."""
    badge = server.image("/badge.svg", svg(90, 20), "image/svg+xml")
    icon = server.image("/icon.png", png(16, 16))
    logo = server.image("/logo.gif", gif(120, 40), "image/gif")
    shot = server.image("/shot.png", png(300, 200))
    photo = server.image("/photo.png", png(1200, 630))
    wide = server.image("/wide.png", png(800, 400))
    post = write_post(
        tmp_path / "posts",
        f"[![build]({badge})](https://ci.example.org) ![icon]({icon}) text ![logo]({logo})\n\n"
        f"![A screenshot]({shot})\n\n![A photo]({photo})\n\n"
        f'<img src="{wide}" style="width:800px;height:400px" alt="Styled wide">\n',
    )
    issue = render_issue(load_post(post), Settings(data_dir=tmp_path / "state"))
    html = issue.html.fill({"unsubscribe_url": "https://news.example.com/u", "name": "", "email": ""})
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.set_content(html.decode("utf-8"), wait_until="load")
        shown = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('td.body-cell img')].map(i => {
                const r = i.getBoundingClientRect();
                return [i.alt, {shown: [r.width, r.height], natural: [i.naturalWidth, i.naturalHeight],
                                attrs: [+i.getAttribute('width'), +i.getAttribute('height')]}];
            }))"""
        )
        cell = page.evaluate(
            """() => { const c = document.querySelector('td.body-cell'), s = getComputedStyle(c);
                       return c.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight); }"""
        )
        scroll = page.evaluate("document.scrollingElement.scrollWidth")
    finally:
        page.close()
    assert scroll <= width
    assert len(shown) == 6
    for alt, seen in shown.items():
        (w, h), (nw, nh), (aw, ah) = seen["shown"], seen["natural"], seen["attrs"]
        assert nw > 0, f"{alt} did not load"
        assert aw * nh == pytest.approx(ah * nw, rel=0.01), alt  # the attributes keep the picture's shape
        assert h == pytest.approx(w * nh / nw, abs=1), alt  # so does the layout: nothing squashed
        if nw <= cell:
            assert (w, h) == (nw, nh), alt  # not blown up, not shrunk
        else:
            assert w == pytest.approx(cell, abs=1), alt  # fits the column
    for small in ("build", "icon", "logo"):
        assert shown[small]["attrs"] == shown[small]["natural"]


@pytest.mark.parametrize("offline", [True, False])
def test_preview_offline_fetches_nothing(server: ImageServer, tmp_path: Path, offline: bool) -> None:
    """The real `mailer preview` process: with --offline its render asks the image server nothing."""
    url = server.image("/shot.png", png(300, 200))
    post = write_post(tmp_path / "posts", f"![A screenshot]({url})")
    config = tmp_path / "mailer.toml"
    config.write_text(f'data_dir = "{tmp_path / "state"}"\n', encoding="utf-8")
    args = ["--config", str(config), "preview", "--no-open", *(["--offline"] if offline else []), str(post)]
    process = subprocess.Popen(
        [sys.executable, "-m", "mailer", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **ONLINE},
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/", lines.get(timeout=30))
        assert match
        conn = HTTPConnection("127.0.0.1", int(match[1]), timeout=30)
        try:
            conn.request("GET", f"/p/{post.name}/html")
            response = conn.getresponse()
            html = response.read()
        finally:
            conn.close()
        assert response.status == 200
        (shot,) = body_images(html).values()
        size = (shot.get("width"), shot.get("height"))
        assert (server.requests, size) == (([], (None, None)) if offline else (["/shot.png"], ("300", "200")))
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
