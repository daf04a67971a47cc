"""One frozen Settings object from mailer.toml and MAILER_* variables, checked once at start-up.

Relative paths in mailer.toml (and the default state folder when a file is used) are relative to the folder
of that file, so a cron job started anywhere finds the same site; paths from MAILER_* variables and command
options stay relative to the current folder, as a shell user expects.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import json
import math
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import DEFAULT_LIST
from .engine import Location, Server, is_url, parse_url
from .errors import ConfigError
from .headers import CONTROL, normalize_email, split_mailbox

DEFAULT_CONFIG = Path("mailer.toml")
# The repository's templates/, shipped in the wheel as the package mailer.templates (pyproject.toml maps it).
# Installs are unpacked on disk, so the resource is a real folder that jinja2 and the preview can watch.
SHIPPED_TEMPLATES = Path(str(importlib.resources.files("mailer.templates")))
SECRET_SETTINGS = frozenset(
    {
        "smtp_password",
        "database_password",
        "secret_key",
        "old_secret_keys",
        "imap_password",
        "postmark_webhook_password",
        "mailgun_webhook_key",
    }
)
PATH_SETTINGS = frozenset(
    {
        "data_dir",
        "database",
        "outbox",
        "templates_dir",
        "subscribers",
        "dkim_key_file",
        "smtp_cafile",
        "bounce_maildir",
        "bounce_mbox",
        "imap_cafile",
        "signup_welcome",
    }
)
OTHER_VARIABLES = frozenset({"MAILER_CONFIG"})  # MAILER_* names that are not settings


@dataclass(frozen=True)
class Settings:
    """Everything mailer needs to know; every field can be set as `MAILER_<FIELD>` or in mailer.toml."""

    # who the newsletter is from
    from_name: str = "mailer"
    from_email: str = "newsletter@example.com"
    reply_to: str = ""
    list_name: str = ""
    list_id: str = ""
    old_list_ids: str = ""
    postal_address: str = "mailer, 1 Example Street, Example City"
    lang: str = ""  # the reader pages' language (zh: Chinese, else English); "": the newest issue's
    # where links point
    base_url: str = ""
    web_url: str = "http://127.0.0.1:8080"
    view_url: str = "{web_url}/issues/{issue_id}"
    subscribe_url: str = "{web_url}/subscribe"  # the footer's and archive's "subscribe"; empty for none
    unsubscribe_mailto: str = ""
    # the subscriber list `send` reads when --to is not given
    subscribers: str = ""
    # where mailer keeps its state
    data_dir: Path = Path(".mailer")
    database: Path | Server | None = None  # a SQLite file, or postgresql://user@host:port/name
    database_password: str = ""  # a PostgreSQL database's password (else libpq's PGPASSWORD or ~/.pgpass)
    database_timeout: float = 60.0  # seconds a PostgreSQL server may leave mailer without an answer
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
    smtp_data_timeout: float = 600.0  # the wait for the reply to a message's end (RFC 5321 4.5.3.2.6)
    smtp_verify: bool = True
    smtp_cafile: str = ""
    connections: int = 1
    rate: float = 0.0
    max_attempts: int = 5
    retry_delay: float = 30.0
    max_consecutive_failures: int = 50
    worker_lease: float = 30.0  # seconds a worker of a send holds its batch of readers unless it renews
    # DKIM
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_file: str = ""
    # the daily run
    timezone: str = "UTC"
    max_age_days: int = 1
    sample_name: str = "Sample Subscriber"
    sample_email: str = "subscriber@example.com"
    test_subject_prefix: str = "[TEST] "  # marks the subject of `send --test` messages
    clip_warn_bytes: int = 102_000
    # bounces and complaints (docs/bounces.md)
    bounce_address: str = ""  # set: each message's envelope sender is bounce+TOKEN@domain (VERP)
    soft_bounce_limit: int = 3  # soft bounces (4.x.x) of different messages that suppress an address...
    soft_bounce_days: int = 14  # ...when they fall within this many days
    bounce_rate_warn: float = 2.0  # percent of an issue's messages: warn above it (Amazon SES reviews at 5)
    complaint_rate_warn: float = 0.1  # percent: warn above it (Gmail and Yahoo block above 0.3)
    # ESP bounce webhooks in `mailer serve` (docs/bounces.md); an ESP left unset has no endpoint
    ses_topic_arns: str = ""  # the SNS topics SES publishes this list's bounces and complaints to
    sns_hosts: str = "sns.*.amazonaws.com, sns.*.amazonaws.com.cn"  # where SNS certificates may come from
    # the mailbox `mailer bounces` reads (one of the three)
    bounce_maildir: str = ""
    bounce_mbox: str = ""
    imap_host: str = ""
    imap_port: int = 0  # 0: 993 with imap_security tls, else 143
    imap_security: str = "tls"
    imap_user: str = ""
    imap_password: str = ""
    imap_folder: str = "INBOX"
    imap_done_folder: str = ""  # set: read messages are moved there (else only marked \Seen)
    imap_cafile: str = ""
    postmark_webhook_user: str = ""
    postmark_webhook_password: str = ""
    mailgun_webhook_key: str = ""
    # signup with double opt-in in `mailer serve` (docs/signup.md)
    signup_list: str = DEFAULT_LIST  # the stored list a confirmed signup joins
    signup_lists: str = ""  # other lists a form may name (list=NAME), comma-separated
    signup_confirm_hours: float = 48.0  # how long a confirmation link works
    signup_thanks_url: str = ""  # set: a signup is answered with a redirect there (the publisher's page)
    signup_welcome: str = ""  # a post mailed to each reader who confirms
    signup_ip_limit: int = 20  # signups an hour from one client address (0: no limit)
    signup_address_limit: int = 3  # signups a day for one address (0: no limit)
    # how long `mailer serve` waits for a slow client before it closes the connection (docs/unsubscribe.md)
    serve_idle_timeout: int = 15  # seconds a connection may send nothing
    serve_request_timeout: int = 10  # seconds from a request's first byte to its last, however it trickles
    # images the post gives no size for are fetched once to learn it (cached in data_dir); not when offline
    offline: bool = False

    @property
    def db_path(self) -> Location:
        """Where the record is: a SQLite file, or a PostgreSQL database with its password."""
        if isinstance(self.database, Server):
            return dataclasses.replace(
                self.database, password=self.database_password, timeout=self.database_timeout
            )
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
    def token_scope(self) -> str:
        """What new unsubscribe tokens are bound to: the list_id when one is set, never the From address.

        A token bound to a value derived from from_email would stop working when the sender changes.
        """
        return self.list_id

    @property
    def accepted_token_scopes(self) -> tuple[str, ...]:
        """Every scope a genuine link may carry: today's, none, the derived id (older mailer), old ids."""
        old = [s.strip() for s in self.old_list_ids.split(",") if s.strip()]
        return tuple(dict.fromkeys([self.token_scope, "", self.effective_list_id, *old]))

    @property
    def subscribe_link(self) -> str:
        """Where "subscribe" in a footer or archive page points; empty when there is no public address for
        it (subscribe_url empty, or its {web_url} with web_url empty)."""
        if not self.subscribe_url or ("{web_url}" in self.subscribe_url and not self.web_url):
            return ""
        return self.subscribe_url.replace("{web_url}", self.web_url.rstrip("/"))

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


# A setting's value as read (TOML's str/int/float/bool, or a variable's text) -> the value Settings holds
Converter = Callable[[str, object, str], object]  # (setting name, value, where it was set)


def _text(name: str, value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: {name} must be a string")
    return str(value)


def _whole(name: str, value: object, where: str) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{where}: {name} must be a whole number, not {value!r}")
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: {name} must be a whole number, not {value!r}") from None


def _number(name: str, value: object, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be a number, not {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be a number, not {value!r}") from None


def _flag(name: str, value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: {name} must be true or false, not {value!r}")


def _path(name: str, value: object, where: str) -> Path:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a path (a string)")
    return Path(value).expanduser() if value else Path(".")


def _path_or_none(name: str, value: object, where: str) -> Path | None:
    """An optional path: empty means "not set" (the default derived from data_dir), not the current folder."""
    return None if value == "" else _path(name, value, where)


def _database(name: str, value: object, where: str) -> Path | Server | None:
    """A SQLite file's path, or a PostgreSQL URL (its password, if it has one, never shown)."""
    if isinstance(value, str) and is_url(value):
        try:
            return parse_url(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {name}: {exc}") from None
    return _path_or_none(name, value, where)


CONVERTERS: dict[object, Converter] = {
    str: _text,
    int: _whole,
    float: _number,
    bool: _flag,
    Path: _path,
    Path | None: _path_or_none,
    Path | Server | None: _database,
}
# each setting's converter, by the type its field is annotated with (a new type needs its converter here)
_CONVERT: dict[str, Converter] = {
    name: CONVERTERS[kind] for name, kind in typing.get_type_hints(Settings).items()
}


@dataclass(frozen=True)
class Loaded:
    """The settings, where each value came from, and what deserves a warning but not a refusal."""

    settings: Settings
    file: Path | None
    file_from: str = ""  # "--config", "MAILER_CONFIG" or "the current folder"
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _suggest(name: str, known: list[str], wrap: Callable[[str], str] = str) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean `{wrap(close[0])}`?)" if close else ""


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _flatten(raw: dict[str, Any], path: Path, text: str) -> dict[str, tuple[object, str]]:
    """{setting: (value, "file:line")}; `[smtp] host` is smtp_host; misplaced or unknown keys are errors."""
    known = list(_CONVERT)
    flat: dict[str, tuple[object, str]] = {}
    for key, value in raw.items():
        table = isinstance(value, dict)
        pairs = [(f"{key}_{sub}", sub, v) for sub, v in value.items()] if table else [(key, key, value)]
        for name, written, item in pairs:
            line = _line_of(text, written)
            where = f"{path}:{line}" if line else str(path)
            if isinstance(item, dict):
                raise ConfigError(f"{where}: [{key}.{written}]: mailer's tables are one level deep")
            if name not in _CONVERT:
                if table and written in _CONVERT:
                    raise ConfigError(
                        f"{where}: `{written}` belongs at the top level of the file, not under [{key}]"
                    )
                hint = _suggest(name, known)
                owner = next((k for k in known if k in (f"smtp_{name}", f"dkim_{name}")), None)
                if owner and not table:
                    hint = f" (did you mean `{owner}`, or `{name}` under [{owner.partition('_')[0]}]?)"
                raise ConfigError(f"{where}: unknown setting {name!r}{hint}")
            if name in flat:
                raise ConfigError(f"{where}: {name} is set twice")
            flat[name] = (item, where)
    return flat


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Loaded:
    """Read mailer.toml (if present, or the given path) and apply MAILER_* overrides, once."""
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get("MAILER_CONFIG"))
    file_from = "--config" if path is not None else "MAILER_CONFIG" if explicit else "the current folder"
    path = path or Path(env.get("MAILER_CONFIG") or DEFAULT_CONFIG)
    values: dict[str, object] = {}
    sources = dict.fromkeys(_CONVERT, "default")
    warnings: list[str] = []
    found: Path | None = None
    if path.is_file() or (path.exists() and not path.is_dir()):
        import tomllib  # with a file only: a configuration from MAILER_* variables alone does not parse TOML

        found = path
        try:
            text = path.read_text(encoding="utf-8")
            raw = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        for name, (value, where) in _flatten(raw, path, text).items():
            values[name] = _CONVERT[name](name, value, where)
            sources[name] = where
        base = Path(os.path.abspath(path)).parent
        for name in PATH_SETTINGS:
            value = values.get(name, getattr(Settings, name, None))
            if isinstance(value, Path) and not value.is_absolute():
                values[name] = base / value
            elif isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                values[name] = str(base / Path(value).expanduser())
    elif path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a configuration file")
    elif explicit:
        raise ConfigError(f"{path}: configuration file not found")
    variables = {f"MAILER_{key.upper()}": key for key in _CONVERT}
    for var in sorted(env):
        if var.startswith("MAILER_") and var not in variables and var not in OTHER_VARIABLES:
            hint = _suggest(var, [*variables, *OTHER_VARIABLES])
            warnings.append(f"warning: {var} is not a mailer setting and is ignored{hint}")
    for var, key in variables.items():
        if var in env:
            values[key] = _CONVERT[key](key, env[var], var)
            sources[key] = var
    settings = Settings(**values)  # type: ignore[arg-type]
    return Loaded(_check(settings, sources), found, file_from, sources, warnings)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps("" if value is None else str(value), ensure_ascii=False)


def describe(loaded: Loaded) -> list[str]:
    """The effective settings as mailer.toml lines, each with where it came from; secrets masked."""
    s = loaded.settings
    lines = ["# no configuration file: defaults and MAILER_* variables"]
    if loaded.file:
        lines = [f"# file: {os.path.abspath(loaded.file)} (from {loaded.file_from})"]
    shown = [(f"{name} = {_toml_value(value)}", loaded.sources[name]) for name, value in s.public().items()]
    width = max(len(text) for text, _ in shown)
    lines += [f"{text:<{width}}  # {source}" for text, source in shown]
    lines += [
        f"# in use: database {s.db_path}, outbox {s.outbox_path}, List-Id {s.effective_list_id},"
        f" SMTP port {smtp_port(s)}"
    ]
    return lines


# --- checks ------------------------------------------------------------------------------------------------

RANGES: dict[str, tuple[float, float, str]] = {
    "smtp_port": (0, 65535, "0 (the usual port of smtp_security) to 65535"),
    "imap_port": (0, 65535, "0 (the usual port of imap_security) to 65535"),
    "smtp_timeout": (0.1, 3600, "0.1 to 3600 seconds"),
    "smtp_data_timeout": (0.1, 86_400, "0.1 to 86400 seconds"),
    "connections": (1, 64, "1 to 64"),
    "rate": (0, 100_000, "0 (no limit) to 100000 messages a second"),
    "max_attempts": (1, 100, "1 to 100"),
    "retry_delay": (0, 86_400, "0 to 86400 seconds"),
    "max_consecutive_failures": (0, 1_000_000, "0 (never stop) to 1000000"),
    "worker_lease": (1, 3600, "1 to 3600 seconds"),
    "database_timeout": (1, 86_400, "1 to 86400 seconds"),
    "max_age_days": (0, 36_500, "0 to 36500 days"),
    "clip_warn_bytes": (0, 100_000_000, "0 to 100000000 bytes"),
    "soft_bounce_limit": (1, 1000, "1 to 1000"),
    "soft_bounce_days": (1, 3650, "1 to 3650 days"),
    "bounce_rate_warn": (0, 100, "0 (never warn) to 100 percent"),
    "complaint_rate_warn": (0, 100, "0 (never warn) to 100 percent"),
    "signup_confirm_hours": (1, 720, "1 to 720 hours"),
    "signup_ip_limit": (0, 1_000_000, "0 (no limit) to 1000000"),
    "signup_address_limit": (0, 1000, "0 (no limit) to 1000"),
    "serve_idle_timeout": (1, 3600, "1 to 3600 seconds"),
    "serve_request_timeout": (1, 3600, "1 to 3600 seconds"),
}
_LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # stored.check_name's rule
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LIST_ID = re.compile(rf"{_ATOM}(?:\.{_ATOM})+")
_SELECTOR = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*")
_NOT_IN_MAILTO = set("?&#%/")
_LANG_TAG = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")
_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_.-]{1,256}")
_HOST_PATTERN = re.compile(r"(?:(?:[a-z0-9-]+|\*)\.)*(?:[a-z0-9-]+|\*)(?::[0-9]{1,5})?", re.IGNORECASE)


def _address(name: str, value: str, where: str) -> str:
    """An address setting in the form mailer sends (ASCII); the same check as a subscriber's address."""
    try:
        address = normalize_email(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not an email address: {exc}") from None
    if not address.isascii():
        raise ConfigError(f"{where}: {value!r} must be an ASCII address (mailer does not use SMTPUTF8)")
    return address


def _bounce_address(value: str, where: str) -> str:
    """The VERP base: an address whose local part leaves room for "+TOKEN" within 64 octets."""
    from .envelope import MAX_BOUNCE_LOCAL, TOKEN_LENGTH

    address = _address("bounce_address", value, where)
    local = address.rpartition("@")[0]
    if "+" in local:
        raise ConfigError(
            f"{where}: {address!r}: no '+' before the @ (mailer adds '+TOKEN' to it for each message)"
        )
    if len(local) > MAX_BOUNCE_LOCAL:
        raise ConfigError(
            f"{where}: {address!r}: the part before the @ may have at most {MAX_BOUNCE_LOCAL} characters"
            f" (mailer adds a {TOKEN_LENGTH + 1}-character '+TOKEN' to it, and servers refuse more than 64)"
        )
    return address


def _check(s: Settings, sources: Mapping[str, str]) -> Settings:
    """Refuse, in one line naming the setting, any value that could break a header or a send."""

    def where(name: str) -> str:
        source = sources.get(name, "default")
        return name if source == "default" else f"{name} ({source})"

    for name, (low, high, allowed) in RANGES.items():
        value = getattr(s, name)
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{where(name)}: {value} is out of range; allowed: {allowed}")
    for f in fields(s):
        value = getattr(s, f.name)
        free = f.name in SECRET_SETTINGS or f.name == "postal_address"  # the footer joins its lines itself
        if isinstance(value, str) and not free and (bad := CONTROL.search(value)):
            raise ConfigError(
                f"{where(f.name)}: contains the control character {bad.group()!r}; settings are one line"
            )
    changes: dict[str, str] = {"from_email": _address("from_email", s.from_email, where("from_email"))}
    changes["sample_email"] = _address("sample_email", s.sample_email, where("sample_email"))
    if s.unsubscribe_mailto:
        mailto = _address("unsubscribe_mailto", s.unsubscribe_mailto, where("unsubscribe_mailto"))
        if _NOT_IN_MAILTO & set(mailto):
            raise ConfigError(f"{where('unsubscribe_mailto')}: {mailto!r} cannot be put in a mailto: link")
        changes["unsubscribe_mailto"] = mailto
    if s.reply_to:
        parts = split_mailbox(s.reply_to)
        if parts is None:
            raise ConfigError(f"{where('reply_to')}: {s.reply_to!r} must be `address` or `Name <address>`")
        address = _address("reply_to", parts[1], where("reply_to"))
        changes["reply_to"] = f"{parts[0]} <{address}>" if parts[0] else address
    if s.bounce_address:
        changes["bounce_address"] = _bounce_address(s.bounce_address, where("bounce_address"))
    for name in ("list_id", "old_list_ids"):
        for list_id in filter(None, (v.strip() for v in getattr(s, name).split(","))):
            if len(list_id) > 200 or not _LIST_ID.fullmatch(list_id):
                raise ConfigError(
                    f"{where(name)}: {list_id!r} is not a list id (dotted words: news.example.org)"
                )
    if s.lang and not _LANG_TAG.fullmatch(s.lang):
        raise ConfigError(f"{where('lang')}: {s.lang!r} is not a language tag (zh, en, zh-CN)")
    if s.dkim_selector and not _SELECTOR.fullmatch(s.dkim_selector):
        raise ConfigError(f"{where('dkim_selector')}: {s.dkim_selector!r} is not a DNS label")
    if s.dkim_domain:
        changes["dkim_domain"] = _address("dkim_domain", f"dkim@{s.dkim_domain}", where("dkim_domain"))[5:]
    if s.imap_security not in ("starttls", "tls", "none"):
        raise ConfigError(f"{where('imap_security')}: {s.imap_security!r} must be one of tls, starttls, none")
    if s.smtp_security not in ("starttls", "tls", "none"):
        raise ConfigError(f"{where('smtp_security')}: {s.smtp_security!r} must be one of starttls, tls, none")
    for name in ("signup_list", "signup_lists"):
        for list_name in filter(None, (v.strip() for v in getattr(s, name).split(","))):
            if not _LIST_NAME.fullmatch(list_name):
                raise ConfigError(
                    f"{where(name)}: {list_name!r} is not a list name (up to 64 letters, digits, '.', '_'"
                    " or '-', starting with a letter or digit)"
                )
    if not s.signup_list.strip():
        raise ConfigError(f"{where('signup_list')}: must name the list confirmed signups join")
    for name in ("base_url", "web_url", "view_url", "subscribe_url", "signup_thanks_url"):
        url = getattr(s, name)
        if url and not url.startswith(("http://", "https://", "{web_url}")):
            raise ConfigError(f"{where(name)}: {url!r} must start with http:// or https://")
        if len(url) > 200 or any(c in url for c in ' \t"<>'):
            raise ConfigError(f"{where(name)}: {url[:60]!r} is not a usable URL")
    for arn in filter(None, (v.strip() for v in s.ses_topic_arns.split(","))):
        if not _TOPIC_ARN.fullmatch(arn):
            raise ConfigError(f"{where('ses_topic_arns')}: {arn[:80]!r} is not an SNS topic ARN")
    for host in filter(None, (v.strip() for v in s.sns_hosts.split(","))):
        if not _HOST_PATTERN.fullmatch(host):
            raise ConfigError(f"{where('sns_hosts')}: {host[:80]!r} is not a host name (`*` for one label)")
    if bool(s.postmark_webhook_user) != bool(s.postmark_webhook_password):
        raise ConfigError(
            "postmark_webhook_user and postmark_webhook_password go together: set both or neither"
        )
    if s.smtp_user and not s.smtp_password:
        raise ConfigError("smtp_user is set but smtp_password is not (set MAILER_SMTP_PASSWORD)")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(s.timezone)
    except Exception:
        raise ConfigError(f"{where('timezone')}: {s.timezone!r} is not a known time zone") from None
    return s.replace(**changes)


def smtp_port(s: Settings) -> int:
    """The SMTP port, defaulting by security mode (587 STARTTLS, 465 TLS, 25 plain)."""
    if s.smtp_port:
        return s.smtp_port
    return {"starttls": 587, "tls": 465, "none": 25}[s.smtp_security]
