"""Reading the bounce mailbox's messages: every fixture of tests/bounces/ (one per format, written from each
format's documented or well-known layout), what flufl.bounce alone makes of them, and hostile messages.

The expectations below are written by hand from the fixtures' text; docs/bounces.md shows the same table.
"""

from __future__ import annotations

import email
from pathlib import Path

import pytest
from flufl.bounce import all_failures

from mailer.bounces import COMPLAINT, HARD, SOFT
from mailer.reports import (
    ARF,
    AUTO_REPLY,
    BOUNCE,
    DSN,
    MAX_PARTS,
    NOTICE,
    OTHER,
    Unreadable,
    read_report,
)

FIXTURES = Path(__file__).parent / "bounces"

# fixture: (what it is read as: BOUNCE by flufl.bounce, the others by mailer; [(address, kind, status)])
EXPECTED: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "postfix": (DSN, [("gone@example.net", HARD, "5.1.1")]),
    "exim": (BOUNCE, [("nobody@example.com", HARD, "5.1.1")]),
    "exchange": (BOUNCE, [("left.company@example.com", HARD, "5.1.1")]),
    "outlook": (DSN, [("jane.doe@contoso.example", HARD, "5.1.10")]),
    "gmail": (DSN, [("lost.reader@example.com", HARD, "5.1.1")]),
    "yahoo": (BOUNCE, [("old.account@example.com", HARD, "")]),
    "ses": (DSN, [("bounced.reader@example.com", HARD, "5.1.1")]),
    "qmail": (BOUNCE, [("ghost@example.net", HARD, "5.1.1")]),
    "multi": (
        DSN,
        [("first.gone@example.net", HARD, "5.1.1"), ("second.full@example.net", SOFT, "5.2.2")],
    ),
    "delayed": (DSN, [("slow.server@example.net", SOFT, "4.4.1")]),
    "autoreply": (AUTO_REPLY, []),
    "vacation": (AUTO_REPLY, []),
    "arf": (ARF, [("annoyed@example.com", COMPLAINT, "")]),
    # the reader's address is redacted: the quoted Message-ID names them (attribution, test_bounce_reading)
    "arf-redacted": (ARF, [("redacted@example.com", COMPLAINT, "")]),
    "non-utf8": (DSN, [("parti@example.fr", HARD, "5.1.1")]),
    "malformed": (DSN, [("broken.tree@example.net", HARD, "5.1.1")]),
}

# what flufl.bounce's all_failures() alone finds: (permanent, temporary)
FLUFL: dict[str, tuple[set[str], set[str]]] = {
    "postfix": ({"gone@example.net"}, set()),
    "exim": ({"nobody@example.com"}, set()),
    "exchange": ({"left.company@example.com"}, set()),
    "outlook": ({"jane.doe@contoso.example"}, set()),
    "gmail": ({"lost.reader@example.com"}, set()),
    "yahoo": ({"old.account@example.com"}, set()),
    "ses": ({"bounced.reader@example.com"}, set()),
    "qmail": ({"ghost@example.net"}, set()),
    "multi": ({"first.gone@example.net", "second.full@example.net"}, set()),  # a full mailbox: permanent
    "delayed": (set(), {"slow.server@example.net"}),
    "autoreply": (set(), set()),
    "vacation": (set(), set()),
    "arf": (set(), set()),  # complaints are not its business
    "arf-redacted": (set(), set()),
    "non-utf8": ({"parti@example.fr"}, set()),
    "malformed": ({"broken.tree@example.net"}, set()),
}


def _raw(name: str) -> bytes:
    return (FIXTURES / f"{name}.eml").read_bytes()


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.eml")) == sorted(EXPECTED) == sorted(FLUFL)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_is_read_as_its_format(name: str) -> None:
    what, failures = EXPECTED[name]
    report = read_report(_raw(name))
    assert report.what == what
    assert [(f.email, f.kind, f.status) for f in report.failures] == failures
    assert report.sent_to[0] == "bounces@example.org"
    assert report.report_id.startswith("<") and report.at.tzinfo is not None


@pytest.mark.parametrize("name", sorted(FLUFL))
def test_what_flufl_bounce_alone_finds(name: str) -> None:
    temporary, permanent = all_failures(email.message_from_bytes(_raw(name)))
    found = ({a.decode() for a in permanent}, {a.decode() for a in temporary})
    assert found == FLUFL[name]


def test_the_server_words_are_kept() -> None:
    [postfix] = read_report(_raw("postfix")).failures
    assert postfix.diagnostic == (
        "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown in virtual mailbox table"
    )
    [exchange] = read_report(_raw("exchange")).failures
    assert "The e-mail account does not exist" in exchange.diagnostic
    [yahoo] = read_report(_raw("yahoo")).failures
    assert yahoo.diagnostic.startswith("554: delivery error: dd This user doesn't have")
    [delayed] = read_report(_raw("delayed")).failures
    assert delayed.diagnostic == "connect to mail.example.net[198.51.100.26]:25: Connection timed out"
    [arf] = read_report(_raw("arf")).failures
    assert arf.diagnostic == "feedback-type abuse from ExampleFBL/1.0"


def test_the_message_a_report_is_about() -> None:
    """The quoted copy's Message-ID (headers only, whole message, or inline text) comes first."""
    for name in ("postfix", "gmail", "exim", "qmail", "yahoo", "exchange", "arf", "arf-redacted"):
        ids = read_report(_raw(name)).original_ids
        assert ids and ids[0].startswith("<2026-02-09.") and ids[0].endswith("@example.org>"), (name, ids)


def test_a_delivery_notice_is_no_bounce() -> None:
    text = (
        _raw("postfix")
        .replace(b"Action: failed", b"Action: delivered")
        .replace(b"Status: 5.1.1", b"Status: 2.0.0")
    )
    report = read_report(text)
    assert (report.what, report.failures) == (NOTICE, ())


def test_a_mail_system_message_no_detector_reads_is_other() -> None:
    raw = b"From: MAILER-DAEMON@mx.example.net\nTo: bounces@example.org\nSubject: hello\n\nnothing here\n"
    assert read_report(raw).what == OTHER


def test_a_person_writing_to_the_bounce_address_is_other() -> None:
    """Even one who quotes an address and an error: flufl's heuristics are not run on people's mail."""
    raw = (
        b"From: Someone <someone@example.com>\nTo: bounces@example.org\nSubject: your newsletter\n\n"
        b"The following address failed:\n\n  friend@example.com\n    550 5.1.1 User unknown\n"
    )
    report = read_report(raw)
    assert (report.what, report.failures) == (OTHER, ())


def test_report_id_without_a_message_id_is_a_stable_hash() -> None:
    raw = _raw("qmail").replace(b"Message-ID: <20260208230013.12345.qmail@mail.example.net>\n", b"")
    first, second = read_report(raw), read_report(raw)
    assert first.report_id == second.report_id and first.report_id.startswith("sha256:")
    assert read_report(raw.replace(b"ghost", b"other")).report_id != first.report_id


# --- hostile ---------------------------------------------------------------------------------------------


def _dsn(recipients: list[str], extra: bytes = b"") -> bytes:
    blocks = b"".join(
        b"Final-Recipient: rfc822; %s\nAction: failed\nStatus: 5.1.1\n\n" % r.encode() for r in recipients
    )
    return (
        b"From: MAILER-DAEMON@mx.example.net\nTo: bounces@example.org\nMessage-ID: <many@mx.example.net>\n"
        b"MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
        b"--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
        + blocks
        + extra
        + b"--B--\n"
    )


def test_a_dsn_with_a_thousand_recipients() -> None:
    recipients = [f"reader{i:04}@example.net" for i in range(1000)]
    report = read_report(_dsn(recipients))
    assert [f.email for f in report.failures] == recipients
    assert {(f.kind, f.status) for f in report.failures} == {(HARD, "5.1.1")}


def test_a_huge_message_is_read_from_its_head() -> None:
    """A DSN with a 40 MB returned message: the report parts come first and are all that is needed."""
    attachment = (
        b"--B\nContent-Type: message/rfc822\n\nSubject: big\n\n" + b"x" * 76 + (b"\n" + b"x" * 76) * 500_000
    )
    raw = _dsn(["big.one@example.net"], attachment + b"\n")
    assert len(raw) > 38_000_000
    report = read_report(raw)
    assert [(f.email, f.kind) for f in report.failures] == [("big.one@example.net", HARD)]


def test_a_tree_nested_too_deep_is_unreadable() -> None:
    depth = 5000
    head = b"From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"
    parts = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth))
    raw = head + parts + b"Content-Type: text/plain\n\nhello\n"
    with pytest.raises(Unreadable, match="nested too deep"):
        read_report(raw)


def test_a_million_parts_are_not_all_looked_at() -> None:
    parts = b"".join(b"--B\nContent-Type: text/plain\n\npart %d\n" % i for i in range(MAX_PARTS * 20))
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=B\n\n" + parts + b"--B--\n"
    )
    assert read_report(raw).what == OTHER


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\x01\x02 binary garbage\xff\xfe", b"\n\nno headers at all\n"],
    ids=["empty", "binary", "no-headers"],
)
def test_not_a_message_is_unreadable(raw: bytes) -> None:
    with pytest.raises(Unreadable):
        read_report(raw)
