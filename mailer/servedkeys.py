"""The signing keys of a running `mailer serve`: kept in step with its key file, checked against the record.

A key changed on another host (a send that signs with a new key, which becomes the record's: keymarks.py)
would leave a serve started before it refusing every new link until someone restarts it. So the serve takes
its key file when it was replaced (one stat when a link does not verify, and on every /healthz): the new key
signs from then on, and the keys it held keep verifying until it restarts, so no link already sent breaks.
Keys come only from this host's key file and settings, never from the record (it keeps marks, not keys): no
token verifies that none of this host's keys signed. A record whose key this host does not hold even then is
an error in the log (once per key) and a 503 from /healthz, so that a load balancer stops sending readers to
a host that would refuse their links.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from .errors import ConfigError
from .keymarks import ROTATE, record_key
from .tokens import Keyring, key_file, load_keyring

if TYPE_CHECKING:
    from .config import Settings
    from .console import Voice
    from .ledger import Ledger


def _stamp(settings: Settings) -> tuple[int, int, int, int] | None:
    """What tells a replaced key file from the one read: device, inode, change time, size (None: no file)."""
    try:
        st = os.stat(key_file(settings))
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class ServedKeys:
    """The keys a serve verifies and signs with (call it for them), replaced whole when the key file is."""

    def __init__(self, settings: Settings, keyring: Keyring, voice: Voice) -> None:
        self.settings = settings
        self._keyring = keyring
        self._voice = voice
        self._stamp = None if settings.secret_key else _stamp(settings)
        self._lock = threading.Lock()
        self._missing: str | None = None  # the record's mark last said to be missing here

    def __call__(self) -> Keyring:
        return self._keyring

    def reread(self) -> bool:
        """Take the key file if it was replaced since it was read (True: the keys changed); one stat if not.
        A key set in `secret_key` is read at start only."""
        if self.settings.secret_key or _stamp(self.settings) == self._stamp:
            return False
        with self._lock:
            stamp = _stamp(self.settings)
            if stamp == self._stamp:
                return False  # another thread took it
            self._stamp = stamp  # a file that cannot be used is said once, not on every request
            before = self._keyring
            path = key_file(self.settings)
            marks = ", ".join(before.marks)
            kept = f"still signing with mark {before.marks[0]}, verifying with marks {marks}"
            if stamp is None:
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
