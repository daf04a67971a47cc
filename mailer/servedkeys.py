"""The signing keys of a running `mailer serve`: kept in step with its key file, checked against the record.

A key changed on another host (a send that signs with a new key, which becomes the record's: keymarks.py)
would leave a serve started before it refusing every new link until someone restarts it. So the serve takes
its key file when it changed (read again when a link, a signup confirmation or a webhook's signed envelope
sender does not verify, and on every /healthz; the content compared, not the stat: a file rewritten in place
with the same size within one tick of the file system's clock looks unchanged to stat): the new key
signs from then on, and the keys it held keep verifying until it restarts, so no link already sent breaks.
Keys come only from this host's key file and settings, never from the record (it keeps marks, not keys): no
token verifies that none of this host's keys signed. A record whose key this host does not hold even then is
an error in the log (once per key) and a 503 from /healthz, so that a load balancer stops sending readers to
a host that would refuse their links.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING

from .errors import ConfigError
from .keymarks import ROTATE, record_key
from .tokens import Keyring, key_file, load_keyring

if TYPE_CHECKING:
    from .config import Settings
    from .console import Voice
    from .ledger import Ledger


def _seen(settings: Settings) -> bytes | int:
    """The key file as it is now: its bytes, or the error number it cannot be read with (ENOENT: gone)."""
    try:
        return key_file(settings).read_bytes()
    except OSError as exc:
        return exc.errno or errno.EIO


class ServedKeys:
    """The keys a serve verifies and signs with (call it for them), replaced whole when the key file is."""

    def __init__(self, settings: Settings, keyring: Keyring, voice: Voice) -> None:
        self.settings = settings
        self._keyring = keyring
        self._voice = voice
        self._seen = b"" if settings.secret_key else _seen(settings)
        self._lock = threading.Lock()
        self._missing: str | None = None  # the record's mark last said to be missing here

    def __call__(self) -> Keyring:
        return self._keyring

    def reread(self) -> bool:
        """Take the key file if it changed since it was read (True: the keys changed); one read if not.
        A key set in `secret_key` is read at start only."""
        if self.settings.secret_key or _seen(self.settings) == self._seen:
            return False
        with self._lock:
            seen = _seen(self.settings)
            if seen == self._seen:
                return False  # another thread took it
            self._seen = seen  # a file that cannot be used is said once, not on every request
            before = self._keyring
            path = key_file(self.settings)
            marks = ", ".join(before.marks)
            kept = f"still signing with mark {before.marks[0]}, verifying with marks {marks}"
            if seen == errno.ENOENT:
                self._voice.error(f"{path}: the signing key file is gone; {kept} (a restart would stop)")
                return False
            try:
                read = load_keyring(self.settings, create=False, console=self._voice)
            except ConfigError as exc:
                self._voice.error(f"{exc}; {kept}")
                return False
            if read.marks[0] == before.marks[0]:
                return False
            self._keyring = read.keeping(before)
            self._voice.warn(
                f"{path}: the signing key file was replaced: signing with mark {read.marks[0]} from now on;"
                f" marks {marks} still verify until `mailer serve` restarts (then only the"
                " file's key and old_secret_keys do)"
            )
            return True

    def check(self, ledger: Ledger) -> str | None:
        """Why this serve would refuse the links the record says the readers have (None: it would not), said
        in the log once for each key of the record's."""
        self.reread()
        known = record_key(ledger)
        marks = self._keyring.marks
        if known is None or known.mark in marks:
            self._missing = None
            return None
        fix = (
            "set secret_key to it (the old one in old_secret_keys) and restart"
            if self.settings.secret_key
            else f"replace {key_file(self.settings)} with the sending host's key file (taken at once)"
        )
        problem = (
            f"{ledger.path} says the readers' links are now signed with a key this serve does not hold"
            f" (mark {known.mark}, issue {known.issue_id}; this serve's: {', '.join(marks)}): every"
            f" unsubscribe from them is refused here; {fix}; {ROTATE}"
        )
        if self._missing != known.mark:
            self._missing = known.mark
            self._voice.error(problem)
        return problem
