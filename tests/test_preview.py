"""The preview server for real: a thread on 127.0.0.1, driven by headless Chromium through Playwright."""

from __future__ import annotations

import email
import email.policy
import json
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from mailer.config import Settings, load_config
from mailer.errors import MailerError
from mailer.preview import gmail_view, make_server
from mailer.wsgi import url
from tests.chromium import WAIT_MS
from tests.webthread import ServerThread

TITLE = "四巨头6100亿美元豪赌AI 市场泼冷水蒸发9500亿市值"  # the example's front-matter title
CONFIG = {
    "from_name": "AI Daily",
    "from_email": "news@aidaily.news",
    "web_url": "https://aidaily.news/mailer",
    "postal_address": "AI Daily, 9 Harbour Road, Hong Kong",
    "secret_key": "0123456789abcdef0123456789abcdef",
    "sample_name": "Wang Fang",
    "sample_email": "fang@aidaily.news",
}


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page that can reach only 127.0.0.1 (the example's cover image is not fetched)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)

    def local_only(route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        route.continue_() if host == "127.0.0.1" else route.abort()

    context.route("**/*", local_only)
    context.set_default_timeout(WAIT_MS)  # loads and clicks wait as long as the checks: a render under load
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    values = {**CONFIG, "data_dir": str(tmp_path / "state")}
    path = tmp_path / "mailer.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()), encoding="utf-8")
    return path


@pytest.fixture
def settings(config: Path) -> Settings:
    return load_config(config, env={}).settings


class Running(ServerThread):
    """A preview's waitress server, run by a thread of the test."""

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.url = url(server)
        self.port = int(server.effective_port)

    def get(self, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host} if host else {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


@pytest.fixture
def serve(settings: Settings) -> Iterator[Any]:
    """serve(target) starts a preview server in a thread; every one is stopped after the test."""
    started: list[Running] = []

    def start(target: Path, **changes: Any) -> Running:
        running = Running(make_server(target, settings.replace(**changes), port=0))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def visible(page: Any, selector: str) -> bool:
    return bool(page.locator(selector).is_visible())


@pytest.mark.browser
def test_the_page_and_every_view_run_under_their_csp_without_a_violation(
    page: Any, serve: Any, post: Path
) -> None:
    """The preview's Content-Security-Policy allows what the page uses (its script, style, frames, poll)."""
    from playwright.sync_api import expect

    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    running = serve(post)
    page.goto(f"{running.url}p/{post.name}/")
    page.evaluate(
        "() => document.addEventListener('securitypolicyviolation',"
        " (e) => console.error('Content Security Policy: ' + e.violatedDirective))"
    )
    for key in ("both", "dark", "text", "gmail", "headers"):
        page.click(f"#tab-{key}")
        expect(page.locator(f"#tab-{key}")).to_have_attribute("aria-selected", "true")
    expect(page.frame_locator("#frame-gmail").locator("h1")).to_have_text(TITLE)
    with page.expect_response(lambda r: r.url.endswith("/__version")):  # a poll got through
        pass
    assert page.evaluate("() => getComputedStyle(document.querySelector('.bar')).position") == "sticky"
    assert violations == []


@pytest.mark.browser
def test_views_show_the_message_at_600_and_375_px(page: Any, serve: Any, post: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    running = serve(post)
    page.goto(running.url)
    assert page.url == f"{running.url}p/{post.name}/"
    expect(page.locator("#subject")).to_have_text(TITLE)
    desktop = page.frame_locator("#frame-desktop")
    phone = page.frame_locator("#frame-phone")
    expect(desktop.locator("h1")).to_have_text(TITLE)
    expect(phone.locator("h1")).to_have_text(TITLE)
    assert desktop.locator("html").evaluate("() => window.innerWidth") == 640  # a desktop reading pane
    assert desktop.locator(".container").evaluate("t => t.getBoundingClientRect().width") == 600
    assert phone.locator("html").evaluate("() => window.innerWidth") == 375
    # the email's @media rule for small screens applies on the phone only
    assert desktop.locator("h1").evaluate("h => getComputedStyle(h).fontSize") == "26px"
    assert phone.locator("h1").evaluate("h => getComputedStyle(h).fontSize") == "22px"
    # the sample subscriber's own unsubscribe link is filled in, as in the sent message
    unsubscribe = desktop.locator("a", has_text="退订").get_attribute("href")
    assert unsubscribe.startswith("https://aidaily.news/mailer/unsubscribe?t=")

    page.click("#tab-phone")
    assert visible(page, "#frame-phone") and not visible(page, "#frame-desktop")
    page.click("#tab-desktop")
    assert visible(page, "#frame-desktop") and not visible(page, "#frame-phone")

    page.click("#tab-text")
    assert visible(page, "#text") and not visible(page, "#frame-desktop")
    text = page.locator("#text").inner_text()
    assert TITLE in text and "本期要点" in text and "<" not in text.split("\n")[0]
    assert "https://aidaily.news/mailer/unsubscribe?t=" in text

    page.click("#tab-gmail")
    assert visible(page, "#frame-gmail") and not visible(page, "#text")
    gmail = page.frame_locator("#frame-gmail")
    expect(gmail.locator("h1")).to_have_text(TITLE)
    assert gmail.locator("style").count() == 0
    assert gmail.locator("[class]").count() == 0
    assert "font-size" in (gmail.locator("h1").get_attribute("style") or "")  # the CSS was inlined

    page.click("#tab-dark")
    dark = page.frame_locator("#frame-dark")
    expect(dark.locator("h1")).to_have_text(TITLE)
    light_ink = desktop.locator("h1").evaluate("h => getComputedStyle(h).color")
    dark_ink = dark.locator("h1").evaluate("h => getComputedStyle(h).color")
    assert light_ink == "rgb(17, 24, 39)" and dark_ink == "rgb(243, 244, 246)"  # email.css / email-media.css

    page.click("#tab-headers")
    headers = dict(
        (row.locator("th").inner_text(), row.locator("td").inner_text())
        for row in page.locator("#headers tr").all()
    )
    assert headers["Subject"] == TITLE
    assert headers["From"] == "AI Daily <news@aidaily.news>"
    assert headers["To"] == "Wang Fang <fang@aidaily.news>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "<https://aidaily.news/mailer/unsubscribe?t=" in headers["List-Unsubscribe"]
    assert headers["(preheader)"] == "四巨头豪掷6100亿美元AI投资，市值却蒸发9500亿美元"

    checks = page.locator("#checks li")
    assert checks.count() >= 6
    assert page.locator('#checks li[data-code="html-size"]').get_attribute("class") == "check ok"

    # the chosen view survives a reload (live reload keeps you where you were)
    page.reload()
    assert visible(page, "#headers") and not visible(page, "#frame-desktop")

    for width in (375, 600):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{running.url}p/{post.name}/html")
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
        shot = tmp_path / f"email-{width}.png"
        page.screenshot(path=str(shot))
        assert png_size(shot) == (width, 900)
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(running.url)
    for frame, width in (("#frame-phone", 375), ("#frame-desktop", 640)):
        shot = tmp_path / f"frame-{width}.png"
        page.locator(frame).screenshot(path=str(shot))
        border = page.locator(frame).evaluate("f => f.offsetWidth - f.clientWidth")
        assert png_size(shot)[0] == width + border


@pytest.mark.browser
def test_editing_the_post_or_a_template_refreshes_the_page(
    page: Any, serve: Any, post: Path, settings: Settings, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    templates = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, templates)
    running = serve(post, templates_dir=templates)
    page.goto(running.url + "#phone")
    expect(page.locator("#subject")).to_have_text(TITLE)
    page.evaluate("window.__before_edit = true")

    text = post.read_text(encoding="utf-8")
    post.write_text(
        text.replace(f"title: {TITLE}", "title: Edited while the preview is open"), encoding="utf-8"
    )
    expect(page.locator("#subject")).to_have_text("Edited while the preview is open")
    phone_title = page.frame_locator("#frame-phone").locator("h1").first
    expect(phone_title).to_have_text("Edited while the preview is open")
    assert page.evaluate("window.__before_edit") is None  # the page reloaded; nobody restarted anything
    assert visible(page, "#frame-phone") and not visible(page, "#frame-desktop")  # still the phone view

    html = (templates / "email.html").read_text(encoding="utf-8")
    (templates / "email.html").write_text(
        html.replace(
            '<h1 class="title">', '<p id="template-marker">From the edited template</p><h1 class="title">'
        ),
        encoding="utf-8",
    )
    expect(page.frame_locator("#frame-phone").locator("#template-marker")).to_have_text(
        "From the edited template"
    )


@pytest.mark.browser
def test_a_broken_post_shows_its_error_and_comes_back(page: Any, serve: Any, post: Path) -> None:
    from playwright.sync_api import expect

    running = serve(post)
    page.goto(running.url)
    expect(page.locator("#subject")).to_have_text(TITLE)
    good = post.read_text(encoding="utf-8")
    lines = good.split("\n")
    assert lines[2].startswith("date: ")
    lines[2] = "date: [2026-02-09"  # an unclosed YAML list on line 3 of the file
    post.write_text("\n".join(lines), encoding="utf-8")

    expect(page.locator("#error")).to_be_visible()
    assert page.locator("#error-file").inner_text() == str(post)
    assert page.locator("#error-line").inner_text() in ("3", "4")  # YAML reports where it noticed
    assert "YAML" in page.locator("#error-what").inner_text()
    content = page.content()
    assert "Traceback" not in content and 'File "' not in content

    status, _, body = running.get(f"/p/{post.name}/")
    assert status == 200 and b"cannot be rendered" in body
    assert running.get(f"/p/{post.name}/html")[0] == 500

    post.write_text(good, encoding="utf-8")
    expect(page.locator("#subject")).to_have_text(TITLE)
    expect(page.frame_locator("#frame-desktop").locator("h1")).to_have_text(TITLE)
    assert page.locator("#error").count() == 0


@pytest.mark.browser
def test_downloaded_eml_is_what_render_eml_writes(
    page: Any, serve: Any, post: Path, config: Path, tmp_path: Path
) -> None:
    from mailer.cli import cli

    running = serve(post)
    page.goto(running.url)
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == "2026-02-09.eml"
    previewed = Path(download.path()).read_bytes()

    rendered_path = tmp_path / "rendered.eml"
    result = CliRunner().invoke(
        cli, ["--config", str(config), "render", "--eml", "-o", str(rendered_path), str(post)]
    )
    assert result.exit_code == 0, result.output
    rendered = rendered_path.read_bytes()

    def normalise(raw: bytes) -> bytes:
        message = email.message_from_bytes(raw, policy=email.policy.SMTP)
        boundary = message.get_boundary()
        assert boundary
        raw = re.sub(rb"^Date: [^\r\n]*\r\n", b"", raw, flags=re.M)
        return raw.replace(boundary.encode(), b"BOUNDARY")

    assert normalise(previewed) == normalise(rendered)
    message = email.message_from_bytes(previewed, policy=email.policy.default)
    assert message["Subject"] == TITLE and message["To"] == "Wang Fang <fang@aidaily.news>"
    html_part = message.get_body(("html",))
    assert html_part is not None and TITLE in html_part.get_content()


@pytest.mark.browser
def test_folder_index_lists_posts_newest_first(page: Any, serve: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "a.md").write_text("---\ntitle: January\ndate: 2026-01-05\n---\nOld.\n", encoding="utf-8")
    (folder / "b.md").write_text("---\ntitle: February\ndate: 2026-02-01\n---\nNew.\n", encoding="utf-8")
    (folder / "2026-01-20.md").write_text("# Undated, named by day\n\nMiddle.\n", encoding="utf-8")
    (folder / "c.md").write_text("---\ntitle: [broken\n---\nx\n", encoding="utf-8")
    (folder / "notes.txt").write_text("not a post", encoding="utf-8")
    running = serve(folder)
    page.goto(running.url)
    links = page.locator(".posts li a")
    titles = [links.nth(i).inner_text() for i in range(links.count())]
    assert titles == ["c.md", "February", "Undated, named by day", "January"]  # what needs fixing on top
    assert "YAML" in page.locator(".posts li", has_text="c.md").inner_text()

    (folder / "d.md").write_text("---\ntitle: Just added\ndate: 2026-03-01\n---\nNewest.\n", encoding="utf-8")
    expect(page.locator(".posts li a").nth(1)).to_have_text("Just added")

    page.click("text=January")
    expect(page.locator("#subject")).to_have_text("January")
    expect(page.frame_locator("#frame-desktop").locator("h1")).to_have_text("January")
    page.click(".back")
    expect(page.locator(".posts li a").nth(1)).to_have_text("Just added")


@pytest.mark.browser
def test_what_the_page_echoes_is_escaped(page: Any, serve: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    title = "<img src=x onerror=\"document.title='pwned'\"> & <b>bold</b>"
    post = tmp_path / "xss.md"
    summary = "<script>window.pwned=1</script>"
    post.write_text(
        f"---\ntitle: {json.dumps(title)}\nsummary: {json.dumps(summary)}\n---\nHi.\n", encoding="utf-8"
    )
    running = serve(post)
    page.goto(running.url)
    expect(page.locator("#subject")).to_have_text(title)
    assert page.locator("#subject img, #subject b, #preheader script").count() == 0
    assert page.evaluate("window.pwned") is None and page.title() != "pwned"

    post.write_text("---\ndate: '<b>not a date</b>'\ntitle: x\n---\nHi.\n", encoding="utf-8")
    expect(page.locator("#error")).to_be_visible()
    assert "<b>not a date</b>" in page.locator("#error-message").inner_text()
    assert page.locator("#error b").count() == 0


def test_gmail_view_strips_style_elements_and_classes_only() -> None:
    from lxml import html as lhtml

    page = (
        "<html><head><style>.x{color:red}</style></head><body class='b'>"
        "<p class='x' style='color:blue'>Hi <b class='y'>there</b></p><style>p{}</style>tail</body></html>"
    )
    root = lhtml.document_fromstring(gmail_view(page))
    assert root.xpath("//style") == [] and root.xpath("//@class") == []
    assert root.xpath("//p/@style") == ["color:blue"]
    assert root.text_content().replace(" ", "") == "Hitheretail"


def test_server_answers_only_its_own_names_and_posts(serve: Any, post: Path) -> None:
    running = serve(post)
    status, headers, _ = running.get("/")
    assert status == 302 and headers["Location"] == f"/p/{post.name}/"
    status, headers, body = running.get(f"/p/{post.name}/")
    assert status == 200 and TITLE.encode() in body
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, headers, _ = running.get(f"/p/{post.name}/html")
    assert status == 200 and "script-src 'none'" in headers["Content-Security-Policy"]
    assert running.get("/", host="attacker.example:80")[0] == 421  # DNS rebinding
    assert running.get("/", host=f"localhost:{running.port}")[0] == 302
    assert running.get("/p/other.md/")[0] == 404
    assert running.get("/p/..%2F..%2Fetc%2Fpasswd/html")[0] == 404
    assert running.get(f"/p/{post.name}/nope")[0] == 404
    version = running.get(f"/p/{post.name}/__version")[2]
    assert version and running.get(f"/p/{post.name}/__version")[2] == version
    post.write_text(post.read_text(encoding="utf-8") + "\nOne more line.\n", encoding="utf-8")
    assert running.get(f"/p/{post.name}/__version")[2] != version


def test_missing_target_is_a_one_line_error(tmp_path: Path, settings: Settings, config: Path) -> None:
    from mailer.cli import cli

    with pytest.raises(MailerError, match="no such file or folder"):
        make_server(tmp_path / "nope.md", settings)
    result = CliRunner().invoke(
        cli, ["--config", str(config), "preview", "--no-open", str(tmp_path / "nope.md")]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {tmp_path / 'nope.md'}: no such file or folder"


def test_preview_command_prints_the_url_and_stops_on_ctrl_c(config: Path, post: Path) -> None:
    command = [sys.executable, "-c", "from mailer.cli import main; main()"]
    process = subprocess.Popen(
        [*command, "--config", str(config), "preview", "--no-open", str(post)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=20)  # printed and flushed as soon as the server listens
        match = re.fullmatch(rf"Previewing {re.escape(str(post))} at (http://127\.0\.0\.1:(\d+)/)\n", line)
        assert match, line
        conn = HTTPConnection("127.0.0.1", int(match[2]), timeout=10)
        try:
            conn.request("GET", f"/p/{post.name}/")
            response = conn.getresponse()
            assert response.status == 200 and TITLE in response.read().decode()
        finally:
            conn.close()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
        assert process.returncode == 0, err
        assert "Stopped." in out and "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_template_errors_and_missing_files_are_pages_not_crashes(
    serve: Any, post: Path, settings: Settings, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, templates)
    running = serve(post, templates_dir=templates)
    page = f"/p/{post.name}/"
    assert running.get(page)[0] == 200
    html = (templates / "email.html").read_text(encoding="utf-8")
    lines = html.split("\n")
    lines[4] += "{% if %}"  # a Jinja syntax error on line 5
    (templates / "email.html").write_text("\n".join(lines), encoding="utf-8")
    status, _, body = running.get(page)
    text = body.decode()
    assert status == 200 and "cannot be rendered" in text
    assert re.search(
        r'<dd id="error-file">[^<]*email\.html</dd><dt>Line</dt><dd id="error-line">5</dd>', text
    )
    assert "Traceback" not in text

    (templates / "email.html").write_text(html, encoding="utf-8")
    (templates / "email.css").unlink()
    status, _, body = running.get(page)
    assert status == 200 and "email.css" in body.decode() and "Traceback" not in body.decode()
    assert running.get(f"/p/{post.name}/message.eml")[0] == 500
    shutil.copy(settings.templates_dir / "email.css", templates / "email.css")
    status, _, body = running.get(page)
    assert status == 200 and TITLE in body.decode() and "cannot be rendered" not in body.decode()
