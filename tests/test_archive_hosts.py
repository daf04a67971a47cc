"""Two web hosts on one record (docs/workers.md, "Two `mailer serve` behind a load balancer"), each a real
`mailer serve` with a data folder of its own, on SQLite and on PostgreSQL: every host shows an issue as its
last send kept it, whichever host sent it and whatever its own data folder held before."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.engine import Location, Server
from tests.conftest import Disk
from tests.pg import database_env, rows, set_schema_version
from tests.publisher import WEB_URL, env_for
from tests.served import Served, serving
from tests.smtpd import SMTPServer
from tests.test_archive import Answer, Archive, _post, _send

ISSUE = "2026-02-10"
FIRST = "---\ntitle: Sent once\ndate: 2026-02-10\nlang: en\n---\nAs first sent.\n"
CORRECTED = "---\ntitle: Sent once, corrected\ndate: 2026-02-10\nlang: en\n---\nWith the typo mended.\n"
DEADLINE = 120.0  # seconds for a host to show the corrected copy: a second, but a loaded machine is slow


@dataclass
class Hosts:
    """The post as first sent from the first host (its state under `first`), and a second host's folder on
    the same record, with the signing key copied (docs/postgresql.md) and no copy yet."""

    at: Location
    record: dict[str, str]  # the MAILER_* settings that name the record
    post: Path
    first: Path
    second: Path


@pytest.fixture
def hosts(tmp_path: Path, record_at: Location) -> Hosts:
    record = database_env(record_at)
    post = _post(tmp_path, f"{ISSUE}.md", FIRST)
    _send(tmp_path, post, **record)
    second = tmp_path / "second"
    (second / "state").mkdir(parents=True)
    shutil.copy2(tmp_path / "state" / "secret.key", second / "state" / "secret.key")
    return Hosts(record_at, record, post, tmp_path, second)


@contextmanager
def _serve(root: Path, record: dict[str, str]) -> Iterator[tuple[Archive, Served]]:
    env = {"MAILER_DATA_DIR": str(root / "state"), "MAILER_WEB_URL": WEB_URL, **record}
    with serving(root, {}, **env) as served:
        yield Archive(served.port, root), served


def _send_corrected(hosts: Hosts) -> None:
    """The post corrected after it went out, sent again with --changed from the first host: the record's web
    copy is replaced (docs/sending.md), and the reader, already mailed, is not mailed again."""
    hosts.post.write_text(CORRECTED, encoding="utf-8")
    with SMTPServer() as smtp:
        env = env_for(smtp, hosts.first, **hosts.record)
        to = hosts.first / "subscribers.csv"
        args = ["send", str(hosts.post), "--to", str(to), "--yes", "--force", "--changed"]
        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
        assert not smtp.messages
    assert result.exit_code == 0, result.output


def _shown_when(host: Archive, path: str, words: str) -> Answer:
    """The host's answer for `path` once it shows `words`; fails with the last answer at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        answer = host.get(path)
        if answer.status == 200 and words in answer.text or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


@contextmanager
def _readers(host: Archive, count: int) -> Iterator[list[Answer]]:
    """`count` readers asking for the issue over and over until the block ends; every answer they got."""
    seen: list[Answer] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(host.get(f"/issues/{ISSUE}"))

    threads = [threading.Thread(target=read) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield seen
    finally:
        done.set()
        for thread in threads:
            thread.join()


def _record_copy(record_at: Location) -> bytes:
    [(html,)] = rows(record_at, "SELECT html FROM web_copies WHERE issue_id = ?", (ISSUE,))
    return bytes(html)  # type: ignore[arg-type]


def test_a_corrected_issue_replaces_the_older_copy_on_every_host_while_they_serve(hosts: Hosts) -> None:
    # readers behind a load balancer must not meet two versions: the second host wrote the first copy into
    # its own folder when a reader asked for it, and must show the corrected one without a restart
    # Readers keep asking for it meanwhile: each must get one copy whole, the first or the corrected, never
    # a file half written (the host replaces its file while other threads of it read it)
    kept = hosts.second / "state" / "archive" / f"{ISSUE}.html"
    with _serve(hosts.second, hosts.record) as (host, _):
        before = host.get(f"/issues/{ISSUE}")
        assert before.status == 200 and "As first sent." in before.text
        assert b"As first sent." in kept.read_bytes()
        with _readers(host, 4) as seen:
            _send_corrected(hosts)
            after = _shown_when(host, f"/issues/{ISSUE}", "With the typo mended.")
        index, feed = host.get("/issues/"), host.get("/feed.atom")
    assert after.status == 200 and "With the typo mended." in after.text, after
    assert "As first sent." not in after.text
    assert seen and {(a.status, a.body) for a in seen} <= {(200, before.body), (200, after.body)}
    copy = _record_copy(hosts.at)
    assert (hosts.first / "state" / "archive" / f"{ISSUE}.html").read_bytes() == copy
    assert kept.read_bytes() == copy
    assert "Sent once, corrected" in index.text and "Sent once, corrected" in feed.text
    assert os.listdir(kept.parent) == [kept.name]  # no file it wrote on the way left behind


def test_a_host_that_held_the_older_copy_shows_the_record_s_once_upgraded(hosts: Hosts) -> None:
    # schema step 12 -> 13: a record whose copy was replaced by a mailer before the digests, and a host whose
    # folder still holds the older copy; its serve (the upgraded mailer) upgrades the record and shows the
    # record's copy, not its own file
    with _serve(hosts.second, hosts.record) as (host, _):
        assert host.get(f"/issues/{ISSUE}").status == 200  # the first copy, now in its folder
    _send_corrected(hosts)
    rows(hosts.at, "DROP TABLE web_copy_digests")
    set_schema_version(hosts.at, 12)
    with _serve(hosts.second, hosts.record) as (host, _):
        answers = [host.get(path) for path in (f"/issues/{ISSUE}", "/issues/")]
    assert [a.status for a in answers] == [200, 200]
    assert "With the typo mended." in answers[0].text and "As first sent." not in answers[0].text
    copy = _record_copy(hosts.at)
    assert rows(hosts.at, "SELECT issue_id, digest FROM web_copy_digests") == [
        (ISSUE, hashlib.sha256(copy).hexdigest())
    ]
    assert (hosts.second / "state" / "archive" / f"{ISSUE}.html").read_bytes() == copy


@contextmanager
def _record_gone(record_at: Location) -> Iterator[None]:
    """The record takes no connection (a PostgreSQL database closed to them, a SQLite file moved away)."""
    if isinstance(record_at, Server):
        cluster, name = record_at.url.rsplit("/", 1)
        admin = Server(f"{cluster}/postgres", record_at.password)
        rows(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            yield
        finally:
            rows(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    else:
        away = record_at.with_name("moved-away.db")
        record_at.rename(away)
        try:
            yield
        finally:
            away.rename(record_at)


def test_a_bot_walking_unknown_issue_ids_gets_404s_without_a_connection_to_the_record_each(
    hosts: Hosts,
) -> None:
    # each unknown id is answered from the host's last reading of the record's copies (at most a second
    # old): with the record taking no connections, every answer is still a 404, not a 503, and the issue
    # sent is still shown from the host's file
    with _serve(hosts.second, hosts.record) as (host, served):
        assert host.get(f"/issues/{ISSUE}").status == 200
        with _record_gone(hosts.at):
            walked = [host.get(f"/issues/2026-01-{n:03d}").status for n in range(200)]
            shown = host.get(f"/issues/{ISSUE}")
            index = host.get("/issues/")
        said = [line for line in served.log_lines() if "web copies" in line]
    assert walked == [404] * 200
    assert shown.status == 200 and "As first sent." in shown.text
    assert index.status == 503  # the index needs the record: a load balancer's health check says so too
    assert len(said) <= 1, said  # said once however many requests met it (none if all came within a second)


def test_a_read_only_host_holding_the_older_copy_shows_the_corrected_one_from_the_record(
    hosts: Hosts, disk: Disk
) -> None:
    # a web host of a read-only container whose image holds the issue's first copy cannot replace its file:
    # it must still show the record's corrected copy, and say once why it shows it from the record
    state = disk.path / "state"
    shutil.copytree(hosts.first / "state" / "archive", state / "archive")
    shutil.copy2(hosts.first / "state" / "secret.key", state / "secret.key")
    _send_corrected(hosts)
    disk.read_only()
    kept = state / "archive" / f"{ISSUE}.html"
    try:
        env = {"MAILER_DATA_DIR": str(state), "MAILER_WEB_URL": WEB_URL, **hosts.record}
        with serving(hosts.second, {}, **env) as served:
            host = Archive(served.port, hosts.second)
            answers = [host.get(path) for path in (f"/issues/{ISSUE}", "/issues/", f"/issues/{ISSUE}")]
            assert b"As first sent." in kept.read_bytes()  # left as it was
            with _record_gone(hosts.at):  # the copy is held, not fetched again: each view opened a connection
                held = [host.get(f"/issues/{ISSUE}") for _ in range(3)]
            said = [line for line in served.log_lines() if "web copy" in line]
            # the folder writable again (remounted, freed): a view a few seconds later writes the record's
            # copy there, with no restart, and the log says so
            disk.read_write()
            deadline = time.monotonic() + DEADLINE
            while b"With the typo mended." not in kept.read_bytes() and time.monotonic() < deadline:
                assert host.get(f"/issues/{ISSUE}").status == 200
                time.sleep(0.2)
            again = [line for line in served.log_lines() if "web copy" in line]
    finally:
        disk.read_write()
    assert [a.status for a in answers + held] == [200] * 6
    for page in (answers[0], answers[2], *held):
        assert "With the typo mended." in page.text and "As first sent." not in page.text
    assert "Sent once, corrected" in answers[1].text
    assert len(said) == 1 and said[0].endswith("Read-only file system; showing it from the record"), said
    assert b"With the typo mended." in kept.read_bytes(), again
    assert len(again) == 2 and again[1].endswith("the issue's web copy written again"), again
