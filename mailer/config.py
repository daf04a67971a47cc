"""One frozen Settings object from mailer.toml and MAILER_* variables, checked once at start-up."""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG = Path("mailer.toml")
# The repository's templates/, shipped in the wheel as the package mailer.templates (pyproject.toml maps it).
# Installs are unpacked on disk, so the resource is a real folder that jinja2 and the preview can watch.
SHIPPED_TEMPLATES = Path(str(importlib.resources.files("mailer.templates")))
SECRET_SETTINGS = frozenset({"smtp_password", "secret_key", "old_secret_keys"})


@dataclass(frozen=True)
class Settings:
    """Everything mailer needs to know; every field can be set as `MAILER_<FIELD>` or in mailer.toml."""

    # who the newsletter is from
    from_name: str = "mailer"
    from_email: str = "newsletter@example.com"
    reply_to: str = ""
    list_name: str = ""
    list_id: str = ""
    postal_address: str = "mailer, 1 Example Street, Example City"
    # where links point
    base_url: str = ""
    web_url: str = "http://127.0.0.1:8080"
    view_url: str = "{web_url}/issues/{issue_id}"
    unsubscribe_mailto: str = ""
    # the subscriber list `send` reads when --to is not given
    subscribers: str = ""
    # where mailer keeps its state
    data_dir: Path = Path(".mailer")
    database: Path | None = None
    outbox: Path | None = None
    templates_dir: Path = SHIPPED_TEMPLATES
    # signing of unsubscribe links
    secret_key: str = ""
    old_secret_keys: str = ""
    # SMTP; with no smtp_host, mail goes to the local outbox
    smtp_host: str = ""
    smtp_port: int = 0
    smtp_security: str = "starttls"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_timeout: float = 30.0
    smtp_verify: bool = True
    smtp_cafile: str = ""
    connections: int = 1
    rate: float = 0.0
    max_attempts: int = 5
    retry_delay: float = 30.0
    max_consecutive_failures: int = 50
    # DKIM
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_file: str = ""
    # the daily run
    timezone: str = "UTC"
    max_age_days: int = 1
    sample_name: str = "Sample Subscriber"
    sample_email: str = "subscriber@example.com"
    clip_warn_bytes: int = 102_000

    @property
    def db_path(self) -> Path:
        """The SQLite file holding the delivery record and the suppression list."""
        return self.database or self.data_dir / "mailer.db"

    @property
    def outbox_path(self) -> Path:
        """The Maildir that receives mail when no SMTP server is configured."""
        return self.outbox or self.data_dir / "outbox"

    @property
    def sender_domain(self) -> str:
        """The domain of the From address, used for Message-IDs and the default List-Id."""
        return self.from_email.rpartition("@")[2].lower() or "localhost"

    @property
    def effective_list_id(self) -> str:
        """The List-Id value (RFC 2919), derived from the sender when not set."""
        if self.list_id:
            return self.list_id
        local = self.from_email.partition("@")[0] or "newsletter"
        return f"{local}.{self.sender_domain}"

    @property
    def effective_mailto(self) -> str:
        """The address that takes unsubscribe requests by mail."""
        if self.unsubscribe_mailto:
            return self.unsubscribe_mailto
        return f"unsubscribe@{self.sender_domain}"

    def public(self) -> dict[str, object]:
        """The settings with secrets masked, safe to print."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_SETTINGS and value:
                value = "********"
            out[f.name] = value
        return out

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (command-line options win over the file)."""
        return dataclasses.replace(self, **changes)


def _coerce(name: str, kind: str, value: object, where: str) -> object:
    if kind in ("str",):
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: {name} must be a string")
        return str(value)
    if kind == "int":
        try:
            return int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name} must be a whole number, not {value!r}") from None
    if kind == "float":
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name} must be a number, not {value!r}") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: {name} must be true or false, not {value!r}")
    if kind.startswith("Path"):
        if value in ("", None):
            return None if "None" in kind else Path(".")
        return Path(str(value)).expanduser()
    raise ConfigError(f"{where}: {name} has an unsupported type")


_KINDS = {f.name: str(f.type) for f in fields(Settings)}


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read mailer.toml (if present, or the given path) and apply MAILER_* overrides, once."""
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get("MAILER_CONFIG"))
    path = path or Path(env.get("MAILER_CONFIG") or DEFAULT_CONFIG)
    values: dict[str, object] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        flat: dict[str, object] = {}
        for key, value in raw.items():
            if isinstance(value, dict):  # [smtp] host = ... is smtp_host
                for sub, subvalue in value.items():
                    flat[f"{key}_{sub}"] = subvalue
            else:
                flat[key] = value
        for key, value in flat.items():
            if key not in _KINDS:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, _KINDS[key], value, str(path))
    elif explicit:
        raise ConfigError(f"{path}: configuration file not found")
    for key, kind in _KINDS.items():
        var = f"MAILER_{key.upper()}"
        if var in env:
            values[key] = _coerce(key, kind, env[var], var)
    settings = Settings(**values)  # type: ignore[arg-type]
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if "@" not in s.from_email or any(c in s.from_email for c in " \r\n<>"):
        raise ConfigError(f"from_email: {s.from_email!r} is not an email address")
    if s.smtp_security not in ("starttls", "tls", "none"):
        raise ConfigError(f"smtp_security: {s.smtp_security!r} must be one of starttls, tls, none")
    if s.connections < 1 or s.connections > 64:
        raise ConfigError(f"connections: {s.connections} must be between 1 and 64")
    if s.rate < 0:
        raise ConfigError(f"rate: {s.rate} must not be negative")
    if s.max_attempts < 1:
        raise ConfigError(f"max_attempts: {s.max_attempts} must be at least 1")
    for name in ("base_url", "web_url", "view_url"):
        url = getattr(s, name)
        if url and not url.startswith(("http://", "https://", "{web_url}")):
            raise ConfigError(f"{name}: {url!r} must start with http:// or https://")
        if len(url) > 200 or any(c in url for c in ' \r\n\t"<>'):
            raise ConfigError(f"{name}: {url[:60]!r} is not a usable URL")
    if s.smtp_user and not s.smtp_password:
        raise ConfigError("smtp_user is set but smtp_password is not (set MAILER_SMTP_PASSWORD)")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(s.timezone)
    except Exception:
        raise ConfigError(f"timezone: {s.timezone!r} is not a known time zone") from None


def smtp_port(s: Settings) -> int:
    """The SMTP port, defaulting by security mode (587 STARTTLS, 465 TLS, 25 plain)."""
    if s.smtp_port:
        return s.smtp_port
    return {"starttls": 587, "tls": 465, "none": 25}[s.smtp_security]
