"""mailer.headers, tried hard: what may go into a header, checked once for every caller."""

from __future__ import annotations

import dataclasses
import email
import os
import sys
import unicodedata
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mailer.cli import cli
from mailer.config import ConfigError, Settings, load_config
from mailer.headers import (
    CONTROL,
    CONTROL_BUT_TAB,
    MAX_LOCAL,
    NAME_MAX,
    encode_text,
    mailbox,
    normalize_email,
    one_line,
    split_mailbox,
)
from mailer.message import MessageFactory
from mailer.post import load_post
from mailer.render import Issue, render_issue
from mailer.tokens import Keyring
from tests import publisher
from tests.conftest import EXAMPLE, examples
from tests.smtpd import SMTPServer

BREAKS = {"Cc", "Zl", "Zp", "Cs"}  # what must never reach a header line (Cs: cannot even be encoded)
# every Cc, Zl and Zp character, CR LF in every form, and encoded words that decode to a line break
HOSTILE = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in BREAKS - {"Cs"}]
HOSTILE += [
    "\r\n", "\n\r", "\r\r\n", "\r\n ", "\r\n\t", "\r\nBcc: victim@example.com", "\n\nbody", "\r\n\r\n",
    "=?utf-8?q?=0D=0ABcc:_x?=", "=?utf-8?b?DQpCY2M6IHg=?=", "=?UTF-8?Q?a?= =?UTF-8?Q?=0A?=", "=?", "?=",
    "=?iso-8859-1?q?=0d=0a?=", ",", ";", ":", "<", ">", '"', "\\", "@", "(", ")", "[", "]", " ", "é", "日报",
    "\u202e", "\ufeff", "\u200b",
]  # fmt: skip
TEXT = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=5)), max_size=16).map("".join)
# lone surrogates: what a non-UTF-8 byte in an environment variable decodes to
WITH_SURROGATES = st.lists(st.one_of(TEXT, st.characters(categories=["Cs"])), min_size=1, max_size=4).map(
    "".join
)
PROPERTY = hypothesis_settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def field_names(head: bytes) -> list[str]:
    """The header fields of raw header bytes: every line a field or a fold, CRLF only, no bare CR or LF."""
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
    names = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            assert names, line
            continue
        name, colon, _ = line.partition(b":")
        assert colon and name and b" " not in name, line
        names.append(name.decode("ascii"))
    return names


def expected_line(value: str) -> str:
    """The oracle for one_line, from Unicode categories: breaks and white space to single spaces."""
    spaced = "".join(" " if unicodedata.category(ch) in BREAKS or ch.isspace() else ch for ch in value)
    return " ".join(spaced.split())


# --- the character set -------------------------------------------------------------------------------------


def test_control_is_every_cc_zl_zp_and_surrogate_character_and_nothing_else() -> None:
    wrong = [
        hex(c)
        for c in range(sys.maxunicode + 1)
        if bool(CONTROL.match(chr(c))) != (unicodedata.category(chr(c)) in BREAKS)
    ]
    assert wrong == []


def test_control_but_tab_differs_from_control_in_the_tab_alone() -> None:
    differ = [
        c
        for c in range(sys.maxunicode + 1)
        if bool(CONTROL.match(chr(c))) != bool(CONTROL_BUT_TAB.match(chr(c)))
    ]
    assert differ == [0x09]


def test_every_character_a_line_reader_breaks_at_is_a_control() -> None:
    # str.splitlines() breaks at more than CR and LF: VT, FF, U+001C-001E, NEL, U+2028, U+2029
    breakers = [chr(c) for c in range(sys.maxunicode + 1) if len(f"a{chr(c)}b".splitlines()) > 1]
    assert len(breakers) >= 10 and all(CONTROL.match(ch) for ch in breakers)


# --- one_line ----------------------------------------------------------------------------------------------


@PROPERTY
@given(value=st.one_of(TEXT, WITH_SURROGATES))
@example(value="Ada Lovelace")
@example(value="  Ada\u00a0\u00a0Lovelace ")
@example(value="Ada\x9bLovelace")
@example(value="Null\x00byte")
def test_one_line_is_one_line_of_single_spaces_keeping_every_visible_character(value: str) -> None:
    line = one_line(value)
    assert line == expected_line(value)
    assert not CONTROL.search(line) and len(line.splitlines()) <= 1
    assert one_line(line) == line


# --- display names and unstructured text -------------------------------------------------------------------


@PROPERTY
@given(name=TEXT)
@example(name="=?utf-8?q?=0D=0ABcc:_x?=")
@example(name='Ed "the editor", <Boss>; \\ (x)')
@example(name="x" * 500)
@example(name="日报" * 200)
def test_a_display_name_reads_back_as_the_cleaned_name_in_one_header(name: str) -> None:
    head = f"To: {mailbox(name, 'ada@example.com')}\r\n".encode()
    assert field_names(head) == ["To"]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    message = parse(head + b"\r\nbody\r\n")
    [address] = message["To"].addresses
    assert address.addr_spec == "ada@example.com"
    # Python's address parser puts a space between the encoded words of a long name (RFC 2047 6.2 says
    # readers drop it): compared without spaces, every character is there and in order
    assert address.display_name.replace(" ", "") == one_line(name)[:NAME_MAX].replace(" ", "")


@PROPERTY
@given(text=TEXT)
@example(text="=?utf-8?b?DQpCY2M6IHg=?=")
@example(text="a" * 80 + " " + "b" * 2000)
def test_a_subject_reads_back_as_the_cleaned_text_in_one_header(text: str) -> None:
    head = f"Subject: {encode_text(text)}\r\n".encode()
    assert field_names(head) == ["Subject"]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert parse(head + b"\r\nbody\r\n")["Subject"] == one_line(text)


# --- addresses ---------------------------------------------------------------------------------------------

NOT_IN_AN_ADDRESS = set(',;<>()[]\\":') | {" ", "\t"}


@PROPERTY
@given(local=st.text(max_size=70), insert=st.sampled_from(HOSTILE), at=st.integers(0, 80))
@example(local="a" * 65, insert="", at=0)
@example(local="é" * 33, insert="", at=0)
@example(local='"a,b"', insert="", at=0)
@example(local="ada", insert="\r\nBcc: victim@example.com", at=3)
def test_an_address_is_one_address_or_refused(local: str, insert: str, at: int) -> None:
    raw = f"{local}@example.com"
    raw = raw[:at] + insert + raw[at:]
    try:
        address = normalize_email(raw)
    except ValueError:
        return
    assert address.count("@") == 1 and not CONTROL.search(address)
    assert not NOT_IN_AN_ADDRESS & set(address)
    assert len(address.rpartition("@")[0].encode()) <= MAX_LOCAL and len(address.encode()) <= 254


@pytest.mark.parametrize(
    ("local", "ok"),
    [("a" * 64, True), ("a" * 65, False), ("é" * 32, True), ("é" * 33, False), ("a." * 32 + "b", False)],
)
def test_the_part_before_the_at_is_at_most_64_octets(local: str, ok: bool) -> None:
    if ok:
        assert normalize_email(f"{local}@example.com") == f"{local}@example.com"
    else:
        with pytest.raises(ValueError):
            normalize_email(f"{local}@example.com")


@pytest.mark.parametrize(
    "raw",
    [
        "a@example.com,b@example.com", "a@example.com;b@example.com", "<a@example.com>", "A <a@example.com>",
        "a@example.com>", '"a,b"@example.com', "a b@example.com", "a@exa mple.com", "a@b@example.com",
        "a@example.com\r\nBcc: victim@example.com", "a@[127.0.0.1]", "(comment)a@example.com",
    ],
)  # fmt: skip
def test_what_is_not_one_plain_address_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_email(raw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ed@example.org", ("", "ed@example.org")),
        ("Ed <ed@example.org>", ("Ed", "ed@example.org")),
        ('"Ed, the editor" <ed@example.org>', ("Ed, the editor", "ed@example.org")),
        ("  Ed   <ed@example.org>  ", ("Ed", "ed@example.org")),
        ('Ed "x" <ed@example.org>', None),
        ("Ed <ed@example.org> <eve@example.org>", None),
        ("Ed <ed@example.org> Bcc: eve@example.org", None),
    ],
)
def test_split_mailbox(value: str, expected: tuple[str, str] | None) -> None:
    assert split_mailbox(value) == expected


# --- every caller: a built message has exactly the headers it should ---------------------------------------

HEADERS = [
    "From",
    "Subject",
    "List-Id",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
    "To",
    "Date",
]
HEADERS += ["Message-ID", "List-Unsubscribe"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        from_name="AI 日报",
        from_email="news@example.org",
        list_id="news.example.org",
        web_url="https://news.example.org",
        secret_key="test-secret-key-0123456789",
        data_dir=str(tmp_path_factory.mktemp("state")),
    )


@pytest.fixture(scope="module")
def issue(settings: Settings) -> Issue:
    return render_issue(load_post(EXAMPLE), settings)


@hypothesis_settings(
    max_examples=examples(100),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(title=TEXT, name=TEXT, list_name=TEXT, reply_to=TEXT, city=TEXT)
@example(title="", name="", list_name="", reply_to="Ed <ed@example.org>\r\nBcc: x@evil.example", city="")
@example(
    title="=?utf-8?q?=0D=0A?=", name="Eve\u2028Bcc: x", list_name="\x85", reply_to="a@b.example", city="\n"
)
def test_a_message_parses_back_with_exactly_its_own_headers(
    issue: Issue, settings: Settings, title: str, name: str, list_name: str, reply_to: str, city: str
) -> None:
    custom = dataclasses.replace(settings, list_name=list_name, reply_to=reply_to)
    keyring = Keyring(custom.secret_key)
    factory = MessageFactory(
        dataclasses.replace(issue, subject=title),
        custom,
        sign=lambda address: keyring.sign(address, custom.effective_list_id),
    )
    data = factory.build("ada@example.com", name, {"city": city})
    head = data.partition(b"\r\n\r\n")[0]
    names = field_names(head)
    has_reply_to = "Reply-To" in names
    assert names == HEADERS[:1] + ["Reply-To"] * has_reply_to + HEADERS[1:]
    message = parse(data)
    assert message["Subject"] == one_line(title)
    [to] = message["To"].addresses
    assert to.addr_spec == "ada@example.com"
    assert to.display_name.replace(" ", "") == one_line(name)[:NAME_MAX].replace(" ", "")
    if has_reply_to:
        [reply] = message["Reply-To"].addresses
        parts = split_mailbox(one_line(reply_to))
        assert parts is not None and reply.addr_spec == normalize_email(parts[1])


# --- the callers' own refusals -----------------------------------------------------------------------------


@given(name=st.sampled_from(["from_name", "list_name", "sample_name"]), bad=st.characters(categories=["Cs"]))
def test_a_setting_holding_a_lone_surrogate_is_refused_in_one_line(name: str, bad: str) -> None:
    # what a non-UTF-8 byte in an environment variable becomes; it could not be encoded into a message
    with pytest.raises(ConfigError) as caught:
        load_config(Path(os.devnull), env={f"MAILER_{name.upper()}": f"Daily{bad}"})
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_a_reply_to_with_a_quoted_name_is_kept_with_its_name() -> None:
    env = {"MAILER_REPLY_TO": '"Ed, the editor" <ed@example.org>'}
    settings = load_config(Path(os.devnull), env=env).settings
    assert split_mailbox(settings.reply_to) == ("Ed, the editor", "ed@example.org")


def test_a_test_send_to_an_overlong_address_is_refused_and_mails_no_one(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = {
        **publisher.ENV,
        "MAILER_SMTP_HOST": smtp_server.host,
        "MAILER_SMTP_PORT": str(smtp_server.port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_DATA_DIR": str(tmp_path / "state"),
    }
    address = "a" * 65 + "@example.org"
    result = CliRunner().invoke(cli, ["send", str(post), "--test", address], env=env)
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert address in line and "64" in line
    assert smtp_server.messages == []
