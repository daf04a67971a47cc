"""The `mailer` command: parse options, call one core function, turn MailerError into a clean exit.

Heavy modules (premailer, lxml, smtplib) are imported inside the commands so `mailer --help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .errors import ExitStatus, MailerError

if TYPE_CHECKING:
    from .config import Settings

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def reported() -> Iterator[None]:
    """Turn a MailerError into one line on stderr and its exit code; Ctrl-C into 130."""
    try:
        yield
    except MailerError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(ExitStatus.INTERRUPTED)


def settings_from(ctx: click.Context) -> Settings:
    """Load the configuration once per command, from --config or mailer.toml and MAILER_*."""
    from .config import load_settings

    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        with reported():
            obj["settings"] = load_settings(obj.get("config_path"))
    settings: Settings = obj["settings"]
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailer")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MAILER_CONFIG",
    help="Configuration file (default: ./mailer.toml if it exists).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Turn a daily markdown post into a newsletter and deliver it to every subscriber once."""
    ctx.ensure_object(dict)["config_path"] = config_path


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mailer")
