"""Who a bounce is about: the signed envelope sender (VERP) each message carries, and its Message-ID.

Every message has a tag, 10 bytes of BLAKE2b over its issue id and the reader's address (dedupe_key), kept
with its delivery in the record. The Message-ID carries it in hex; with `bounce_address` set, the envelope
sender (MAIL FROM, which becomes the Return-Path, where bounces are mailed) carries it too, sealed with
the site's signing keys:

    bounce+<36 lowercase hex digits: the tag, then 8 bytes of HMAC>@bounces.example.com

The local part stays within 64 octets (a bounce local part of at most 27), uses only digits and lowercase
a-f (an MTA that lowercases local parts changes nothing), and a token whose seal is wrong names no one: a
forged bounce cannot suppress a reader (one guess in 2**64 would). Old keys (`old_secret_keys`) still open
old tokens. Hex rather than base32: Python's base32 encoder costs ~8 µs a message, hex ~0.3 µs.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, NamedTuple

from .subscribers import dedupe_key
from .tokens import Keyring

if TYPE_CHECKING:
    from .config import Settings
    from .ledger import Ledger

TAG_BYTES = 10
SEAL_BYTES = 8
TOKEN_LENGTH = 2 * (TAG_BYTES + SEAL_BYTES)  # hex
MAX_BOUNCE_LOCAL = 64 - 1 - TOKEN_LENGTH  # room left before the "+" in a 64-octet local part
PURPOSE = b"mailer.return-path"
_TOKEN = re.compile(r"[0-9a-f]{36}")
_MESSAGE_ID = re.compile(r"\s*<?([^<>@\s]+)\.([0-9a-fA-F]{20})@[^<>@\s]+>?\s*")


class Recipient(NamedTuple):
    """The message a bounce is about: its issue and the reader's address as the record keeps it."""

    issue_id: str
    email: str


def message_tag(issue_id: str, email: str) -> bytes:
    """The tag of one issue's message to one reader: the same every time, whatever the address's case."""
    return hashlib.blake2b(f"{issue_id}\0{dedupe_key(email)}".encode(), digest_size=TAG_BYTES).digest()


class ReturnPaths:
    """Makes each message's envelope sender: the bounce address with the message's sealed tag."""

    __slots__ = ("_keyring", "_local", "_domain")

    def __init__(self, bounce_address: str, keyring: Keyring) -> None:
        local, _, domain = bounce_address.rpartition("@")
        self._keyring = keyring
        self._local = local + "+"
        self._domain = "@" + domain

    def address(self, tag: bytes) -> str:
        """`bounce+TOKEN@domain` for the message of this tag (message_tag: the caller has it already, for
        the message's Message-ID)."""
        return self._local + encode_token(tag, self._keyring) + self._domain


def encode_token(tag: bytes, keyring: Keyring) -> str:
    """The tag and its seal as lowercase hex."""
    return (tag + keyring.seal(tag, PURPOSE)[:SEAL_BYTES]).hex()


def decode_token(token: str, keyring: Keyring) -> bytes | None:
    """The tag a genuine token carries; None for anything else (wrong seal, length or letters)."""
    token = token.lower()
    if not _TOKEN.fullmatch(token):
        return None
    raw = bytes.fromhex(token)
    tag, seal = raw[:TAG_BYTES], raw[TAG_BYTES:]
    return tag if keyring.opens(tag, seal, PURPOSE) else None


def return_path_tag(address: str, bounce_address: str, keyring: Keyring) -> bytes | None:
    """The tag of a VERP address made from `bounce_address` (`bounce+TOKEN@domain`), if it is genuine.

    The local part before the "+" and the domain must be the bounce address's (compared without case);
    angle brackets around the address are allowed, as a Return-Path header or DSN field carries them.
    """
    address = address.strip().strip("<>").strip()
    local, _, domain = address.rpartition("@")
    want_local, _, want_domain = bounce_address.rpartition("@")
    base, plus, token = local.rpartition("+")
    if not plus or base.lower() != want_local.lower() or domain.lower() != want_domain.lower():
        return None
    return decode_token(token, keyring)


def from_return_path(ledger: Ledger, settings: Settings, keyring: Keyring, address: str) -> Recipient | None:
    """The (issue, reader) a bounce mailed to `address` is about; None if it is not a genuine VERP address
    of this site, or names a message the record does not know."""
    if not settings.bounce_address:
        return None
    tag = return_path_tag(address, settings.bounce_address, keyring)
    return None if tag is None else ledger.tagged(tag)


def from_message_id(ledger: Ledger, message_id: str) -> Recipient | None:
    """The (issue, reader) of one of mailer's Message-IDs (`<ISSUE.HEX@domain>`), as quoted in a DSN.

    Unsigned: anyone who has seen the message can quote its Message-ID, so this is for sites without a
    bounce address, and for reports (ARF) that return the message itself.
    """
    match = _MESSAGE_ID.fullmatch(message_id)
    if match is None:
        return None
    found = ledger.tagged(bytes.fromhex(match[2]))
    return found if found is not None and found.issue_id == match[1] else None
