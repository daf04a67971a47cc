"""Lists that hide readers: an unbalanced quote, a file not saved as UTF-8, a list edited during a send.

Issue 11 items 1 and 2, with its figures: a quote on line 3 of a 1,002-line file swallowed 1,000 readers (a
send reported "sent 1, invalid rows 1", exit 0; an import "2 newly suppressed", exit 0); at 10,002 lines the
csv module's field limit gave a traceback after a partial import. Everything runs through the real CLI, a
real SMTP server on 127.0.0.1 and the real SQLite record; counts come from what the server received and
what the record holds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import Result

from mailer.campaign import LOOKUP_BATCH
from mailer.csvfile import BLOCK
from mailer.ledger import Ledger
from tests import publisher
from tests.command import invoke as run
from tests.smtpd import SMTPServer

ROOT = Path(__file__).resolve().parent.parent
SMALL_POST = ROOT / "tests" / "posts" / "english.md"
BROKEN = 'b@example.com,"said ""stop'  # the quote that opens and never closes


pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.fixture
def post(tmp_path: Path) -> Path:
    target = tmp_path / "posts" / "2026-02-10.md"
    target.parent.mkdir()
    shutil.copy(SMALL_POST, target)
    return target


def env_for(port: int, tmp_path: Path) -> dict[str, str]:
    return {
        **publisher.ENV,
        "MAILER_SMTP_HOST": "127.0.0.1",
        "MAILER_SMTP_PORT": str(port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_SMTP_TIMEOUT": "30",
        "MAILER_DATA_DIR": str(tmp_path / "state"),
    }


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error: ")]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def readers(count: int, start: int = 0) -> list[str]:
    return [f"u{i}@example.com" for i in range(start, start + count)]


def suppressed(tmp_path: Path) -> set[str]:
    db = tmp_path / "state" / "mailer.db"
    if not db.exists():
        return set()
    with Ledger(db) as ledger:
        return {s.email for s in ledger.suppressions()}


# --- item 1: suppressions import ------------------------------------------------------------------------


def import_file(path: Path, tmp_path: Path) -> Result:
    return run(["suppressions", "import", str(path)], {"MAILER_DATA_DIR": str(tmp_path / "state")})


SWALLOWED = [
    (1_000, r"runs to line 1,003 \(the end of the file\): the 1,000 line\(s\) after it"),
    (10_000, r"is still open at line [\d,]+, past the limit of 131,072 characters"),
]


@pytest.mark.parametrize(("followers", "where"), SWALLOWED)
def test_an_import_whose_quote_swallows_lines_imports_nothing_and_names_line_3(
    tmp_path: Path, followers: int, where: str
) -> None:
    # the file: "2 newly suppressed" (1,000 lost), exit 0; at 10,002 lines a traceback
    lines = ["email,note", "a@example.com,ok", BROKEN, *[f"{a},fine" for a in readers(followers)]]
    stop = write_lines(tmp_path / "stop.csv", lines)
    result = import_file(stop, tmp_path)
    assert result.exit_code == 1
    [error] = error_lines(result)
    assert re.match(rf"Error: {re.escape(str(stop))}:3: a quoted field opens on this line and {where}", error)
    assert error.endswith("; nothing was imported")
    assert suppressed(tmp_path) == set()  # not 2, not a partial import: nothing
    # with the quote closed, every line is imported
    lines[2] = 'b@example.com,"said ""stop"""'
    write_lines(stop, lines)
    result = import_file(stop, tmp_path)
    assert result.exit_code == 0, result.output
    assert f"{followers + 2} newly suppressed, 0 already suppressed, 0 bad line(s) skipped" in result.stdout
    assert len(suppressed(tmp_path)) == followers + 2


MAILCHIMP = (
    "Email Address,First Name,Last Name,Address,Phone Number,MEMBER_RATING,OPTIN_TIME,UNSUB_TIME,"
    "UNSUB_CAMPAIGN_TITLE\n"
    'ann@example.com,Ann,Lee,"1 Main St, Springfield",,2,2025-01-01 10:00:00,2026-02-01 09:00:00,'
    '"Weekly, #5"\n'
    "BEN@Example.com,Ben,,,,1,2025-02-01 10:00:00,2026-02-02 09:00:00,Weekly #6\n"
)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("Mailchimp unsubscribed export", MAILCHIMP),
        ("Mailchimp, semicolons", MAILCHIMP.replace(",", ";").replace('"1 Main St; Springfield"', "x")),
        ("E-mail, tabs", "Name\tE-mail\nAnn\tann@example.com\nBen\tben@example.com\n"),
        ("email_address", "id,email_address,state\n1,ann@example.com,inactive\n2,ben@example.com,inactive\n"),
        ("EMAIL", "EMAIL\nann@example.com\nben@example.com\n"),
        (
            "E-Mail Address, BOM, CRLF",
            "\ufeffE-Mail Address,reason\r\nann@example.com,x\r\nben@example.com,y\r\n",
        ),
        (
            "Mailgun address",
            "address,code,error,created_at\nann@example.com,550,,x\nben@example.com,550,,y\n",
        ),
        ("one a line, comments", "# from the mailto inbox\nann@example.com\n\n  ben@example.com  \n"),
    ],
)
def test_an_export_imports_every_address_whatever_its_header_or_separator(
    tmp_path: Path, name: str, data: str
) -> None:
    path = tmp_path / "export.csv"
    path.write_text(data, encoding="utf-8")
    result = import_file(path, tmp_path)
    assert result.exit_code == 0, result.output
    assert "2 newly suppressed, 0 already suppressed, 0 bad line(s) skipped" in result.stdout
    assert suppressed(tmp_path) == {"ann@example.com", "ben@example.com"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "no addresses in it; nothing was imported"),
        ("# nothing yet\n\n", "no addresses in it; nothing was imported"),
        ("Email Address,Name\n", "no addresses in it; nothing was imported"),
        ("name,city\nAnn,Rome\nBen,Oslo\n", "none of its 3 line(s) is an address"),
        ("Email Address;Name\nann(at)example.com;Ann\n", "none of its 1 line(s) is an address"),
    ],
)
def test_a_file_with_no_address_is_an_error_not_exit_0(tmp_path: Path, data: str, message: str) -> None:
    path = tmp_path / "export.csv"
    path.write_text(data, encoding="utf-8")
    result = import_file(path, tmp_path)
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1 and message in error_lines(result)[0]
    assert suppressed(tmp_path) == set()


def test_bad_lines_are_named_the_rest_imported_and_the_exit_is_1(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "stop.csv", ["email", "ann@example.com", "ann at example", "", "ben@example.com"]
    )
    result = import_file(path, tmp_path)
    assert result.exit_code == 1
    assert f"{path}:3: skipped: 'ann at example'" in result.stderr
    assert "2 newly suppressed, 0 already suppressed, 1 bad line(s) skipped" in result.stdout
    assert suppressed(tmp_path) == {"ann@example.com", "ben@example.com"}


# --- item 2: a send ----------------------------------------------------------------------------------------


def send(post: Path, csv: Path, env: dict[str, str]) -> Result:
    return run(["send", str(post), "--to", str(csv), "--yes", "--force"], env)


@pytest.mark.parametrize(("followers", "where"), SWALLOWED)
def test_a_list_whose_quote_swallows_readers_is_refused_before_anyone_is_mailed(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, followers: int, where: str
) -> None:
    # the issue: "sent 1, invalid rows 1", exit 0, 1,000 readers never mailed (4,761 at 10,002 rows)
    lines = ["email,name", "a@example.com,Ann", BROKEN, *[f"{a},Reader" for a in readers(followers)]]
    csv = write_lines(tmp_path / "subscribers.csv", lines)
    env = env_for(smtp_server.port, tmp_path)
    result = send(post, csv, env)
    assert result.exit_code == 1
    [error] = error_lines(result)
    assert re.match(rf"Error: {re.escape(str(csv))}:3: a quoted field opens on this line and {where}", error)
    assert error.endswith("nothing was sent")
    assert smtp_server.messages == [] and smtp_server.connections == 0
    # the same list with the quote closed: all 1,002 (10,002) readers would get the issue
    lines[2] = 'b@example.com,"said ""stop"""'
    write_lines(csv, lines)
    result = run(["send", str(post), "--to", str(csv), "--dry-run", "--force"], env)
    assert result.exit_code == 0, result.output
    would = result.stdout.split()
    assert len(would) == len(set(would)) == followers + 2


def test_a_broken_quote_in_the_last_rows_stops_the_send_before_the_first_message(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    # the check reads the whole list before the first message: a quote at row 10,001 of 10,002 mails no one
    lines = ["email,name", *[f"{a},Reader" for a in readers(10_000)], BROKEN, "z@example.com,Zed"]
    csv = write_lines(tmp_path / "subscribers.csv", lines)
    result = send(post, csv, env_for(smtp_server.port, tmp_path))
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"Error: {csv}:10002: a quoted field opens on this line and runs to line 10,003 (the end of the"
        " file): the 1 line(s) after it are read as part of one field (an unbalanced quote?);"
        " nothing was sent"
    ]
    assert smtp_server.messages == [] and smtp_server.connections == 0


LATIN_1 = "email,name\na@example.com,Ann\nb@example.com,Bj\u00f6rn\nc@example.com,Cy\n".encode("latin-1")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (LATIN_1, "{csv}:3: not UTF-8 (byte 0xf6 at column 17): save the file as UTF-8; nothing was sent"),
        (  # a UTF-16 file is read since issue 15; one whose last character is cut off is not
            "email,name\na@example.com,A\n".encode("utf-16")[:-1],
            "{csv}:2: the file is UTF-16 but this line ends in the middle of a character",
        ),
        (
            "email,name\na@example.com,A\n".encode("utf-16-le"),
            "{csv}: no 'email' column in the header line (it holds NUL bytes",
        ),
        (b"email,name\n", "{csv}: no subscribers in it, only the header line"),
        (b"email,name\n\n\n", "{csv}: no subscribers in it, only the header line"),
        (b"", "{csv}: the file is empty"),
        (
            b"email,name\nann at example.com,Ann\n",
            "{csv}: none of its 1 row(s) has a valid address (line 2: invalid address 'ann at example.com'",
        ),
    ],
    ids=[
        "latin-1",
        "utf-16",
        "utf-16 without BOM",
        "header only",
        "header and blank lines",
        "empty",
        "no valid row",
    ],
)
def test_a_list_that_cannot_be_read_whole_is_one_error_line_and_no_message(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, data: bytes, message: str
) -> None:
    csv = tmp_path / "subscribers.csv"
    csv.write_bytes(data)
    result = send(post, csv, env_for(smtp_server.port, tmp_path))
    assert result.exit_code == 1
    [error] = error_lines(result)
    assert error.startswith("Error: " + message.format(csv=csv))
    assert smtp_server.messages == []


def test_a_field_past_the_csv_limit_on_one_line_is_one_bad_row(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    # the csv module's "field larger than field limit" on a single line: that row is named, the others mailed
    csv = tmp_path / "subscribers.csv"
    csv.write_text("email,name\na@example.com,Ann\nb@example.com," + "x" * 200_000 + "\nc@example.com,Cy\n")
    result = send(post, csv, env_for(smtp_server.port, tmp_path))
    assert result.exit_code == 0, result.output
    assert f"skipped: {csv}:3: cannot read this row as CSV: field larger than field limit" in result.stderr
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == ["a@example.com", "c@example.com"]


def test_a_nul_byte_in_a_row_is_that_row_only(smtp_server: SMTPServer, tmp_path: Path, post: Path) -> None:
    csv = tmp_path / "subscribers.csv"
    csv.write_bytes(b"email,name\na@example.com,Ann\nb@example.com,B\x00b\nc@example.com,Cy\n")
    result = send(post, csv, env_for(smtp_server.port, tmp_path))
    assert result.exit_code == 0, result.output
    assert f"skipped: {csv}:3: 'b@example.com': control character U+0000 in the 'name' field" in result.stderr
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == ["a@example.com", "c@example.com"]


# --- a list edited while a send reads it -------------------------------------------------------------------


ROWS = 600
EDIT_AT = 480  # the row edited; the send has read at most LOOKUP_BATCH rows and one block beyond them
FILLER = ",".join(["x" * 200] * 3)  # ~640 bytes a row: a block is ~100 rows


def row(i: int, who: str = "reader") -> str:
    return f"{who}{i:04d}@example.com,Reader {i},{FILLER}"


def _truncate(csv: Path, lines: list[str]) -> list[str]:
    with csv.open("r+b") as out:
        out.truncate(len("\n".join(lines[:EDIT_AT]).encode()) + 1)  # rows after EDIT_AT - 1 are gone
    return lines[:EDIT_AT]


def _append(csv: Path, lines: list[str]) -> list[str]:
    added = [row(i) for i in range(ROWS, ROWS + 50)]
    with csv.open("a", encoding="utf-8") as out:
        out.write("\n".join(added) + "\n")
    return lines + added


def _replace(csv: Path, lines: list[str]) -> list[str]:
    new = [*lines[:EDIT_AT], *lines[EDIT_AT + 1 :], *[row(i) for i in range(ROWS, ROWS + 50)]]
    write_lines(csv.with_name("new.csv"), new)
    os.replace(csv.with_name("new.csv"), csv)  # how editors and scripts save: a rename over the old file
    return new


def _rewrite_in_place(csv: Path, lines: list[str]) -> list[str]:
    new = list(lines)
    new[EDIT_AT] = row(EDIT_AT - 1, "writer")  # the same length: only the content tells
    with csv.open("r+b") as out:
        out.write(("\n".join(new) + "\n").encode())
    return new


EDITS = {
    "truncated": _truncate,
    "appended to": _append,
    "replaced by rename": _replace,
    "rewritten in place": _rewrite_in_place,
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_list_edited_during_a_send_stops_it_and_a_rerun_mails_everyone_once(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, edit: str
) -> None:
    assert (LOOKUP_BATCH + 3) * len(row(0)) + BLOCK < EDIT_AT * len(row(0)), (
        "the send must not reach the edit"
    )
    lines = ["email,name,a,b,c", *[row(i) for i in range(ROWS)]]
    csv = write_lines(tmp_path / "subscribers.csv", lines)
    env = {**os.environ, **env_for(smtp_server.port, tmp_path)}
    args = [sys.executable, "-m", "mailer", "send", str(post), "--to", str(csv), "--yes", "--force"]
    hold = smtp_server.hold(row(0).split(",")[0])  # the send waits for this reply while the list is edited
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hold.reached.wait(60), "the first message never arrived"
        final = EDITS[edit](csv, lines)
    finally:
        hold.release.set()
        _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    assert proc.returncode == 4, err  # stopped early (ExitStatus.STOPPED), not complete: not exit 0
    [error] = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert error.startswith(f"Error: {csv}")
    assert "run the same command again" in error
    first = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert set(first.values()) == {1}  # no one twice
    originals = [line.split(",")[0] for line in lines[1:]]
    assert set(first) <= set(originals)  # only rows of the version the send checked
    if edit == "truncated":  # rows cut off were never mailed: the send stopped at the changed block
        assert not set(first) & set(originals[EDIT_AT - 1 :])
    if edit == "rewritten in place":  # the row changed on disk: its old address was never mailed
        assert originals[EDIT_AT - 1] not in first
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    wanted = {line.split(",")[0] for line in final[1:]}
    total = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert set(total) - set(first) == wanted - set(first)  # the rerun mails exactly who is left
    assert all(total[address] == 1 for address in wanted)  # everyone now in the list: one message
