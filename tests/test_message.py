"""The MIME message of one subscriber, parsed back with Python's email package."""

from __future__ import annotations

import dataclasses
import email
import re
import shutil
import time
import unicodedata
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mailer.cli import cli
from mailer.config import Settings
from mailer.message import MessageFactory, make_factory
from mailer.post import load_post
from mailer.render import Issue, render_issue
from mailer.tokens import Keyring
from tests.conftest import EXAMPLE, ROOT, examples

POSTS = Path(__file__).resolve().parent / "posts"
TITLE = "四巨头6100亿美元豪赌AI 市场泼冷水蒸发9500亿市值"
HEADERS = [
    "From", "Subject", "List-Id", "List-Unsubscribe-Post", "MIME-Version", "Content-Type",
    "To", "Date", "Message-ID", "List-Unsubscribe",
]  # fmt: skip


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        from_name="AI 日报",
        from_email="news@example.org",
        list_name="AI 日报",
        postal_address="Example Media, 1 Example Street, Shanghai",
        web_url="https://news.example.org/mailer",
        secret_key="test-key-0123456789abcdef",
        data_dir=tmp_path_factory.mktemp("state"),
    )


@pytest.fixture(scope="module")
def issue(settings: Settings) -> Issue:
    return render_issue(load_post(EXAMPLE), settings)


@pytest.fixture(scope="module")
def factory(issue: Issue, settings: Settings) -> MessageFactory:
    return make_factory(issue, settings)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def header_names(data: bytes) -> list[str]:
    """The names of the header fields, read from the raw bytes (continuation lines start with space)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
    names = []
    for line in head.split(b"\r\n"):
        assert line.isascii(), line
        if line[:1] not in (b" ", b"\t"):
            name, colon, _ = line.partition(b":")
            assert colon and re.fullmatch(rb"[A-Za-z-]+", name), line
            names.append(name.decode())
    return names


def body_parts(message: EmailMessage) -> tuple[EmailMessage, EmailMessage]:
    parts = list(message.iter_parts())
    assert len(parts) == 2
    text, html = parts
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    return text, html


def unsubscribe_links(message: EmailMessage) -> list[str]:
    return re.findall(r"<([^>]*)>", str(message["List-Unsubscribe"]))


def test_multipart_alternative_text_then_html_utf8(factory: MessageFactory) -> None:
    message = parse(factory.build("ada@example.com", "Ada Lovelace"))
    assert message.get_content_type() == "multipart/alternative"
    assert message["MIME-Version"] == "1.0"
    text, html = body_parts(message)
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    for part in (text, html):
        assert part.get_content_charset() == "utf-8"
    assert TITLE in text.get_content()
    assert f"<title>{TITLE}</title>" in html.get_content()
    assert not message.defects and not text.defects and not html.defects


def test_parts_decode_to_the_rendered_parts(factory: MessageFactory, issue: Issue) -> None:
    message = parse(factory.build("ada@example.com", "Ada"))
    values = {"unsubscribe_url": factory.unsubscribe_url("ada@example.com"), "name": "Ada"}
    text, html = body_parts(message)
    assert text.get_content().replace("\r\n", "\n") == issue.text.fill(values).decode().replace("\r\n", "\n")
    assert html.get_content().replace("\r\n", "\n") == issue.html.fill(values).decode().replace("\r\n", "\n")


def test_subject_is_rfc2047_and_decodes_to_the_chinese_title(factory: MessageFactory) -> None:
    data = factory.build("ada@example.com")
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    raw_subject = re.search(r"^Subject: (.*(?:\r\n[ \t].*)*)", head, re.M)
    assert raw_subject is not None and "=?utf-8?" in raw_subject.group(1).lower()
    assert parse(data)["Subject"] == TITLE


def test_ascii_subject_is_not_encoded(tmp_path: Path, settings: Settings) -> None:
    english = render_issue(load_post(POSTS / "english.md"), settings)
    data = make_factory(english, settings).build("ada@example.com")
    assert b"\r\nSubject: Weekly Notes: Small Models, Big Wins\r\n" in data


def test_from_to_date_and_message_id(factory: MessageFactory, settings: Settings) -> None:
    before = time.time()
    message = parse(factory.build("ada@example.com", "Ada Lovelace"))
    after = time.time()
    sender = message["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("AI 日报", "news@example.org")
    to = message["To"].addresses[0]
    assert (to.display_name, to.addr_spec) == ("Ada Lovelace", "ada@example.com")
    sent = parsedate_to_datetime(message["Date"]).timestamp()
    assert before - 1 <= sent <= after + 1
    message_id = message["Message-ID"]
    assert re.fullmatch(r"<[^<>@\s]+@example\.org>", message_id), message_id
    assert header_names(factory.build("ada@example.com")) == HEADERS


def test_message_id_stable_per_issue_and_subscriber(issue: Issue, settings: Settings) -> None:
    first, second = make_factory(issue, settings), make_factory(issue, settings)
    ids = {parse(f.build("ada@example.com"))["Message-ID"] for f in (first, second)}
    assert len(ids) == 1
    assert parse(first.build("ADA@example.com"))["Message-ID"] in ids  # the address's case does not matter
    other = parse(first.build("bob@example.com"))["Message-ID"]
    assert other not in ids
    other_issue = dataclasses.replace(issue, issue_id="2026-02-10")
    assert parse(make_factory(other_issue, settings).build("ada@example.com"))["Message-ID"] not in ids


def test_list_headers(factory: MessageFactory, settings: Settings) -> None:
    message = parse(factory.build("ada@example.com"))
    assert message["List-Id"] == f"AI 日报 <{settings.effective_list_id}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url, mailto = unsubscribe_links(message)
    assert url.startswith("https://news.example.org/mailer/unsubscribe?t=")
    assert mailto.startswith("mailto:unsubscribe@example.org?subject=")
    token = url.split("t=", 1)[1]
    assert token in mailto
    assert Keyring(settings.secret_key).verify(token, settings.token_scope) == "ada@example.com"


def test_unsubscribe_url_in_the_header_equals_the_one_in_both_bodies(factory: MessageFactory) -> None:
    message = parse(factory.build("ada@example.com"))
    url = unsubscribe_links(message)[0]
    text, html = body_parts(message)
    assert f"退订: {url}" in text.get_content().splitlines()
    hrefs = re.findall(r'<a href="([^"]*)"[^>]*>退订</a>', html.get_content())
    assert hrefs == [url]


def test_every_line_is_at_most_998_octets(settings: Settings, factory: MessageFactory) -> None:
    long_issue = render_issue(load_post(POSTS / "long.md"), settings)
    for data in (
        factory.build("ada@example.com"),
        make_factory(long_issue, settings).build("ada@example.com"),
    ):
        lines = data.split(b"\r\n")
        assert max(len(line) for line in lines) <= 998
        assert b"\n" not in data.replace(b"\r\n", b"")  # no bare LF in SMTP data
    # the long post has a 4,000-character paragraph with nowhere to break: it went quoted-printable
    message = parse(make_factory(long_issue, settings).build("ada@example.com"))
    text, html = body_parts(message)
    assert html["Content-Transfer-Encoding"] == "quoted-printable"
    longest = max((POSTS / "long.md").read_text(encoding="utf-8").split("\n"), key=len)
    assert longest in html.get_content()


def test_two_subscribers_differ_only_in_their_own_values(factory: MessageFactory) -> None:
    subscribers = [("ada@example.com", "Ada Lovelace"), ("bob@example.net", "鲍勃")]
    normalised = []
    for address, name in subscribers:
        data = factory.build(address, name)
        message = parse(data)
        url = factory.unsubscribe_url(address)
        token = url.split("t=", 1)[1]
        assert unsubscribe_links(message)[0] == url
        own = [url, token, message["Message-ID"], address]
        for value in own:
            assert value.encode() in data
        data = re.sub(rb"\r\nTo: .*?\r\n(?! )", b"\r\nTo: TO\r\n", data, flags=re.S)
        data = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: DATE", data)
        for value, label in zip(own, ("URL", "TOKEN", "ID", "ADDRESS"), strict=True):
            data = data.replace(value.encode(), label.encode())
        normalised.append(data)
    first, second = normalised
    assert first == second  # byte-identical apart from To, Date, Message-ID and the unsubscribe link
    ada = factory.build(*subscribers[0])
    assert factory.unsubscribe_url("bob@example.net").encode() not in ada
    assert b"bob@example.net" not in ada


def test_name_and_fields_fill_template_slots_escaped(tmp_path: Path, settings: Settings) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    page = (templates / "email.html").read_text(encoding="utf-8")
    page = page.replace(
        '<h1 class="title">',
        '<p class="hello">Hi {{ subscriber.name }} from {{ subscriber.city }}</p>\n<h1 class="title">',
    )
    (templates / "email.html").write_text(page, encoding="utf-8")
    text = (templates / "email.txt").read_text(encoding="utf-8")
    (templates / "email.txt").write_text("Hi {{ subscriber.name }}\n" + text, encoding="utf-8")
    custom = settings.replace(templates_dir=templates)
    factory = make_factory(render_issue(load_post(POSTS / "english.md"), custom), custom)
    message = parse(factory.build("ada@example.com", "Ada <b>&\r\nBcc: x@example.com", {"city": "Zürich"}))
    text_part, html_part = body_parts(message)
    html = " ".join(html_part.get_content().split())  # the long line may have been wrapped at a space
    assert "Hi Ada &lt;b&gt;&amp; Bcc: x@example.com from Zürich</p>" in html
    assert text_part.get_content().startswith("Hi Ada <b>& Bcc: x@example.com\r\n")
    assert "Bcc" not in header_names(factory.build("ada@example.com", "Ada\r\nBcc: x@example.com"))
    # a long value is cut to the slot's budget at a character boundary: the part stays valid UTF-8
    data = factory.build("ada@example.com", "Ada", {"city": "&" * 98 + "中" * 101})
    html = body_parts(parse(data))[1].get_payload(decode=True)
    assert isinstance(html, bytes)
    city = re.search(rb"from\s+(&amp;)+(\xe4\xb8\xad)+<", html)
    assert city is not None
    assert html.decode("utf-8")


def test_personalising_does_not_rerun_markdown_or_premailer(
    issue: Issue, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted, not timed: a thousand messages run markdown-it, jinja2 and premailer not once, where one
    render of the same post runs each (so the counters can tell)."""
    import jinja2
    import markdown_it
    import premailer

    calls = {"markdown": 0, "jinja2": 0, "premailer": 0}

    def counted(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(markdown_it.MarkdownIt, "parse", counted("markdown", markdown_it.MarkdownIt.parse))
    monkeypatch.setattr(jinja2.Template, "render", counted("jinja2", jinja2.Template.render))
    monkeypatch.setattr(premailer.Premailer, "transform", counted("premailer", premailer.Premailer.transform))
    factory = make_factory(issue, settings)
    for i in range(1000):
        factory.build(f"user{i}@example.com", f"User {i}")
    assert calls == {"markdown": 0, "jinja2": 0, "premailer": 0}
    # a data folder that does not exist keeps no inlined page (mailer/inlined.py): the render inlines
    render_issue(load_post(EXAMPLE), settings.replace(data_dir=settings.data_dir / "not-made"))
    assert all(calls.values()), calls


NASTY = st.sampled_from(
    [
        "\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\t",
        "Bcc: victim@example.com", "\r\nBcc: victim@example.com", "\n\nbody", ":", ";", ",", "<", ">",
        '"', "\\", "=?utf-8?q?=0D=0ABcc:_x?=", " ", "日报", "é", "@",
    ]
)  # fmt: skip
NASTY_TEXT = st.lists(st.one_of(NASTY, st.text(max_size=6)), max_size=12).map("".join)


def flat(value: str) -> str:
    """The value as one header line: every Cc, Zl or Zp character a space (C1 too, such as U+0080)."""
    return " ".join(
        "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in value).split()
    )


@hypothesis_settings(max_examples=examples(150), suppress_health_check=[HealthCheck.too_slow])
@given(title=NASTY_TEXT, name=NASTY_TEXT, from_name=NASTY_TEXT)
# Python 3.11's own header folder decoded these into a real CR LF: "Bcc: x" became a header
@example(title="=?utf-8?q?=0D=0ABcc:_x?=", name="", from_name="")
@example(title="", name="=?utf-8?q?=0D=0ABcc:_x?=", from_name="=?utf-8?q?=0D=0ABcc:_x?=")
@example(title="a" * 200 + " " + "b" * 1200, name="c" * 1200, from_name="日报" * 300)
def test_cr_lf_in_title_or_names_never_adds_a_header(
    issue: Issue, settings: Settings, title: str, name: str, from_name: str
) -> None:
    keyring = Keyring(settings.secret_key)
    custom = settings.replace(from_name=from_name, list_name=from_name)
    factory = MessageFactory(
        dataclasses.replace(issue, subject=title),
        custom,
        sign=lambda address: keyring.sign(address, custom.effective_list_id),
    )
    data = factory.build("ada@example.com", name)
    assert header_names(data) == HEADERS
    message = parse(data)
    assert sorted(message.keys()) == sorted(HEADERS)
    assert message["Subject"] == flat(title)
    assert message["To"].addresses[0].addr_spec == "ada@example.com"
    assert message["From"].addresses[0].addr_spec == "news@example.org"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_render_eml_command(tmp_path: Path) -> None:
    env = {
        "MAILER_DATA_DIR": str(tmp_path / "state"),
        "MAILER_FROM_NAME": "AI 日报",
        "MAILER_FROM_EMAIL": "news@example.org",
        "MAILER_WEB_URL": "https://news.example.org/mailer",
        "MAILER_SAMPLE_NAME": "Sample Reader",
        "MAILER_SAMPLE_EMAIL": "reader@example.com",
    }
    runner = CliRunner()
    out = tmp_path / "issue.eml"
    result = runner.invoke(cli, ["render", str(EXAMPLE), "--eml", "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}" in result.stderr
    message = parse(out.read_bytes())
    assert message["Subject"] == TITLE
    assert message["To"].addresses[0].addr_spec == "reader@example.com"
    assert message["To"].addresses[0].display_name == "Sample Reader"
    url = unsubscribe_links(message)[0]
    # the HTML and text forms of the same command carry the same sample unsubscribe link
    html = runner.invoke(cli, ["render", str(EXAMPLE)], env=env)
    assert html.exit_code == 0 and html.stdout.startswith("<!DOCTYPE html>")
    assert f'href="{url}"' in html.stdout
    text = runner.invoke(cli, ["render", str(EXAMPLE), "--text"], env=env)
    assert text.exit_code == 0 and text.stdout.startswith(TITLE + "\n")
    assert f"退订: {url}" in text.stdout.splitlines()
    assert "\r" not in html.stdout and "\r" not in text.stdout


def test_post_title_that_looks_like_an_encoded_word_stays_in_the_subject(
    tmp_path: Path, settings: Settings
) -> None:
    path = tmp_path / "evil.md"
    path.write_text('---\ntitle: "=?utf-8?q?=0D=0ABcc:_victim@example.com?="\n---\nBody\n', encoding="utf-8")
    data = make_factory(render_issue(load_post(path), settings), settings).build("ada@example.com")
    assert header_names(data) == HEADERS
    assert parse(data)["Subject"] == "=?utf-8?q?=0D=0ABcc:_victim@example.com?="


@pytest.mark.parametrize(
    ("reply_to", "expected"),
    [
        ("editor@example.org", ("", "editor@example.org")),
        ("编辑部 <editor@example.org>", ("编辑部", "editor@example.org")),
        ("Ed <editor@example.org>\r\nBcc: victim@example.com", None),
        ('"Ed, the editor" <editor@example.org>', ("Ed, the editor", "editor@example.org")),
        ("not an address\r\nBcc: victim@example.com", None),
    ],
)
def test_reply_to(issue: Issue, settings: Settings, reply_to: str, expected: tuple[str, str] | None) -> None:
    data = make_factory(issue, settings.replace(reply_to=reply_to)).build("ada@example.com")
    names = header_names(data)
    if expected is None:
        assert names == HEADERS
        return
    assert names == HEADERS[:1] + ["Reply-To"] + HEADERS[1:]
    address = parse(data)["Reply-To"].addresses[0]
    assert (address.display_name, address.addr_spec) == expected
