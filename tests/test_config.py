"""Settings: mailer.toml, MAILER_* overrides, one-line errors, secrets never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import Settings, load_settings, smtp_port
from mailer.errors import ConfigError


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
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
    settings = load_settings(config, env={"MAILER_CONNECTIONS": "6", "MAILER_SMTP_VERIFY": "no"})
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
    ],
)
def test_bad_settings_are_one_line_errors(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_settings(config, env=env)
    result = CliRunner().invoke(
        cli, ["--config", str(config), "render", "x.md"], env={**env, "MAILER_CONFIG": None}
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_public_view_masks_secrets() -> None:
    settings = Settings(smtp_password="hunter2-long-pass", secret_key="k" * 32)
    shown = str(settings.public())
    assert "hunter2-long-pass" not in shown and "k" * 32 not in shown
    assert "smtp_password" in shown
