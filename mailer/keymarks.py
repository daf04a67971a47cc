"""Which signing key the readers' unsubscribe links were signed with, kept in the record, so that no host
signs, joins or serves with another key.

Every run of a send over SMTP keeps its key's mark (table key_marks, schema 12): an HMAC of a fixed label
under the key (tokens.Keyring.marks), which tells two keys apart and gives nothing of either away. The mark
of the latest run is the record's key: a send must sign with it, or hold it in `old_secret_keys` (a
deliberate rotation: its run then records the new key); a worker must sign with its run's key; a `mailer
serve` must hold the record's key to verify the links it signed. A host without a key where the record
holds marks or sent messages (a record from before the marks) makes none: it stops with one line. The
outbox mails no one, so its runs neither are checked nor count.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .console import Voice
from .errors import ConfigError, MailerError
from .tokens import Keyring, key_file, load_keyring

if TYPE_CHECKING:
    from .config import Settings
    from .ledger import Ledger

ROTATE = "to change keys on purpose, see docs/unsubscribe.md"
_STOPS = (
    "a send, worker or serve from here stops: copy the key file from a host that holds it, or set secret_key"
)


@dataclass(frozen=True, slots=True)
class RecordKey:
    """The mark of the key the latest run over SMTP signed with, and that run's issue."""

    mark: str
    issue_id: str


def record_key(ledger: Ledger) -> RecordKey | None:
    """The record's key: the mark of the latest run over SMTP that kept one (None: no such run yet)."""
    # CROSS JOIN: SQLite reads the marks newest first and stops at the first over SMTP, not every run
    found = ledger.rows(
        "SELECT k.mark, r.issue_id FROM key_marks AS k CROSS JOIN runs AS r"
        " WHERE r.run_id = k.run_id AND r.destination = 'smtp' ORDER BY k.run_id DESC LIMIT 1"
    )
    return RecordKey(str(found[0][0]), str(found[0][1])) if found else None


def run_key(ledger: Ledger, run_id: int | None) -> str | None:
    """The mark of the key one run signed with (None: a run that kept none, or no run)."""
    if run_id is None:
        return None
    found = ledger.rows("SELECT mark FROM key_marks WHERE run_id = ?", (run_id,))
    return str(found[0][0]) if found else None


def _source(settings: Settings) -> str:
    """Where this host's key comes from, as the publisher would look for it."""
    return "secret_key" if settings.secret_key else str(key_file(settings))


def _held_links(settings: Settings, ledger: Ledger, known: RecordKey | None) -> str | None:
    """What of the record a key made here would break (None: nothing, so one may be made)."""
    if settings.secret_key or key_file(settings).exists():
        return None
    if known is not None:
        return f"links signed with a key (mark {known.mark}, issue {known.issue_id})"
    if ledger.rows("SELECT 1 FROM deliveries WHERE destination = 'smtp' AND state = 'sent' LIMIT 1"):
        return "issues sent with a key"
    if ledger.rows("SELECT 1 FROM signups LIMIT 1"):  # confirmation links signed with one (signup.py)
        return "signups whose confirmation links were signed with a key"
    return None


def _no_key(settings: Settings, ledger: Ledger, used: str) -> str:
    return (
        f"{key_file(settings)}: no signing key here, but {ledger.path} holds {used}, whose unsubscribe links"
        " a new key would refuse: copy the key file from the host that sent them, or set secret_key (the"
        " same on every host)"
    )


def _loaded(
    settings: Settings, ledger: Ledger, known: RecordKey | None, console: Voice, then: str
) -> Keyring:
    """This host's keys; a key is made only for a record that has signed no link with one (else one line
    ending in `then`: what did not happen)."""
    used = _held_links(settings, ledger, known)
    if used is not None:
        raise ConfigError(_no_key(settings, ledger, used) + then)
    return load_keyring(settings, console=console)


def sending_keyring(settings: Settings, ledger: Ledger, console: Voice) -> Keyring:
    """The keys a send over SMTP signs with: the record's key, or a new one with the record's in old keys."""
    known = record_key(ledger)
    keyring = _loaded(settings, ledger, known, console, "; nothing sent")
    if known is not None and known.mark not in keyring.marks:
        raise ConfigError(
            f"{_source(settings)}: this host's signing key (mark {keyring.marks[0]}) is not the one"
            f" {ledger.path} says the readers' links were signed with (mark {known.mark}, issue"
            f" {known.issue_id}), and links signed here would be refused elsewhere: use the same key on every"
            f" host (copy the key file, or set secret_key); {ROTATE}; nothing sent"
        )
    return keyring


def showing_keyring(settings: Settings, ledger: Ledger, console: Voice) -> Keyring:
    """The keys of a copy that reaches no reader (`render`, `preview`, a try-out in the outbox): this host's,
    never one made for a record that has signed links (a throwaway key in memory instead), with a warning
    whenever the copy's links would be refused elsewhere, where a send would stop."""
    known = record_key(ledger)
    used = _held_links(settings, ledger, known)
    if used is not None:
        console.warn(
            f"{_no_key(settings, ledger, used)}; the links in this copy are signed with a throwaway key and"
            " would be refused"
        )
        return Keyring(secrets.token_urlsafe(32))
    keyring = load_keyring(settings, console=console)
    if known is not None and known.mark not in keyring.marks:
        console.warn(
            f"{_source(settings)}: this host's signing key (mark {keyring.marks[0]}) is not the one"
            f" {ledger.path} says the readers' links were signed with (mark {known.mark}, issue"
            f" {known.issue_id}): the links in this copy would be refused elsewhere, and a send from here"
            " stops; use the same key on every host (copy the key file, or set secret_key)"
        )
    return keyring


def copy_keyring(settings: Settings, console: Voice) -> Keyring:
    """The keys of a copy that reaches no reader (`render`, `preview`), asked of the record only if there is
    one: a copy makes no record (a SQLite file not there yet has no marks: this host's key, as a first send
    would make it), nor upgrades one, and a record it cannot read does not stop it: said, and signed with
    this host's key, or a throwaway one where it has none (a key made then might not be the record's)."""
    from pathlib import Path

    from .ledger import Ledger

    if isinstance(settings.db_path, Path) and not settings.db_path.exists():
        return load_keyring(settings, console=console)
    try:
        with Ledger(settings.db_path, create=False, upgrade=False) as ledger:
            return showing_keyring(settings, ledger, console)
    except MailerError as exc:
        unread = f"{exc}; the links in this copy are not checked against the record's key"
    try:
        keyring = load_keyring(settings, create=False, console=console)
    except ConfigError:
        console.warn(f"{unread}, and this host has no key: they are signed with a throwaway one")
        return Keyring(secrets.token_urlsafe(32))
    console.warn(unread)
    return keyring


def keyring_for(settings: Settings, ledger: Ledger, destination: str, console: Voice) -> Keyring:
    """The keys a send (or its test copy) to `destination` signs with: over SMTP the record's, checked;
    into the outbox, which mails no one, as a copy for the publisher's eyes."""
    from .ledger import SMTP

    if destination == SMTP:
        return sending_keyring(settings, ledger, console)
    return showing_keyring(settings, ledger, console)


def joining_keyring(settings: Settings, ledger: Ledger, run_id: int | None, console: Voice) -> Keyring:
    """The keys of a worker joining run `run_id`: its links must be signed with the key the run keeps."""
    mark = run_key(ledger, run_id)
    keyring = _loaded(settings, ledger, record_key(ledger), console, "; not joining")
    if mark is not None and keyring.marks[0] != mark:
        raise ConfigError(
            f"{_source(settings)}: this host's signing key (mark {keyring.marks[0]}) is not the one the send"
            f" it would join signs with (mark {mark}, in {ledger.path}), and the readers' unsubscribe links"
            " would be refused: use the same key on every host (copy the key file, or set secret_key);"
            " not joining"
        )
    return keyring


def _holding(
    settings: Settings, ledger: Ledger, known: RecordKey | None, keyring: Keyring, so: str, then: str
) -> Keyring:
    """`keyring`, if the record's key is among its keys (else one line: `so`, what would go wrong, ending in
    `then`, what did not happen)."""
    if known is not None and known.mark not in keyring.marks:
        raise ConfigError(
            f"{_source(settings)}: this host's signing keys (marks {', '.join(keyring.marks)}) do not"
            f" include the one {ledger.path} says the readers' links were signed with (mark {known.mark},"
            f" issue {known.issue_id}), so {so}: use the same key on every host (copy the key file, or set"
            f" secret_key); {ROTATE}{then}"
        )
    return keyring


def serving_keyring(settings: Settings, ledger: Ledger, console: Voice) -> Keyring:
    """The keys a `mailer serve` verifies with: the record's key must be among them."""
    known = record_key(ledger)
    keyring = _loaded(settings, ledger, known, console, "")
    return _holding(settings, ledger, known, keyring, "every unsubscribe from them would be refused", "")


def reading_keyring(settings: Settings, ledger: Ledger, console: Voice) -> Keyring:
    """The keys `mailer bounces` opens the signed envelope senders (VERP) with: the record's key must be
    among them, or every genuine bounce would be read as forged and marked read; none is made here."""
    known = record_key(ledger)
    used = _held_links(settings, ledger, known)
    if used is not None:
        raise ConfigError(_no_key(settings, ledger, used) + "; no bounce read")
    try:
        keyring = load_keyring(settings, create=False, console=console)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; no bounce read") from None
    so = "every bounce to the envelope senders signed with it would be taken for a forgery"
    return _holding(settings, ledger, known, keyring, so, "; no bounce read")


def key_status(settings: Settings, ledger: Ledger, console: Voice) -> tuple[str, bool, dict[str, object]]:
    """`mailer status`'s word on the signing key, read without making one: a line, whether this host can sign
    and serve the record's links (a record that has signed none: whether it has a key or may make one), and
    the --json fields."""
    known = record_key(ledger)
    record = f"the record's is mark {known.mark} (issue {known.issue_id})" if known else "none recorded yet"
    fields: dict[str, object] = {
        "record_mark": known.mark if known else None,
        "record_issue": known.issue_id if known else None,
        "host_marks": [],
        "holds_record_key": None,
    }
    if not settings.secret_key and not key_file(settings).exists():
        none = f"Signing key: {record}; this host has none ({key_file(settings)})"
        if _held_links(settings, ledger, known) is None:
            made = "a key made here would not be theirs"
            return (
                f"{none}: the first send or serve here makes one; if another host sends or serves this"
                f" record, copy its key file here instead ({made})",
                True,
                fields,
            )
        fields["holds_record_key"] = False
        return f"{none}, and none is made for a record with signed links: {_STOPS}", False, fields
    try:
        keyring = load_keyring(settings, create=False, console=console)
    except ConfigError as exc:
        return f"Signing key: {record}; this host's cannot be used: {exc}", False, fields
    fields["host_marks"] = keyring.marks
    where = f"{_source(settings)}, mark {keyring.marks[0]}"
    if known is None:
        return f"Signing key: {record}; this host signs with {where}", True, fields
    fields["holds_record_key"] = known.mark in keyring.marks
    if keyring.marks[0] == known.mark:
        return f"Signing key: {record}; this host signs with it ({where})", True, fields
    if known.mark in keyring.marks:
        rotated = f"holds it in old_secret_keys and signs with {where}: its next send makes that the record's"
        return f"Signing key: {record}; this host {rotated}", True, fields
    return f"Signing key: {record}; this host's is not it ({where}): {_STOPS}", False, fields
