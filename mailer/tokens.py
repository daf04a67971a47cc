"""Sign and verify unsubscribe tokens, so only mailer can make a working unsubscribe link.

A token is `base64url(address) "." base64url(mac)`, where mac is the first 16 bytes of an HMAC-SHA256
over a scope and the lower-cased address, keyed by the secret key mixed with a per-purpose salt. The scope
is the configured list_id (empty when none is set), never a value derived from from_email, so changing the
sender leaves every link working. Tokens do not expire: links in old issues keep working. Old keys
(`old_secret_keys`) and old scopes (`old_list_ids`, and the derived list id older versions used) still
verify, so both can change.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .console import SILENT, Voice
from .errors import ConfigError
from .private import make_folder

if TYPE_CHECKING:
    from .config import Settings

SALT = b"mailer.unsubscribe"
MARK_LABEL = b"mailer.key-mark"  # what a key's mark is the HMAC of (keymarks.py)
MARK_LENGTH = 16  # hex digits: enough to tell keys apart, and nothing of a key to guess from
KEY_FILE = "secret.key"
MIN_KEY_LENGTH = 16
MAC_BYTES = 16
MAX_TOKEN_LENGTH = 1024  # far above any real address; stops work on garbage early
_TOKEN = re.compile(r"[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{22}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _Signer:
    """One key, with its keyed HMAC prepared once so signing costs a copy, an update and a digest."""

    __slots__ = ("_base", "_per_list")

    def __init__(self, key: bytes) -> None:
        derived = hmac.new(key, SALT, hashlib.sha256).digest()
        self._base = hmac.new(derived, digestmod=hashlib.sha256)
        self._per_list: dict[str, hmac.HMAC] = {}

    def mac(self, address: str, list_id: str) -> str:
        prepared = self._per_list.get(list_id)
        if prepared is None:
            prepared = self._base.copy()
            prepared.update(list_id.encode("utf-8") + b"\x00")
            self._per_list[list_id] = prepared
        h = prepared.copy()
        h.update(address.encode("utf-8"))
        return _b64(h.digest()[:MAC_BYTES])


class Keyring:
    """The current signing key and the old ones that still verify."""

    __slots__ = ("_signers", "_keys", "_sealers", "marks")

    def __init__(self, current: str | bytes, old: Iterable[str | bytes] = ()) -> None:
        keys = [current, *old]
        for key in keys:
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigError(
                    f"secret key too short ({len(key)} characters): use at least {MIN_KEY_LENGTH}"
                )
        self._keys = [k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in keys]
        self._signers = [_Signer(k) for k in self._keys]
        self._sealers: dict[bytes, list[hmac.HMAC]] = {}
        # each key's mark, the current key's first: the record keeps it, never the key (keymarks.py)
        self.marks = [hmac.new(k, MARK_LABEL, hashlib.sha256).hexdigest()[:MARK_LENGTH] for k in self._keys]

    def __repr__(self) -> str:
        return f"<Keyring with {len(self._signers)} key(s)>"

    def sign(self, email: str, list_id: str) -> str:
        """Make the unsubscribe token of one subscriber of one list, with the current key."""
        address = email.strip().lower()
        return _b64(address.encode("utf-8")) + "." + self._signers[0].mac(address, list_id)

    def verify(self, token: str, list_id: str, *older: str) -> str | None:
        """Return the (lower-cased) address a token was made for, or None if it is not genuine.

        `older` are scopes that links already sent may carry (list ids used before).
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            return None
        if not _TOKEN.fullmatch(token):
            return None
        encoded, _, mac = token.partition(".")
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            address = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        # Only the canonical spelling verifies: no re-padding, case or trailing-bit variants.
        if _b64(raw) != encoded or address != address.strip().lower():
            return None
        found = False
        for signer in self._signers:  # no early exit: every key and scope costs the same
            for scope in (list_id, *older):
                found |= hmac.compare_digest(signer.mac(address, scope), mac)
        return address if found else None

    def seal(self, data: bytes, purpose: bytes) -> bytes:
        """A MAC of `data` for one purpose (a salt other than the unsubscribe links'), with the current key.

        Each purpose gets keys of its own (HMAC of the purpose under the secret), so a value sealed for
        one use never verifies for another.
        """
        h = self._prepared(purpose)[0].copy()
        h.update(data)
        return h.digest()

    def opens(self, data: bytes, mac: bytes, purpose: bytes) -> bool:
        """Whether `mac` (possibly cut short, at least 8 bytes) seals `data` for `purpose` under any key."""
        if len(mac) < 8:
            return False
        found = False
        for prepared in self._prepared(purpose):  # no early exit: every key costs the same
            h = prepared.copy()
            h.update(data)
            found |= hmac.compare_digest(h.digest()[: len(mac)], mac)
        return found

    def keeping(self, before: Keyring) -> Keyring:
        """These keys, signing with the current one, and every key of `before` still verifying (a running
        `mailer serve` that takes a replaced key file: servedkeys.py)."""
        return Keyring(self._keys[0], [*self._keys[1:], *(k for k in before._keys if k not in self._keys)])

    def _prepared(self, purpose: bytes) -> list[hmac.HMAC]:
        prepared = self._sealers.get(purpose)
        if prepared is None:
            prepared = [
                hmac.new(hmac.new(key, purpose, hashlib.sha256).digest(), digestmod=hashlib.sha256)
                for key in self._keys
            ]
            self._sealers[purpose] = prepared
        return prepared


def key_file(settings: Settings) -> Path:
    """Where the signing key is kept when `secret_key` is not set."""
    return settings.data_dir / KEY_FILE


def _read_key_file(path: Path, console: Voice) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a mailer key file (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"{path}: signing key too short or empty; delete the file to make a new one"
            " (links already sent would stop working)"
        )
    if mode & 0o077:
        console.warn(f"{path} can be read by other users; run: chmod 600 {path}")
    return key


def _create_key_file(path: Path) -> bool:
    """Write a new random key to path atomically; False if another process made one first."""
    try:
        make_folder(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=".secret-", dir=path.parent)  # mode 0600
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the signing key: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # atomic, and never replaces a key that links were made with
        except FileExistsError:
            return False
        return True
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the signing key: {exc.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load_keyring(
    settings: Settings,
    *,
    create: bool = True,
    console: Voice = SILENT,
) -> Keyring:
    """Return the keys from the settings, else from the data folder, making one there on first use.

    A key made, or a key file others can read, is said through `console`.
    """
    old = [k.strip() for k in settings.old_secret_keys.split(",") if k.strip()]
    for name, key in [("secret_key", settings.secret_key), *(("old_secret_keys", k) for k in old)]:
        if key and len(key) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{name}: a key is too short ({len(key)} characters);"
                f" use at least {MIN_KEY_LENGTH} random characters"
            )
    if settings.secret_key:
        return Keyring(settings.secret_key, old)
    path = key_file(settings)
    if not path.exists():
        if not create:
            raise ConfigError(
                f"{path}: no signing key here: copy the key file from the host that sends (its first send"
                " makes one), or set secret_key (the same on every host)"
            )
        if _create_key_file(path):
            console.note(
                f"Made a new signing key for unsubscribe links in {path} (readable by you only);"
                " keep it, and back it up with the database."
            )
    return Keyring(_read_key_file(path, console), old)


def unsubscribe_url(settings: Settings, token: str) -> str:
    """The one-click (RFC 8058) and browser unsubscribe URL of a token."""
    return f"{settings.web_url.rstrip('/')}/unsubscribe?t={token}"


def unsubscribe_mailto(settings: Settings, token: str) -> str:
    """The mailto: unsubscribe address of a token, for the List-Unsubscribe header."""
    return f"mailto:{settings.effective_mailto}?subject=unsubscribe%20{token}"
