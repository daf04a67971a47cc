"""Pre-send checks: check_issue on real rendered posts, and `mailer check` and `render` via the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailer.checks import Check, check_issue, has_errors
from mailer.config import Settings, load_config
from mailer.post import load_post
from mailer.render import render_issue
from tests.conftest import EXAMPLE
from tests.imageserver import seed_sizes

# the example's cover and QR code, as the image-size cache holds them after an online render
EXAMPLE_IMAGES = {
    "https://ssl.aicode.cc/n8n/2026/02-08/23-31-44-hOrghSfV.png": (1280, 720),
    "https://ssl.aicode.cc/mweb/20251226/17667324077992.jpg": (430, 430),
}

GOOD = {
    "from_name": "AI Daily",
    "from_email": "news@aidaily.news",
    "web_url": "https://aidaily.news/mailer",
    "base_url": "https://aidaily.news/",
    "postal_address": "AI Daily, 9 Harbour Road, Hong Kong",
    "secret_key": "0123456789abcdef0123456789abcdef",
}


def write_config(tmp_path: Path, **changes: object) -> Path:
    values: dict[str, object] = {**GOOD, "data_dir": str(tmp_path / "state"), **changes}
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]  # JSON scalars are TOML
    path = tmp_path / "mailer.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_post(tmp_path: Path, body: str, **front: str) -> Path:
    meta = {"title": "A short title", "date": "2026-02-09", "summary": "One point.", **front}
    head = "".join(f"{key}: {json.dumps(value)}\n" for key, value in meta.items() if value != "")
    path = tmp_path / "post.md"
    path.write_text(f"---\n{head}---\n{body}\n", encoding="utf-8")
    return path


def run(*args: str) -> Result:
    from mailer.cli import cli

    return CliRunner().invoke(cli, list(args))


def checks_for(path: Path, settings: Settings) -> dict[str, Check]:
    checks = check_issue(render_issue(load_post(path), settings), settings)
    codes = [c.code for c in checks if c.code != "image-size"]  # that one says a line per image
    assert len(codes) == len(set(codes)), codes  # one verdict per check
    return {c.code: c for c in checks}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_config(write_config(tmp_path), env={}).settings


def test_example_passes_every_check(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    seed_sizes(tmp_path / "state", EXAMPLE_IMAGES)  # as the first online check leaves them
    result = run("--config", str(config), "check", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(f"{EXAMPLE}: ") for line in lines)
    levels = {line.split(": ")[1] for line in lines}
    assert levels == {"ok"}, result.stdout
    codes = {line.split(": ")[2] for line in lines}
    assert {"html-size", "subject", "summary", "image-alt", "links", "relative-urls"} <= codes
    assert "0 error(s), 0 warning(s)" in result.stderr


def test_clipping_size_is_an_error_and_near_it_a_warning(settings: Settings) -> None:
    issue = render_issue(load_post(EXAMPLE), settings)
    size = issue.html_size()
    assert size > 15_000  # the example is a real, long issue

    def level(clip: int) -> str:
        by_code = {c.code: c for c in check_issue(issue, settings.replace(clip_warn_bytes=clip))}
        return by_code["html-size"].level

    assert level(size - 1) == "error"
    assert level(size + 1) == "warning"
    assert level(size * 2) == "ok"


def test_check_exits_1_when_gmail_would_clip(tmp_path: Path) -> None:
    config = write_config(tmp_path, clip_warn_bytes=10_000)
    result = run("--config", str(config), "check", str(EXAMPLE))
    assert result.exit_code == 1
    (line,) = [line for line in result.stdout.splitlines() if ": html-size: " in line]
    assert ": error: html-size: " in line and "Gmail clips" in line and "9 KB" in line
    size = render_issue(load_post(EXAMPLE), Settings(data_dir=tmp_path / "state")).html_size()
    assert f"{-(-(size - 10_000) // 1024)} KB too many" in line  # by how much


def test_relative_urls_without_base_url_are_an_error(tmp_path: Path) -> None:
    post = write_post(tmp_path, "![chart](img/chart.png) and [the paper](papers/one.pdf)")
    result = run("--config", str(write_config(tmp_path, base_url="")), "check", str(post))
    assert result.exit_code == 1
    (line,) = [line for line in result.stdout.splitlines() if "relative-urls" in line]
    assert ": error: " in line and "img/chart.png" in line and "papers/one.pdf" in line and "base_url" in line
    # with a base URL the same post resolves them and passes
    result = run("--config", str(write_config(tmp_path)), "check", str(post))
    assert result.exit_code == 0, result.output


def test_images_links_and_summary_are_warnings(tmp_path: Path, settings: Settings) -> None:
    body = (
        "![](https://cdn.aidaily.news/a.png)\n\n"
        '[call us](tel:+85212345678) [write](mailto:hi@aidaily.news) <a href="javascript:alert(1)">run</a> '
        "[jump](#later) [site](https://aidaily.news/)"
    )
    post = write_post(tmp_path, body, summary="")
    by_code = checks_for(post, settings)
    assert (
        by_code["image-alt"].level == "warning"
        and "https://cdn.aidaily.news/a.png" in by_code["image-alt"].message
    )
    links = by_code["links"]
    assert links.level == "warning"
    assert "tel:+85212345678" in links.message and "javascript:alert(1)" in links.message
    assert "#later" in links.message
    assert "mailto:hi@aidaily.news" not in links.message and "https://aidaily.news/" not in links.message
    assert by_code["summary"].level == "warning"
    result = run("--config", str(tmp_path / "mailer.toml"), "check", str(post))
    assert result.exit_code == 0, result.output  # warnings alone do not stop a cron job
    assert "0 error(s), 4 warning(s)" in result.stderr  # and the image's size, unknown offline
    assert "warning: image-size: https://cdn.aidaily.news/a.png: size unknown" in result.stdout


def test_subject_length(tmp_path: Path, settings: Settings) -> None:
    def subject(title: str) -> Check:
        return checks_for(write_post(tmp_path, "Body.", title=title), settings)["subject"]

    assert subject("x" * 78).level == "ok"
    assert subject("x" * 79).level == "warning"
    assert subject("四" * 39).level == "ok"  # 78 columns: CJK characters are two wide
    long_cjk = subject("四" * 40)
    assert long_cjk.level == "warning" and "80 columns" in long_cjk.message
    issue = render_issue(load_post(write_post(tmp_path, "Body.")), settings)
    empty = {c.code: c for c in check_issue(dataclasses.replace(issue, subject="  "), settings)}
    assert empty["subject"].level == "error"


def test_cover_without_alt_is_a_warning(tmp_path: Path, settings: Settings) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, templates)
    html = (templates / "email.html").read_text(encoding="utf-8")
    assert 'alt="{{ title }}"' in html
    (templates / "email.html").write_text(html.replace('alt="{{ title }}"', 'alt=""'), encoding="utf-8")
    post = write_post(tmp_path, "Body.", coverImage="https://cdn.aidaily.news/cover.png")
    assert checks_for(post, settings)["cover-alt"].level == "ok"
    assert checks_for(post, settings.replace(templates_dir=templates))["cover-alt"].level == "warning"


def test_sender_setup_is_an_error_only_for_real_smtp(tmp_path: Path) -> None:
    post = write_post(tmp_path, "Body.")
    local = write_config(tmp_path, from_email="news@example.com", web_url="http://127.0.0.1:8080")
    result = run("--config", str(local), "check", str(post))
    assert result.exit_code == 0, result.output
    assert f"{post}: warning: from-address: " in result.stdout
    assert f"{post}: warning: unsubscribe-url: " in result.stdout

    real = write_config(tmp_path, from_email="news@example.com", smtp_host="smtp.aidaily.news")
    result = run("--config", str(real), "check", str(post))
    assert result.exit_code == 1
    assert f"{post}: error: from-address: " in result.stdout and "example.com" in result.stdout
    assert f"{post}: warning: dkim: " in result.stdout

    settings = load_config(
        write_config(tmp_path, smtp_host="smtp.aidaily.news", web_url="http://10.0.0.5"), env={}
    ).settings
    by_code = checks_for(post, settings)
    assert by_code["unsubscribe-url"].level == "error" and by_code["from-address"].level == "ok"
    assert not has_errors([c for c in by_code.values() if c.code != "unsubscribe-url"])


def test_quiet_prints_only_problems(tmp_path: Path) -> None:
    post = write_post(tmp_path, "Body.", summary="")
    result = run("--config", str(write_config(tmp_path)), "check", "--quiet", str(post))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        line for line in result.stdout.splitlines() if ": warning: " in line
    ]
    assert any(": summary: " in line for line in result.stdout.splitlines())


def test_broken_post_is_one_line_and_exit_1(tmp_path: Path) -> None:
    post = tmp_path / "broken.md"
    post.write_text("---\ntitle: fine\ndate: [2026\n---\nBody\n", encoding="utf-8")
    result = run("--config", str(write_config(tmp_path)), "check", str(post))
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {post}:") and "Traceback" not in result.output
    missing = run("--config", str(write_config(tmp_path)), "check", str(tmp_path / "nope.md"))
    assert missing.exit_code == 1 and "no such file" in missing.stderr


def test_render_warns_about_the_post_but_not_the_setup(tmp_path: Path) -> None:
    post = write_post(tmp_path, "![](https://cdn.aidaily.news/a.png)")
    config = write_config(tmp_path, from_email="news@example.com")
    result = run("--config", str(config), "render", str(post))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]
    alt, size = warnings  # both about the post's image; nothing about from_email
    assert alt.startswith(f"Warning: {post}: ") and "without alt text" in alt
    assert "https://cdn.aidaily.news/a.png" in alt
    assert "https://cdn.aidaily.news/a.png: size unknown" in size  # tests run offline
    check = run("--config", str(config), "check", "--quiet", str(post))
    assert "from-address" in check.stdout  # `check` does report the setup


def test_markdown_left_literal_is_a_warning(tmp_path: Path, settings: Settings) -> None:
    body = (
        "<div>\n**Bold inside raw HTML** stays literal, as does [a link](https://example.org).\n</div>\n\n"
        "A footnote reference[^1] with no note.\n"
    )
    check = checks_for(write_post(tmp_path, body), settings)["literal-markdown"]
    assert check.level == "warning"
    assert "**" in check.message and "](" in check.message and "[^" in check.message
    clean = checks_for(write_post(tmp_path, "**Bold** and [a link](https://example.org)."), settings)
    assert clean["literal-markdown"].level == "ok"


def test_other_generators_template_syntax_is_an_error_naming_the_line(
    tmp_path: Path, settings: Settings
) -> None:
    """Before personal fields it went out as typed, with a warning; now `{{ }}` is mailer's own syntax:
    what mailer reads passes every check, what it does not is refused with its line."""
    from mailer.errors import PostError

    ok = write_post(tmp_path, "Hello {{ name }}.\n\n`{{ '/img/chart.png' | url }}` in code is text.\n")
    assert not [c for c in checks_for(ok, settings).values() if "{{" in c.message]
    body = "Text.\n\n![Chart]({{ '/img/chart.png' | url }})\n\n{% include 'footer.html' %}\n"
    with pytest.raises(PostError, match=r"post\.md:8: .*no filter 'url'"):
        checks_for(write_post(tmp_path, body), settings)
    with pytest.raises(PostError, match=r"post\.md:8: .*only if, elif, else and endif"):
        checks_for(write_post(tmp_path, "Text.\n\n{% include 'footer.html' %}\n"), settings)


def test_unclosed_raw_html_is_a_warning(tmp_path: Path, settings: Settings) -> None:
    body = '<div class="card">\n<p>Join us</p>\n\n## The next section\n\nIs swallowed by the open div.\n'
    check = checks_for(write_post(tmp_path, body), settings)["unclosed-html"]
    assert check.level == "warning" and "<div>" in check.message
    # the example's own raw HTML (the Telegram card) is closed
    assert checks_for(EXAMPLE, settings)["unclosed-html"].level == "ok"
