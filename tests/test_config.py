"""Settings: mailer.toml, MAILER_* overrides, one-line errors, secrets never printed."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from mailer.cli import cli
from mailer.config import RANGES, Settings, load_config, smtp_port
from mailer.errors import ConfigError
from tests.conftest import EXAMPLE

EMPTY = Path(os.devnull)  # an empty configuration file, whatever the current folder holds


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_config(env={}).settings
    assert settings.smtp_host == ""  # no SMTP: the local outbox
    assert settings.outbox_path == Path(".mailer/outbox")
    assert settings.db_path == Path(".mailer/mailer.db")
    assert smtp_port(settings) == 587


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text(
        'from_name = "File Name"\nconnections = 2\n[smtp]\nhost = "smtp.example.com"\nsecurity = "tls"\n',
        encoding="utf-8",
    )
    settings = load_config(config, env={"MAILER_CONNECTIONS": "6", "MAILER_SMTP_VERIFY": "no"}).settings
    assert settings.from_name == "File Name"
    assert settings.smtp_host == "smtp.example.com"
    assert settings.connections == 6
    assert settings.smtp_verify is False
    assert smtp_port(settings) == 465


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("colour = 1\n", {}, "unknown setting 'colour'"),
        ("connections = 'many'\n", {}, "connections must be a whole number"),
        ("", {"MAILER_SMTP_SECURITY": "ssl"}, "smtp_security"),
        ("", {"MAILER_RATE": "-1"}, "rate"),
        ("", {"MAILER_TIMEZONE": "Mars/Olympus"}, "not a known time zone"),
        ("", {"MAILER_WEB_URL": "ftp://x"}, "web_url"),
        ("", {"MAILER_FROM_EMAIL": "news\r\nBcc: x@y"}, "from_email"),
        ("", {"MAILER_SMTP_USER": "u"}, "smtp_password"),
        ("title = [unclosed\n", {}, "not valid TOML"),
        ("", {"MAILER_SES_TOPIC_ARNS": "mailer-bounces"}, "'mailer-bounces' is not an SNS topic ARN"),
        (
            "ses_topic_arns = 'arn:aws:sns:us-east-1:12345:x'\n",
            {},
            "'arn:aws:sns:us-east-1:12345:x' is not an SNS topic ARN",
        ),
        ("", {"MAILER_SNS_HOSTS": "https://sns.*.amazonaws.com/"}, "is not a host name"),
        ("", {"MAILER_POSTMARK_WEBHOOK_USER": "postmark"}, "postmark_webhook_password go together"),
    ],
)
def test_bad_settings_are_one_line_errors(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(config, env=env)
    result = CliRunner().invoke(
        cli, ["--config", str(config), "render", "x.md"], env={**env, "MAILER_CONFIG": None}
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("from_name = [1]\n", "from_name must be a string"),
        ("connections = 1.5\n", "connections must be a whole number, not 1.5"),
        ("rate = true\n", "rate must be a number, not True"),
        ("smtp_verify = 'maybe'\n", "smtp_verify must be true or false, not 'maybe'"),
        ("data_dir = 3\n", "data_dir must be a path (a string)"),
        ("database = 3\n", "database must be a path (a string)"),
    ],
)
def test_each_kind_of_setting_names_the_kind_it_wants(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{config}:1: {re.escape(message)}$"):
        load_config(config, env={})


def test_an_empty_optional_path_is_unset_and_an_empty_path_is_here(tmp_path: Path) -> None:
    env = {"MAILER_DATABASE": "", "MAILER_DATA_DIR": "", "MAILER_SMTP_PORT": "2525", "MAILER_RATE": "2.5"}
    settings = load_config(None, env=env).settings
    assert settings.database is None and settings.data_dir == Path(".")
    assert settings.db_path == Path(".") / "mailer.db"
    assert (settings.smtp_port, settings.rate) == (2525, 2.5)


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_public_view_masks_secrets() -> None:
    settings = Settings(
        smtp_password="hunter2-long-pass",
        secret_key="k" * 32,
        postmark_webhook_password="postmark-pass-77",
        mailgun_webhook_key="mailgun-key-88",
    )
    shown = str(settings.public())
    assert "hunter2-long-pass" not in shown and "k" * 32 not in shown
    assert "postmark-pass-77" not in shown and "mailgun-key-88" not in shown
    assert "smtp_password" in shown


def _one_error_line(args: list[str], env: dict[str, str | None]) -> str:
    """Run the real CLI; assert exit 1 and exactly one `Error:` line on stderr, and return it."""
    result = CliRunner().invoke(cli, args, env={"MAILER_CONFIG": None, **env})
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILER_SMTP_PORT", "99999"),
        ("MAILER_SMTP_PORT", "-1"),
        ("MAILER_SMTP_TIMEOUT", "0"),
        ("MAILER_SMTP_TIMEOUT", "-5"),
        ("MAILER_SMTP_TIMEOUT", "nan"),
        ("MAILER_MAX_CONSECUTIVE_FAILURES", "-1"),
        ("MAILER_RETRY_DELAY", "-1"),
        ("MAILER_RETRY_DELAY", "nan"),
        ("MAILER_RATE", "nan"),
        ("MAILER_RATE", "inf"),
        ("MAILER_CONNECTIONS", "0"),
        ("MAILER_CONNECTIONS", "65"),
        ("MAILER_MAX_ATTEMPTS", "0"),
        ("MAILER_MAX_AGE_DAYS", "-1"),
        ("MAILER_CLIP_WARN_BYTES", "-1"),
    ],
)
def test_a_number_out_of_range_is_one_line_naming_setting_and_range(
    tmp_path: Path, variable: str, value: str
) -> None:
    name = variable.removeprefix("MAILER_").lower()
    line = _one_error_line(["render", str(tmp_path / "x.md")], {variable: value})
    assert name in line and variable in line and "allowed:" in line, line


def test_a_number_out_of_range_in_the_file_names_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text('from_name = "A"\n[smtp]\nhost = "h.example"\nport = 70000\n', encoding="utf-8")
    line = _one_error_line(["--config", str(config), "render", "x.md"], {})
    assert f"{config}:4" in line and "smtp_port" in line and "65535" in line, line


@pytest.mark.parametrize("toml", ["connections = 2.5\n", "connections = true\n", "smtp_timeout = nan\n"])
def test_a_number_that_is_not_one_is_refused(tmp_path: Path, toml: str) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match="connections|smtp_timeout"):
        load_config(config, env={})


def test_every_numeric_setting_has_a_range() -> None:
    numeric = {f.name for f in dataclasses.fields(Settings) if f.type in ("int", "float", int, float)}
    assert numeric and numeric == set(RANGES)


# every setting that reaches a header, with a valid value to spoil
HEADER_SETTINGS = {
    "from_name": "AI 日报",
    "from_email": "news@example.org",
    "reply_to": "Editor <editor@example.org>",
    "list_name": "Daily",
    "list_id": "news.example.org",
    "unsubscribe_mailto": "leave@example.org",
    "sample_name": "Sam",
    "sample_email": "sam@example.org",
    "dkim_selector": "mail2026",
    "dkim_domain": "example.org",
    "web_url": "https://news.example.org",
    "smtp_host": "smtp.example.org",
}
# CR LF, and any single control character or line/paragraph separator (Cc, Zl, Zp)
LINE_BREAKS = st.just("\r\n") | st.characters(categories=["Cc", "Zl", "Zp"])


@given(
    name=st.sampled_from(sorted(HEADER_SETTINGS)), brk=LINE_BREAKS, where=st.sampled_from(["end", "middle"])
)
def test_no_setting_can_carry_a_second_header(name: str, brk: str, where: str) -> None:
    good = HEADER_SETTINGS[name]
    value = f"{good}{brk}Bcc: x@evil.example" if where == "end" else f"{good[:3]}{brk}{good[3:]}"
    with pytest.raises(ConfigError) as caught:
        load_config(EMPTY, env={f"MAILER_{name.upper()}": value})
    assert name in str(caught.value) and "\n" not in str(caught.value)


@given(
    name=st.sampled_from(["from_email", "sample_email", "unsubscribe_mailto", "reply_to"]),
    sep=st.sampled_from([",", ";", " ", "@", "<", ">", ":", "\\", '"', "(", "\t"]),
)
def test_an_address_setting_holds_one_address(name: str, sep: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(EMPTY, env={f"MAILER_{name.upper()}": f"a@b.example{sep}evil@x.example"})


@pytest.mark.parametrize("value", ["a@b@c", "a@b.c,evil@x", "no-at-sign", "a@", "@b.example"])
def test_a_from_email_that_is_not_one_address_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="from_email.*not an email address"):
        load_config(EMPTY, env={"MAILER_FROM_EMAIL": value})


def test_a_postal_address_may_span_lines(tmp_path: Path) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text('postal_address = """Example Media\n1 Example Street"""\n', encoding="utf-8")
    assert load_config(config, env={}).settings.postal_address == "Example Media\n1 Example Street"


def test_the_header_settings_that_pass_are_the_ones_written() -> None:
    env = {f"MAILER_{k.upper()}": v for k, v in HEADER_SETTINGS.items()}
    settings = load_config(EMPTY, env=env).settings
    assert {k: str(getattr(settings, k)) for k in HEADER_SETTINGS} == HEADER_SETTINGS


def test_an_injected_list_id_stops_the_send_before_any_message(tmp_path: Path) -> None:
    post = tmp_path / "2026-02-09.md"
    shutil.copy(EXAMPLE, post)
    csv = tmp_path / "subs.csv"
    csv.write_text("email\nreader@example.net\n", encoding="utf-8")
    env: dict[str, str | None] = {
        "MAILER_DATA_DIR": str(tmp_path / "state"),
        "MAILER_LIST_ID": "news.example.org\r\nBcc: x@evil.example",
    }
    line = _one_error_line(["send", str(post), "--to", str(csv), "--yes", "--force"], env)
    assert "MAILER_LIST_ID" in line and "control character" in line
    assert not (tmp_path / "state" / "outbox").exists()


# --- one site, one state ------------------------------------------------------------------------------------


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    return subprocess.run(
        [sys.executable, "-m", "mailer", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_same_send_from_two_folders_mails_each_reader_once_with_one_key(tmp_path: Path) -> None:
    site, first, second = tmp_path / "site", tmp_path / "cron-a", tmp_path / "cron-b"
    for folder in (site, first, second):
        folder.mkdir()
    shutil.copy(EXAMPLE, site / "2026-02-09.md")
    (site / "subs.csv").write_text("email\nann@example.net\nbo@example.net\n", encoding="utf-8")
    config = site / "mailer.toml"
    config.write_text('data_dir = "state"\nsubscribers = "subs.csv"\n', encoding="utf-8")
    post = str(site / "2026-02-09.md")

    one = _run("send", "--config", str(config), post, "--yes", "--force", cwd=first)  # --config after
    assert one.returncode == 0, one.stderr
    two = _run("--config", str(config), "send", post, "--yes", "--force", cwd=second)  # and before
    assert two.returncode == 0, two.stderr

    assert len(list((site / "state" / "outbox" / "new").iterdir())) == 2  # two readers, one copy each
    assert "Made a new signing key" in one.stderr and "Made a new signing key" not in two.stderr
    assert [p.name for p in site.rglob("secret.key")] == ["secret.key"]
    assert list(first.iterdir()) == [] and list(second.iterdir()) == []  # no state where cron happened to be


def test_paths_from_variables_stay_relative_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    config = site / "mailer.toml"
    config.write_text('outbox = "box"\ndkim_key_file = "keys/dkim.pem"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    env = {"MAILER_DATABASE": "here.db", "MAILER_SMTP_CAFILE": "ca.pem"}
    settings = load_config(config, env=env).settings
    assert settings.outbox_path == site / "box" and settings.dkim_key_file == str(site / "keys" / "dkim.pem")
    assert settings.data_dir == site / ".mailer"  # the default state folder belongs to the site too
    assert settings.db_path == Path("here.db") and settings.smtp_cafile == "ca.pem"


# --- mailer config ------------------------------------------------------------------------------------------


def test_mailer_config_says_where_each_value_came_from_and_hides_secrets(tmp_path: Path) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text(
        'from_name = "Daily"\n[smtp]\nhost = "smtp.example.org"\nuser = "u"\npassword = "file-pass-0451"\n',
        encoding="utf-8",
    )
    env = {"MAILER_CONFIG": None, "MAILER_CONNECTIONS": "3", "MAILER_SECRET_KEY": "env-secret-key-0123456789"}
    result = CliRunner().invoke(cli, ["config", "--config", str(config)], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"# file: {config} (from --config)"
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines() if " = " in line}
    assert lines["from_name"].endswith(f"# {config}:1") and '"Daily"' in lines["from_name"]
    assert lines["smtp_host"].endswith(f"# {config}:3")
    assert lines["connections"].endswith("# MAILER_CONNECTIONS") and " 3 " in lines["connections"]
    assert lines["rate"].endswith("# default")
    assert "file-pass-0451" not in result.output and "env-secret-key-0123456789" not in result.output
    assert "********" in lines["smtp_password"] and "********" in lines["secret_key"]


def test_an_unknown_variable_is_a_warning_with_the_nearest_name(tmp_path: Path) -> None:
    env = {"MAILER_CONFIG": None, "MAILER_FROM_NAM": "Daily", "MAILER_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(cli, ["config"], env=env)
    assert result.exit_code == 0
    assert "MAILER_FROM_NAM is not a mailer setting" in result.stderr
    assert "did you mean `MAILER_FROM_NAME`?" in result.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('form_email = "a@b.example"\n', "unknown setting 'form_email' (did you mean `from_email`?)"),
        ('host = "smtp.example.org"\n', "did you mean `smtp_host`, or `host` under [smtp]?"),
        (
            '[smtp]\nfrom_email = "a@b.example"\n',
            "`from_email` belongs at the top level of the file, not under [smtp]",
        ),
        ('[smtp]\nhots = "x"\n', "unknown setting 'smtp_hots' (did you mean `smtp_host`?)"),
        ('smtp_host = "a"\n[smtp]\nhost = "b"\n', "smtp_host is set twice"),
    ],
)
def test_a_misplaced_or_misspelt_key_names_the_right_one(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text(toml, encoding="utf-8")
    line = _one_error_line(["--config", str(config), "config"], {})
    assert message in line and str(config) in line, line
