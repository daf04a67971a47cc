"""Hostile input through the real commands: mailer renders a safe result or refuses with one line and exit 1.

Posts, titles, subscriber names, addresses, CSV files and raw HTML that try to break a header, run script in
a mail client, crash the program or leave a half-sent list. Every case goes through `mailer render` or
`mailer send` (CliRunner) against a real SMTP server on 127.0.0.1 (tests/smtpd.py); what comes out is
parsed back (the .eml's header lines, the HTML with lxml) and checked, never compared with mailer's output.
"""

from __future__ import annotations

import email
import re
import resource
import subprocess
import sys
import tempfile
import unicodedata
from collections import Counter
from email import policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import lxml.html
import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mailer.cli import cli
from mailer.ledger import Ledger
from mailer.sanitize import clean_css
from mailer.tokens import Keyring
from tests import publisher
from tests.conftest import examples
from tests.smtpd import SMTPServer

pytestmark = pytest.mark.usefixtures("in_tmp")
SECRET = "hostile-test-key-0123456789"
LIST_ID = "news.example.org"
HEADERS = Counter(
    ["From", "Subject", "List-Id", "List-Unsubscribe-Post", "MIME-Version", "Content-Type", "To", "Date"]
    + ["Message-ID", "List-Unsubscribe"]
)
# what a writer or a list might hold to break a header line, a terminal, or a bidi-unaware client
PIECES = [
    "\r", "\n", "\r\n", "\x00", "\t", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e",
    "\u200f", "\u2066", "\ufeff", "שלום", "مرحبا", "😀", "👩\u200d👩\u200d👧", "🏳️\u200d🌈", "日报",
    ":", ";", ",", "<", ">", '"', "\\", "=?", "?=", "=?utf-8?q?=0D=0ABcc:_x?=", "Bcc: x@evil.example",
    "<script>alert(1)</script>", " ", "a", "Z",
]  # fmt: skip
NASTY = st.lists(st.one_of(st.sampled_from(PIECES), st.characters(codec="utf-8")), max_size=20).map("".join)
SLOW = hypothesis_settings(
    max_examples=examples(25),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --- checks on what mailer produced ------------------------------------------------------------------------


def visible(text: str) -> str:
    """The text without whitespace and control characters: what must survive into a header."""
    return "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch) == "Cc"))


def header_names(data: bytes) -> Counter[str]:
    """The header fields of a message, read line by line: every line a field or a fold, CRLF only."""
    assert b"\x00" not in data
    head, sep, _ = data.partition(b"\r\n\r\n")
    assert sep, "no end of header"
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
    names: Counter[str] = Counter()
    for line in head.split(b"\r\n"):
        assert len(line) <= 998
        if line[:1] in (b" ", b"\t"):
            assert names, "a fold before the first field"
            continue
        match = re.match(rb"([!-9;-~]+):", line)
        assert match, f"not a header line: {line[:80]!r}"
        names[match.group(1).decode("ascii")] += 1
    return names


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def html_part(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data.decode("utf-8")


def check_message(data: bytes, to: str) -> EmailMessage:
    """One subscriber's message: exactly mailer's header set, addressed to `to` only, safe HTML."""
    assert header_names(data) == HEADERS
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    msg = parse(data)
    [address] = msg["To"].addresses
    assert rcpt(address.addr_spec) == to  # the parser hands raw UTF-8 over as surrogate escapes
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    web = re.findall(r"<(https?://[^<>]+)>", str(msg["List-Unsubscribe"]))
    assert len(web) == 1
    token = parse_qs(urlsplit(web[0]).query)["t"][0]
    assert Keyring(SECRET).verify(token, LIST_ID) == to.lower()
    assert_safe_html(html_part(msg))
    return msg


_SCHEME = re.compile(r"([a-z][a-z0-9+.\-]*):")
_CSS_COMMENT = re.compile(r"/\*.*?(\*/|$)", re.S)
_CSS_BAD = re.compile(r"expression\(|javascript:|vbscript:|behaviou?r:|-moz-binding|@import|url\(data:")
URL_ATTRIBUTES = {
    "href", "src", "action", "formaction", "background", "poster", "data", "srcset", "lowsrc", "dynsrc",
    "longdesc", "usemap", "codebase", "cite", "xlink:href", "content",
}  # fmt: skip
UNSAFE_ELEMENTS = {
    "script", "iframe", "frame", "frameset", "object", "embed", "applet", "base", "form", "input", "button",
    "textarea", "select", "svg", "math", "link", "noscript", "template", "audio", "video", "portal",
}  # fmt: skip


def url_scheme(value: str) -> str:
    """The scheme a browser would see: controls and spaces anywhere are ignored, case too."""
    cleaned = re.sub(r"[\x00-\x20\x7f]", "", value).lower()
    match = _SCHEME.match(cleaned)
    return match.group(1) if match else ""


def css_is_dangerous(css: str) -> bool:
    """CSS that runs code in some client, after comments, escapes and spaces are gone as a parser sees it."""
    css = _CSS_COMMENT.sub("", css)
    css = re.sub(r"\\([0-9a-fA-F]{1,6})\s?", lambda m: chr(min(int(m.group(1), 16), 0x10FFFF) or 0xFFFD), css)
    css = re.sub(r"\\(.)", r"\1", css, flags=re.S)  # a backslash before a newline continues the line
    return bool(_CSS_BAD.search(re.sub(r"\s+", "", css).lower()))


def assert_safe_html(html: str) -> None:
    """No element, attribute, URL or style in the HTML that makes a mail client run code."""
    doc = lxml.html.document_fromstring(html)
    for el in doc.iter():
        if not isinstance(el.tag, str):  # the template's own <!--[if mso]> comments hold no code
            assert "<script" not in (el.text or "").lower() and "javascript:" not in (el.text or "").lower()
            continue
        tag = el.tag.lower()
        assert tag not in UNSAFE_ELEMENTS, tag
        if tag == "meta":
            assert (el.get("http-equiv") or "").lower() != "refresh"
        if tag == "style":
            assert not css_is_dangerous(el.text or ""), el.text
        for name, value in el.attrib.items():
            lower = name.lower()
            assert not lower.startswith("on"), f"<{tag} {name}=...>"
            if lower in URL_ATTRIBUTES:
                assert url_scheme(value) not in ("javascript", "vbscript", "data", "livescript"), value
            if lower == "style":
                assert not css_is_dangerous(value), value


# --- running the commands -----------------------------------------------------------------------------------


def settings_env(data_dir: Path, server: SMTPServer | None = None) -> dict[str, str]:
    env = {
        "MAILER_DATA_DIR": str(data_dir),
        "MAILER_SECRET_KEY": SECRET,
        "MAILER_LIST_ID": LIST_ID,
        **publisher.ENV,
        "MAILER_RETRY_DELAY": "0.05",
    }
    if server is not None:
        env.update(
            MAILER_SMTP_HOST=server.host,
            MAILER_SMTP_PORT=str(server.port),
            MAILER_SMTP_SECURITY="none",
            MAILER_SMTP_TIMEOUT="5",
        )
    return env


def rcpt(address: str) -> str:
    """An RCPT TO address as sent: aiosmtpd hands a UTF-8 local part over as surrogate escapes."""
    return address.encode("utf-8", "surrogateescape").decode("utf-8")


def run(args: list[str], env: dict[str, str]) -> Result:
    """Run a command; no exception may escape it and no traceback may be printed."""
    result = CliRunner().invoke(cli, args, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args[0]} raised {result.exception!r}") from result.exception
    assert "Traceback" not in result.output
    return result


def assert_refused(result: Result, *names: str) -> str:
    """Exit 1 with exactly one line, 'Error: ...', naming each of `names`; return that line."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


def assert_nothing_sent(server: SMTPServer, data_dir: Path) -> None:
    assert server.messages == [] and server.connections == 0
    db = data_dir / "mailer.db"
    if db.exists():
        with Ledger(db) as ledger:
            assert all(not s.counts for s in ledger.issues())


@pytest.fixture
def subscribers(tmp_path: Path) -> Path:
    path = tmp_path / "subscribers.csv"
    path.write_text("email,name\nada@example.com,Ada\nbob@example.com,Bob\n", encoding="utf-8")
    return path


def post_text(title: object, body: str = "Hello, readers.\n", **meta: object) -> str:
    front = yaml.safe_dump({"title": title, "date": "2026-02-09", **meta}, allow_unicode=True, width=10**6)
    return f"---\n{front}---\n{body}"


# --- posts that must be refused -----------------------------------------------------------------------------

BAD_POSTS: dict[str, bytes] = {
    "front matter list": b"---\n- one\n- two\n---\nBody\n",
    "front matter string": b"---\njust a sentence\n---\nBody\n",
    "front matter number": b"---\n42\n---\nBody\n",
    "date is a word": b"---\ntitle: T\ndate: yesterday\n---\nBody\n",
    "date out of range": b"---\ntitle: T\ndate: 2026-13-45\n---\nBody\n",
    "date on no calendar": b"---\ntitle: T\ndate: 2026-02-30\n---\nBody\n",
    "date is a list": b"---\ntitle: T\ndate: [2026, 2, 9]\n---\nBody\n",
    "date is a mapping": b"---\ntitle: T\ndate: {year: 2026}\n---\nBody\n",
    "date is a number": b"---\ntitle: T\ndate: -1\n---\nBody\n",
    "title is a mapping": b"---\ntitle: {a: 1}\n---\nBody\n",
    "title is a list": b"---\ntitle: [a, b]\n---\nBody\n",
    "no title at all": b"---\ndate: 2026-02-09\n---\nJust a body.\n",
    "title of spaces and controls": b'---\ntitle: " \\t\\r\\n\\0 "\n---\nBody\n',
    "invalid YAML": b"---\ntitle: [unclosed\n---\nBody\n",
    "tab-indented YAML": b"---\ntitle: T\n\tdate: 2026-02-09\n---\nBody\n",
    "unclosed front matter": b"---\ntitle: T\ndate: 2026-02-09\nBody\n",
    "empty file": b"",
    "only whitespace": b" \n\n\t\n",
    "only a BOM": b"\xef\xbb\xbf",
    "binary (PNG)": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01" + bytes(range(256)),
    "UTF-16": "---\ntitle: T\n---\nBody\n".encode("utf-16"),
    "Latin-1": "---\ntitle: Café\n---\nCrème brûlée\n".encode("latin-1"),
    "10 MB": b"---\ntitle: Big\n---\n" + (b"word " * 200 + b"\n\n") * 10_300,
    "tags nested": b"---\ntitle: T\ntags: [[a, b], {c: d}]\n---\nBody\n",
}


@pytest.mark.parametrize("case", list(BAD_POSTS))
def test_broken_post_is_refused_in_one_line_and_sends_nothing(
    case: str, tmp_path: Path, smtp_server: SMTPServer, subscribers: Path
) -> None:
    post = tmp_path / "2026-02-09.md"
    post.write_bytes(BAD_POSTS[case])
    data_dir = tmp_path / "state"
    env = settings_env(data_dir, smtp_server)
    assert_refused(run(["render", str(post)], env), str(post))
    assert_refused(run(["render", str(post), "--eml"], env), str(post))
    assert_refused(run(["send", str(post), "--to", str(subscribers), "--yes", "--force"], env), str(post))
    assert_nothing_sent(smtp_server, data_dir)


@pytest.mark.parametrize("what", ["a folder", "a missing file"])
def test_post_that_is_not_a_file(
    what: str, tmp_path: Path, smtp_server: SMTPServer, subscribers: Path
) -> None:
    post = tmp_path / "2026-02-09.md"
    if what == "a folder":
        post.mkdir()
        (post / "notes.txt").write_text("not a post", encoding="utf-8")
    assert_refused(run(["render", str(post)], settings_env(tmp_path / "state")), str(post))
    if what == "a missing file":
        result = run(
            ["send", str(post), "--to", str(subscribers), "--yes", "--force"], settings_env(tmp_path / "s")
        )
        assert_refused(result, str(post))
    assert smtp_server.messages == []


def test_yaml_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    """Nine levels of `&x [*y, *y, ...]`: expanding the tags or the date would take minutes and gigabytes."""
    levels = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    for field in ("tags", "date", "summary", "title", "category"):
        post = tmp_path / f"bomb-{field}.md"
        post.write_text("---\ntitle: Bomb\n" + "\n".join(levels) + f"\n{field}: [*i, *i]\n---\nBody\n")
        proc = subprocess.run(
            [sys.executable, "-m", "mailer", "render", str(post)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={"MAILER_DATA_DIR": str(tmp_path / "state"), "MAILER_SECRET_KEY": SECRET, "PATH": "/usr/bin"},
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)),
        )
        assert proc.returncode == 1, (field, proc.stderr[-500:])
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"Error: {post}:") and field in line


# --- titles, names and addresses ---------------------------------------------------------------------------


@SLOW
@given(title=NASTY)
@example(title="=?utf-8?q?=0D=0ABcc:_victim@example.com?=")
@example(title="Hi\r\nBcc: victim@example.com\r\n\r\n<script>alert(1)</script>")
@example(title="\u202eelbat\u202c 🚀 مرحبا בעולם 日报" * 3)
@example(title="x" * 5000)
@example(title="Null\x00byte")
def test_hostile_title_is_one_safe_subject_or_refused(title: str, tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        post = Path(folder) / "2026-02-09.md"
        post.write_text(post_text(title), encoding="utf-8")
        out = Path(folder) / "issue.eml"
        result = run(["render", str(post), "--eml", "-o", str(out)], settings_env(Path(folder) / "state"))
        if not visible(title):
            assert "no title" in assert_refused(result, str(post))
            return
        assert result.exit_code == 0, result.output
        msg = check_message(out.read_bytes(), "subscriber@example.com")
        assert visible(str(msg["Subject"])) == visible(title)
        doc = lxml.html.document_fromstring(html_part(msg))
        assert visible(doc.findtext(".//title") or "") == visible(title)


def _csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


# C0 controls but tab, DEL, C1 controls and the Unicode line separators: a name holding one is a bad row
_ROW_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


@SLOW
@given(names=st.lists(NASTY, min_size=1, max_size=4))
@example(names=["Eve\r\nBcc: victim@example.com", "Mallory\x00", "\u202eevil\u202c", "李雷 😀"])
@example(names=["=?utf-8?q?=0D=0ABcc:_x?=", '"Quoted, Name" <x@evil.example>', "a" * 150, "b" * 201])
@example(names=["Eve\rBcc: victim@example.com", "Mallory\x00", "\u2028", "Ok"])
@example(names=["Eve\x00"])
def test_hostile_names_are_sent_in_one_header_or_skipped_as_bad_rows(
    names: list[str], smtp_server: SMTPServer, tmp_path: Path
) -> None:
    smtp_server.clear()
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        post = Path(folder) / "2026-02-09.md"
        post.write_text(post_text("Names"), encoding="utf-8")
        rows = {f"reader{i}@example.com": name for i, name in enumerate(names)}
        lines = ["email,name\r\n"] + [f"{a},{_csv_cell(n)}\r\n" for a, n in rows.items()]
        csv = Path(folder) / "subscribers.csv"
        csv.write_bytes("".join(lines).encode("utf-8"))
        # the physical line each row starts on: a quoted line break makes a row two lines long
        starts = {a: 2 + sum(x.count("\n") for x in lines[1:i]) for i, a in enumerate(rows, 1)}
        result = run(
            ["send", str(post), "--to", str(csv), "--yes", "--force"],
            settings_env(Path(folder) / "state", smtp_server),
        )
        broken = [a for a, n in rows.items() if "\n" in n]
        bad = {a for a, n in rows.items() if _ROW_CONTROL.search(n.strip()) or len(n.strip()) > 200}
        if broken:  # a quoted field over two lines cannot be told from a quote that swallows rows
            assert_refused(result, f"{csv}:{starts[broken[0]]}: a quoted field opens on this line")
            assert smtp_server.messages == []
            return
        if bad == set(rows):
            assert result.exit_code == 1 and "row(s) has a valid address (line " in result.stderr
            assert smtp_server.messages == []
            return
        assert result.exit_code == 0, result.output
        got = {m.rcpt_tos[0]: m for m in smtp_server.messages}
        assert set(got) == set(rows) - bad
        assert all(len(m.rcpt_tos) == 1 for m in smtp_server.messages)
        for address, received in got.items():
            msg = check_message(received.data, address)
            shown = visible(msg["To"].addresses[0].display_name)
            assert visible(rows[address]).startswith(shown) and len(shown) >= min(
                len(visible(rows[address])), 50
            )
        for address in bad:  # each skipped row is named by its line on stderr
            assert f"{csv}:{starts[address]}:" in result.stderr


HOSTILE_ADDRESSES = [
    "victim@example.com\r\nBcc: eve@evil.example",
    "victim@example.com\nBcc: eve@evil.example",
    "victim@example.com\x00",
    "<victim@example.com>",
    "Victim <victim@example.com>",
    "victim@example.com, eve@evil.example",
    "victim@example.com>\r\nRCPT TO:<eve@evil.example",
    "eve@evil.example\rDATA",
    "@example.com",
    "victim@",
    "victim@@example.com",
    "victim@exa mple.com",
    "victim@[127.0.0.1]",
    "x" * 250 + "@example.com",
    "victim@" + "a" * 250 + ".com",
    "\u202eliam@example.com",
    "victim@example.com\u2028Bcc: eve@evil.example",
]


def test_hostile_addresses_are_bad_rows_and_the_good_ones_get_their_own_message(
    smtp_server: SMTPServer, tmp_path: Path
) -> None:
    post = tmp_path / "2026-02-09.md"
    post.write_text(post_text("Addresses"), encoding="utf-8")
    csv = tmp_path / "subscribers.csv"
    good = ["first@example.com", "Δοκιμή@παράδειγμα.δοκιμή", "o'brien+news@example.com", "last@example.com"]
    hostile = [a for a in HOSTILE_ADDRESSES if "\n" not in a]  # see the test after this one
    rows = [good[0], *hostile[:6], good[1], *hostile[6:], good[2], good[3]]
    csv.write_bytes(("email,name\r\n" + "".join(f"{_csv_cell(a)},Reader\r\n" for a in rows)).encode("utf-8"))
    result = run(
        ["send", str(post), "--to", str(csv), "--yes", "--force"],
        settings_env(tmp_path / "state", smtp_server),
    )
    assert result.exit_code == 0, result.output
    recipients = [m.rcpt_tos for m in smtp_server.messages]
    assert all(len(r) == 1 for r in recipients)
    got = sorted(rcpt(r[0]) for r in recipients)
    assert got == sorted(
        [
            "first@example.com",
            "Δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp",
            "o'brien+news@example.com",
            "last@example.com",
        ]
    )
    assert not any("evil" in r or "victim" in r for r in got)
    for received in smtp_server.messages:
        check_message(received.data, rcpt(received.rcpt_tos[0]))
    skipped = re.findall(rf"^skipped: {re.escape(str(csv))}:(\d+): ", result.stderr, re.MULTILINE)
    assert len(skipped) == len(hostile)


@pytest.mark.parametrize("address", [a for a in HOSTILE_ADDRESSES if "\n" in a])
def test_an_address_with_a_quoted_line_break_refuses_the_list(
    address: str, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    post = tmp_path / "2026-02-09.md"
    post.write_text(post_text("Addresses"), encoding="utf-8")
    csv = tmp_path / "subscribers.csv"
    rows = ["first@example.com", address, "last@example.com"]
    csv.write_bytes(("email,name\r\n" + "".join(f"{_csv_cell(a)},Reader\r\n" for a in rows)).encode("utf-8"))
    data_dir = tmp_path / "state"
    result = run(
        ["send", str(post), "--to", str(csv), "--yes", "--force"], settings_env(data_dir, smtp_server)
    )
    assert_refused(result, f"{csv}:3: a quoted field opens on this line and runs to line 4")
    assert_nothing_sent(smtp_server, data_dir)


# --- subscriber lists ---------------------------------------------------------------------------------------


@pytest.fixture
def simple_post(tmp_path: Path) -> Path:
    post = tmp_path / "2026-02-09.md"
    post.write_text(post_text("List test"), encoding="utf-8")
    return post


BAD_LISTS: dict[str, bytes] = {
    "no header (starts with an address)": b"ada@example.com,Ada\nbob@example.com,Bob\n",
    "no email column": b"name,city\nAda,London\n",
    "empty file": b"",
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
    "Latin-1 header": "émail,name\nada@example.com,Ada\n".encode("latin-1"),
    "email column twice": b"email,name,email\nada@example.com,Ada,bob@example.com\n",
    "header only": b"email,name\n",
    "unbalanced quote": b'email,name\nada@example.com,Ada\nbob@example.com,"Bob\ncy@example.com,Cy\n',
    "a Latin-1 row": "email,name\nada@example.com,Ada\nbob@example.com,B\u00e9b\u00e9\n".encode("latin-1"),
    "a line break in a name": b'email,name\nada@example.com,"Ada\r\nBcc: eve@evil.example"\ncy@x.org,Cy\n',
    "UTF-16 without a byte-order mark": "email,name\nada@example.com,Ada\n".encode("utf-16-le"),
}


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_unusable_list_is_refused_in_one_line_and_sends_nothing(
    case: str, simple_post: Path, tmp_path: Path, smtp_server: SMTPServer
) -> None:
    csv = tmp_path / "subscribers.csv"
    csv.write_bytes(BAD_LISTS[case])
    data_dir = tmp_path / "state"
    result = run(
        ["send", str(simple_post), "--to", str(csv), "--yes", "--force"], settings_env(data_dir, smtp_server)
    )
    assert_refused(result, str(csv))
    assert_nothing_sent(smtp_server, data_dir)


GOOD_LISTS: dict[str, tuple[bytes, set[str], int]] = {
    # case: (file, who gets a message, how many rows are reported as skipped)
    "BOM and CRLF": (b"\xef\xbb\xbfEmail,Name\r\nada@example.com,Ada\r\n", {"ada@example.com"}, 0),
    "extra and missing columns": (
        b"email,name\nada@example.com,Ada,extra,more\nbob@example.com\n",
        {"ada@example.com", "bob@example.com"},
        0,
    ),
    "quotes": (
        b'email,name\nada@example.com,"Lovelace, Ada ""the first"""\n"bob@example.com","Bob"\n',
        {"ada@example.com", "bob@example.com"},
        0,
    ),
    "a NUL in a name": (b"email,name\nada@example.com,A\x00da\ncy@example.com,Cy\n", {"cy@example.com"}, 1),
    "blank lines": (b"email,name\n\nada@example.com,Ada\n,\n\n", {"ada@example.com"}, 0),
    # refused until issue 15 (one line each, nothing sent); now read as they are
    "semicolons": (b"email;name\nada@example.com;Ada\n", {"ada@example.com"}, 0),
    "UTF-16": ("email,name\nada@example.com,Ada\n".encode("utf-16"), {"ada@example.com"}, 0),
}


@pytest.mark.parametrize("case", list(GOOD_LISTS))
def test_odd_lists_send_each_good_row_once_and_name_the_bad_ones(
    case: str, simple_post: Path, tmp_path: Path, smtp_server: SMTPServer
) -> None:
    data, expected, skipped = GOOD_LISTS[case]
    csv = tmp_path / "subscribers.csv"
    csv.write_bytes(data)
    result = run(
        ["send", str(simple_post), "--to", str(csv), "--yes", "--force"],
        settings_env(tmp_path / "state", smtp_server),
    )
    assert result.exit_code == 0, result.output
    assert Counter(m.rcpt_tos[0] for m in smtp_server.messages) == Counter(expected)
    for received in smtp_server.messages:
        check_message(received.data, received.rcpt_tos[0])
    assert len(re.findall(rf"^skipped: {re.escape(str(csv))}:\d+: ", result.stderr, re.MULTILINE)) == skipped


def test_a_thousand_duplicate_rows_are_one_message(
    simple_post: Path, tmp_path: Path, smtp_server: SMTPServer
) -> None:
    csv = tmp_path / "subscribers.csv"
    rows = ["ada@example.com,Ada", "ADA@Example.COM,Ada again", " ada@example.com ,Ada"] * 334
    csv.write_text("email,name\n" + "\n".join(rows[:1000]) + "\n", encoding="utf-8")
    result = run(
        ["send", str(simple_post), "--to", str(csv), "--yes", "--force"],
        settings_env(tmp_path / "state", smtp_server),
    )
    assert result.exit_code == 0, result.output
    assert [m.rcpt_tos for m in smtp_server.messages] == [("ada@example.com",)]
    assert re.search(r"^\s*duplicates\s+999$", result.stderr, re.MULTILINE), result.stderr


# --- raw HTML in the post ---------------------------------------------------------------------------------

HOSTILE_HTML = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=https://evil.example/x.js></SCRIPT>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<script>alert(1)",
    '<iframe src="javascript:alert(1)"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<iframe src="https://evil.example/" onload="alert(1)"></iframe>',
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href=" &#14;javascript:alert(1)">x</a>',
    '<a href="java&#x09;script:alert(1)">x</a>',
    '<a href="java\nscript:alert(1)">x</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    "[md link](javascript:alert(1)) and ![md image](javascript:alert(2))",
    "<img src=x onerror=alert(1)>",
    '<img src="javascript:alert(1)">',
    '<img src="data:image/svg+xml;base64,PHN2Zz48c2NyaXB0PmFsZXJ0KDEpPC9zY3JpcHQ+PC9zdmc+" alt="x">',
    "<IMG SRC=`javascript:alert(1)`>",
    '<p onclick="alert(1)" ONMOUSEOVER=alert(2) onfocus\t=alert(3)>hover</p>',
    "<body onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<svg onload=alert(1)>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<div style="width: expression(alert(1))">x</div>',
    '<div style="width: expr/**/ession(alert(1))">x</div>',
    '<div style="width: \\65 xpression(alert(1))">x</div>',
    "<div style=\"background: url('javascript:alert(1)')\">x</div>",
    '<div style="behavior: url(evil.htc); -moz-binding: url(evil.xml#x)">x</div>',
    "<style>@import 'https://evil.example/x.css'; p { width: expression(alert(1)) }</style>",
    "<style>p { background: url(javascript:alert(1)) }</style><p>styled</p>",
    '<form action="javascript:alert(1)"><button formaction="javascript:alert(2)">go</button></form>',
    '<object data="javascript:alert(1)"></object><embed src="javascript:alert(2)">',
    '<video poster="javascript:alert(1)" src="https://evil.example/v.mp4"></video>',
    '<base href="javascript:alert(1)//">',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<link rel=stylesheet href="javascript:alert(1)">',
    '<table background="javascript:alert(1)"><tr><td>x</td></tr></table>',
    "<!--<script>alert(1)</script>--><![CDATA[<script>alert(2)</script>]]>",
    "<!--[if gte mso 9]><script>alert(1)</script><![endif]-->",
    "<template><script>alert(1)</script></template>",
    "<details open ontoggle=alert(1)><summary>x</summary></details>",
    '<a href="https://example.com" target="_blank" rel="opener" onmouseenter="alert(1)">ok</a>',
    # a browser drops tabs and newlines from a URL and decodes entities and CSS escapes before it reads one
    '<div style="java\tscript:alert(1)">x</div>',
    '<div style="background: url(java&#x09;script:alert(1))">x</div>',
    '<div style="background: url(&quot;java&NewLine;script&colon;alert(1)&quot;)">x</div>',
    "<div style=\"background: url('java\\\nscript:alert(1)')\">x</div>",  # a CSS line continuation
    '<div style="background: url(j\\61 va\\9 script:alert(1))">x</div>',
    '<div style="background: url(java&#x0A;script:alert(1)); color: red">x</div>',
]


@pytest.mark.parametrize("payload", HOSTILE_HTML)
def test_raw_html_attack_is_rendered_harmless(payload: str, tmp_path: Path) -> None:
    post = tmp_path / "2026-02-09.md"
    post.write_text(post_text("Raw HTML", f"Before.\n\n{payload}\n\nAfter.\n"), encoding="utf-8")
    env = settings_env(tmp_path / "state")
    html = run(["render", str(post)], env)
    assert html.exit_code == 0, html.output
    assert_safe_html(html.stdout)
    out = tmp_path / "issue.eml"
    eml = run(["render", str(post), "--eml", "-o", str(out)], env)
    assert eml.exit_code == 0, eml.output
    check_message(out.read_bytes(), "subscriber@example.com")


_TAGS = ["a", "img", "div", "p", "span", "table", "td", "style", "script", "iframe", "svg", "form", "object"]
_ATTRS = [
    "href",
    "src",
    "style",
    "onclick",
    "onerror",
    "ONLOAD",
    "background",
    "action",
    "formaction",
    "srcdoc",
]
_VALUES = [
    "javascript:alert(1)", " JAVASCRIPT:alert(1)", "java\tscript:alert(1)", "&#106;avascript:alert(1)",
    "vbscript:x", "data:text/html,<script>alert(1)</script>", "https://example.com/", "expression(alert(1))",
    "width:expression(alert(1))", "background:url(javascript:alert(1))", "x:expr/**/ession(1)", "alert(1)",
    '"><script>alert(1)</script>', "'", "\\65 xpression(1)",
]  # fmt: skip


@st.composite
def html_soup(draw: st.DrawFn) -> str:
    """Nested tags with hostile attributes and text, sometimes unclosed or mis-nested."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        tag = draw(st.sampled_from(_TAGS))
        attrs = " ".join(
            f'{draw(st.sampled_from(_ATTRS))}="{draw(st.sampled_from(_VALUES))}"'
            for _ in range(draw(st.integers(0, 3)))
        )
        inner = draw(st.sampled_from(["x", "alert(1)", "<b>bold</b>", "</div>", "<!--", "-->", ""]))
        closing = draw(st.sampled_from([f"</{tag}>", "", "</p>"]))
        parts.append(f"<{tag} {attrs}>{inner}{closing}")
    return "".join(parts)


@SLOW
@given(soup=html_soup())
def test_any_mix_of_hostile_tags_and_attributes_renders_harmless(soup: str, tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        post = Path(folder) / "2026-02-09.md"
        post.write_text(post_text("Soup", f"Intro.\n\n{soup}\n\nOutro.\n"), encoding="utf-8")
        result = run(["render", str(post)], settings_env(Path(folder) / "state"))
        assert result.exit_code == 0, result.output
        assert_safe_html(result.stdout)


# --- the checkers themselves must catch what they look for -------------------------------------------------


@pytest.mark.parametrize(
    "html",
    [
        "<p><script>x</script></p>",
        "<p onclick=x>y</p>",
        '<a href=" java\tscript:x">y</a>',
        '<p style="width:expr\\65 ssion(1)">y</p>',
        '<p style="java\tscript:x">y</p>',
        "<p style=\"background:url('java\\\nscript:x')\">y</p>",
        "<iframe src=https://x></iframe>",
        '<img src="data:image/png;base64,AA">',
    ],
)
def test_the_html_check_catches_each_danger(html: str) -> None:
    with pytest.raises(AssertionError):
        assert_safe_html(html)


def test_a_style_rule_whose_danger_a_semicolon_splits_is_dropped() -> None:
    """`&#x09;` holds a `;`: split into declarations, no piece reads `javascript:`, but the whole does."""
    css = "p { color: red } a { background: url(java&#x09;script:alert(1)) }"
    assert "script" not in clean_css(css)
    assert "color: red" in clean_css("p { color: red; width: expression(alert(1)) }")


def test_the_header_check_catches_an_injected_field() -> None:
    data = b"From: a@example.com\r\nSubject: x\r\nBcc: eve@evil.example\r\n\r\nbody"
    assert header_names(data)["Bcc"] == 1
    with pytest.raises(AssertionError):
        header_names(b"From: a@example.com\r\nSubject: x\nBcc: y\r\n\r\nbody")
