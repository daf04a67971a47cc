"""Subscriber lists kept in mailer's database (issue 15, "The list in the database").

`mailer subscribers import/export/list/count/remove` and `mailer send POST --list NAME`, through the real
CLI (CliRunner, or a subprocess where a kill -9 or a concurrent process is the point), a real SMTP server on
127.0.0.1 and the real SQLite file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
from click.testing import Result

from mailer.engine import Location
from mailer.ledger import SCHEMA_VERSION, Ledger
from tests import publisher
from tests.clock import DAYTIME, today
from tests.command import invoke as run
from tests.command import spawn
from tests.conftest import EXAMPLE
from tests.pg import SQLITE_ONLY, database_env, location, rows
from tests.smtpd import SMTPServer
from tests.test_unsubscribe_e2e import web  # noqa: F401  (its fixture: `mailer serve` on a free port)

LISTS = Path(__file__).parent / "lists"


@pytest.fixture(autouse=True)
def _in_tmp(in_tmp: Path, monkeypatch: pytest.MonkeyPatch, record_at: Location) -> None:
    """Each test runs on SQLite and on PostgreSQL (every mailer it runs reads MAILER_DATABASE)."""
    for name, value in database_env(record_at).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No SMTP server: the commands that only touch the database."""
    return {**publisher.ENV, "MAILER_DATA_DIR": str(tmp_path / "state")}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def exported(env: dict[str, str], name: str = "main") -> list[dict[str, str]]:
    result = run(["subscribers", "export", "--list", name], env)
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def members(tmp_path: Path, name: str = "main") -> list[str]:
    where = location(os.environ) or tmp_path / "state" / "mailer.db"
    return [
        str(e) for (e,) in rows(where, "SELECT email FROM members WHERE list = ? ORDER BY email", (name,))
    ]


def received(server: SMTPServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


def errors(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error: ")]


def send(post: Path, env: dict[str, str], *more: str) -> Result:
    return run(["send", str(post), "--yes", "--force", *more], env)


def big_list(path: Path, count: int, start: int = 0) -> Path:
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,city\n")
        for i in range(start, start + count):
            out.write(f"reader{i}@example.com,Reader {i},City {i % 97}\n")
    return path


# --- import, export, list, count, remove ---------------------------------------------------------------


def test_an_import_keeps_each_readers_fields_and_the_date_and_source_of_their_consent(
    tmp_path: Path, env: dict[str, str]
) -> None:
    a = write(tmp_path / "a.csv", "Email Address;First Name;Last Name;City\nAnn@Example.com;Ann;Lee;Oslo\n")
    b = write(tmp_path / "b.csv", "email,name,plan\nbob@example.com,Bob,pro\nann@example.com,Other Ann,x\n")
    before = datetime.now(UTC).replace(microsecond=0)
    result = run(["subscribers", "import", str(a), str(b), "--json"], env)
    after = datetime.now(UTC)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["status"], out["added"], out["members"], out["list"]) == ("done", 2, 2, "main")
    assert [f["duplicates"] for f in out["files"]] == [0, 1]  # ann once: the first file's row
    rows = {row["email"]: row for row in exported(env)}
    assert set(rows) == {"Ann@example.com", "bob@example.com"}
    ann, bob = rows["Ann@example.com"], rows["bob@example.com"]
    assert (ann["name"], ann["city"], ann["plan"]) == ("Ann Lee", "Oslo", "")
    assert (bob["name"], bob["plan"], bob["city"]) == ("Bob", "pro", "")
    assert ann["consent_source"] == f"imported from {a}"
    assert bob["consent_source"] == f"imported from {b}"
    assert before <= datetime.fromisoformat(ann["consent_date"]) <= after
    assert {ann["status"], bob["status"]} == {"subscribed"}
    listed = run(["subscribers", "list", "--json"], env)
    assert [(x["name"], x["members"]) for x in json.loads(listed.stdout)["lists"]] == [("main", 2)]
    assert run(["subscribers", "count"], env).stdout == "2\n"


def test_importing_the_same_file_twice_changes_nothing_and_a_changed_field_is_updated_and_said(
    tmp_path: Path, env: dict[str, str]
) -> None:
    a = write(tmp_path / "a.csv", "email,name,city\nann@example.com,Ann,Oslo\nbob@example.com,Bob,Rome\n")
    assert run(["subscribers", "import", str(a)], env).exit_code == 0
    first = exported(env)
    again = run(["subscribers", "import", str(a), "--json"], env)
    out = json.loads(again.stdout)
    assert (out["added"], out["updated"], out["unchanged"]) == (0, 0, 2)
    assert exported(env) == first  # consent kept as it was
    write(a, "email,city\nann@example.com,Bergen\nbob@example.com,Rome\n")
    changed = run(["subscribers", "import", str(a)], env)
    assert changed.exit_code == 0, changed.output
    assert f"updated: {a}:2: ann@example.com: city 'Oslo' -> 'Bergen'" in changed.stderr
    assert "bob@example.com" not in changed.stderr
    rows = {row["email"]: row for row in exported(env)}
    assert (rows["ann@example.com"]["city"], rows["ann@example.com"]["name"]) == ("Bergen", "Ann")
    assert rows["ann@example.com"]["consent_date"] == first[0]["consent_date"]


def test_rows_an_export_marks_as_not_to_be_mailed_are_not_imported_and_are_counted(
    tmp_path: Path, env: dict[str, str]
) -> None:
    export = shutil.copy(LISTS / "substack.csv", tmp_path / "substack.csv")
    result = run(["subscribers", "import", str(export), "--json"], env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    rows = list(csv.DictReader(io.StringIO(Path(export).read_text(encoding="utf-8"))))
    disabled = {r["email"] for r in rows if r["email_disabled"] == "true"}
    inactive = {r["email"] for r in rows if r["active_subscription"] == "false"} - disabled
    assert disabled and inactive
    assert set(members(tmp_path)) == {r["email"] for r in rows} - disabled - inactive
    assert out["files"][0]["skipped_by"] == {
        "email disabled (Substack)": len(disabled),
        "inactive (Substack)": len(inactive),
    }
    assert "not imported as the export says" in result.stderr


def test_mailers_own_export_moves_a_list_with_its_consent_and_without_its_suppressed_readers(
    tmp_path: Path, env: dict[str, str]
) -> None:
    a = write(tmp_path / "a.csv", "email,name,city\nann@example.com,Ann,Oslo\nbob@example.com,Bob,Rome\n")
    run(["subscribers", "import", str(a)], env)
    run(["unsubscribe", "bob@example.com"], env)
    dump = write(tmp_path / "dump.csv", run(["subscribers", "export"], env).stdout)
    # another site: a SQLite file of its own (None unsets the MAILER_DATABASE of this test's engine)
    elsewhere = {**env, "MAILER_DATA_DIR": str(tmp_path / "other"), "MAILER_DATABASE": None}
    moved = run(["subscribers", "import", str(dump)], elsewhere)
    assert moved.exit_code == 0, moved.output
    assert "1 suppressed (mailer)" in moved.stderr
    [ann] = exported(elsewhere)
    [was] = [row for row in exported(env) if row["email"] == "ann@example.com"]
    assert ann == was  # same consent date and source, city; no consent_* or status field of its own


@pytest.mark.parametrize(
    ("second", "where"),
    [
        ("email,name\nzed@example.com,Zed\nnot-an-address,X\n", "b.csv:3: invalid address 'not-an-address'"),
        ('email,name\nzed@example.com,"Zed\nyan@example.com,Yan\n', "b.csv:2"),
        ("email,name\nzed@example.com,Z\xe9d\n", "b.csv:2: not UTF-8"),
    ],
)
def test_a_broken_file_imports_nothing_from_any_file_and_names_file_and_line(
    tmp_path: Path, env: dict[str, str], second: str, where: str
) -> None:
    a = write(tmp_path / "a.csv", "email\nann@example.com\n")
    b = tmp_path / "b.csv"
    b.write_bytes(second.encode("latin-1") if "\xe9" in second else second.encode())
    result = run(["subscribers", "import", str(a), str(b), "--json"], env)
    assert result.exit_code == 1
    [line] = errors(result)
    assert where in line and "nothing was imported" in line, line
    assert json.loads(result.stdout)["status"] == "refused"
    assert members(tmp_path) == []
    assert run(["subscribers", "list"], env).stdout == ""


def test_an_import_does_not_bring_back_a_suppressed_address(tmp_path: Path, env: dict[str, str]) -> None:
    assert run(["unsubscribe", "bob@example.com"], env).exit_code == 0
    a = write(tmp_path / "a.csv", "email\nann@example.com\nBOB@example.com\n")
    result = run(["subscribers", "import", str(a), "--json"], env)
    assert result.exit_code == 0, result.output
    assert f"skipped: {a}:3: BOB@example.com: on the suppression list (not imported)" in result.stderr
    assert json.loads(result.stdout)["suppressed"] == 1
    assert members(tmp_path) == ["ann@example.com"]


def test_remove_takes_an_address_off_one_list_only(
    tmp_path: Path, env: dict[str, str], record_at: Location
) -> None:
    a = write(tmp_path / "a.csv", "email\nann@example.com\nbob@example.com\n")
    run(["subscribers", "import", str(a)], env)
    run(["subscribers", "import", str(a), "--list", "friends"], env)
    result = run(["subscribers", "remove", "BOB@example.com", "cy@example.com"], env)
    assert result.exit_code == 0, result.output
    assert result.stdout == "removed bob@example.com from main\ncy@example.com was not on main\n"
    assert members(tmp_path) == ["ann@example.com"]
    assert members(tmp_path, "friends") == ["ann@example.com", "bob@example.com"]
    unknown = run(["subscribers", "count", "--list", "nope"], env)
    assert unknown.exit_code == 1
    assert errors(unknown) == [
        f"Error: no list 'nope' in {record_at} (the lists kept are: friends, main;"
        " make one with: mailer subscribers import FILE --list nope)"
    ]
    assert run(["subscribers", "import", str(a), "--list", "../x"], env).exit_code == 1


# --- schema ------------------------------------------------------------------------------------------


@SQLITE_ONLY  # schema 5 was only ever a SQLite file's
def test_a_schema_5_database_gets_the_list_tables_and_keeps_its_record(tmp_path: Path) -> None:
    db = tmp_path / "state" / "mailer.db"
    with Ledger(db) as ledger:
        ledger.start_issue("2026-02-08", "h", "Old")
        ledger.record_outcomes("2026-02-08", [("ann@example.com", "sent", 250, "ok")])
        ledger.suppress("bob@example.com", source="manual")
    with sqlite3.connect(db) as conn:  # back to what schema 5's mailer wrote
        later = ("signups", "signup_hits", "send_workers", "send_batches", "sends")  # what later steps add
        for table in ("members", "lists", *later):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("ALTER TABLE deliveries DROP COLUMN run_id")  # step 10's
        conn.execute("PRAGMA user_version = 5")
    with Ledger(db) as ledger:
        assert ledger.status("2026-02-08").count("sent") == 1
        assert ledger.is_suppressed("bob@example.com")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM members").fetchone()[0] == 0
    env = {**publisher.ENV, "MAILER_DATA_DIR": str(tmp_path / "state")}
    a = write(tmp_path / "a.csv", "email\nann@example.com\nbob@example.com\n")
    assert run(["subscribers", "import", str(a)], env).exit_code == 0
    assert members(tmp_path) == ["ann@example.com"]


# --- send --list ---------------------------------------------------------------------------------------


def test_send_to_a_stored_list_mails_each_member_once_with_their_fields(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = publisher.env_for(smtp_server, tmp_path)
    a = write(
        tmp_path / "a.csv", "email,name\nann@example.com,Ann Lee\nbob@example.com,Bob\ncy@example.com,\n"
    )
    run(["subscribers", "import", str(a)], env)
    run(["unsubscribe", "cy@example.com"], env)
    result = send(post, env, "--list", "main", "--json")
    assert result.exit_code == 0, result.output
    assert received(smtp_server) == {"ann@example.com": 1, "bob@example.com": 1}
    to = {m.rcpt_tos[0]: message_from_bytes(m.data)["To"] for m in smtp_server.messages}
    assert to["ann@example.com"] == "Ann Lee <ann@example.com>"
    assert "list main: 3 reader(s): 2 to mail, 1 suppressed" in result.stderr
    out = json.loads(result.stdout)
    assert out["lists"] == [
        {"list": "main", "tool": "", "rows": 3, "to_mail": 2, "already_sent": 0, "skipped": 0,
         "skipped_by": {}, "duplicates": 0, "invalid": 0, "suppressed": 1}
    ]  # fmt: skip
    assert out["counts"]["sent"] == 2 and out["counts"]["suppressed"] == 1
    again = send(post, env, "--list", "main")
    assert again.exit_code == 0, again.output
    assert received(smtp_server) == {"ann@example.com": 1, "bob@example.com": 1}


def test_send_with_both_to_and_list_is_a_usage_error(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    a = write(tmp_path / "a.csv", "email\nann@example.com\n")
    result = send(post, publisher.env_for(smtp_server, tmp_path), "--to", str(a), "--list", "main")
    assert result.exit_code == 2
    assert "--to and --list cannot be combined" in result.stderr
    assert smtp_server.messages == []


def test_an_unknown_or_empty_list_is_refused_before_the_first_message(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = publisher.env_for(smtp_server, tmp_path)
    unknown = send(post, env, "--list", "main", "--json")
    assert unknown.exit_code == 1
    [line] = errors(unknown)
    assert "no list 'main'" in line and "nothing was sent" in line
    run(["subscribers", "import", str(write(tmp_path / "a.csv", "email\nann@example.com\n"))], env)
    run(["subscribers", "remove", "ann@example.com"], env)
    empty = send(post, env, "--list", "main")
    assert empty.exit_code == 1
    assert errors(empty) == [
        "Error: list 'main' has no subscribers (add some: mailer subscribers import FILE --list main);"
        " nothing was sent"
    ]
    assert smtp_server.messages == []
    assert not (tmp_path / "state" / "archive").exists()


def test_a_reader_added_after_a_complete_send_is_mailed_by_the_daily_rerun_and_no_one_twice(
    smtp_server: SMTPServer, tmp_path: Path
) -> None:
    posts = tmp_path / "posts"
    posts.mkdir()
    day = today().isoformat()
    source = (Path(__file__).parent / "posts" / "english.md").read_text(encoding="utf-8")
    (posts / f"{day}.md").write_text(source.replace("date: 2026-02-10", f"date: {day}"), encoding="utf-8")
    env = publisher.env_for(smtp_server, tmp_path, MAILER_TIMEZONE=DAYTIME)
    daily = ["send", str(posts), "--list", "main", "--yes"]
    run(["subscribers", "import", str(write(tmp_path / "a.csv", "email\nann@example.com\n"))], env)
    assert run(daily, env).exit_code == 0
    same = run(daily, env)
    assert same.exit_code == 0 and "already sent to list main; nothing to do." in same.stderr
    run(
        [
            "subscribers",
            "import",
            str(write(tmp_path / "b.csv", "email\nann@example.com\nbob@example.com\n")),
        ],
        env,
    )
    rerun = run([*daily, "--json"], env)
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["lists"][0]["already_sent"] == 1
    assert received(smtp_server) == {"ann@example.com": 1, "bob@example.com": 1}
    assert "already sent to list main" in run(daily, env).stderr


def test_an_unsubscribe_stops_later_sends_to_that_address_from_every_stored_list(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = publisher.env_for(smtp_server, tmp_path)
    a = write(tmp_path / "a.csv", "email\nann@example.com\nbob@example.com\n")
    run(["subscribers", "import", str(a), "--list", "main"], env)
    run(["subscribers", "import", str(a), "--list", "friends"], env)
    assert send(post, env, "--list", "main").exit_code == 0
    assert run(["unsubscribe", "bob@example.com"], env).exit_code == 0
    later = post.with_name("2026-02-10.md")
    later.write_text(
        post.read_text(encoding="utf-8").replace("date: 2026-02-09", "date: 2026-02-10") + "\nMore.\n"
    )
    result = send(later, env, "--list", "friends", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["suppressed"] == 1
    assert received(smtp_server) == {"ann@example.com": 2, "bob@example.com": 1}


# --- hostile -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_send_to_a_stored_list_then_rerun_mails_everyone_once(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    emails = [f"reader{i}@example.com" for i in range(120)]
    env = publisher.env_for(smtp_server, tmp_path, MAILER_SMTP_TIMEOUT="120")
    assert run(["subscribers", "import", str(big_list(tmp_path / "a.csv", 120))], env).exit_code == 0
    args = ["send", str(post), "--list", "main", "--yes", "--force"]
    held = smtp_server.hold(emails[-1])  # however late the kill comes, the send cannot have finished
    proc = spawn(args, env)
    try:
        smtp_server.wait_for(30, timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        held.release.set()
    assert proc.returncode == -signal.SIGKILL
    assert len(smtp_server.messages) < len(emails)
    done = spawn(args, env)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err.decode()
    got = received(smtp_server)
    assert set(got) == set(emails)  # no one skipped
    assert sum(n - 1 for n in got.values()) <= 1  # at most the one message in flight


@pytest.mark.slow
def test_an_import_during_a_send_is_not_in_that_send_and_the_rerun_mails_it_no_one_twice(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = publisher.env_for(smtp_server, tmp_path, MAILER_SMTP_TIMEOUT="120")
    assert run(["subscribers", "import", str(big_list(tmp_path / "a.csv", 50))], env).exit_code == 0
    args = ["send", str(post), "--list", "main", "--yes", "--force"]
    held = smtp_server.hold("reader20@example.com")
    proc = spawn(args, env)
    try:
        assert held.reached.wait(timeout=60), "the send never reached reader20"
        # while the send waits mid-list (its write lock free): 30 new readers
        more = big_list(tmp_path / "b.csv", 30, start=50)
        imported = run(["subscribers", "import", str(more)], env)
        assert imported.exit_code == 0, imported.output
    finally:
        held.release.set()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    first = received(smtp_server)
    assert set(first) == {f"reader{i}@example.com" for i in range(50)}  # the list as the send began
    rerun = spawn(args, env)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    got = received(smtp_server)
    assert set(got) == {f"reader{i}@example.com" for i in range(80)}
    assert max(got.values()) == 1


def import_peak(path: Path, env: dict[str, str]) -> tuple[Result, float]:
    """`mailer subscribers import PATH --json` and the most memory its Python allocations held (MB).

    Traced allocations in this process, not the peak RSS of a process of its own: RSS reuses what start-up
    freed, and hid a list of 10,000 held whole (it showed only from 20,000 readers, 100,000 in a run).
    """
    tracemalloc.start()
    try:
        done = run(["subscribers", "import", str(path), "--json"], env)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return done, peak / 2**20


@SQLITE_ONLY  # the engines' SQL is the same; PostgreSQL's run would add 10 s for nothing new
@pytest.mark.slow
def test_a_list_of_10000_is_imported_streamed(tmp_path: Path, env: dict[str, str]) -> None:
    # 10,000 readers, not 100,000: traced, each allocation counts, so the list held whole shows at this size
    # too; bench/stored.py times 100,000
    path = big_list(tmp_path / "big.csv", 10_000)
    one, start = import_peak(write(tmp_path / "one.csv", "email\nx@example.com\n"), env)
    assert one.exit_code == 0, one.output
    result, peak = import_peak(path, env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["members"] == 10_001
    # streamed: batches, not the list. The whole list held at once adds 8.5 MB here (_BATCH = 10**9);
    # batches of 500 add 0.9 MB (the batch, and the addresses seen, for duplicates)
    assert peak - start < 3, f"peak {peak:.1f} MB, {peak - start:.1f} MB more than a one-row import"
    again = run(["subscribers", "import", str(path), "--json"], env)
    assert json.loads(again.stdout)["unchanged"] == 10_000
    assert len(exported(env)) == 10_001


@SQLITE_ONLY  # it watches SQLite's write lock to kill the import mid-way
@pytest.mark.slow
def test_kill_9_during_an_import_imports_all_or_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    # 20,000 rows: 40 batches of 500 in one transaction, which the kill comes into as soon as it begins (the
    # probe sees its write lock); 100,000 made the import and its rerun 5 times longer for the same verdict
    path = big_list(tmp_path / "big.csv", 20_000)
    db = tmp_path / "state" / "mailer.db"
    Ledger(db).close()  # the schema now, so the only write the child makes is the import
    proc = spawn(["subscribers", "import", str(path)], env)
    try:
        with sqlite3.connect(db, timeout=0, isolation_level=None) as probe:
            while proc.poll() is None:  # until the child holds the write lock: it is importing
                try:
                    probe.execute("BEGIN IMMEDIATE")
                    probe.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the import ended before the kill: make the list longer"
    count = len(members(tmp_path))
    assert count in (0, 20_000)
    assert run(["subscribers", "import", str(path)], env).exit_code == 0
    assert len(members(tmp_path)) == 20_000


def test_a_web_one_click_unsubscribe_stops_later_sends_from_every_stored_list(
    smtp_server: SMTPServer,
    tmp_path: Path,
    web: tuple[str, dict[str, str]],  # noqa: F811
) -> None:
    url, env = web
    full = {**env, **{k: v for k, v in publisher.env_for(smtp_server, tmp_path).items() if "SMTP" in k}}
    a = write(tmp_path / "a.csv", "email\nann@example.com\nbob@example.com\n")
    run(["subscribers", "import", str(a), "--list", "main"], full)
    run(["subscribers", "import", str(a), "--list", "friends"], full)
    first = shutil.copy(EXAMPLE, tmp_path / "2026-02-09.md")
    skip = ("--skip-check", "unsubscribe-url")  # the pages are on 127.0.0.1, which no reader could reach
    assert send(Path(first), full, "--list", "main", *skip).exit_code == 0
    bob = next(m for m in smtp_server.messages if m.rcpt_tos == ("bob@example.com",))
    header = str(message_from_bytes(bob.data)["List-Unsubscribe"])
    [link] = [link for link in re.findall(r"<([^>]+)>", header) if link.startswith(url)]
    request = Request(link, data=b"List-Unsubscribe=One-Click", method="POST")
    with urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    second = tmp_path / "2026-02-10.md"
    second.write_text(EXAMPLE.read_text(encoding="utf-8").replace("date: 2026-02-09", "date: 2026-02-10"))
    result = send(second, full, "--list", "friends", *skip)
    assert result.exit_code == 0, result.output
    assert received(smtp_server) == {"ann@example.com": 2, "bob@example.com": 1}


def test_a_stored_readers_fields_reach_the_post_per_reader(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = publisher.env_for(smtp_server, tmp_path)
    a = write(tmp_path / "a.csv", "email,name,city\nann@example.com,Ann,Oslo\nbob@example.com,Bob,\n")
    run(["subscribers", "import", str(a)], env)
    text = post.read_text(encoding="utf-8")
    post.write_text(text + "\n{% if subscriber.city %}Greetings to {{ subscriber.city }}.{% endif %}\n")
    result = send(post, env, "--list", "main")
    assert result.exit_code == 0, result.output
    bodies = {m.rcpt_tos[0]: message_from_bytes(m.data) for m in smtp_server.messages}
    plain = {
        to: next(p for p in msg.walk() if p.get_content_type() == "text/plain") for to, msg in bodies.items()
    }
    words = {to: part.get_payload(decode=True).decode() for to, part in plain.items()}
    assert "Greetings to Oslo." in words["ann@example.com"]
    assert "Greetings to" not in words["bob@example.com"]
