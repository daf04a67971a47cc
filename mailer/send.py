"""`mailer send` as one function: pick the post, render it once, check it, and run the send loop."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from .campaign import Feedback, Report, SendOptions, run_send
from .config import Settings
from .errors import MailerError
from .ledger import Ledger, issue_lock
from .message import MessageFactory, make_factory
from .post import load_post
from .private import make_folder, write_file
from .render import Issue, render_issue
from .schedule import check_age, pick_post, today
from .stopping import StopSignals
from .subscribers import BadRow, ReadStats, read_subscribers
from .transport import make_transport


@dataclass
class SendResult:
    """What happened, for the CLI's final report."""

    issue: Issue | None
    report: Report | None
    stats: ReadStats
    note: str = ""  # the one line to print when nothing was done


def resolve_post(target: Path, settings: Settings, say: Callable[[str], None]) -> Path | None:
    """A post path as given, or today's post when `target` is a folder (None: nothing to send today)."""
    if not target.is_dir():
        return target
    day = today(settings)
    path, problems = pick_post(target, day)
    for problem in problems:
        say(f"Warning: {problem}")
    if path is None:
        return None
    say(f"Today's post ({day}, {settings.timezone}): {path}")
    return path


def prepare(post_path: Path, settings: Settings, say: Callable[[str], None]) -> tuple[Issue, MessageFactory]:
    """Render the issue once and make the per-subscriber message factory."""
    issue = render_issue(load_post(post_path), settings)
    factory = make_factory(issue, settings, notify=say)
    return issue, factory


def write_archive(issue: Issue, factory: MessageFactory, settings: Settings) -> Path:
    """The web version of the issue ("view in browser"), with no one's personal unsubscribe link.

    Written before the first message goes: a data folder that cannot take it (full, read-only, a file)
    stops the send here, with one line and nothing mailed.
    """
    folder = settings.data_dir / "archive"
    path = folder / f"{issue.issue_id}.html"
    values = {"unsubscribe_url": f"mailto:{settings.effective_mailto}?subject=unsubscribe"}
    try:
        make_folder(folder)
        write_file(path, issue.html.fill(values).replace(b"\r\n", b"\n"))
    except OSError as exc:
        raise MailerError(
            f"{path}: cannot write the issue's web copy: {exc.strerror or exc}; nothing was sent"
        ) from None
    return path


def send(
    settings: Settings,
    target: Path,
    *,
    to: Path | None,
    options: SendOptions,
    force: bool,
    confirm: Callable[[str], bool],
    say: Callable[[str], None],
    feedback_for: Callable[[Path], Feedback],
) -> SendResult:
    """Send the issue in `target` (a post, or a folder holding today's post) to the list in `to`.

    SIGTERM is handled like Ctrl-C for the whole command (see stopping.py): what systemd or docker send to
    stop a service ends the send after the messages in flight, recorded, never like a kill -9.
    """
    signals = StopSignals()
    with signals.install():
        return _send(settings, target, to, options, force, confirm, say, feedback_for, signals)


def _send(
    settings: Settings,
    target: Path,
    to: Path | None,
    options: SendOptions,
    force: bool,
    confirm: Callable[[str], bool],
    say: Callable[[str], None],
    feedback_for: Callable[[Path], Feedback],
    signals: StopSignals,
) -> SendResult:
    stats = ReadStats()
    post_path = resolve_post(target, settings, say)
    if post_path is None:
        return SendResult(None, None, stats, f"No post dated {today(settings)} in {target}; nothing to send.")
    issue, factory = prepare(post_path, settings, say)
    if not options.dry_run and not force:
        try:
            check_age(issue.post, settings, today(settings))
        except MailerError as exc:
            if settings.smtp_host:
                raise
            say(f"Note: {exc}; the local outbox mails no one, so going ahead")
    subscribers_path = to or (Path(settings.subscribers) if settings.subscribers else None)
    if subscribers_path is None:
        raise MailerError("no subscriber list: pass --to FILE or set `subscribers` in mailer.toml")
    if not subscribers_path.is_file():
        raise MailerError(f"{subscribers_path}: no such subscriber list")
    list_key = list_fingerprint(subscribers_path)
    if target.is_dir() and not options.dry_run and not options.retry_failed:
        with Ledger(settings.db_path) as ledger:
            if ledger.is_complete(issue.issue_id, list_key):
                note = f"{post_path}: already sent to {subscribers_path}; nothing to do."
                return SendResult(issue, None, stats, note)
    transport = make_transport(settings)

    def bad_row(row: BadRow) -> None:
        say(f"skipped: {row}")

    # reads the header now: a list without an email column stops the send before anything is said or written
    subscribers = read_subscribers(subscribers_path, on_bad=bad_row, stats=stats)
    if not options.dry_run:
        question = f"Send “{issue.subject}” to {subscribers_path} via {transport.description}?"
        if not confirm(question):
            return SendResult(issue, None, stats, "Nothing sent.")
        write_archive(issue, factory, settings)
        say(f"Sending {issue.issue_id} via {transport.description}")

    with nullcontext() if options.dry_run else issue_lock(settings.db_path, issue.issue_id):
        report = run_send(
            issue_id=issue.issue_id,
            content_hash=issue.post.content_hash,
            subject=issue.subject,
            factory=factory,
            transport=transport,
            subscribers=subscribers,
            db_path=settings.db_path,
            sender=settings.from_email,
            options=options,
            feedback=feedback_for(subscribers_path),
            signals=signals,
            list_key=list_key,
            list_path=str(subscribers_path.resolve()),
        )
    return SendResult(issue, report, stats)


def list_fingerprint(path: Path) -> str:
    """What makes two subscriber lists the same list for the record: the same bytes (SHA-256).

    A send is complete per issue and list: another list, or this one with a reader added, is not done.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise MailerError(f"{path}: cannot read the subscriber list: {exc.strerror}") from None
    return digest.hexdigest()


def send_test(settings: Settings, target: Path, address: str, say: Callable[[str], None]) -> str:
    """Send one message, built exactly as the real ones, to `address`; nothing is recorded."""
    from email_validator import EmailNotValidError, validate_email

    try:
        email = validate_email(address, check_deliverability=False).ascii_email or address
    except EmailNotValidError as exc:
        raise MailerError(f"{address}: not a valid address: {exc}") from None
    post_path = resolve_post(target, settings, say)
    if post_path is None:
        raise MailerError(f"No post dated {today(settings)} in {target}")
    issue, factory = prepare(post_path, settings, say)
    transport = make_transport(settings)
    conn = transport.connect()
    try:
        outcome = conn.send(settings.from_email, email, factory.build(email, settings.sample_name))
    finally:
        conn.close()
    if not outcome.ok:
        raise MailerError(f"{email}: not delivered via {transport.description}: {outcome}")
    return f"Test message sent to {email} via {transport.description}: {outcome}"
