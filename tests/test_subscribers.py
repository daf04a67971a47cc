"""The subscriber CSV reader: formats, validation, duplicates, bad rows and streaming."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.csvfile import MAX_LINE
from mailer.errors import SubscriberError
from mailer.subscribers import (
    BadRow,
    ReadStats,
    Subscriber,
    dedupe_key,
    normalize_email,
    read_subscribers,
)
from tests.conftest import Heard, examples


def write(tmp_path: Path, data: bytes | str, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def read_all(path: Path) -> tuple[list[Subscriber], list[BadRow], ReadStats]:
    heard = Heard()
    stats = ReadStats()
    subs = list(read_subscribers(path, voice=heard, stats=stats))
    return subs, heard.skipped(), stats


def test_reads_header_columns_names_and_normalises_addresses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        b"\xef\xbb\xbf Email , NAME ,City\r\n"
        b"Alice@Example.COM,  Alice Liddell ,Oxford\r\n"
        b"bob@example.org,,\r\n" + "wang@b\u00fccher.de,\u738b\u82b3,\u4e0a\u6d77\r\n".encode(),
    )
    subs, bad, stats = read_all(path)
    assert bad == []
    assert [s.email for s in subs] == [
        "Alice@example.com",
        "bob@example.org",
        "wang@xn--bcher-kva.de",
    ]
    assert [s.name for s in subs] == ["Alice Liddell", "", "\u738b\u82b3"]
    assert [s.line for s in subs] == [2, 3, 4]
    assert dict(subs[0].fields) == {
        "email": "Alice@example.com",
        "name": "Alice Liddell",
        "city": "Oxford",
    }
    assert subs[2].fields["city"] == "\u4e0a\u6d77"
    assert subs[0].key == "alice@example.com"
    assert (stats.rows, stats.valid, stats.invalid, stats.duplicates) == (3, 3, 0, 0)


def test_fields_are_read_only(tmp_path: Path) -> None:
    (sub,) = read_subscribers(write(tmp_path, "email\na@example.com\n"))
    with pytest.raises(TypeError):
        sub.fields["email"] = "other@example.com"  # type: ignore[index]


def test_name_column_is_optional_and_short_or_long_rows_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "email,city\na@example.com\nb@example.com,Rome,extra,cells\n")
    subs, bad, _ = read_all(path)
    assert bad == []
    assert [(s.email, s.name, dict(s.fields)) for s in subs] == [
        ("a@example.com", "", {"email": "a@example.com", "city": ""}),
        ("b@example.com", "", {"email": "b@example.com", "city": "Rome"}),
    ]


def test_duplicates_are_case_insensitive_yielded_once_and_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "email,name\nAnn@Example.com,First\nc@example.com,C\nann@EXAMPLE.COM,Second\nANN@example.com,Third\n",
    )
    subs, bad, stats = read_all(path)
    assert [(s.email, s.name) for s in subs] == [("Ann@example.com", "First"), ("c@example.com", "C")]
    assert bad == []  # a duplicate is counted, not said: the send's report gives the count
    assert [s.line for s in subs] == [2, 3]  # rows 4 and 5 were the duplicates
    assert (stats.rows, stats.valid, stats.invalid, stats.duplicates) == (4, 2, 0, 2)


def test_an_idn_domain_and_its_punycode_are_the_same_subscriber(tmp_path: Path) -> None:
    path = write(tmp_path, "email\nx@M\u00fcnchen.de\nX@xn--mnchen-3ya.DE\n")
    subs, _, stats = read_all(path)
    assert [s.email for s in subs] == ["x@xn--mnchen-3ya.de"]
    assert [s.line for s in subs] == [2] and stats.duplicates == 1  # row 3 was the duplicate
    assert dedupe_key("X@M\u00fcnchen.DE") == dedupe_key("x@xn--mnchen-3ya.de")


def test_bad_rows_are_reported_with_line_and_reason_and_skipped(tmp_path: Path) -> None:
    rows = [
        "email,name,note",  # 1
        "good1@example.com,Good,",  # 2
        "not-an-address,Nobody,",  # 3
        ",Empty,",  # 4
        "bell@example.com,Ding\x07Dong,",  # 5
        "nul@example.com,Nu\x00ll,",  # 6
        "x" * 250 + "@example.com,Long,",  # 7
        "long@example.com," + "n" * 201 + ",",  # 8
        "two@@example.com,Two,",  # 9
        "tab@example.com,Tab\there,ok",  # 10: a tab in a name is harmless
        "dots..x@example.com,,",  # 11
        "a@localhost,,",  # 12
        "good2@example.com,Good2,",  # 13
    ]
    subs, bad, stats = read_all(write(tmp_path, "\n".join(rows) + "\n"))
    assert [s.line for s in subs] == [2, 10, 13]
    assert subs[1].name == "Tab\there"
    by_line = {b.line: b.reason for b in bad}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9, 11, 12]
    assert "'not-an-address'" in by_line[3] and "@" in by_line[3]
    assert by_line[4] == "empty email"
    assert "U+0007" in by_line[5] and "'bell@example.com'" in by_line[5] and "'name'" in by_line[5]
    assert "U+0000" in by_line[6]
    assert "254" in by_line[7]
    assert "200" in by_line[8] and "'long@example.com'" in by_line[8]
    assert "two@@example.com" in by_line[9]
    assert "dots..x@example.com" in by_line[11]
    assert "a@localhost" in by_line[12]
    assert (stats.rows, stats.valid, stats.invalid, stats.duplicates) == (12, 3, 9, 0)
    assert str(bad[0]) == f"{tmp_path / 'list.csv'}:3: {by_line[3]}"


def test_quotes_and_blank_lines_keep_physical_line_numbers(tmp_path: Path) -> None:
    data = (
        'email,name\r\na@example.com,"Ann ""The Ace"" Smith"\r\n'
        '"b@example.com","Lovelace, Ada"\r\n'
        "\r\n"
        ",\r\n"
        "d@example.com,Dee\r\n"
    )
    subs, bad, stats = read_all(write(tmp_path, data))
    assert [(s.email, s.line) for s in subs] == [("a@example.com", 2), ("b@example.com", 3)] + [
        ("d@example.com", 6)
    ]
    assert [s.name for s in subs] == ['Ann "The Ace" Smith', "Lovelace, Ada", "Dee"]
    assert bad == [] and stats.rows == 3  # lines 4 and 5 hold nothing: not rows


def refusal(path: Path) -> str:
    with pytest.raises(SubscriberError) as info:
        read_subscribers(path)  # before the first row is asked for
    return str(info.value)


def test_a_quoted_field_over_several_lines_refuses_the_list_naming_where_it_opens(tmp_path: Path) -> None:
    # a quote closed two lines later and one never closed look the same to a reader: both hide rows
    closed = write(
        tmp_path, 'email,name\r\na@example.com,A\r\nb@example.com,"two\r\nline\r\nname"\r\n', "a.csv"
    )
    assert refusal(closed) == (
        f"{closed}:3: a quoted field opens on this line and runs to line 5 (the end of the file): the 2"
        " line(s) after it are read as part of one field (an unbalanced quote?); nothing was sent"
    )
    unclosed = write(
        tmp_path, 'email,name\na@example.com,A\nb@example.com,"oops\nc@example.com,C\nd@x.org\n', "b.csv"
    )
    assert refusal(unclosed).startswith(f"{unclosed}:3: a quoted field opens on this line and runs to line 5")


def test_a_quote_opened_on_the_last_line_refuses_the_list(tmp_path: Path) -> None:
    path = write(tmp_path, 'email,name\na@example.com,A\nb@example.com,"oops\n')
    assert refusal(path).startswith(f"{path}:3: a quoted field opens on this line and is never closed")


def test_several_broken_quotes_are_all_named_in_the_one_line(tmp_path: Path) -> None:
    quote = ['"' if i % 3 == 0 else "" for i in range(31)]  # rows 3, 6, 9, ... (lines 4, 7, 10, ...)
    rows = ["email,name"] + [f"r{i}@example.com,{quote[i]}R{i}" for i in range(1, 31)]
    path = write(tmp_path, "\n".join(rows) + "\n")
    message = refusal(path)
    assert message.startswith(f"{path}:4: a quoted field opens on this line and runs to line 7:")
    assert "(also line(s) 10, 16, 22, 28)" in message  # each quote closes at the next one


def test_a_list_not_saved_as_utf8_is_refused_naming_the_first_line(tmp_path: Path) -> None:
    data = (
        b"email,name\n"
        + "ana@example.com,Ana \u00c1lvarez\n".encode()
        + "jose@example.com,Jos\u00e9\n".encode("latin-1")
        + "rene@example.com,Ren\u00e9\n".encode("latin-1")
    )
    path = write(tmp_path, data)
    column = len("jose@example.com,Jos") + 1
    assert refusal(path) == (
        f"{path}:3: not UTF-8 (byte 0xe9 at column {column}): save the file as UTF-8 (also line(s) 4);"
        " nothing was sent"
    )


def test_a_header_only_list_and_a_list_without_one_good_row_are_refused(tmp_path: Path) -> None:
    header_only = write(tmp_path, "email,name\n\n,\n", "a.csv")
    assert (
        refusal(header_only)
        == f"{header_only}: no subscribers in it, only the header line (add one reader a line)"
    )
    no_good = write(tmp_path, "email,name\nnope,A\nno@pe@example.com,B\n", "b.csv")
    heard = Heard()
    rows = read_subscribers(no_good, voice=heard)
    with pytest.raises(SubscriberError) as info:
        list(rows)  # the rows are only judged as they are read
    bad = heard.skipped()
    assert str(info.value) == (
        f"{no_good}: none of its 2 row(s) has a valid address (line 2: {bad[0].reason}); nothing was sent"
    )
    assert [b.line for b in bad] == [2, 3]


def test_a_stray_carriage_return_is_a_bad_row(tmp_path: Path) -> None:
    data = b"email,name\na@example.com,Car\rriage\nb@example.com,B\n"
    subs, bad, _ = read_all(write(tmp_path, data))
    assert [s.line for s in subs] == [3]
    assert [b.line for b in bad] == [2]


def test_an_overlong_line_is_a_bad_row(tmp_path: Path) -> None:
    data = b"email,name\na@example.com," + b"x" * (MAX_LINE + 10) + b"\nb@example.com,B\n"
    subs, bad, _ = read_all(write(tmp_path, data))
    assert [s.line for s in subs] == [3]
    assert [b.line for b in bad] == [2]
    assert "longer than" in bad[0].reason


def test_a_voice_is_optional_and_stats_still_count(tmp_path: Path) -> None:
    stats = ReadStats()
    path = write(tmp_path, "email\nbad\ngood@example.com\n")
    assert [s.email for s in read_subscribers(path, stats=stats)] == ["good@example.com"]
    assert (stats.rows, stats.valid, stats.invalid) == (2, 1, 1)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, b"")
    assert refusal(path) == f"{path}: the file is empty (a subscriber list starts with a header line)"


@pytest.mark.parametrize(
    "data",
    [b"name,city\nAnn,Rome\n", b"a@example.com,Ann\n", b"\n\nemail\n"],
    ids=["no-email-column", "no-header", "blank-first-line"],
)
def test_no_email_column_is_a_subscriber_error(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, data)
    with pytest.raises(SubscriberError) as info:
        read_subscribers(path)  # fails before the first row is asked for
    assert str(info.value) == f"{path}: no 'email' column in the header line"


@pytest.mark.parametrize(
    ("header", "row"),
    [("email;name", "a@example.com;Ann"), ("E-Mail,Name", "a@example.com,Ann")],
)
def test_what_was_a_near_miss_header_is_now_read(tmp_path: Path, header: str, row: str) -> None:
    # issue 15: these two were refused with a hint ("save as comma-separated", "rename the column to
    # 'email'"); a semicolon-separated list and an `E-Mail` column are now understood as they are
    path = write(tmp_path, f"{header}\n{row}\n")
    [sub] = read_subscribers(path)
    assert (sub.email, sub.name) == ("a@example.com", "Ann")


def test_duplicate_header_column_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SubscriberError, match="'email' appears twice"):
        read_subscribers(write(tmp_path, "email,Email\na@example.com,b@example.com\n"))


def test_non_utf8_header_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SubscriberError, match="not UTF-8"):
        read_subscribers(write(tmp_path, "email,pr\u00e9nom\n".encode("latin-1")))


def test_missing_file_and_directory_are_errors_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(SubscriberError, match=str(missing)):
        read_subscribers(missing)
    with pytest.raises(SubscriberError, match="directory"):
        read_subscribers(tmp_path)


def test_a_pipe_is_refused_before_anyone_opens_it(tmp_path: Path) -> None:
    # the list is read twice (checked whole, then streamed), which a pipe cannot do; opening the FIFO
    # for reading would block until a writer came, so it is refused by its type, unopened
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(SubscriberError, match="not a regular file"):
        read_subscribers(fifo)


def test_an_abandoned_iterator_closes_its_file(tmp_path: Path) -> None:
    # filterwarnings=error turns a leaked file handle's ResourceWarning into a failure
    path = write(tmp_path, "email\na@example.com\nb@example.com\n")
    rows = read_subscribers(path)
    next(rows)
    del rows
    read_subscribers(path)  # never iterated at all


# mostly plausible addresses, some noise, so both the fast path and its fallbacks get exercised
LOCAL = st.from_regex(r"[a-zA-Z0-9+_'=-]{1,8}(\.[a-zA-Z0-9#!]{1,4})?", fullmatch=True) | st.text(
    alphabet="aZ09.-_+'!#=\u00e9\u738b\" @", max_size=10
)
LABEL = (
    st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?", fullmatch=True)
    | st.text(alphabet="abXY09-_\u00fc\u738b", max_size=8)
    | st.sampled_from(["xn--mnchen-3ya", "xn--", "example", "com", "test", "localhost", "123"])
)
TLD = st.sampled_from(["com", "DE", "co.uk", "xn--p1ai", "a", "1", "test", "local"]) | LABEL
DOMAIN = st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(LABEL, min_size=1, max_size=3), TLD)
PLAUSIBLE = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN)
ADDRESSES = st.one_of(PLAUSIBLE, PLAUSIBLE, st.text(alphabet="ab.@-\u00fc ", max_size=12))


@settings(max_examples=examples(500))
@given(ADDRESSES)
def test_fast_path_agrees_with_email_validator(raw: str) -> None:
    try:
        result = validate_email(raw, check_deliverability=False)
    except EmailNotValidError:
        with pytest.raises(ValueError):
            normalize_email(raw)
        return
    expected = result.ascii_email or f"{result.local_part}@{result.ascii_domain}"
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "Info@Example.com",  # RFC 2142 role names are lower-cased by email-validator
        "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 56 + ".com",
        "user@m\u00fcnchen.de",
        "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",
        "a@123.com",
        "a@b.123",
    ],
)
def test_fast_path_agrees_on_edge_cases(raw: str) -> None:
    try:
        result = validate_email(raw, check_deliverability=False)
    except EmailNotValidError:
        with pytest.raises(ValueError):
            normalize_email(raw)
        return
    assert normalize_email(raw) == (result.ascii_email or f"{result.local_part}@{result.ascii_domain}")


def test_a_local_part_over_64_octets_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "subs.csv"
    path.write_text(f"email\n{'a' * 64}@example.com\n{'b' * 65}@example.com\n", encoding="utf-8")
    heard = Heard()
    got = [s.email for s in read_subscribers(path, voice=heard)]
    bad = [str(row) for row in heard.skipped()]
    assert got == [f"{'a' * 64}@example.com"]
    assert len(bad) == 1 and bad[0].startswith(f"{path}:3:") and "64" in bad[0]
