"""`mailer bounces`: read the bounce mailbox once, record what its reports say, mark every message read.

Each message is read (reports.py), attributed to the message it is about, turned into Bounce values and
handed to the policy (policy.record_bounces, one transaction), and only then marked in the mailbox: a run
stopped in between reads the message again next time, and the policy counts a report it kept before once.

Attribution: a report mailed to a VERP address (`bounce_address` set: `bounce+TOKEN@domain`) names its
reader through the token's seal; one whose seal is wrong is forged and changes nothing. With
`bounce_address` set, a bounce that reaches the mailbox without such an address is not trusted either (the
bounces of this site's messages all carry one). Without it, and for complaints (feedback loops mail their
reports to a fixed address and return the message), the quoted Message-ID names the message, else the
address the report names is taken as it is.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .bounces import COMPLAINT, HARD, SOFT, Bounce
from .config import Settings
from .console import Console
from .envelope import Recipient, from_message_id, return_path_tag
from .errors import ConfigError, ExitStatus, Interrupted, MailerError
from .keymarks import reading_keyring
from .ledger import Ledger
from .mailboxes import ImapSource, Item, MaildirSource, MboxSource, Source, imap_account
from .policy import record_bounces
from .reports import ARF, AUTO_REPLY, BOUNCE, DSN, NOTICE, Failure, Report, Unreadable, read_report
from .stopping import StopSignals
from .tokens import Keyring

SOURCES = {DSN: "dsn", BOUNCE: "dsn", ARF: "arf"}  # Bounce.source of each kind of report
FORGED = "forged"
UNSIGNED = "unsigned"
NEVER_MAILED = "never-mailed"


@dataclass(frozen=True)
class Verdict:
    """What one report comes to: Bounce values, or why none (FORGED, UNSIGNED, or the report's kind)."""

    bounces: tuple[Bounce, ...]
    why_none: str = ""
    never_mailed: tuple[str, ...] = ()  # addresses the report names that no issue was sent to: ignored


@dataclass
class Tally:
    """What one pass over the mailbox did."""

    read: int = 0
    bounces: Counter[str] = field(default_factory=Counter)  # per kind
    new: int = 0  # reports the policy had not kept before
    suppressed: list[str] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)  # messages that were no bounce, per reason
    unreadable: list[str] = field(default_factory=list)  # "key: why" of the messages left for a person

    def counts(self) -> dict[str, int]:
        """The figures of the --json object."""
        return {
            "messages": self.read,
            "hard": self.bounces[HARD],
            "soft": self.bounces[SOFT],
            "complaints": self.bounces[COMPLAINT],
            "new_reports": self.new,
            "suppressed": len(self.suppressed),
            "unreadable": len(self.unreadable),
            **{f"ignored_{k.replace('-', '_')}": v for k, v in sorted(self.ignored.items())},
        }


def attribute(report: Report, ledger: Ledger, settings: Settings, keyring: Callable[[], Keyring]) -> Verdict:
    """The Bounce values a report comes to, each attributed to its reader and issue where it can be."""
    if not report.failures:
        return Verdict((), report.what)
    recipient: Recipient | None = None
    signed = False
    if settings.bounce_address:
        verp = [a for a in (*report.sent_to, *report.return_paths) if _is_verp(a, settings.bounce_address)]
        tags = [return_path_tag(a, settings.bounce_address, keyring()) for a in verp]
        genuine = [t for t in tags if t is not None]
        if verp and not genuine:
            return Verdict((), FORGED)
        if genuine:
            recipient = ledger.tagged(genuine[0])
            signed = recipient is not None
        elif report.what != ARF:
            return Verdict((), UNSIGNED)
    if recipient is None:
        recipient = next(filter(None, (from_message_id(ledger, i) for i in report.original_ids)), None)
    source = SOURCES[report.what]

    def bounce(f: Failure, email: str, issue_id: str | None) -> Bounce:
        return Bounce(email, f.kind, f.status, f.diagnostic, issue_id, source, report.report_id, report.at)

    if recipient is None:
        return _mailed_only(ledger, [bounce(f, f.email, None) for f in report.failures if f.email])
    # the report is about one message to one reader: the failure naming the reader is theirs; with a single
    # failure it is theirs whatever address it names (a forward, a redacted complaint)
    failures = report.failures
    mine = [f for f in failures if f.email.lower() == recipient.email.lower()] or [failures[0]]
    found = [bounce(mine[0], recipient.email, recipient.issue_id)]
    if not signed:  # a DSN about several recipients, matched by its quoted Message-ID: the others as named
        others = [bounce(f, f.email, recipient.issue_id) for f in failures if f is not mine[0] and f.email]
        rest = _mailed_only(ledger, others)
        return Verdict((*found, *rest.bounces), never_mailed=rest.never_mailed)
    return Verdict(tuple(found))


def _mailed_only(ledger: Ledger, bounces: list[Bounce]) -> Verdict:
    """The bounces about addresses mailer mailed; the others are ignored, as the webhooks ignore them: the
    bounce mailbox may get other mail's bounces, and a report naming a stranger is not this list's business.
    """
    ignored = tuple(b.email for b in bounces if not ledger.mailed(b.email))
    kept = tuple(b for b in bounces if b.email not in ignored)
    return Verdict(kept, "" if kept else NEVER_MAILED, ignored)


def _is_verp(address: str, bounce_address: str) -> bool:
    """Whether the address has the shape of a VERP address of this site (seal not checked)."""
    local, _, domain = address.strip("<> ").rpartition("@")
    base, plus, _ = local.rpartition("+")
    want_local, _, want_domain = bounce_address.rpartition("@")
    return bool(plus) and base.lower() == want_local.lower() and domain.lower() == want_domain.lower()


def read_pass(
    source: Source,
    ledger: Ledger,
    settings: Settings,
    keyring: Callable[[], Keyring],
    console: Console,
    signals: StopSignals,
    messages: list[str],
) -> Tally:
    """Read every unread message of the mailbox once; a stop request (`signals`) ends the pass after the
    message being read, with Interrupted.

    Each message gets one line on `console` (the command's result, also kept in `messages` for the --json
    object); a message left for a person gets a warning.
    """
    tally = Tally()
    try:
        for item in source.unread():
            _one(item, source, ledger, settings, keyring, tally, console, messages)
            _stop_if_asked(signals)
    finally:
        source.close()
    return tally


def _one(
    item: Item,
    source: Source,
    ledger: Ledger,
    settings: Settings,
    keyring: Callable[[], Keyring],
    tally: Tally,
    console: Console,
    messages: list[str],
) -> None:
    tally.read += 1
    problem = item.problem
    if not problem:
        try:
            report = read_report(item.data)
        except Unreadable as exc:
            problem = str(exc)
    if problem:
        tally.unreadable.append(f"{item.key}: {problem}")
        _warn(console, f"{source.name}: message {item.key}: unreadable: {problem}; left flagged for a person")
        source.leave(item)
        return
    verdict = attribute(report, ledger, settings, keyring)
    if verdict.bounces:
        recorded = record_bounces(ledger, verdict.bounces, settings)
        tally.new += recorded.new
        tally.suppressed += recorded.suppressed
        for b in verdict.bounces:
            tally.bounces[b.kind] += 1
            status = f" {b.status}" if b.status else ""
            issue = f", issue {b.issue_id}" if b.issue_id else ""
            effect = "suppressed" if b.email in recorded.suppressed else "recorded"
            if not recorded.new:
                effect = "read before"
            _say(console, messages, f"{item.key}: {report.what}: {b.email} {b.kind}{status}{issue}: {effect}")
    else:
        tally.ignored[verdict.why_none] += 1
        if verdict.why_none != NEVER_MAILED:
            _say(console, messages, f"{item.key}: {_EXPLAINED.get(verdict.why_none, verdict.why_none)}")
    for email in verdict.never_mailed:
        _say(console, messages, f"{item.key}: {report.what}: {email}: ignored: never mailed by mailer")
    source.done(item)


def _say(console: Console, messages: list[str], line: str) -> None:
    """A message's line: the command's result (not with -q), and one of the --json object's messages."""
    messages.append(line)
    if not console.quiet:
        console.result(line)


def _warn(console: Console, line: str) -> None:
    """A warning that needs a person: said even with -q."""
    console.warnings.append(line)
    console.error(console.stamp(f"Warning: {line}"))


def _stop_if_asked(signals: StopSignals) -> None:
    """Interrupted when a signal came while it only asked to stop (signals.stopping: between messages)."""
    if signals.signum:
        raise Interrupted(signals.signum)


_EXPLAINED = {
    FORGED: "forged: its VERP address's signature is wrong; nothing changed",
    UNSIGNED: "a bounce not sent to a signed bounce address (bounce_address is set); nothing changed",
    AUTO_REPLY: "an auto-reply, not a bounce",
    NOTICE: "a delivery notice with no failure in it",
    "other": "not a bounce or complaint report",
}


class MailboxLost(MailerError):
    """The mailbox went away in the middle of a pass (a dropped IMAP connection): rerun to go on."""

    exit_code = ExitStatus.STOPPED


def open_source(settings: Settings, *, maildir: Path | None, mbox: Path | None, imap: str | None) -> Source:
    """The mailbox the options name, else the one the settings name; MailerError when none, or several."""
    chosen = [
        name
        for name, value in (("--maildir", maildir), ("--mbox", mbox), ("--imap", imap))
        if value is not None
    ]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)}: read one mailbox at a time")
    if not chosen:
        configured = [
            name
            for name, value in (
                ("bounce_maildir", settings.bounce_maildir),
                ("bounce_mbox", settings.bounce_mbox),
                ("imap_host", settings.imap_host),
            )
            if value
        ]
        if len(configured) != 1:
            what = " and ".join(configured) + " are all set" if configured else "no bounce mailbox is set"
            raise ConfigError(
                f"{what}: pass --maildir DIR, --mbox FILE or --imap, or set one of bounce_maildir,"
                " bounce_mbox, imap_host"
            )
        maildir = Path(settings.bounce_maildir) if settings.bounce_maildir else None
        mbox = Path(settings.bounce_mbox) if settings.bounce_mbox else None
        imap = "" if settings.imap_host else None
    if maildir is not None:
        return MaildirSource(maildir)
    if mbox is not None:
        return MboxSource(mbox)
    s = settings
    account = imap_account(
        url=imap or "", host=s.imap_host, port=s.imap_port, security=s.imap_security, user=s.imap_user,
        password=s.imap_password, folder=s.imap_folder, done_folder=s.imap_done_folder, cafile=s.imap_cafile,
    )  # fmt: skip
    return ImapSource(account)


def read_bounces(
    settings: Settings,
    console: Console,
    fields: dict[str, object],
    *,
    maildir: Path | None,
    mbox: Path | None,
    imap: str | None,
    every: float | None,
) -> int:
    """`mailer bounces`: read the mailbox the options or settings name (once, or every `every` seconds) and
    return the exit code. `fields` (the --json object) gets the mailbox, each message's line and the counts
    as they become known, so a run stopped by a signal still reports what it did."""
    messages: list[str] = []
    fields["messages"] = messages

    def opener() -> Source:
        source = open_source(settings, maildir=maildir, mbox=mbox, imap=imap)
        fields["mailbox"] = source.name
        return source

    try:
        tally = run(settings, opener, console, every=every, messages=messages)
    finally:
        fields["warnings"] = console.warnings
    fields.update(counts=tally.counts(), suppressed=tally.suppressed, unreadable=tally.unreadable)
    return ExitStatus.INCOMPLETE if tally.unreadable else ExitStatus.OK


def run(
    settings: Settings,
    opener: Callable[[], Source],
    console: Console,
    *,
    every: float | None,
    messages: list[str],
) -> Tally:
    """One pass (every=None), or one every `every` seconds until SIGINT or SIGTERM (Interrupted, raised
    after the message being read is recorded and marked). In a loop, a pass that fails is reported and the
    next one tried; once, its error is the command's."""
    total = Tally()
    keys: list[Keyring] = []

    def keyring() -> Keyring:  # the record's key, checked on the first signed bounce (keymarks.py)
        if not keys:
            keys.append(reading_keyring(settings, ledger, console))
        return keys[0]

    signals = StopSignals()

    with signals.install(), Ledger(settings.db_path) as ledger:
        while True:
            signals.stopping = True  # a signal now asks to stop after the message being read
            try:
                source = opener()
                name = source.name
                try:
                    tally = read_pass(source, ledger, settings, keyring, console, signals, messages)
                except MailerError as exc:
                    if isinstance(exc, ConfigError):
                        raise
                    raise MailboxLost(f"{exc}; stopped there: run again to go on") from None
            except MailerError as exc:
                if every is None:
                    raise
                _warn(console, f"{exc}; trying again in {every:g} s")
            else:
                _add(total, tally)
                console.note(f"{name}: {_summary(tally)}")
            signals.stopping = False
            _stop_if_asked(signals)
            if every is None:
                return total
            time.sleep(every)  # a signal raises Interrupted here


def _add(total: Tally, tally: Tally) -> None:
    total.read += tally.read
    total.bounces.update(tally.bounces)
    total.new += tally.new
    total.suppressed += tally.suppressed
    total.ignored.update(tally.ignored)
    total.unreadable += tally.unreadable


def _summary(t: Tally) -> str:
    if not t.read:
        return "no unread message"
    parts = [
        f"{t.read} message(s) read",
        f"{t.bounces[HARD]} hard",
        f"{t.bounces[SOFT]} soft bounce(s)",
        f"{t.bounces[COMPLAINT]} complaint(s)",
        f"{len(t.suppressed)} address(es) suppressed",
    ]
    parts += [f"{n} {_LABELS.get(k, k)}" for k, n in sorted(t.ignored.items())]
    if t.unreadable:
        parts.append(f"{len(t.unreadable)} unreadable (left flagged)")
    return ", ".join(parts)


_LABELS = {
    NEVER_MAILED: "about addresses never mailed",
    FORGED: "forged",
    UNSIGNED: "unsigned",
    AUTO_REPLY: "auto-reply(s)",
    NOTICE: "delivery notice(s)",
    "other": "not a report",
}
