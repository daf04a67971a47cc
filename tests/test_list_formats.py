"""Lists as other tools export them (issue 15, "Reading lists"): header names, separators, encodings.

The fixtures in tests/lists/ are written from each tool's documented column layout, not from this reader:
- mailchimp_*.csv: Mailchimp's audience export, one file per status (subscribed, unsubscribed, cleaned),
  as Mailchimp's help describes it ("Export your audience", "View unsubscribed and cleaned contacts":
  `Email Address`, `First Name`, `Last Name`, `Address`, `Phone Number`, ..., `MEMBER_RATING`, `OPTIN_TIME`,
  ..., `LEID`, `EUID`, `NOTES`, `TAGS`; the unsubscribed file adds `UNSUB_TIME`, `UNSUB_CAMPAIGN_TITLE`,
  `UNSUB_CAMPAIGN_ID`, `UNSUB_REASON`, `UNSUB_REASON_OTHER`, the cleaned one `CLEAN_TIME`,
  `CLEAN_CAMPAIGN_TITLE`, `CLEAN_CAMPAIGN_ID`).
- substack.csv: Substack's "Export subscribers" file (`email`, `active_subscription`, `expiry`, `plan`,
  `email_disabled`, `created_at`, `first_payment_at`), the layout Ghost's Substack-members migration reads.
- listmonk.csv: listmonk's subscriber export, as its handler writes it (cmd/subscribers.go,
  handleExportSubscribers: `uuid`, `email`, `name`, `attributes` (one JSON object), `status`
  (enabled / disabled / blocklisted), `created_at`, `updated_at`).
- ghost.csv: Ghost's members export (Members -> Export; the header Ghost's own export tests expect:
  `id`, `email`, `name`, `note`, `subscribed_to_emails`, `complimentary_plan`, `stripe_customer_id`,
  `created_at`, `deleted_at`, `labels`, `tiers`).
Spreadsheets are written here: Excel's "CSV UTF-8" (a BOM), a European Excel's semicolons, Excel's
"Unicode text" (UTF-16 LE with a BOM, tab-separated), and the address column's usual names.
"""

from __future__ import annotations

from email import message_from_bytes
from pathlib import Path

import pytest

from mailer.errors import SubscriberError
from mailer.subscribers import BadRow, ReadStats, Subscriber, read_subscribers
from tests import publisher
from tests.command import invoke as run
from tests.conftest import Heard
from tests.smtpd import SMTPServer

LISTS = Path(__file__).resolve().parent / "lists"
POST = Path(__file__).resolve().parent / "posts" / "english.md"


pytestmark = pytest.mark.usefixtures("in_tmp")


def read(path: Path) -> tuple[list[Subscriber], list[BadRow], ReadStats]:
    heard = Heard()
    stats = ReadStats()
    return list(read_subscribers(path, voice=heard, stats=stats)), heard.skipped(), stats


def received(server: SMTPServer) -> list[str]:
    return sorted(r for m in server.messages for r in m.rcpt_tos)


# --- item 1: the header names of the common exports ---------------------------------------------------


def test_a_mailchimp_export_is_read_with_first_and_last_name_as_name() -> None:
    subs, bad, stats = read(LISTS / "mailchimp_subscribed.csv")
    assert bad == [] and stats.tool == "Mailchimp"
    assert [(s.email, s.name, s.line) for s in subs] == [
        ("ann@example.com", "Ann Lee", 2),
        ("bob@example.com", "Bob", 3),
        ("cy@example.com", "Young", 4),
    ]
    ann = subs[0].fields
    assert ann["email"] == "ann@example.com" and "email address" not in ann
    assert (ann["first name"], ann["last name"], ann["member_rating"]) == ("Ann", "Lee", "4")
    assert ann["tags"] == '"Early readers"' and subs[2].fields["notes"] == "moved, new address"


def test_a_substack_export_is_read() -> None:
    subs, bad, stats = read(LISTS / "substack.csv")
    assert bad == [] and stats.tool == "Substack"
    assert subs[0].email == "gus@example.com" and subs[0].name == ""
    assert subs[1].fields["plan"] == "yearly"


def test_a_ghost_export_is_read() -> None:
    subs, bad, stats = read(LISTS / "ghost.csv")
    assert bad == [] and stats.tool == "Ghost"
    assert (subs[0].email, subs[0].name, subs[0].fields["labels"]) == (
        "ned@example.com",
        "Ned Stark",
        "Migrated, Friends",
    )


def test_a_listmonk_export_has_its_attributes_as_fields_one_level_deep() -> None:
    subs, bad, stats = read(LISTS / "listmonk.csv")
    assert bad == [] and stats.tool == "listmonk"
    kim = subs[0]
    assert (kim.email, kim.name) == ("kim@example.com", "Kim Park")
    assert kim.fields["city"] == "Seoul"  # attributes.city -> city
    assert kim.fields["score"] == "7"
    assert kim.fields["plan"] == '{"tier": "pro"}'  # deeper levels stay JSON
    assert kim.fields["name"] == "Kim Park"  # a column wins over an attribute of the same name
    assert "attributes" not in kim.fields
    when = "2024-05-03 10:00:00 +0000 UTC"
    assert dict(subs[1].fields) == {
        "uuid": "5f2f4c1e-0000-4000-8000-000000000002", "email": "lea@example.com", "name": "Lea",
        "status": "enabled", "created_at": when, "updated_at": when,
    }  # fmt: skip


def test_bad_attributes_json_is_one_bad_row_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "listmonk.csv"
    path.write_text(
        "uuid,email,name,attributes,status\n"
        'u1,kim@example.com,Kim,"{""city"": ""Seoul""",enabled\n'
        "u2,lea@example.com,Lea,[1],enabled\n"
        'u3,max@example.com,Max,"{""city"": ""Oslo""}",enabled\n'
    )
    subs, bad, _ = read(path)
    assert [s.email for s in subs] == ["max@example.com"]
    assert [str(b) for b in bad] == [
        f"{path}:2: 'kim@example.com': the 'attributes' field is not JSON: Expecting ',' delimiter:"
        " line 1 column 17 (char 16)",
        f"{path}:3: 'lea@example.com': the 'attributes' field is JSON but not an object (list)",
    ]


@pytest.mark.parametrize(
    "header",
    ["email", "Email", "EMAIL", "E-mail", "E-Mail", "e-mail address", "Email Address", "email_address",
     "EmailAddress", "mail"],
)  # fmt: skip
def test_the_address_column_goes_by_its_usual_names(tmp_path: Path, header: str) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text(f"Name,{header},City\nAnn,ann@example.com,Rome\n")
    [sub] = read(path)[0]
    assert (sub.email, sub.name, sub.fields["city"]) == ("ann@example.com", "Ann", "Rome")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("email,E-mail,name", "'email' (column 1) and 'E-mail' (column 2) both name the address"),
        ("Email Address,mail", "'Email Address' (column 1) and 'mail' (column 2) both name the address"),
        ("email,First Name,fname", "'First Name' (column 2) and 'fname' (column 3) both name the first name"),
    ],
)
def test_two_columns_named_like_one_thing_are_refused_naming_both(
    tmp_path: Path, header: str, message: str
) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text(f"{header}\na@example.com,b@example.com,c\n")
    with pytest.raises(SubscriberError) as info:
        read_subscribers(path)
    assert str(info.value) == f"{path}:1: {message}: keep one of them (or rename the other)"


def test_a_name_column_wins_over_first_and_last_name(tmp_path: Path) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text("email,first_name,last_name,name\na@example.com,Ann,Lee,Dr Ann Lee\n")
    [sub] = read(path)[0]
    assert sub.name == "Dr Ann Lee" and sub.fields["first_name"] == "Ann"


def test_a_mailchimp_export_is_mailed_with_each_readers_name(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    result = run(
        ["send", str(post), "--to", str(LISTS / "mailchimp_subscribed.csv"), "--yes", "--force"],
        publisher.env_for(smtp_server, tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert received(smtp_server) == ["ann@example.com", "bob@example.com", "cy@example.com"]
    to = {m.rcpt_tos[0]: message_from_bytes(m.data)["To"] for m in smtp_server.messages}
    assert (to["ann@example.com"], to["cy@example.com"]) == (
        "Ann Lee <ann@example.com>",
        "Young <cy@example.com>",
    )


# --- item 2: separators and encodings ---------------------------------------------------------------------

ROWS = [["email", "name"], ["ann@example.com", "Ann Lée"], ["bob@example.com", "Bob, Jr."]]


def _text(delimiter: str) -> str:
    quote = '"'
    return "".join(
        delimiter.join(f"{quote}{c}{quote}" if delimiter in c or "," in c else c for c in row) + "\r\n"
        for row in ROWS
    )


@pytest.mark.parametrize(
    ("delimiter", "encoding", "bom"),
    [
        (",", "utf-8", b""),
        (",", "utf-8", b"\xef\xbb\xbf"),  # Excel's "CSV UTF-8"
        (";", "utf-8", b"\xef\xbb\xbf"),  # a European Excel
        ("\t", "utf-16-le", b"\xff\xfe"),  # Excel's "Unicode text"
        (",", "utf-16-le", b"\xff\xfe"),
        (";", "utf-16-be", b"\xfe\xff"),
        ("\t", "utf-8", b""),
    ],
    ids=["utf8", "utf8-bom", "semicolons", "unicode-text", "utf16le-comma", "utf16be-semicolons", "tabs"],
)
def test_separators_and_encodings_are_found(
    tmp_path: Path, delimiter: str, encoding: str, bom: bytes
) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(bom + _text(delimiter).encode(encoding))
    subs, bad, stats = read(path)
    assert bad == []
    assert [(s.email, s.name, s.line) for s in subs] == [
        ("ann@example.com", "Ann Lée", 2),
        ("bob@example.com", "Bob, Jr.", 3),
    ]
    assert stats.expected == 2


def test_a_utf16_list_is_mailed_and_its_key_is_the_files_sha256(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    import hashlib
    import sqlite3

    path = tmp_path / "list.txt"
    path.write_bytes(b"\xff\xfe" + _text("\t").encode("utf-16-le"))
    env = publisher.env_for(smtp_server, tmp_path)
    result = run(["send", str(post), "--to", str(path), "--yes", "--force"], env)
    assert result.exit_code == 0, result.output
    assert received(smtp_server) == ["ann@example.com", "bob@example.com"]
    with sqlite3.connect(tmp_path / "state" / "mailer.db") as db:
        [(key,)] = db.execute("SELECT list_key FROM runs").fetchall()
    assert key == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_row_of_a_utf16_file_longer_than_the_line_limit_is_one_bad_row(tmp_path: Path) -> None:
    from unittest.mock import patch

    from mailer import csvfile

    path = tmp_path / "list.csv"
    path.write_bytes(("email,name\na@example.com," + "x" * 300 + "\nb@example.com,B\n").encode("utf-16"))
    with patch.object(csvfile, "MAX_LINE", 100), patch.object(csvfile, "BLOCK", 64):
        subs, bad, _ = read(path)
    assert [s.email for s in subs] == ["b@example.com"]
    assert [(b.line, b.reason) for b in bad] == [(2, "line 2 is longer than 100 bytes")]


UNREADABLE = {
    "UTF-16 without a byte-order mark": (
        "email,name\nann@example.com,Ann\n".encode("utf-16-le"),
        "{csv}: no 'email' column in the header line (it holds NUL bytes: UTF-16 without a byte-order mark,"
        " or not text at all? save the file as UTF-8 CSV)",
    ),
    "UTF-32": (
        "email,name\nann@example.com,Ann\n".encode("utf-32"),
        "{csv}: no 'email' column in the header line (it holds NUL bytes",
    ),
    "Windows-1252": (
        "email,name\nann@example.com,Ren\u00e9e\n".encode("cp1252"),
        "{csv}:2: not UTF-8 (byte 0xe9 at column 20): save the file as UTF-8; nothing was sent",
    ),
    "mixed: a UTF-8 file with a Latin-1 row appended": (
        "email,name\nann@example.com,Ann Lée\n".encode() + "bob@example.com,Björn\n".encode("latin-1"),
        "{csv}:3: not UTF-8 (byte 0xf6 at column 19): save the file as UTF-8; nothing was sent",
    ),
    "mixed: a UTF-16 file with a UTF-8 row appended": (
        "email,name\nann@example.com,Ann\n".encode("utf-16") + b"bob@example.com,Bo\n",
        "{csv}:3: the file is UTF-16 but this line ends in the middle of a character: save the file as"
        " UTF-8; nothing was sent",
    ),
    "UTF-16 with a lone surrogate": (
        b"\xff\xfe" + "email,name\nann@example.com,A".encode("utf-16-le") + b"\x00\xd8\n\x00",
        "{csv}:2: the file is UTF-16 but this line has bytes that are not UTF-16 (illegal UTF-16 surrogate):"
        " save the file as UTF-8; nothing was sent",
    ),
    "header only, UTF-16": (
        "email,name\r\n".encode("utf-16"),
        "{csv}: no subscribers in it, only the header line (add one reader a line)",
    ),
    "header only, semicolons": (
        b"email;name\n\n",
        "{csv}: no subscribers in it, only the header line (add one reader a line)",
    ),
    "column twice, tabs": (b"email\tname\tEmail\na@example.com\tA\tb@example.com\n",
                           "{csv}:1: column 'email' appears twice in the header line"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_a_list_in_an_encoding_not_understood_is_one_clear_line_and_no_message(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, case: str
) -> None:
    data, message = UNREADABLE[case]
    csv = tmp_path / "list.csv"
    csv.write_bytes(data)
    result = run(
        ["send", str(post), "--to", str(csv), "--yes", "--force"], publisher.env_for(smtp_server, tmp_path)
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith("Error: " + message.format(csv=csv)), result.stderr
    assert "_csv.Error" not in result.output and "line contains NUL" not in result.output
    assert smtp_server.messages == []


def test_a_utf8_row_of_even_length_appended_to_a_utf16_file_is_one_named_bad_row(tmp_path: Path) -> None:
    # its bytes pair up into UTF-16 characters (CJK-looking text, no line end): nothing can tell it from
    # text, but it is never mailed and the line is named
    path = tmp_path / "list.csv"
    path.write_bytes("email,name\nann@example.com,Ann\n".encode("utf-16") + b"bob@example.com,Bob\n")
    subs, bad, _ = read(path)
    assert [s.email for s in subs] == ["ann@example.com"]
    assert [b.line for b in bad] == [3] and "invalid address" in bad[0].reason


# --- item 3: status columns -------------------------------------------------------------------------------

SENT_FROM = {
    # export: (mailed, (skipped count, reason))
    "substack.csv": (
        ["gus@example.com", "hal@example.com"], {"email disabled (Substack)": 1, "inactive (Substack)": 1}
    ),
    "listmonk.csv": (["kim@example.com", "lea@example.com"], {"blocklisted (listmonk)": 1}),
    "ghost.csv": (["ned@example.com", "pia@example.com"], {"not subscribed to emails (Ghost)": 1}),
    "mailchimp_subscribed.csv": (["ann@example.com", "bob@example.com", "cy@example.com"], {}),
}  # fmt: skip


@pytest.mark.parametrize("export", list(SENT_FROM))
def test_rows_an_export_marks_are_not_mailed_and_are_counted(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, export: str
) -> None:
    import json

    mailed, reasons = SENT_FROM[export]
    result = run(
        ["send", str(post), "--to", str(LISTS / export), "--yes", "--force", "--json"],
        publisher.env_for(smtp_server, tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert received(smtp_server) == mailed
    out = json.loads(result.stdout)
    assert out["counts"]["sent"] == len(mailed) and out["counts"]["skipped"] == sum(reasons.values())
    _, _, stats = read(LISTS / export)
    assert stats.check.reasons == reasons and stats.skipped == sum(reasons.values())


def test_a_flag_neither_true_nor_false_is_a_bad_row_never_mailed(tmp_path: Path) -> None:
    path = tmp_path / "substack.csv"
    path.write_text("email,active_subscription,email_disabled\na@example.com,true,maybe\nb@example.com,,\n")
    subs, bad, _ = read(path)
    assert [s.email for s in subs] == ["b@example.com"]  # empty flags say nothing: mailed
    assert [str(b) for b in bad] == [
        f"{path}:2: 'a@example.com': the 'email_disabled' field is 'maybe', neither true nor false"
    ]


@pytest.mark.parametrize(
    ("export", "reason"),
    [
        ("mailchimp_unsubscribed.csv", "2 unsubscribed (Mailchimp)"),
        ("mailchimp_cleaned.csv", "1 cleaned (Mailchimp: bounced)"),
    ],
)  # fmt: skip
def test_sending_to_an_unsubscribed_export_is_refused_pointing_to_the_import(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, export: str, reason: str
) -> None:
    path = LISTS / export
    result = run(
        ["send", str(post), "--to", str(path), "--yes", "--force"], publisher.env_for(smtp_server, tmp_path)
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [
        f"Error: {path}: none of its {reason.split()[0]} row(s) is to be mailed ({reason}); nothing was sent"
        f" (to suppress these addresses: mailer suppressions import {path})"
    ]
    assert smtp_server.messages == []


IMPORTED = {
    "mailchimp_unsubscribed.csv": (
        {"dan@example.com": "unsubscribed (Mailchimp)", "eve@example.com": "unsubscribed (Mailchimp)"}, 0
    ),
    "mailchimp_cleaned.csv": ({"fay@example.com": "cleaned (Mailchimp: bounced)"}, 0),
    "substack.csv": (
        {"ivy@example.com": "email disabled (Substack)", "jon@example.com": "inactive (Substack)"}, 2
    ),
    "listmonk.csv": ({"max@example.com": "blocklisted (listmonk)"}, 2),
    "ghost.csv": ({"ola@example.com": "not subscribed to emails (Ghost)"}, 2),
}  # fmt: skip


@pytest.mark.parametrize("export", list(IMPORTED))
def test_importing_an_export_as_suppressions_takes_exactly_the_rows_it_marks(
    tmp_path: Path, export: str
) -> None:
    from mailer.ledger import Ledger

    wanted, kept = IMPORTED[export]
    result = run(
        ["suppressions", "import", str(LISTS / export)], {"MAILER_DATA_DIR": str(tmp_path / "state")}
    )
    assert result.exit_code == 0, result.output
    line = f"{len(wanted)} newly suppressed, 0 already suppressed, 0 bad line(s) skipped"
    if kept:
        line += f"; {kept} still subscribed in the {export.split('.')[0].split('_')[0].title()} export"
    assert line.lower() in result.stdout.lower()
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        got = {s.email: s.reason for s in ledger.suppressions()}
    assert got == {email: f"imported from {export}: {why}" for email, why in wanted.items()}


def test_importing_an_export_where_no_one_is_marked_imports_nothing_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "ghost.csv"
    path.write_text("id,email,name,subscribed_to_emails\n1,a@example.com,A,true\n2,b@example.com,B,true\n")
    result = run(["suppressions", "import", str(path)], {"MAILER_DATA_DIR": str(tmp_path / "state")})
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {path}: none of its 2 row(s) is marked as not to be mailed (Ghost export: 2 still"
        " subscribed); nothing was imported"
    )


def test_a_utf16_unsubscribed_export_with_tabs_is_imported(tmp_path: Path) -> None:
    path = tmp_path / "unsubscribed.txt"
    text = (LISTS / "mailchimp_unsubscribed.csv").read_text()
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    out = io.StringIO()
    csv.writer(out, delimiter="\t").writerows(rows)
    path.write_bytes(out.getvalue().encode("utf-16"))
    result = run(["suppressions", "import", str(path)], {"MAILER_DATA_DIR": str(tmp_path / "state")})
    assert result.exit_code == 0, result.output
    assert "2 newly suppressed" in result.stdout


@pytest.mark.parametrize(
    "header",
    ["email", "E-mail", "Email Address", "e-mail address", "email_address", "Mail", "Email Address;Address",
     "Address,Email Address", "address"],
)  # fmt: skip
def test_a_suppression_file_finds_its_address_column_by_the_lists_own_names(
    tmp_path: Path, header: str
) -> None:
    """One copy of the names (listformat's), plus Mailgun's `address`, which loses to any of them."""
    from mailer.ledger import Ledger

    sep = ";" if ";" in header else ","
    cells = ["9 Harbour Road" if "address" == c.strip().lower() and "Email" in header else "ann@example.com"
             for c in header.split(sep)]  # fmt: skip
    path = tmp_path / "suppress.csv"
    path.write_text(f"{header}\n{sep.join(cells)}\n", encoding="utf-8")
    result = run(["suppressions", "import", str(path)], {"MAILER_DATA_DIR": str(tmp_path / "state")})
    assert result.exit_code == 0, result.output
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        assert [s.email for s in ledger.suppressions()] == ["ann@example.com"]
