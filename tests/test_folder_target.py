"""Every command that takes a post takes the posts folder too, meaning today's post in it, the same way."""

from __future__ import annotations

import email
import json
from email import policy
from pathlib import Path

import pytest

from tests import publisher
from tests.clock import DAYTIME, today
from tests.command import run


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**publisher.ENV, "MAILER_DATA_DIR": str(tmp_path / "state"), "MAILER_TIMEZONE": DAYTIME}


def todays_copy(post: Path) -> Path:
    """Today's post (in DAYTIME, as mailer is told) beside the example post, which stays as an older one."""
    day = today().isoformat()
    text = post.read_text(encoding="utf-8").replace("date: 2026-02-09", f"date: {day}")
    text = text.replace("title:", "title: Today's", 1)
    target = post.parent / f"{day}.md"
    target.write_text(text, encoding="utf-8")
    return target


@pytest.mark.parametrize("form", ["--html", "--text", "--eml"])
def test_render_of_the_folder_is_render_of_todays_post(post: Path, env: dict[str, str], form: str) -> None:
    todays = todays_copy(post)
    code, by_folder, err = run(["render", str(post.parent), form], env)
    assert code == 0, err
    assert f"Today's post ({todays.stem}, {DAYTIME}): {todays}" in err
    code, by_name, err = run(["render", str(todays), form], env)
    assert code == 0, err
    if form == "--eml":  # the Date header and Message-ID may differ by a second: compare the subjects
        by_folder, by_name = (
            str(email.message_from_string(s, policy=policy.default)["Subject"]) for s in (by_folder, by_name)
        )
    assert by_folder == by_name and "Today" in by_folder


def test_check_of_the_folder_is_check_of_todays_post(post: Path, env: dict[str, str]) -> None:
    todays = todays_copy(post)
    code, out, err = run(["check", str(post.parent), "--json"], env)
    by_name = run(["check", str(todays), "--json"], env)
    assert (code, json.loads(out)) == (by_name[0], json.loads(by_name[1]))
    assert json.loads(out)["post"] == str(todays)


@pytest.mark.parametrize("command", [["check"], ["render"], ["send", "--test", "me@example.org"]])
def test_a_folder_without_todays_post_is_one_line_and_exit_1(
    post: Path, env: dict[str, str], command: list[str]
) -> None:
    name, *more = command
    code, out, err = run([name, str(post.parent), *more], env)
    day = today().isoformat()
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"Error: {post.parent}: no post dated {day} (today in {DAYTIME}) in it; name the post"
    ]
