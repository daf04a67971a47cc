"""`send --to a.csv --to b.csv` (issue 15, reading lists item 4) and hostile lists (item 5).

Until issue 15 the second --to silently replaced the first: only b.csv was mailed. Everything here runs
through the real CLI, a real SMTP server on 127.0.0.1 and the real SQLite record.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tracemalloc
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import pytest
from click.testing import Result

from mailer.campaign import LOOKUP_BATCH
from mailer.csvfile import BLOCK, CsvFile
from tests import publisher
from tests.clock import DAYTIME, today
from tests.command import invoke as run
from tests.smtpd import SMTPServer

pytestmark = pytest.mark.usefixtures("in_tmp")


def send(post: Path, lists: list[Path], env: dict[str, str], *more: str) -> Result:
    return run(
        ["send", str(post), *(a for p in lists for a in ("--to", str(p))), "--yes", "--force", *more], env
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def received(server: SMTPServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error: ")]


def list_keys(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "state" / "mailer.db") as db:
        return [key for (key,) in db.execute("SELECT list_key FROM runs ORDER BY run_id")]


# --- item 4: several lists ---------------------------------------------------------------------------------


def test_two_lists_are_both_mailed_an_address_in_both_once_with_the_first_lists_fields(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    a = write(tmp_path / "a.csv", "email,name\nann@example.com,Ann from A\nbob@example.com,Bob\n")
    b = write(tmp_path / "b.csv", "Email Address;First Name\nANN@example.com;Ann from B\ncy@example.com;Cy\n")
    result = send(post, [a, b], publisher.env_for(smtp_server, tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert received(smtp_server) == {"ann@example.com": 1, "bob@example.com": 1, "cy@example.com": 1}
    to = {m.rcpt_tos[0]: message_from_bytes(m.data)["To"] for m in smtp_server.messages}
    assert to["ann@example.com"] == "Ann from A <ann@example.com>"  # the first list's fields win
    out = json.loads(result.stdout)
    assert out["counts"]["sent"] == 3 and out["counts"]["duplicates"] == 1 and out["deliverable"] == 3
    assert [(f["file"], f["rows"], f["to_mail"], f["duplicates"]) for f in out["lists"]] == [
        (str(a), 2, 2, 0),
        (str(b), 2, 1, 1),
    ]
    assert f"{a}: 2 row(s): 2 to mail" in result.stderr
    assert f"{b}: 2 row(s): 1 to mail, 1 duplicate(s)" in result.stderr


def test_the_report_of_each_list_names_status_duplicates_suppressed_and_invalid(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = publisher.env_for(smtp_server, tmp_path)
    assert run(["unsubscribe", "gone@example.com"], env).exit_code == 0
    a = write(tmp_path / "a.csv", "email\ngone@example.com\nann@example.com\nnot an address\n")
    substack = write(
        tmp_path / "substack.csv",
        "email,active_subscription,email_disabled\nann@example.com,true,false\nivy@example.com,true,true\n"
        "jon@example.com,false,false\nkai@example.com,true,false\n",
    )
    result = send(post, [a, substack], env, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    reasons = {"email disabled (Substack)": 1, "inactive (Substack)": 1}
    assert out["lists"] == [
        {"file": str(a), "tool": "", "rows": 3, "to_mail": 1, "already_sent": 0, "skipped": 0,
         "skipped_by": {}, "duplicates": 0, "invalid": 1, "suppressed": 1},
        {"file": str(substack), "tool": "Substack", "rows": 4, "to_mail": 1, "already_sent": 0, "skipped": 2,
         "skipped_by": reasons, "duplicates": 1, "invalid": 0, "suppressed": 0},
    ]  # fmt: skip
    assert sorted(result.stderr.count(line) for line in (f"{a}: 3 row(s)", f"{substack} (Substack)")) == [
        1,
        1,
    ]
    assert (
        f"{substack} (Substack): 4 row(s): 1 to mail, 2 not to be mailed (1 email disabled (Substack),"
        " 1 inactive (Substack)), 1 duplicate(s)"
    ) in result.stderr
    assert smtp_server.messages == []


def test_the_same_lists_in_another_order_mail_no_one_twice_and_have_one_key(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    a = write(tmp_path / "a.csv", "email,name\nann@example.com,Ann\nbob@example.com,Bob\n")
    b = write(tmp_path / "b.csv", "email,name\nbob@example.com,Bobby\ncy@example.com,Cy\n")
    c = write(tmp_path / "c.csv", "email\ndee@example.com\n")
    env = publisher.env_for(smtp_server, tmp_path)
    assert send(post, [a, b], env).exit_code == 0
    rerun = send(post, [b, a], env, "--json")
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["counts"]["already_sent"] == 3
    assert received(smtp_server) == {"ann@example.com": 1, "bob@example.com": 1, "cy@example.com": 1}
    assert send(post, [c, b, a], env).exit_code == 0  # a list added: only its new reader is mailed
    assert received(smtp_server)["dee@example.com"] == 1 and sum(received(smtp_server).values()) == 4
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)]
    pair = hashlib.sha256("\n".join(sorted(digests[:2])).encode()).hexdigest()
    three = hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()
    assert list_keys(tmp_path) == [pair, pair, three]


def test_a_folder_send_to_the_same_lists_in_another_order_is_already_sent(
    smtp_server: SMTPServer, tmp_path: Path
) -> None:
    posts = tmp_path / "posts"
    posts.mkdir()
    day = today().isoformat()
    source = (Path(__file__).parent / "posts" / "english.md").read_text(encoding="utf-8")
    source = source.replace("date: 2026-02-10", f"date: {day}")
    (posts / f"{day}.md").write_text(source, encoding="utf-8")
    a = write(tmp_path / "a.csv", "email\nann@example.com\n")
    b = write(tmp_path / "b.csv", "email\nbob@example.com\n")
    env = publisher.env_for(smtp_server, tmp_path, MAILER_TIMEZONE=DAYTIME)
    first = run(["send", str(posts), "--to", str(a), "--to", str(b), "--yes"], env)
    assert first.exit_code == 0, first.output
    again = run(["send", str(posts), "--to", str(b), "--to", str(a), "--yes"], env)
    assert again.exit_code == 0, again.output
    assert f"already sent to {b}, {a}; nothing to do." in again.stderr
    assert received(smtp_server) == {"ann@example.com": 1, "bob@example.com": 1}


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ('email,name\nb@example.com,"said ""stop\nc@example.com,C\n', "{b}:2: a quoted field opens on"),
        ("email,name\n", "{b}: no subscribers in it, only the header line"),
        ("name,city\nBen,Oslo\n", "{b}: no 'email' column in the header line"),
        ("email,E-mail\nb@example.com,c@example.com\n", "{b}:1: 'email' (column 1) and 'E-mail' (column 2)"),
        ("email,name\nnope,B\n", "{b}: none of its 1 row(s) has a valid address (line 2: invalid address"),
        ("email,name\nb@example.com,B\n".encode("utf-16-le").decode("latin-1"), "{b}: no 'email' column"),
    ],
    ids=["swallowing quote", "header only", "no address column", "two address columns", "no valid row",
         "UTF-16 without BOM"],
)  # fmt: skip
def test_a_broken_second_list_stops_the_send_before_the_first_message(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, second: str, message: str
) -> None:
    a = write(tmp_path / "a.csv", "email\nann@example.com\n")
    b = tmp_path / "b.csv"
    b.write_bytes(second.encode("latin-1") if "\0" in second else second.encode("utf-8"))
    result = send(post, [a, b], publisher.env_for(smtp_server, tmp_path))
    assert result.exit_code == 1
    [error] = error_lines(result)
    assert error.startswith("Error: " + message.format(b=b)), error
    assert smtp_server.messages == [] and smtp_server.connections == 0


def test_a_missing_second_list_is_named(smtp_server: SMTPServer, tmp_path: Path, post: Path) -> None:
    a = write(tmp_path / "a.csv", "email\nann@example.com\n")
    result = send(post, [a, tmp_path / "gone.csv"], publisher.env_for(smtp_server, tmp_path))
    assert result.exit_code == 1
    assert error_lines(result) == [f"Error: {tmp_path / 'gone.csv'}: no such subscriber list"]
    assert smtp_server.messages == []


def test_one_plain_list_reports_as_before(smtp_server: SMTPServer, tmp_path: Path, post: Path) -> None:
    a = write(tmp_path / "a.csv", "email,name\nann@example.com,Ann\nbob@example.com,Bob\n")
    result = send(post, [a], publisher.env_for(smtp_server, tmp_path))
    assert result.exit_code == 0, result.output
    assert "row(s):" not in result.stderr  # no per-list report for one plain list
    assert list_keys(tmp_path) == [hashlib.sha256(a.read_bytes()).hexdigest()]


# --- item 5: a list edited during a send with several files; a 16 MB list -----------------------------------

ROWS = 600
EDIT_AT = 480
FILLER = ",".join(["x" * 200] * 3)  # ~640 bytes a row: a block is ~100 rows


def row(i: int, who: str = "reader") -> str:
    return f"{who}{i:04d}@example.com,Reader {i},{FILLER}"


def test_a_second_list_edited_during_the_send_stops_it_and_a_rerun_mails_everyone_once(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    assert (LOOKUP_BATCH + 3) * len(row(0)) + BLOCK < EDIT_AT * len(row(0)), (
        "the send must not reach the edit"
    )
    a = write(tmp_path / "a.csv", "email,name\nfirst@example.com,F\nsecond@example.com,S\n")
    lines = ["email,name,a,b,c", *[row(i) for i in range(ROWS)]]
    b = write(tmp_path / "b.csv", "\n".join(lines) + "\n")
    env = {**os.environ, **publisher.env_for(smtp_server, tmp_path)}
    args = [
        sys.executable,
        "-m",
        "mailer",
        "send",
        str(post),
        "--to",
        str(a),
        "--to",
        str(b),
        "--yes",
        "--force",
    ]
    hold = smtp_server.hold("first@example.com")  # the send waits here while b.csv is edited
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hold.reached.wait(60), "the first message never arrived"
        edited = list(lines)
        edited[EDIT_AT] = row(EDIT_AT - 1, "writer")  # the same length, in place: only the content tells
        with b.open("r+b") as out:
            out.write(("\n".join(edited) + "\n").encode())
    finally:
        hold.release.set()
        _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    assert proc.returncode == 4, err
    [error] = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert error.startswith(f"Error: {b}:") and "run the same command again" in error
    first = received(smtp_server)
    assert set(first.values()) == {1}
    assert {"first@example.com", "second@example.com"} <= set(first)
    assert lines[EDIT_AT].split(",")[0] not in first  # the old row that changed on disk was never mailed
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    wanted = {"first@example.com", "second@example.com", *(line.split(",")[0] for line in edited[1:])}
    total = received(smtp_server)
    assert set(total) == wanted and set(total.values()) == {1}  # everyone once, across both runs


def _big_list(path: Path, encoding: str, size: int) -> int:
    """A list of about `size` bytes written a row at a time (never held whole); returns its rows."""
    filler = "y" * 1000
    rows = 0
    with path.open("w", encoding=encoding, newline="") as out:
        out.write("email,name,notes\n")
        written = 0
        while written < size:
            line = f"r{rows:07d}@example.com,Reader {rows},{filler}\n"
            out.write(line)
            written += len(line) * (2 if encoding.startswith("utf-16") else 1)
            rows += 1
    return rows


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_16_mb_list_is_checked_and_read_in_blocks_not_whole(tmp_path: Path, encoding: str) -> None:
    # 16 MB, four times the bound on the peak: the file held whole fails it at this size as at 100 MB (which
    # took 6 times longer, traced, for the same verdict); the peak read in blocks is 0.3-0.4 MB at either size
    path = tmp_path / "big.csv"
    rows = _big_list(path, encoding, 16 * 1024 * 1024)
    assert path.stat().st_size >= 16 * 1024 * 1024
    tracemalloc.start()
    try:
        with CsvFile(path, "subscriber list") as source:
            assert source.scan(",", after=1, consequence="-") == rows
            read = sum(1 for r in source.records(",") if not r.error)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == rows + 1  # and the header
    assert peak < 4 * 1024 * 1024, f"peak {peak:,} bytes for a {path.stat().st_size:,}-byte file"
