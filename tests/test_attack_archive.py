"""Attacks on the web copies kept in the record (schema 10): what a second web host does with them when its
data folder cannot take them, when they are hostile or huge, when two hosts write them at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.engine import Location
from tests.conftest import EXAMPLE, Disk
from tests.pg import database_env, rows
from tests.publisher import WEB_URL, env_for
from tests.served import serving
from tests.smtpd import SMTPServer
from tests.test_archive import READER, Archive, _post, _send

ISSUE = EXAMPLE.stem


def test_a_second_web_host_whose_data_folder_is_read_only_still_shows_the_issues_from_the_record(
    tmp_path: Path, record_at: Location, disk: Disk
) -> None:
    # a web host whose data folder is mounted read-only (a container's, the key given to it, the record in
    # PostgreSQL) cannot keep the copies it takes from the record: it must still show them, not fail
    record = database_env(record_at)
    _send(tmp_path, EXAMPLE, **record)
    state = disk.path / "state"
    state.mkdir()
    shutil.copy2(tmp_path / "state" / "secret.key", state / "secret.key")
    disk.read_only()
    try:
        env = {"MAILER_DATA_DIR": str(state), "MAILER_WEB_URL": WEB_URL, **record}
        with serving(tmp_path, {}, **env) as served:
            host = Archive(served.port, tmp_path)
            answers = [host.get(path) for path in (f"/issues/{ISSUE}", "/issues/", "/feed.atom")]
    finally:
        disk.read_write()
    assert [a.status for a in answers] == [200, 200, 200]
    assert "四巨头" in answers[0].text
    assert f"/issues/{ISSUE}" in answers[1].text or f'href="{ISSUE}"' in answers[1].text
    assert f"/issues/{ISSUE}" in answers[2].text
    said = [line for line in (tmp_path / "serve.log").read_text().splitlines() if "web copy" in line]
    assert len(said) == 1 and said[0].endswith("Read-only file system; showing it from the record"), said


@pytest.mark.parametrize(
    "workers", [[], ["--workers", "1"], ["--dry-run"]], ids=["lone", "workers", "dry-run"]
)
def test_a_send_refused_because_the_post_changed_leaves_the_web_copy_its_readers_got(
    tmp_path: Path, record_at: Location, workers: list[str]
) -> None:
    # the post is edited after it went out; its send again is refused ("pass --changed"), and nothing may
    # have changed: "View in browser" in the mail its readers got must still show what they were sent
    record = database_env(record_at)
    post = _post(
        tmp_path, "2026-02-10.md", "---\ntitle: Sent once\ndate: 2026-02-10\nlang: en\n---\nAs sent.\n"
    )
    _send(tmp_path, post, **record)
    copy = tmp_path / "state" / "archive" / "2026-02-10.html"
    sent = copy.read_bytes()
    post.write_text(post.read_text().replace("As sent.", "Edited since."), encoding="utf-8")
    with SMTPServer() as smtp:
        env = env_for(smtp, tmp_path, **record)
        args = ["send", str(post), "--to", str(tmp_path / "subscribers.csv"), "--yes", "--force", *workers]
        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
        assert not smtp.messages
    assert result.exit_code == 1, result.output
    assert "the post changed since it was first sent to 1 subscribers" in result.output, result.output
    assert "Sending" not in result.output, result.output
    assert copy.read_bytes() == sent
    [(kept,)] = rows(record_at, "SELECT html FROM web_copies WHERE issue_id = '2026-02-10'")
    assert bytes(kept) == sent  # type: ignore[arg-type]
    assert READER[0] not in sent.decode()
