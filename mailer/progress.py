"""How a send reports itself: a progress bar on a terminal, timestamped log lines otherwise, the report."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .campaign import Feedback, Report
from .config import Settings
from .console import Console
from .ledger import OUTBOX, SMTP, IssueStatus, IssueSummary, Ledger
from .post import load_post
from .rates import Rates, issue_rates
from .schedule import require_post
from .subscribers import ReadStats, Subscriber

MIN_BAR = 10  # columns; on a narrower terminal the bar is left out and only the figures are shown


class ConsoleFeedback(Feedback):
    """Progress on the console's stderr: redrawn in place on a tty, a log line every few seconds otherwise.

    `total` is the deliverable count found before sending (None: unknown, a worker's share); the bar counts
    messages dealt with (sent or failed) out of it. A send with nothing to deliver draws nothing: its report
    says so, where "progress: 0 messages" lines said nothing to a rerun's log.
    """

    def __init__(self, console: Console, *, interval: float | None = None) -> None:
        self.console = console
        self.total: int | None = None
        self.tty = console.tty and not console.quiet
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.last = 0.0
        self.drawn = False
        self.report: Report | None = None  # the last state seen: what a send that stopped got done
        self.limit = 0.0  # messages per second at most (--rate), 0: no limit
        self.prepared = ""  # what preparing() said last
        self.shown: tuple[int, ...] = ()  # the figures of the last line drawn (_figures)

    def start(self, total: int, limit: float = 0.0) -> None:
        """The deliverable count, known once the list was read through before the first message, and the
        send's --rate (0: none): the rate shown is never above it (right after the first message, which
        starts at once, a --rate 0.5 send said "3 msg/s, ETA 0:00:15" for a minute and a quarter)."""
        self.total = total
        self.limit = limit

    def progress(self, report: Report) -> None:
        self.report = report
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        self._draw(report)

    def finish(self, report: Report) -> None:
        """Draw the final state and end the bar's line; a run that went through the list ends at 100%."""
        self.report = report
        if self.total and not report.pending and not report.stopped_because:
            self.total = _done(report)  # the count made before sending may be off by readers who left since
        self._draw(report)
        self.close()

    def stopped(self) -> None:
        """A send stopped early or by a signal: its counts at the stop drawn once more, unless the last line
        had them."""
        if self.report is not None and self.shown != _figures(self.report):
            self.finish(self.report)

    def close(self) -> None:
        """End the bar's line so that what follows starts on a line of its own."""
        if self.tty and self.drawn:
            self.console.draw("\n")
            self.drawn = False

    def _draw(self, report: Report) -> None:
        if self.console.quiet:
            return
        self.shown = _figures(report)
        done = _done(report)
        rate = shown_rate(report, self.limit)
        failed = f", {report.failed} failed" if report.failed else ""
        if self.total is None:  # unknown (a worker's share of a send): no bar, no ETA
            self._draw_count(report, done, rate, failed)
            return
        if not (self.total or done):
            return
        total = max(self.total, done)
        left = total - done
        eta = _clock(left / rate) if rate > 0 and left and not report.stopped_because else "-"
        if self.tty:
            self.console.draw("\r" + self._bar_line(done, total, failed, rate, eta))
            self.drawn = True
        else:
            speed = f"{_per_second(rate)} msg/s, ETA {eta}"
            self.console.note(f"progress: {done}/{total} messages, {report.sent} sent{failed}, {speed}")

    def _draw_count(self, report: Report, done: int, rate: float, failed: str) -> None:
        count = f"{done} message{'' if done == 1 else 's'}"
        if self.tty:
            width = _columns(self.console) - 1
            self.console.draw("\r" + f"{count}  {_per_second(rate)} msg/s{failed}"[:width].ljust(width))
            self.drawn = True
        else:
            self.console.note(f"progress: {count}, {report.sent} sent{failed}, {_per_second(rate)} msg/s")

    def _bar_line(self, done: int, total: int, failed: str, rate: float, eta: str) -> str:
        frac = done / total if total else 1.0
        figures = f" {done}/{total} {frac:4.0%}  {_per_second(rate)} msg/s  ETA {eta}{failed}"
        width = _columns(self.console) - 1  # the last column would wrap the line on some terminals
        room = width - len(figures) - 2
        if room < MIN_BAR:  # padded: a shorter line (the ETA gone to "-") must cover the one before
            return figures.strip()[:width].ljust(width)
        filled = int(frac * room)
        return f"[{'#' * filled}{'.' * (room - filled)}]{figures}"

    def preparing(self, what: str) -> None:
        """Said where the progress will be, once: under load the workers of a send take 10-14 s to start,
        which a bar at "0/N, 0.0 msg/s, ETA -" did not explain."""
        if self.console.quiet or what == self.prepared or self.total == 0:  # 0: nothing to deliver, no line
            return
        self.prepared = what
        line = f"0/{self.total} messages: {what}" if self.total is not None else what
        if self.tty:
            width = _columns(self.console) - 1
            self.console.draw("\r" + line[:width].ljust(width))
            self.drawn = True
        else:
            self.console.note(f"progress: {line}")

    def problem(self, line: str) -> None:
        self._own_line()
        self.console.error(self.console.stamp(f"failed: {line}"))

    def suppressed_meanwhile(self, email: str) -> None:
        self._own_line()
        # said even with --quiet, as a failed reader is: a send by workers runs them quiet, and the
        # coordinator passes on what they say
        why = "unsubscribed, bounced or complained"
        self.console.error(self.console.stamp(f"{email}: suppressed during the send ({why}); not mailed"))

    def subscribed_again(self, email: str) -> None:
        self._own_line()
        self.console.error(self.console.stamp(f"{email}: subscribed again during the send; mailed after all"))

    def _own_line(self) -> None:
        """End the bar's line (on a terminal) so that a line said now stands on its own."""
        if self.tty and self.drawn:
            self.console.draw("\n")
            self.drawn = False

    def would_send(self, subscriber: Subscriber) -> None:
        self.console.result(subscriber.email)

    def stopping(self, line: str) -> None:
        self.close()
        self.console.error(self.console.stamp(line))


def _done(report: Report) -> int:
    return report.sent + report.failed


def _figures(report: Report) -> tuple[int, ...]:
    """What a progress line counts."""
    return report.sent, report.failed


def _columns(console: Console) -> int:
    try:
        return os.get_terminal_size(console.err.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return 80


def _per_second(rate: float) -> str:
    """A rate as a person reads it: whole numbers from 10 up, one decimal below (a --rate 0.5 send read
    "0 msg/s" while it sent, and "1 msg/s" at 0.6)."""
    return f"{rate:,.0f}" if rate >= 9.95 else f"{rate:.1f}"


def _clock(seconds: float) -> str:
    """An ETA, rounded up: with 8 messages left at 14 a second it said "ETA 0:00:00"."""
    seconds = math.ceil(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# the final report's rows: (key in the JSON counts, label on the console)
REPORT_ROWS = (
    ("sent", "sent"),
    ("would_send", "would send"),
    ("already_sent", "already sent before"),
    ("suppressed", "suppressed (unsubscribed, bounced or complained)"),
    ("invalid", "invalid rows"),
    ("duplicates", "duplicates"),
    ("skipped", "not to be mailed, as the list says"),
    ("retries", "tries again (a temporary refusal or no reply)"),
    ("failed_temporary", "failed, temporary (will retry on rerun)"),
    ("failed_permanent", "failed, permanent"),
    ("bounced", "  of which suppressed (refused as readers)"),
    ("failed_before", "failed permanently before (--retry-failed)"),
    ("in_doubt", "in doubt: no reply to the end, not sent again"),
    ("in_doubt_before", "in doubt before (--retry-failed)"),
    ("pending", "not sent (stopped early)"),
)
LABEL_WIDTH = max(len(label) for _, label in REPORT_ROWS)  # each count in one column, under the longest label


def report_counts(report: Report, stats: ReadStats | None = None) -> dict[str, int]:
    """What a send did, by kind: the numbers of the final report and of the --json object."""
    read = ("invalid", "duplicates", "skipped")  # counted by the list's reader, not the send
    counts = {key: getattr(report, key) for key, _ in REPORT_ROWS if key not in read}
    for key in read:
        counts[key] = getattr(stats, key) if stats else 0
    return counts


def shown_rate(report: Report, limit: float) -> float:
    """The send's rate as progress and report show it: never above `limit` (--rate; 0: none). The first
    message goes at once, so n messages at --rate r are out (n - 1) / r after the start: 4 at 2 a second
    read "2.6 msg/s" in the report."""
    return min(report.rate(), limit) if limit else report.rate()


def report_lines(
    heading: str, report: Report, stats: ReadStats, *, dry_run: bool, limit: float = 0.0
) -> list[str]:
    """The final report for a person: the counts that are not zero and the commonest failure reasons."""
    counts = report_counts(report, stats)
    first = "would_send" if dry_run else "sent"
    lines = [heading]
    for key, label in REPORT_ROWS:
        if key in ("sent", "would_send") and key != first:
            continue
        if counts[key] or key == first:
            lines.append(f"  {label:<{LABEL_WIDTH}}{counts[key]:>9}")
    for reason, count in sorted(report.failures.items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"    {count:>6} x {reason}")
    if not dry_run and report.sent:
        lines.append(f"  {_per_second(shown_rate(report, limit))} msg/s")
    return lines


def say_report(
    console: Console, heading: str, report: Report, stats: ReadStats, *, dry_run: bool, limit: float = 0.0
) -> None:
    """The final report on stderr; in a quiet run only when something was not delivered, as errors."""
    lines = report_lines(heading, report, stats, dry_run=dry_run, limit=limit)
    if console.quiet:
        if not dry_run and not report.complete:
            for line in lines:
                console.error(line)
        return
    console.note(lines[0])
    for line in lines[1:]:
        console.say(line)


def issue_table(issues: list[IssueSummary], bounces: Mapping[str, Mapping[str, int]]) -> list[str]:
    """`mailer status` without a post: every issue sent, newest first, one line each, with the readers its
    last send found suppressed (as `status POST` and the --json give them).

    `bounces` are the bounce counts by issue and kind (Ledger.bounce_counts): hard bounces and complaints are
    shown with their rates (rates.py).
    """
    if not issues:
        return ["No issue has been sent yet."]
    width = max(len(i.issue_id) for i in issues)
    head = f"{'first sent':<16}  {'issue':<{width}}  {'to':<6}"
    lines = [
        f"{head}  {'sent':>7}  {'failed':>7}  {'suppressed':>10}  {'bounced':>13}  {'complaints':>13}"
        f"  {'complete':<8}  title"
    ]
    for i in issues:
        when = i.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
        failed = _not_delivered(i)
        done = "yes" if i.completed_at else "no"
        suppressed = "-" if i.suppressed is None else str(i.suppressed)  # a send killed: no count
        r = issue_rates(i, bounces.get(i.issue_id, {}))
        bounced = f"{r.hard} {r.bounce_rate:5.2f}%" if r.mailed else "-"
        complained = f"{r.complaints} {r.complaint_rate:5.2f}%" if r.mailed else "-"
        lines.append(
            f"{when:<16}  {i.issue_id:<{width}}  {i.destination:<6}  {i.count('sent'):>7}  {failed:>7}"
            f"  {suppressed:>10}  {bounced:>13}  {complained:>13}  {done:<8}  {i.subject}"
        )
    if any(i.destination == OUTBOX for i in issues):
        lines.append("(to outbox: a try-out in the local outbox, no one was mailed; smtp: real sends)")
    return lines


def issue_fields(summary: IssueSummary, bounces: Mapping[str, Mapping[str, int]]) -> dict[str, object]:
    """One issue's record as the --json object of `mailer status` gives it."""
    return {
        "issue": summary.issue_id,
        "destination": summary.destination,
        "subject": summary.subject,
        "first_sent": summary.created_at.isoformat(timespec="seconds"),
        "completed_at": summary.completed_at.isoformat(timespec="seconds") if summary.completed_at else None,
        "complete": summary.completed_at is not None,
        "changed_at": summary.changed_at.isoformat(timespec="seconds") if summary.changed_at else None,
        "counts": dict(summary.counts),
        "sent": summary.count("sent"),
        "failed": _not_delivered(summary),
        "suppressed": summary.suppressed,
        "bounces": issue_rates(summary, bounces.get(summary.issue_id, {})).fields(),
    }


def _not_delivered(summary: IssueSummary) -> int:
    """The "failed" of `status`: deferred, failed, and in doubt (no reply to the end: exit 3 as a failure,
    left for --retry-failed), which the table left out, showing "0 failed" beside "complete"."""
    return summary.count("failed") + summary.count("deferred") + summary.count("sending")


def all_rates(issues: Iterable[IssueSummary], bounces: Mapping[str, Mapping[str, int]]) -> list[Rates]:
    """The bounce and complaint rates of each issue sent over SMTP."""
    return [issue_rates(i, bounces.get(i.issue_id, {})) for i in issues if i.destination == SMTP]


def status_text(
    statuses: list[IssueStatus], bounces: Mapping[str, Mapping[str, int]], running: bool | None
) -> str:
    """`mailer status POST`: each destination's record, and over SMTP the issue's bounces and complaints;
    `running`: whether a send of the issue runs now (IssueStatus.format)."""
    blocks = []
    for st in statuses:
        block = st.format(running)
        if st.destination == SMTP:
            block += "\n  " + issue_rates(st, bounces.get(st.issue_id, {})).line()
        blocks.append(block)
    return "\n".join(blocks)


def warn_rates(console: Console, settings: Settings, rates: Iterable[Rates]) -> None:
    """A warning for each rate above the level its setting names (rates.py)."""
    for r in rates:
        for line in r.warnings(settings):
            console.warn(line)


def show_status(settings: Settings, target: Path | None, console: Console) -> dict[str, object]:
    """`mailer status`: what became of the issue of `target` (a post, its file name, or a folder: today's
    post in it, as `send` takes it), or with None of every issue sent, with a warning for each bounce or
    complaint rate too high; printed for a person (not when quiet) and returned as the --json object's
    fields. (workers.tally is imported here: a send without --workers does not need it.)"""
    from .keymarks import key_status
    from .workers.tally import under_way, under_way_line

    with Ledger(settings.db_path) as ledger:
        key_line, key_held, key = key_status(settings, ledger, console)
        if target is None:
            issues, bounces = ledger.issues(), ledger.bounce_counts()
            if not console.quiet:
                for line in issue_table(issues, bounces):
                    console.result(line)
            warn_rates(console, settings, all_rates(issues, bounces))
            _say_key(console, key_line, key_held)
            return {"issues": [issue_fields(i, bounces) for i in issues], "signing_key": key}
        if target.is_dir():  # as `send posts/` took it: today's post of the folder
            target = require_post(target, settings, console)
        issue_id = load_post(target).issue_id if target.exists() else target.stem
        statuses, bounces = ledger.statuses(issue_id), ledger.bounce_counts(issue_id)
        sending, running = under_way(ledger, issue_id), ledger.issue_locked(issue_id)
    if not console.quiet:
        console.result(status_text(statuses, bounces, running))
        if sending is not None:
            console.result(under_way_line(sending))
    warn_rates(console, settings, all_rates(statuses, bounces))
    _say_key(console, key_line, key_held)
    records = [
        {
            **issue_fields(st, bounces),
            "failure_groups": [
                {"state": g.state, "code": g.code, "reply": g.reply, "count": g.count} for g in st.failures
            ],
        }
        for st in statuses
    ]
    # at the top: the real send's record when there is one (a try-out's only when there is not)
    main = next((r for r in records if r["destination"] == "smtp"), records[0])
    return {**main, "destinations": records, "sending": sending, "running": running, "signing_key": key}


def _say_key(console: Console, line: str, held: bool) -> None:
    """The signing key's line of `mailer status`: a warning when this host cannot sign or serve the links."""
    if held:
        if not console.quiet:
            console.result(line)
    else:
        console.warn(line)
