"""The `mailer` command: parse options, call one core function, turn MailerError into a clean exit.

Heavy modules (premailer, lxml, smtplib) are imported inside the commands so `mailer --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import DEFAULT_LIST, __version__
from .console import Console
from .errors import ExitStatus, MailerError

if TYPE_CHECKING:
    from .config import Loaded, Settings

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def reported(console: Console, fields: dict[str, Any] | None = None) -> Iterator[None]:
    """Turn a MailerError into its message on stderr and its exit code; Ctrl-C into 130, SIGTERM into 143,
    SIGHUP into 129.

    With a --json console the same goes into the one JSON object, with the `fields` known so far.
    """
    try:
        yield
    except MailerError as exc:
        console.error(f"Error: {exc}")
        if exc.resume:
            console.error("Stopped early; once that is mended, run the same command again to resume.")
        console.emit(_outcome(fields, exc.exit_code, error=str(exc), **exc.details()))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        what = getattr(exc, "what", "Interrupted")
        code = getattr(exc, "exit_code", ExitStatus.INTERRUPTED)
        console.error(f"{what}.")
        if getattr(exc, "resume", False):
            console.error("Stopped after the messages in flight; run the same command again to resume.")
        console.emit(_outcome(fields, code, error=what))
        sys.exit(code)


STATUS = {
    ExitStatus.OK: "done",
    ExitStatus.ERROR: "refused",
    ExitStatus.INCOMPLETE: "incomplete",
    ExitStatus.STOPPED: "stopped",
    ExitStatus.INTERRUPTED: "interrupted",
    ExitStatus.TERMINATED: "interrupted",
    ExitStatus.HUNG_UP: "interrupted",
}


def _outcome(fields: dict[str, Any] | None, code: int, **more: Any) -> dict[str, Any]:
    """The --json object: what the command knows, its exit code and that code's name."""
    return {"status": STATUS.get(ExitStatus(code), "error"), **(fields or {}), **more, "exit": int(code)}


def _skip_names(ctx: click.Context, param: click.Parameter, names: tuple[str, ...]) -> frozenset[str]:
    from .checks import BLOCKING_CODES

    for name in names:
        if name not in BLOCKING_CODES:
            raise click.BadParameter(
                f"{name!r} is not a check that stops a send; one of {', '.join(BLOCKING_CODES)}"
            )
    return frozenset(names)


def output_options(f: F) -> F:
    """--json and -q, for the commands a script or cron runs."""
    f = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")(f)
    return click.option(
        "--json",
        "json_mode",
        is_flag=True,
        help="Print one JSON object on stdout (counts, exit status, failures).",
    )(f)


def loaded_from(ctx: click.Context, console: Console) -> Loaded:
    """Load the configuration once per command, from --config or mailer.toml and MAILER_*; warn once."""
    from .config import load_config

    obj = ctx.ensure_object(dict)
    if "loaded" not in obj:
        with reported(console):
            obj["loaded"] = load_config(obj.get("config_path"))
        for line in obj["loaded"].warnings:
            console.say(line)
    loaded: Loaded = obj["loaded"]
    return loaded


def settings_from(ctx: click.Context, console: Console) -> Settings:
    """The checked settings of this command (errors and warnings through `console`)."""
    settings = loaded_from(ctx, console).settings
    return settings.replace(offline=True) if ctx.ensure_object(dict).get("offline") else settings


def _take_offline(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["offline"] = True


def offline_option(f: F) -> F:
    """--offline, for the commands that render a post."""
    return click.option(
        "--offline",
        is_flag=True,
        expose_value=False,
        callback=_take_offline,
        help="Fetch no image to learn its size (the sizes cached in the data folder are used).",
    )(f)


def _take_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        ctx.ensure_object(dict)["config_path"] = value
    return value


CONFIG_HELP = "Configuration file (default: ./mailer.toml if it exists)."


class SiteGroup(click.Group):
    """A group whose every command takes --config too, so it works before or after the command name."""

    group_class = type  # subgroups (suppressions) are SiteGroups as well

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Add the command with its own --config option."""
        kind = click.Path(dir_okay=False, path_type=Path)
        option = ["--config", "config_path"]
        cmd.params.append(
            click.Option(option, type=kind, expose_value=False, callback=_take_config, help=CONFIG_HELP)
        )
        super().add_command(cmd, name)


@click.group(cls=SiteGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailer")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=CONFIG_HELP,  # MAILER_CONFIG is read by load_config, which says which of the two named the file
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Turn a daily markdown post into a newsletter and deliver it to every subscriber once."""
    ctx.ensure_object(dict)["config_path"] = config_path


@cli.command()
@click.argument("post", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
@click.option("--text", "form", flag_value="text", help="The plain-text part.")
@click.option("--eml", "form", flag_value="eml", help="The whole MIME message for the sample subscriber.")
@click.option("--html", "form", flag_value="html", default=True, help="The HTML part, CSS inlined (default).")
@offline_option
@click.pass_context
def render(ctx: click.Context, post: Path, output: Path | None, form: str) -> None:
    """Render POST (a folder: today's post in it) as the HTML email, its plain-text part, or a whole .eml."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .sample import render_sample

        render_sample(post, settings, form, console, output)


@cli.command("send")
@click.argument("post", type=click.Path(path_type=Path))
@click.option(
    "--to",
    "to",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A subscriber list (CSV, or another tool's export); repeat for several: one message per reader.",
)
@click.option(
    "--list",
    "list_name",
    metavar="NAME",
    help="Send to this list kept in mailer's database (`mailer subscribers import`), not a file.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask before mailing the list (cron).")
@click.option("--dry-run", is_flag=True, help="List who would get the issue; send nothing.")
@click.option("--test", "test_address", metavar="ADDRESS", help="Send one test copy (marked, not recorded).")
@click.option("--retry-failed", is_flag=True, help="Try the permanently failed addresses again.")
@click.option("--changed", is_flag=True, help="The post changed since the first send: send the new version.")
@click.option("--force", is_flag=True, help="Send a post dated in the past or the future.")
@click.option("--resend", is_flag=True, help="Send a post already sent under another name (renamed file).")
@click.option("--connections", type=click.IntRange(1, 64), help="SMTP connections in parallel.")
@click.option(
    "--rate", type=click.FloatRange(min=0), help="At most this many messages per second (all connections)."
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    help="Send through this many worker processes (each with its --connections); see docs/workers.md.",
)
@click.option(
    "--distributed", is_flag=True, help="Let `mailer worker` on other hosts join this send (docs/workers.md)."
)
@click.option(
    "--skip-check",
    "skip_checks",
    multiple=True,
    metavar="NAME",
    callback=_skip_names,
    help="Send although this pre-send check fails (repeatable; one name each, as the refusal lists them).",
)
@output_options
@offline_option
@click.pass_context
def send_command(
    ctx: click.Context,
    post: Path,
    to: tuple[Path, ...],
    list_name: str | None,
    yes: bool,
    dry_run: bool,
    test_address: str | None,
    retry_failed: bool,
    changed: bool,
    force: bool,
    resend: bool,
    connections: int | None,
    rate: float | None,
    workers: int | None,
    distributed: bool,
    skip_checks: frozenset[str],
    json_mode: bool,
    quiet: bool,
) -> None:
    """Deliver POST (or today's post in a folder) to every subscriber, once; rerun to resume.

    Exit status: 0 done, 1 refused before sending, 2 usage error, 3 finished but some recipients failed,
    4 stopped early (rerun to resume), 130 Ctrl-C, 143 SIGTERM.
    """
    if to and list_name:
        raise click.UsageError("--to and --list cannot be combined: import the file into the list instead")
    if workers == 0 and not distributed:
        raise click.UsageError("--workers 0 sends nothing here: it needs --distributed (workers elsewhere)")
    console = Console(json_mode=json_mode, quiet=quiet)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "send", "post": str(post)}
    with reported(console, fields):
        from .send import send_and_report, send_options

        options = send_options(
            settings, connections=connections, rate=rate, dry_run=dry_run, retry_failed=retry_failed,
            allow_changed=changed, allow_resend=resend,
        )  # fmt: skip
        crew = None
        if workers is not None or distributed:
            from .workers import Crew

            crew = Crew(1 if workers is None else workers, distributed, loaded_from(ctx, console).file)
        code = send_and_report(
            settings, post, to=list(to), stored=list_name or "", test_address=test_address, options=options,
            force=force, yes=yes, skip_checks=skip_checks, console=console, fields=fields, crew=crew,
        )  # fmt: skip
        console.emit(_outcome(fields, code))
        if code:
            sys.exit(code)


@cli.command()
@click.option(
    "--issue", "issue_id", metavar="ID", help="Join the send of this issue (default: the oldest running)."
)
@click.option("--connections", type=click.IntRange(1, 64), help="SMTP connections of this worker.")
@click.option("--wait", is_flag=True, help="Wait for a send to start, then join it (a service's worker).")
@output_options
@offline_option
@click.pass_context
def worker(
    ctx: click.Context,
    issue_id: str | None,
    connections: int | None,
    wait: bool,
    json_mode: bool,
    quiet: bool,
) -> None:
    """Join a send started with `mailer send --distributed` (same configuration and database), until no reader
    is left.

    Exit status: 0 nothing left to send, 1 refused (also: no send running, without --wait), 4 stopped early
    (also: the record lost once reached), 130 Ctrl-C, 143 SIGTERM (also when the send's coordinator stops it).
    """
    console = Console(json_mode=json_mode, quiet=quiet)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "worker"}
    with reported(console, fields):
        from .progress import ConsoleFeedback, report_counts
        from .workers.worker import work

        feedback = ConsoleFeedback(console)
        try:
            done = work(
                settings, console, feedback, issue_id=issue_id or "", connections=connections or 0, wait=wait
            )
        except BaseException:
            feedback.close()  # what follows a progress bar starts on a line of its own
            raise
        feedback.finish(done.report)
        fields.update(issue=done.issue_id, batches=done.batches, takeovers=done.takeovers, lost=done.lost)
        console.note(
            f"{done.issue_id}: {done.report.sent} sent by this worker in {done.batches} batch(es)"
            f" ({done.takeovers} taken over from another worker)"
        )
        console.emit(_outcome(fields, 0, counts=report_counts(done.report)))


@cli.command()
@click.argument("post", type=click.Path(path_type=Path), required=False)
@output_options
@click.pass_context
def status(ctx: click.Context, post: Path | None, json_mode: bool, quiet: bool) -> None:
    """Show what became of POST's issue (sent, pending, failed; a folder: today's post); no POST: all."""
    console = Console(json_mode=json_mode, quiet=quiet)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "status"}
    with reported(console, fields):
        from .progress import show_status

        console.emit(_outcome(fields, 0, **show_status(settings, post, console)))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one)."
)
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64), help="Worker threads.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, threads: int) -> None:
    """Serve the unsubscribe pages (and the issue archive) for a reverse proxy to forward to."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .web import serve_until_stopped

        serve_until_stopped(settings, host, port, threads, console)


@cli.command()
@click.option("--maildir", type=click.Path(file_okay=False, path_type=Path), help="Read this Maildir.")
@click.option("--mbox", type=click.Path(dir_okay=False, path_type=Path), help="Read this mbox file.")
@click.option(
    "--imap",
    "imap_url",
    is_flag=False,
    flag_value="",
    metavar="[URL]",
    help="Read the IMAP mailbox of the imap_* settings, or imaps://user@host[:port]/folder (no password).",
)
@click.option(
    "--every", type=click.FloatRange(min=1), metavar="SECONDS", help="Read again every SECONDS until stopped."
)
@output_options
@click.pass_context
def bounces(
    ctx: click.Context,
    maildir: Path | None,
    mbox: Path | None,
    imap_url: str | None,
    every: float | None,
    json_mode: bool,
    quiet: bool,
) -> None:
    """Read bounces and complaints from the bounce mailbox, suppress who they say; mark what was read.

    Exit status: 0 done, 1 refused (no mailbox, bad settings), 3 done but some messages were unreadable
    (left flagged for a person), 4 the mailbox went away mid-way (rerun), 130 Ctrl-C, 143 SIGTERM.
    """
    console = Console(json_mode=json_mode, quiet=quiet)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "bounces"}
    with reported(console, fields):
        from .bouncebox import read_bounces

        code = read_bounces(settings, console, fields, maildir=maildir, mbox=mbox, imap=imap_url, every=every)
        console.emit(_outcome(fields, code, warnings=console.warnings))
        if code:
            sys.exit(code)


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the settings in effect and where each came from (default, file, variable); secrets masked."""
    from .config import describe

    console = Console(stamped=False)
    for line in describe(loaded_from(ctx, console)):
        console.result(line)


@cli.command()
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
@click.option("--reason", default="", help="Why, for the record (e.g. 'replied STOP').")
@click.option("--undo", is_flag=True, help="Resubscribe the addresses instead.")
@click.pass_context
def unsubscribe(ctx: click.Context, addresses: tuple[str, ...], reason: str, undo: bool) -> None:
    """Add ADDRESS... to the suppression list by hand (or take them off with --undo)."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .suppressions import suppress_by_hand

        suppress_by_hand(settings, addresses, reason=reason, undo=undo, console=console)


@cli.group()
def suppressions() -> None:
    """The addresses mailer never sends to: list, remove, import or export them."""


@suppressions.command("list")
@click.pass_context
def suppressions_list(ctx: click.Context) -> None:
    """Show every suppressed address: source, when, reason, issue, status code and the server's words."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .suppressions import list_suppressions

        list_suppressions(settings, console)


@suppressions.command("remove")
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
@click.pass_context
def suppressions_remove(ctx: click.Context, addresses: tuple[str, ...]) -> None:
    """Take ADDRESS... off the suppression list (a bounce or complaint judged wrong); the same as
    `mailer unsubscribe --undo`."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .suppressions import remove_suppressions

        remove_suppressions(settings, addresses, console)


@suppressions.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reason", default="", help="Why, for the record (e.g. 'complaints from ESP').")
@output_options
@click.pass_context
def suppressions_import(ctx: click.Context, file: Path, reason: str, json_mode: bool, quiet: bool) -> None:
    """Suppress every address in FILE: a CSV with an email column (Mailchimp, Mailgun ... exports), or one
    address a line. A file that cannot be read whole is refused; exit 1 if any line was not an address."""
    console = Console(json_mode=json_mode, quiet=quiet, stamped=False)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "suppressions import", "file": str(file)}
    with reported(console, fields):
        from .suppressions import import_file

        report = import_file(settings, file, reason=reason, console=console)
    code = ExitStatus.ERROR if report.bad else ExitStatus.OK
    counts = {"added": report.added, "already": report.already, "bad": report.bad, "kept": report.kept}
    console.emit(_outcome(fields, code, **counts, **({"status": "incomplete"} if code else {})))
    if code:
        sys.exit(code)


@suppressions.command("export")
@click.pass_context
def suppressions_export(ctx: click.Context) -> None:
    """Write the suppression list as CSV (email, source, reason, created_at, issue, status, diagnostic)."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .suppressions import export_suppressions

        export_suppressions(settings, console.out)


@cli.group()
def db() -> None:
    """The record's database: create or upgrade its schema, or move a SQLite record into PostgreSQL."""


@db.command("migrate")
@click.pass_context
def db_migrate(ctx: click.Context) -> None:
    """Create the schema in the configured database (SQLite or PostgreSQL), or upgrade it to this mailer's."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .database import migrate

        console.result(migrate(settings).line())


@db.command("copy")
@click.argument("sqlite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def db_copy(ctx: click.Context, sqlite_file: Path) -> None:
    """Copy the SQLite record SQLITE_FILE (every table, ids kept) into the configured PostgreSQL database,
    which must be empty; all or nothing. Stop every mailer process using either first."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .database import copy_sqlite

        for line in copy_sqlite(settings, sqlite_file).lines():
            console.result(line)


@cli.group()
def subscribers() -> None:
    """Subscriber lists kept in mailer's database: import, export, list, count or remove."""


def list_option(f: F) -> F:
    """--list NAME, for the commands on one stored list."""
    return click.option(
        "--list", "list_name", default=DEFAULT_LIST, show_default=True, metavar="NAME", help="The list."
    )(f)


@subscribers.command("import")
@click.argument("files", nargs=-1, required=True, metavar="FILE...", type=click.Path(path_type=Path))
@list_option
@output_options
@click.pass_context
def subscribers_import(
    ctx: click.Context, files: tuple[Path, ...], list_name: str, json_mode: bool, quiet: bool
) -> None:
    """Import the readers of the files (CSV, or another tool's export) into a list, with the date and
    source of their consent; all or nothing.

    Exit status: 0 done, 1 refused (nothing imported), 2 usage error.
    """
    console = Console(json_mode=json_mode, quiet=quiet, stamped=False)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "subscribers import", "list": list_name}
    with reported(console, fields):
        from .stored import import_into_list

        done = import_into_list(settings, list(files), list_name, console)
        console.emit(_outcome(fields, 0, **done.fields()))


@subscribers.command("export")
@list_option
@click.pass_context
def subscribers_export(ctx: click.Context, list_name: str) -> None:
    """Write a list as CSV on stdout: email, name, every field, consent date and source, status."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .stored import export_list

        export_list(settings, list_name, console.out)


@subscribers.command("list")
@output_options
@click.pass_context
def subscribers_list(ctx: click.Context, json_mode: bool, quiet: bool) -> None:
    """Show the lists kept: name, subscribers, how many of them are suppressed, last change."""
    console = Console(json_mode=json_mode, quiet=quiet, stamped=False)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "subscribers list"}
    with reported(console, fields):
        from .stored import show_lists

        kept = show_lists(settings, console)
        console.emit(_outcome(fields, 0, lists=[dataclasses.asdict(one) for one in kept]))


@subscribers.command("count")
@list_option
@output_options
@click.pass_context
def subscribers_count(ctx: click.Context, list_name: str, json_mode: bool, quiet: bool) -> None:
    """Print how many subscribers a list has (suppressed ones included, counted apart)."""
    console = Console(json_mode=json_mode, quiet=quiet, stamped=False)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "subscribers count", "list": list_name}
    with reported(console, fields):
        from .stored import count_list

        one = count_list(settings, list_name, console)
        console.emit(_outcome(fields, 0, members=one.members, suppressed=one.suppressed))


@subscribers.command("remove")
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
@list_option
@output_options
@click.pass_context
def subscribers_remove(
    ctx: click.Context, addresses: tuple[str, ...], list_name: str, json_mode: bool, quiet: bool
) -> None:
    """Take ADDRESS... off a list (not suppressed: to stop all mail to them, `mailer unsubscribe`)."""
    console = Console(json_mode=json_mode, quiet=quiet, stamped=False)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "subscribers remove", "list": list_name}
    with reported(console, fields):
        from .stored import remove_from_list

        removed, missing = remove_from_list(settings, list_name, addresses, console)
        console.emit(_outcome(fields, 0, removed=removed, not_on_list=missing))


@cli.command()
@click.argument("post", type=click.Path(path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="Print only what failed, not the checks that passed.")
@click.option(
    "--json", "json_mode", is_flag=True, help="Print one JSON object on stdout (every check, exit status)."
)
@offline_option
@click.pass_context
def check(ctx: click.Context, post: Path, quiet: bool, json_mode: bool) -> None:
    """Run the pre-send checks on POST (a folder: today's post); exit 1 on what would hurt delivery.

    `send` runs the same checks and refuses to mail on an error; cron can run this one before it.
    """
    console = Console(json_mode=json_mode)
    settings = settings_from(ctx, console)
    fields: dict[str, Any] = {"command": "check", "post": str(post)}
    with reported(console, fields):
        from .checks import check_post, has_errors

        checked, checks = check_post(post, settings, console, quiet=quiet)
        fields["post"] = str(checked)
    errors = sum(c.level == "error" for c in checks)
    warnings = sum(c.level == "warning" for c in checks)
    code = ExitStatus.ERROR if has_errors(checks) else ExitStatus.OK
    console.emit(
        _outcome(
            fields, code, errors=errors, warnings=warnings, checks=[dataclasses.asdict(c) for c in checks]
        )
    )
    if code:
        sys.exit(code)


@cli.command()
@click.argument("target", metavar="POST_OR_FOLDER", type=click.Path(path_type=Path))
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Port (default: any free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; keep it local.")
@click.option("--no-open", is_flag=True, help="Do not open a browser; just print the address.")
@offline_option
@click.pass_context
def preview(ctx: click.Context, target: Path, port: int, host: str, no_open: bool) -> None:
    """Show a post (or a folder's posts) in the browser as subscribers get it; reloads on every save."""
    console = Console(stamped=False)
    settings = settings_from(ctx, console)
    with reported(console):
        from .preview import preview_until_stopped

        preview_until_stopped(target, settings, host, port, console, open_browser=not no_open)


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def init(folder: Path) -> None:
    """Make a newsletter site in FOLDER (default: here): settings, a sample post, a list; never overwrites."""
    console = Console(stamped=False)
    with reported(console):
        from .scaffold import init_site

        console.result("\n".join(init_site(folder).report()))


def main() -> None:
    """Console-script entry point.

    The process ends with the command: every object is frozen first, so the interpreter's exit skips the
    collector's last full pass over what start-up built (lxml, cssutils, jinja2, click), which only freed
    memory the exit gives back anyway: a sixth of a one-reader send's CPU (docs/benchmarks.md). Files and
    record connections are closed by the commands themselves before this.
    """
    try:
        cli(prog_name="mailer")
    finally:
        gc.freeze()
