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

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .console import Voice
from .errors import ConfigError
from .tokens import Keyring, key_file, load_keyring

if TYPE_CHECKING:
    from .config import Settings
    from .ledger import Ledger

ROTATE = "to change keys on purpose, see docs/unsubscribe.md"


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


def _loaded(
    settings: Settings, ledger: Ledger, known: RecordKey | None, console: Voice, then: str
) -> Keyring:
    """This host's keys; a key is made only for a record that has signed no link with one (else one line
    ending in `then`: what did not happen)."""
    path = key_file(settings)
    if not settings.secret_key and not path.exists():
        if known is not None:
            used = f"links signed with a key (mark {known.mark}, issue {known.issue_id})"
        elif ledger.rows("SELECT 1 FROM deliveries WHERE destination = 'smtp' AND state = 'sent' LIMIT 1"):
            used = "issues sent with a key"
        elif ledger.rows("SELECT 1 FROM signups LIMIT 1"):  # confirmation links signed with one (signup.py)
            used = "signups whose confirmation links were signed with a key"
        else:
            return load_keyring(settings, console=console)
        raise ConfigError(
            f"{path}: no signing key here, but {ledger.path} holds {used}, whose unsubscribe links a new key"
            " would refuse: copy the key file from the host that sent them, or set secret_key (the same on"
            f" every host){then}"
        )
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


def serving_keyring(settings: Settings, ledger: Ledger, console: Voice) -> Keyring:
    """The keys a `mailer serve` verifies with: the record's key must be among them."""
    known = record_key(ledger)
    keyring = _loaded(settings, ledger, known, console, "")
    if known is not None and known.mark not in keyring.marks:
        raise ConfigError(
            f"{_source(settings)}: this host's signing keys (marks {', '.join(keyring.marks)}) do not"
            f" include the one {ledger.path} says the readers' links were signed with (mark {known.mark},"
            f" issue {known.issue_id}), so every unsubscribe from them would be refused: use the same key on"
            f" every host (copy the key file, or set secret_key); {ROTATE}"
        )
    return keyring
