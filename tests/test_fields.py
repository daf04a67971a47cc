"""Personal fields: `{{ name }}` and `{% if subscriber.city %}` in posts and templates, per subscriber,
sandboxed, through the real render and send (aiosmtpd), read as the subscribers read them."""

from __future__ import annotations

import email
import shutil
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import SHIPPED_TEMPLATES
from mailer.fields import FieldError, compile_expression
from tests.publisher import env_for
from tests.smtpd import SMTPServer

POST = """---
title: Fields
date: 2026-02-09
---
Hello {{ name | default("there") }}, {{ subscriber.name or "读者" }}!

{% if subscriber.city %}
News from {{ city | upper }} for you.
{% elif subscriber.plan == "pro" %}
Thanks for going pro.
{% else %}
Tell us where you live.
{% endif %}

A post about jinja shows its code: `{{ name }}` and

```
{% if x %}{{ y }}{% endif %}
```
"""

READERS = (
    "email,name,city,plan\n"
    "ann@example.com,Ann,Oslo,\n"
    "bob@example.com,Bob,,pro\n"
    "cy@example.com,,,\n"
    'eve@example.com,"{{ subscriber.city }}<b>x</b>",<i>Paris</i>,\n'
)


def _templates(tmp_path: Path) -> Path:
    """The shipped templates with a personal greeting and condition in email.html and email.txt."""
    folder = tmp_path / "templates"
    shutil.copytree(SHIPPED_TEMPLATES, folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    greeting = (
        '{% if subscriber.city %}Hi {{ subscriber.name or "there" }} in {{ subscriber.city }}'
        "{% else %}Hi {{ subscriber.name or 'there' }}{% endif %}."
    )
    for name, anchor in (("email.html", "{{ body }}"), ("email.txt", "{{ body }}")):
        path = folder / name
        text = path.read_text(encoding="utf-8")
        assert anchor in text
        path.write_text(text.replace(anchor, f"<p>T: {greeting}</p>\n{anchor}" if name.endswith("html")
                                     else f"T: {greeting}\n\n{anchor}", 1), encoding="utf-8")  # fmt: skip
    return folder


def _send(tmp_path: Path, server: SMTPServer) -> dict[str, EmailMessage]:
    post = tmp_path / "2026-02-09-fields.md"
    post.write_text(POST, encoding="utf-8")
    readers = tmp_path / "readers.csv"
    readers.write_text(READERS, encoding="utf-8")
    env = env_for(server, tmp_path, MAILER_TEMPLATES_DIR=str(_templates(tmp_path)))
    result = CliRunner().invoke(cli, ["send", str(post), "--to", str(readers), "--yes", "--force"], env=env)
    assert result.exit_code == 0, result.stderr
    out = {}
    for received in server.messages:
        msg = email.message_from_bytes(received.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        out[received.rcpt_tos[0]] = msg
    return out


def _parts(msg: EmailMessage) -> tuple[str, str]:
    html, text = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html is not None and text is not None
    return " ".join(html.get_content().split()), " ".join(text.get_content().split())


@pytest.mark.parametrize("eightbitmime", [True, False], ids=["8bit", "quoted-printable"])
def test_each_reader_gets_their_own_fields_and_branches(
    smtp_servers: object, tmp_path: Path, eightbitmime: bool
) -> None:
    server = smtp_servers(eightbitmime=eightbitmime)  # type: ignore[operator]
    got = _send(tmp_path, server)
    assert set(got) == {"ann@example.com", "bob@example.com", "cy@example.com", "eve@example.com"}
    expect = {
        "ann@example.com": ("Hello Ann, Ann!", "News from OSLO for you.", "T: Hi Ann in Oslo."),
        "bob@example.com": ("Hello Bob, Bob!", "Thanks for going pro.", "T: Hi Bob."),
        "cy@example.com": ("Hello there, 读者!", "Tell us where you live.", "T: Hi there."),
    }
    branches = ("News from", "Thanks for going pro", "Tell us where")
    for address, (greeting, branch, template_line) in expect.items():
        html, text = _parts(got[address])
        for part in (html, text):
            assert greeting in part and branch in part and template_line in part
            assert sum(b in part for b in branches) == 1
            assert "zqmailer" not in part and "{% if x %}{{ y }}{% endif %}" in part
        assert "<code" in html and "{{ name }}</code>" in html
    html, text = _parts(got["eve@example.com"])  # a value is text: never evaluated, escaped in HTML
    assert "Hello {{ subscriber.city }}&lt;b&gt;x&lt;/b&gt;," in html and "<b>x</b>" not in html
    assert "News from &lt;I&gt;PARIS&lt;/I&gt; for you." in html
    assert "Hello {{ subscriber.city }}<b>x</b>, {{ subscriber.city }}<b>x</b>!" in text
    assert "T: Hi {{ subscriber.city }}<b>x</b> in <i>Paris</i>." in text


HOSTILE = [
    ("{{ subscriber.__class__ }}", "not a field name"),
    ("{{ ''.__class__.__mro__ }}", "'.'"),
    ("{{ range(10**9) }}", "range("),
    ('{{ "x" * 1000000000 }}', "'*"),
    ("{{ name * 99 }}", "'*"),
    ("{{ name | url }}", "no filter 'url'"),
    ("{{ '/img/x.png' | url }}", "no filter 'url'"),
    ("{% for x in name %}{{ x }}{% endfor %}", "only if, elif, else and endif"),
    ("{% include 'footer.html' %}", "only if, elif, else and endif"),
    ("Text {% if name", "never closed"),
    ("Text {{ name", "never closed"),
    ("{% if name %}open", "never closed by {% endif %}"),
    ("{% endif %}", "without an {% if %}"),
    ("{% if name %}" * 40 + "x" + "{% endif %}" * 40, "nested deeper than 16"),
    ("{{ " + "(" * 50 + "name" + ")" * 50 + " }}", "nested deeper than 16"),
    ("{{ settings.secret_key }}", "subscriber.settings"),
    ("{{ }}", "an empty {{ }}"),
]


@pytest.mark.parametrize(("tag", "reason"), HOSTILE, ids=[h[0][:30] for h in HOSTILE])
def test_a_tag_mailer_does_not_read_is_one_error_naming_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tag: str, reason: str
) -> None:
    monkeypatch.chdir(tmp_path)
    post = tmp_path / "2026-02-09-bad.md"
    post.write_text(f"---\ntitle: Bad\n---\nFirst line.\n\n`{{{{ fine }}}}` and\n{tag}\n", encoding="utf-8")
    env = {"MAILER_DATA_DIR": str(tmp_path / "state")}
    for args in (["check", str(post)], ["send", str(post), "--dry-run", "--to", str(_list(tmp_path))]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code != 0
        assert f"{post}:7: " in result.stderr and reason in result.stderr, result.stderr
        assert (
            "Traceback" not in result.output + result.stderr
            and result.exception is None
            or isinstance(result.exception, SystemExit)
        )


def _list(tmp_path: Path) -> Path:
    path = tmp_path / "one.csv"
    path.write_text("email,name\nann@example.com,Ann\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("source", "values", "result"),
    [
        ('name or "there"', {"name": "  "}, "there"),
        ('name | default("there") | upper', {"name": "ann"}, "ANN"),
        ('subscriber["first name"] | trim | title', {"first name": " ann lee "}, "Ann Lee"),
        ('not city and plan != "pro"', {"plan": "free"}, "true"),
        ('(city or "x") == "x"', {}, "true"),
        ("subscriber.City", {"city": "Oslo"}, "Oslo"),
    ],
)
def test_expressions(source: str, values: dict[str, str], result: str) -> None:
    assert compile_expression(source, bare_names=True)(values) == result


def test_a_template_reads_only_subscriber_fields() -> None:
    with pytest.raises(FieldError, match="only subscriber.NAME"):
        compile_expression("subscriber.name or title", bare_names=False)


def test_a_template_using_subscriber_outside_if_and_output_names_its_line(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    shutil.copytree(SHIPPED_TEMPLATES, folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    html = folder / "email.html"
    lines = html.read_text(encoding="utf-8").split("\n")
    lines.insert(2, "{% set who = subscriber.name %}")
    html.write_text("\n".join(lines), encoding="utf-8")
    post = tmp_path / "p.md"
    post.write_text("---\ntitle: T\n---\nHi.\n", encoding="utf-8")
    env = {"MAILER_DATA_DIR": str(tmp_path / "state"), "MAILER_TEMPLATES_DIR": str(folder)}
    result = CliRunner().invoke(cli, ["check", str(post)], env=env)
    assert result.exit_code != 0 and "email.html:3" in result.stderr, result.stderr
    assert "{{ }} and {% if/elif %} only" in result.stderr


def test_a_tag_in_the_title_is_refused(tmp_path: Path) -> None:
    post = tmp_path / "p.md"
    post.write_text("---\ntitle: Hi {{ name }}\n---\nHi.\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["check", str(post)], env={"MAILER_DATA_DIR": str(tmp_path / "s")})
    assert result.exit_code != 0 and f"{post}: title:" in result.stderr, result.stderr
