"""Attacks on the web copies kept in the record (schema 10): what a second web host does with them when its
data folder cannot take them, when they are hostile or huge, when two hosts write them at once."""

from __future__ import annotations

import shutil
from pathlib import Path

from mailer.engine import Location
from tests.conftest import EXAMPLE, Disk
from tests.pg import database_env
from tests.publisher import WEB_URL
from tests.served import serving
from tests.test_archive import Archive, _send

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
