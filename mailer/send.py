"""`mailer send` as one function: pick the post, render it once, check it, and run the send loop."""

from __future__ import annotations

import dataclasses
import secrets
import signal
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .campaign import Report, SendOptions, run_send
from .checks import Check, ChecksFailed, blocking, check_issue
from .config import Settings
from .console import Console
from .errors import ExitStatus, Interrupted, MailerError
from .keymarks import keyring_for
from .ledger import SMTP, Ledger, issue_lock
from .lists import ListFile, read_lists
from .message import MessageFactory, make_factory
from .post import load_post
from .progress import ConsoleFeedback, report_counts, say_report, warn_rates
from .rates import Rates, issue_rates
from .render import Issue, render_issue
from .schedule import age_refusal, require_post, resolve_post, today
from .stopping import StopSignals
from .subscribers import ReadStats, Subscriber
from .transport import make_transport
from .webcopies import to_record, write_copy

if TYPE_CHECKING:
    from .workers import Crew


@dataclass
class SendResult:
    """What happened, for the CLI's final report."""

    issue: Issue | None
    report: Report | None
    stats: ReadStats
    note: str = ""  # the one line to print when nothing was done
    via: str = ""  # the transport's description
    deliverable: int = 0  # subscribers this run set out to mail, counted before the first message
    refused: list[Check] = field(default_factory=list)  # dry run: the errors that would stop a real send
    lists: list[ListFile] = field(default_factory=list)  # what was read from each list
    rates: Rates | None = None  # after a send over SMTP: the issue's bounces and complaints so far
    too_old: str = ""  # dry run: why a real send would refuse the post for its date (schedule.age_refusal)


@dataclass(frozen=True)
class TestSend:
    """The one message of `send --test`, for the CLI to report."""

    email: str
    via: str
    reply: str
    message_id: str


def send_options(
    settings: Settings,
    *,
    connections: int | None,
    rate: float | None,
    dry_run: bool,
    retry_failed: bool,
    allow_changed: bool,
    allow_resend: bool,
) -> SendOptions:
    """How this send behaves: the settings, with what the command line gave instead (None: not given)."""
    return SendOptions(
        connections=connections or settings.connections,
        rate=settings.rate if rate is None else rate,
        max_attempts=settings.max_attempts,
        retry_delay=settings.retry_delay,
        max_consecutive_failures=settings.max_consecutive_failures,
        dry_run=dry_run,
        retry_failed=retry_failed,
        allow_changed=allow_changed,
        allow_resend=allow_resend,
    )


def warn_checks(issue: Issue, checks: list[Check], console: Console, skip: frozenset[str]) -> None:
    """Say what deserves a look: the warnings, and the errors skipped by name."""
    for c in checks:
        if c.level == "warning":
            console.warn(f"{issue.post.path}: {c.code}: {c.message}")
        elif c.level == "error" and c.code in skip:
            console.warn(
                f"{issue.post.path}: {c.code}: {c.message} (skipped on purpose: --skip-check {c.code})"
            )


class DeliverableCount:
    """Readers of one list this run will mail: valid, first seen, not suppressed, not already mailed.

    Fed by the list's check (the one read before the first message), asked of the record 1,000 at a time,
    for the question asked, the progress bar's total and the list's report; the send itself decides each
    reader afresh as it streams the list (an unsubscribe in between counts).
    """

    def __init__(self, ledger: Ledger, issue_id: str, one: ListFile, *, retry_failed: bool) -> None:
        self.ledger = ledger
        self.issue_id = issue_id
        self.list = one
        # as the send decides (campaign._unsent): failed for good and in doubt are left for --retry-failed
        self.done = {"sent"} if retry_failed else {"sent", "failed", "sending"}
        self.batch: list[Subscriber] = []

    def add(self, subscriber: Subscriber) -> None:
        """Count one reader the send will come to (once the batch is asked of the record)."""
        self.batch.append(subscriber)
        if len(self.batch) == 1000:
            self.flush()

    def flush(self) -> None:
        """Ask the record about the readers counted since the last flush."""
        suppressed, states = self.ledger.states(self.issue_id, [sub.email for sub in self.batch])
        for sub in self.batch:
            if sub.key in suppressed:
                self.list.suppressed += 1
            elif states.get(sub.key) in self.done:
                self.list.already_sent += 1
            else:
                self.list.to_mail += 1
        self.batch.clear()


def write_archive(issue: Issue, factory: MessageFactory, settings: Settings) -> Path:
    """The web version of the issue ("view in browser"), with no one's personal unsubscribe link, in the
    data folder and in the record, from which the `mailer serve` of another host takes it.

    Written before the first message goes: a data folder that cannot take it (full, read-only, a file)
    stops the send here, with one line and nothing mailed.
    """
    folder = settings.data_dir / "archive"
    path = folder / f"{issue.issue_id}.html"
    values = {"unsubscribe_url": f"mailto:{settings.effective_mailto}?subject=unsubscribe"}
    html = issue.html.as_file(values)
    try:
        write_copy(path, html)
    except OSError as exc:
        raise MailerError(
            f"{path}: cannot write the issue's web copy: {exc.strerror or exc}; nothing was sent"
        ) from None
    with Ledger(settings.db_path) as ledger:
        ledger.keep_web_copy(issue.issue_id, html)
        to_record(settings, ledger)  # and those of the issues sent before the record kept them
    return path


def send_issue(
    settings: Settings,
    target: Path,
    *,
    to: list[Path],
    options: SendOptions,
    force: bool,
    yes: bool,
    skip_checks: frozenset[str],
    console: Console,
    feedback: ConsoleFeedback,
    stored: str = "",
    crew: Crew | None = None,
) -> SendResult:
    """Send the issue in `target` (a post, or a folder holding today's post) to the lists in `to`, or to
    the list kept in the database under the name `stored`. With a `crew`, worker processes send it
    (workers/).

    SIGTERM is handled like Ctrl-C for the whole command (see stopping.py): what systemd or docker send to
    stop a service ends the send after the messages in flight, recorded, never like a kill -9.
    """
    signals = StopSignals()
    with signals.install():
        return _send(
            settings, target, to, stored, options, force, yes, skip_checks, console, feedback, signals, crew
        )


def _send(
    settings: Settings,
    target: Path,
    to: list[Path],
    stored: str,
    options: SendOptions,
    force: bool,
    yes: bool,
    skip_checks: frozenset[str],
    console: Console,
    feedback: ConsoleFeedback,
    signals: StopSignals,
    crew: Crew | None,
) -> SendResult:
    post_path = resolve_post(target, settings, console)
    if post_path is None:
        return SendResult(
            None, None, ReadStats(), f"No post dated {today(settings)} in {target}; nothing to send."
        )
    issue = render_issue(load_post(post_path), settings)  # once: each reader's message is made from it
    checks = check_issue(issue, settings)  # `mailer check`'s own checks
    refused = blocking(checks, skip_checks)
    dated = "" if force else age_refusal(issue.post, settings, today(settings))
    too_old = dated if settings.smtp_host else ""  # the local outbox mails no one: its date stops nothing
    if refused and not options.dry_run:  # with the date's refusal, if any: all that stops it, said at once
        raise ChecksFailed(post_path, refused, also=too_old)
    if too_old and not options.dry_run:
        raise MailerError(f"{post_path}: {too_old}")
    if dated and not too_old and not options.dry_run:
        console.note(f"Note: {post_path}: {dated}; the local outbox mails no one, so going ahead")
    paths = to or ([Path(settings.subscribers)] if settings.subscribers and not stored else [])
    if not paths and not stored:
        raise MailerError("no subscriber list: pass --to FILE or set `subscribers` in mailer.toml")
    for path in paths:
        if not path.is_file():
            raise MailerError(f"{path}: no such subscriber list")
    transport = make_transport(settings, console)

    # The one read before the first message: the check (a broken list stops the send before the question, the
    # web copy or any message), each list's SHA-256 for the record and the count to mail from each.
    with Ledger(settings.db_path, destination=transport.destination) as ledger:
        # the key the record says the readers' links were signed with, before one is made or a list read
        keyring = keyring_for(settings, ledger, transport.destination, console)
        factory = make_factory(issue, settings, console=console, keyring=keyring)
        counts: list[DeliverableCount] = []

        def count(one: ListFile) -> Callable[[Subscriber], None]:
            counts.append(DeliverableCount(ledger, issue.issue_id, one, retry_failed=options.retry_failed))
            return counts[-1].add

        if stored:
            from .stored import read_stored  # a stored list only: with suppressions.py, not needed for a file

            lists = read_stored(ledger, stored, count=count)
        else:
            lists = read_lists(paths, voice=console, count=count)
        for counted in counts:
            counted.flush()
        if (
            not options.dry_run
            and target.is_dir()
            and not options.retry_failed
            and ledger.is_complete(issue.issue_id, lists.key)
            # a post changed since is not "already sent": start_issue refuses it, or with --changed keeps it
            # as the web copy every host shows
            and ledger.status(issue.issue_id).content_hash == issue.post.content_hash
        ):
            where = "" if transport.destination == SMTP else " (to the local outbox)"
            note = f"{post_path}: already sent to {lists.named}{where}; nothing to do."
            return SendResult(issue, None, lists.totals(), note, lists=lists.files)
    deliverable = sum(f.to_mail for f in lists.files)
    if stored or len(lists.files) > 1 or any(f.stats.check.skipped for f in lists.files):
        for one in lists.files:
            console.say(one.line())
    warn_checks(issue, checks, console, skip_checks)
    if not options.dry_run:
        question = (
            f"Send “{issue.subject}” to {deliverable:,} subscriber(s) of {lists.named}"
            f" via {transport.description}?"
        )
        # the local outbox mails no one, so it needs no yes
        if not (yes or not settings.smtp_host or console.ask(question)):
            return SendResult(
                issue,
                None,
                lists.totals(),
                "Nothing sent.",
                transport.description,
                deliverable,
                lists=lists.files,
            )

    lock = nullcontext(lambda: None) if options.dry_run else issue_lock(settings.db_path, issue.issue_id)
    with (
        lock as held,
        Ledger(settings.db_path, destination=transport.destination) as ledger,
    ):
        # the record's refusals (the post changed since it was sent, or renamed), once, on every path (a dry
        # run says so too), and before the web copy is replaced: the readers who got the issue see what they
        # were sent when they "view in browser"
        ledger.start_issue(
            issue.issue_id, issue.post.content_hash, issue.subject,
            allow_changed=options.allow_changed, allow_resend=options.allow_resend,
        )  # fmt: skip
        if not options.dry_run:
            # an earlier send of the issue by workers (only the holder of the issue's lock puts one in the
            # record); a send by workers looks at it as it puts its own there
            if crew is None and ledger.rows(
                "SELECT 1 FROM sends WHERE issue_id = ? AND destination = ?",
                (issue.issue_id, ledger.destination),
            ):
                from .workers.coordinator import take_over  # not imported by a lone send otherwise: ~15 ms

                take_over(ledger, issue.issue_id)
            write_archive(issue, factory, settings)
            issue.keep_inlined()  # the data folder exists now, also on a first send: the workers read it
            console.note(
                f"Sending {issue.issue_id} to {deliverable:,} subscriber(s) via {transport.description}"
            )
            feedback.start(deliverable, options.rate)
        if crew is not None and not options.dry_run:
            from .workers.coordinator import coordinate  # --workers only: a lone send does not import it

            report = coordinate(
                ledger, issue, factory, lists.subscribers, expected=deliverable, options=options, crew=crew,
                settings=settings, feedback=feedback, signals=signals, list_key=lists.key,
                list_path=lists.resolved, held=held,
            )  # fmt: skip
        else:
            report = run_send(
                issue_id=issue.issue_id,
                factory=factory,
                transport=transport,
                subscribers=lists.subscribers,
                ledger=ledger,
                options=options,
                feedback=feedback,
                signals=signals,
                list_key=lists.key,
                list_path=lists.resolved,
                check_lock=held,
            )
        rates = None
        if not options.dry_run and transport.destination == SMTP:
            bounced = ledger.bounce_counts(issue.issue_id).get(issue.issue_id, {})
            rates = issue_rates(ledger.status(issue.issue_id), bounced)
    return SendResult(
        issue, report, lists.totals(), "", transport.description, deliverable, refused, lists.files, rates,
        too_old,
    )  # fmt: skip


def send_test(
    settings: Settings, target: Path, address: str, *, console: Console, skip_checks: frozenset[str]
) -> TestSend:
    """Send one test copy to `address`: built as the real ones, but marked, with its own Message-ID.

    The subject carries `test_subject_prefix`, the Message-ID is new each time (never the one the real
    issue will have, which a mail provider would then drop as a duplicate), the unsubscribe link is the
    test address's own, signed with the record's key as the send's will be (keymarks.py), and nothing is
    recorded: a later real send still mails that address.
    """
    from .headers import normalize_email

    try:
        email = normalize_email(address)
    except ValueError as exc:
        raise MailerError(f"{address}: not a valid address: {exc}") from None
    post_path = require_post(target, settings, console)
    issue = render_issue(load_post(post_path), settings)
    transport = make_transport(settings, console)
    with Ledger(settings.db_path) as ledger:  # its links are signed as the real send's will be
        keyring = keyring_for(settings, ledger, transport.destination, console)
    checks = check_issue(issue, settings)
    warn_checks(issue, checks, console, skip_checks)
    for c in blocking(checks, skip_checks):
        fix = f"; fix: {c.fix}" if c.fix else ""
        console.warn(f"{post_path}: {c.code}: {c.message} (a real send stops here{fix})")
    test_issue = dataclasses.replace(
        issue,
        issue_id=f"{issue.issue_id}.test-{secrets.token_hex(4)}",
        subject=settings.test_subject_prefix + issue.subject,
    )
    factory = make_factory(test_issue, settings, console=console, keyring=keyring)
    conn = transport.connect()
    try:
        outcome = conn.send(
            factory.envelope_sender(email), email, factory.build_pieces(email, settings.sample_name)
        )
    finally:
        conn.close()
    if not outcome.ok:
        raise MailerError(f"{email}: not delivered via {transport.description}: {outcome}")
    return TestSend(email, transport.description, str(outcome), factory.message_id(email))


def send_and_report(
    settings: Settings,
    target: Path,
    *,
    to: list[Path],
    stored: str,
    test_address: str | None,
    options: SendOptions,
    force: bool,
    yes: bool,
    skip_checks: frozenset[str],
    console: Console,
    fields: dict[str, object],
    crew: Crew | None = None,
) -> int:
    """`mailer send`: a test copy (send_test) or the send (send_issue), then what it did said on the console
    and put into `fields`, the --json object's (counts, failures, lists, bounces, a status word); return the
    exit status. A send that stops (Ctrl-C, an error) leaves in `fields` what it got done before the
    exception goes on to the command's error report."""
    if test_address:
        sent = send_test(settings, target, test_address, console=console, skip_checks=skip_checks)
        console.result(f"Test message sent to {sent.email} via {sent.via}: {sent.reply}")
        fields.update(
            status="test", to=sent.email, via=sent.via, reply=sent.reply, message_id=sent.message_id,
            warnings=console.warnings,
        )  # fmt: skip
        return ExitStatus.OK
    feedback = ConsoleFeedback(console)
    try:
        result = send_issue(
            settings, target, to=to, options=options, force=force, yes=yes, skip_checks=skip_checks,
            console=console, feedback=feedback, stored=stored, crew=crew,
        )  # fmt: skip
    except (KeyboardInterrupt, MailerError) as exc:
        stopped = isinstance(exc, MailerError) and exc.exit_code == ExitStatus.STOPPED
        if stopped or isinstance(exc, KeyboardInterrupt):  # a log's last line said "1/80" with 31 sent
            feedback.stopped()
        feedback.close()
        if feedback.report is not None:
            fields.update(counts=report_counts(feedback.report), failures=feedback.report.failures)
        fields["warnings"] = console.warnings
        if isinstance(exc, KeyboardInterrupt):  # named first (cli.reported), then how to resume
            raise Interrupted(getattr(exc, "signum", signal.SIGINT), resume=True) from None
        exc.resume = stopped and "the same command again" not in str(exc)  # unless it says so (a full disk)
        raise
    fields.update(via=result.via, warnings=console.warnings, lists=[f.fields() for f in result.lists])
    if result.issue is not None:
        fields.update(issue=result.issue.issue_id, subject=result.issue.subject)
    report = result.report
    if report is None:
        console.note(result.note)
        fields.update(status="nothing sent", note=result.note)
        return ExitStatus.OK
    if not options.dry_run:
        feedback.finish(report)
    fields.update(
        counts=report_counts(report, result.stats),
        failures=report.failures,
        deliverable=result.deliverable,
    )
    heading = f"{fields['issue']}: {fields['subject']}"
    say_report(console, heading, report, result.stats, dry_run=options.dry_run, limit=options.rate)
    if result.rates is not None:
        console.say(f"  the issue so far, every send to it: {result.rates.line()}")  # not this run alone
        warn_rates(console, settings, [result.rates])
        fields["bounces"] = result.rates.fields()
    if result.refused:  # a dry run: list who would get it, then say that a real send would stop
        raise ChecksFailed(target, result.refused, also=result.too_old)
    if result.too_old:  # a dry run of a post a real send would refuse for its date: said, not an error
        console.note(f"Note: {target}: a real send would stop: {result.too_old}")
    if options.dry_run:
        fields["status"] = "dry run"
        return ExitStatus.OK
    return ExitStatus.OK if report.complete else ExitStatus.INCOMPLETE
