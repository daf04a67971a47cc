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


def render_warnings(issue: Any, settings: Settings) -> list[str]:
    """What a writer should know before sending: clipping, scripts removed, images without alt."""
    warnings = []
    size = issue.html_size()
    if size > settings.clip_warn_bytes:
        warnings.append(
            f"{issue.post.path}: the HTML is {size // 1024} KB; Gmail clips messages over "
            f"{settings.clip_warn_bytes // 1024} KB"
        )
    findings = issue.findings
    if findings.removed:
        warnings.append(
            f"{issue.post.path}: removed what email clients do not run: {', '.join(sorted(set(findings.removed)))}"
        )
    if findings.images_without_alt:
        warnings.append(f"{issue.post.path}: {len(findings.images_without_alt)} image(s) without alt text")
    return warnings


@cli.command()
@click.argument("post", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
@click.option("--text", "form", flag_value="text", help="The plain-text part.")
@click.option("--eml", "form", flag_value="eml", help="The whole MIME message for the sample subscriber.")
@click.option("--html", "form", flag_value="html", default=True, help="The HTML part, CSS inlined (default).")
@click.pass_context
def render(ctx: click.Context, post: Path, output: Path | None, form: str) -> None:
    """Render POST as the HTML email (default), its plain-text part, or a whole .eml message."""
    settings = settings_from(ctx)
    with reported():
        from .message import make_factory
        from .post import load_post
        from .render import render_issue

        issue = render_issue(load_post(post), settings)
        for warning in render_warnings(issue, settings):
            click.echo(f"Warning: {warning}", err=True)
        values = issue.sample_values(settings)
        if form == "eml":
            factory = make_factory(issue, settings, notify=lambda line: click.echo(line, err=True))
            data = factory.build(settings.sample_email, settings.sample_name)
        else:
            part = issue.text if form == "text" else issue.html
            factory = make_factory(issue, settings, notify=lambda line: click.echo(line, err=True))
            values["unsubscribe_url"] = factory.unsubscribe_url(settings.sample_email)
            data = part.fill(values).replace(b"\r\n", b"\n")
        if output is None:
            click.echo(data.decode("utf-8"), nl=False)
        else:
            try:
                output.write_bytes(data)
            except OSError as exc:
                raise MailerError(f"{output}: cannot write: {exc.strerror}") from None
            click.echo(f"Wrote {output} ({len(data) // 1024} KB)", err=True)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mailer")
