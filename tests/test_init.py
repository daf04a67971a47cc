"""`mailer init` makes a site that works at once, flags its placeholders and never overwrites a file."""

from __future__ import annotations

import dataclasses
import email
import os
import re
import shutil
import subprocess
import tomllib
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from mailer.cli import cli
from mailer.config import Settings
from tests.smtpd import SMTPServer

READERS = ["ann@example.com", "bob@example.org"]
# what a real send through an SMTP server needs; the file has each, set or commented with its explanation
REAL_SEND = [
    "from_name",
    "from_email",
    "postal_address",
    "web_url",
    "subscribers",
    "data_dir",
    "timezone",
    "smtp_host",
    "smtp_port",
    "smtp_security",
    "smtp_user",
]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def _far_from_midnight() -> str:
    """Tokyo (UTC+9) or Kiritimati (UTC+14), whichever is further from its midnight now: both have a today
    that is often not UTC's, and the post `init` makes for today must still be today's at the test's send."""

    def hours_to_midnight(zone: str) -> int:
        hour = datetime.now(ZoneInfo(zone)).hour
        return min(hour, 23 - hour)

    return max(("Asia/Tokyo", "Pacific/Kiritimati"), key=hours_to_midnight)


ZONE = _far_from_midnight()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("MAILER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TZ", ZONE)
    before = datetime.now(ZoneInfo(ZONE)).date()
    result = run("init", "news")
    assert result.exit_code == 0, result.output
    after = datetime.now(ZoneInfo(ZONE)).date()
    folder = tmp_path / "news"
    posts = sorted((folder / "posts").iterdir())
    assert [p.name for p in posts] in ([f"{before}.md"], [f"{after}.md"])
    monkeypatch.chdir(folder)
    return folder


def test_init_makes_every_file_and_says_the_next_three_steps(site: Path) -> None:
    assert sorted(p.name for p in site.iterdir()) == [".gitignore", "mailer.toml", "posts", "subscribers.csv"]
    assert (site / "subscribers.csv").read_text(encoding="utf-8") == "email,name\n"
    post = next((site / "posts").iterdir())
    first = run("init", "elsewhere").output
    assert re.search(r"^Made elsewhere/mailer\.toml$", first, re.MULTILINE)
    steps = first.split("Next steps:\n", 1)[1].splitlines()
    assert [s[:5] for s in steps] == ["  1. ", "  2. ", "  3. "]
    assert steps[0].startswith("  1. cd elsewhere; edit mailer.toml")
    assert f"mailer check posts/{post.name}" in steps[1] and "--test" in steps[2]


def test_the_settings_file_is_commented_and_names_what_a_real_send_needs(site: Path) -> None:
    text = (site / "mailer.toml").read_text(encoding="utf-8")
    settings = tomllib.loads(text)
    uncommented = tomllib.loads(re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE))
    names = {f.name for f in dataclasses.fields(Settings)}
    assert set(uncommented) <= names, set(uncommented) - names  # every commented setting is a real one
    assert set(REAL_SEND) <= set(uncommented), set(REAL_SEND) - set(uncommented)
    assert "smtp_host" not in settings  # the outbox until the publisher sets it
    assert settings["timezone"] == ZONE and settings["subscribers"] == "subscribers.csv"
    assert sum(line.startswith("#") for line in text.splitlines()) >= 20


def test_mailer_check_flags_every_placeholder_and_stops_a_real_send(site: Path) -> None:
    post = f"posts/{next((site / 'posts').iterdir()).name}"
    outbox = run("check", post)
    assert outbox.exit_code == 0, outbox.output  # placeholders are fine for the local outbox
    flagged = set(re.findall(r": warning: ([a-z-]+):", outbox.output))
    assert {"from-address", "unsubscribe-url", "postal-address"} <= flagged, outbox.output
    # the file sets it (to the placeholder): it said "postal_address is not set"
    assert "postal-address: postal_address is still the placeholder: " in outbox.output, outbox.output
    live = run("check", post, env={"MAILER_SMTP_HOST": "127.0.0.1"})
    assert live.exit_code == 1
    assert {"from-address", "unsubscribe-url"} <= set(re.findall(r": error: ([a-z-]+):", live.output))


def test_the_new_site_renders_and_sends_to_its_outbox(site: Path) -> None:
    post = f"posts/{next((site / 'posts').iterdir()).name}"
    assert run("render", post, "-o", "issue.html").exit_code == 0
    assert "Welcome to my newsletter" in (site / "issue.html").read_text(encoding="utf-8")
    with open(site / "subscribers.csv", "a", encoding="utf-8") as out:
        out.writelines(f"{a},Reader\n" for a in READERS)
    dry = run("send", "posts/", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert re.search(rf"would send\s+{len(READERS)}\b", dry.output) and not (site / ".mailer/outbox").exists()
    sent = run("send", "posts/", "--yes")  # today's post, to the list mailer.toml names
    assert sent.exit_code == 0, sent.output
    outbox = site / ".mailer" / "outbox" / "new"
    assert sorted(str(email.message_from_bytes(p.read_bytes())["To"]) for p in outbox.iterdir()) == sorted(
        f"Reader <{a}>" for a in READERS
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_gitignore_keeps_the_state_and_keys_out_of_git(site: Path) -> None:
    assert run("render", f"posts/{next((site / 'posts').iterdir()).name}").exit_code == 0  # makes the key
    assert (site / ".mailer" / "secret.key").exists()
    subprocess.run(["git", "init", "-q"], cwd=site, check=True)
    ignored = [".mailer/secret.key", ".mailer/mailer.db", "secrets.env", "dkim.pem"]
    paths = [*ignored, "mailer.toml", "subscribers.csv", "posts/x.md", ".gitignore"]
    check = subprocess.run(["git", "check-ignore", *paths], cwd=site, capture_output=True, text=True)
    assert check.stdout.split() == ignored


def test_init_never_overwrites_a_file_and_adds_no_sample_to_real_posts(tmp_path: Path) -> None:
    (tmp_path / "posts").mkdir()
    mine = {"mailer.toml": 'from_name = "Mine"\n', "posts/2026-01-01.md": "# my post\n"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    result = run("init", str(tmp_path))
    assert result.exit_code == 0
    assert {n: (tmp_path / n).read_text(encoding="utf-8") for n in mine} == mine
    assert sorted(p.name for p in (tmp_path / "posts").iterdir()) == ["2026-01-01.md"]  # no sample to mail
    assert f"Kept {tmp_path / 'mailer.toml'}: it exists (init never overwrites a file)" in result.output
    assert "it has posts, so no sample was added" in result.output
    assert (tmp_path / "subscribers.csv").exists() and (tmp_path / ".gitignore").exists()  # the missing ones
    again = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert run("init", str(tmp_path)).exit_code == 0
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == again


def test_a_folder_that_cannot_be_a_site_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "posts").write_text("not a folder", encoding="utf-8")
    result = run("init", str(tmp_path))
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'posts'}: exists and is not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["posts"]  # nothing half-made


def test_a_new_site_mails_no_one_until_its_placeholders_are_replaced(
    site: Path, smtp_server: SMTPServer
) -> None:
    with open(site / "subscribers.csv", "a", encoding="utf-8") as out:
        out.writelines(f"{a},Reader\n" for a in READERS)
    live = {"MAILER_SMTP_HOST": smtp_server.host, "MAILER_SMTP_PORT": str(smtp_server.port)}
    live["MAILER_SMTP_SECURITY"] = "none"
    refused = run("send", "posts/", "--yes", env=live)
    assert refused.exit_code == 1 and smtp_server.messages == [], refused.output
    config = site / "mailer.toml"
    text = config.read_text(encoding="utf-8")
    marked = [line.split("=", 1)[0].strip() for line in text.splitlines() if "# PLACEHOLDER" in line]
    assert marked == ["from_email", "postal_address", "web_url"]
    mine = {
        "from_email": "news@mynews.net",
        "postal_address": "My News, 2 Real Road",
        "web_url": "https://mynews.net",
    }
    for name, value in mine.items():
        text = re.sub(rf'^{name} = "[^"]*"', f'{name} = "{value}"', text, flags=re.MULTILINE)
    config.write_text(text, encoding="utf-8")
    sent = run("send", "posts/", "--yes", env=live)
    assert sent.exit_code == 0, sent.output
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == sorted(READERS)
