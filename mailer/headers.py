"""What may go into a header: one control-character set, one cleaner, one address check, one quoting.

Every value that reaches a header line (a post's title, a reader's name and address, a setting) passes
through here, so a CR LF or an encoded word smuggled into a value has one place that stops it and one
test file (tests/test_headers.py) that tries every way in.
"""

from __future__ import annotations

import base64
import re
from functools import lru_cache

# Every character that ends a line for some reader, or cannot be written as UTF-8:
#   C0 (U+0000-001F): CR and LF, and VT, FF and U+001C-001E, which str.splitlines() also breaks at;
#   DEL and C1 (U+007F-009F): NEL (U+0085) is a line break to Unicode readers, CSI (U+009B) starts a
#     terminal escape sequence;
#   U+2028 and U+2029: the Unicode line and paragraph separators;
#   lone surrogates (U+D800-DFFF): what a non-UTF-8 byte in an environment variable decodes to; they
#     cannot be encoded, so the message would fail to build for every reader.
# The copies this replaced differed: message.py's lacked C1 (a title with U+009B went out as is),
# post.py's and subscribers.py's left out the whitespace they handled themselves, and none had the
# surrogates. This set is the union; tab is in it, since a header value is one line of single spaces.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The same without tab, for a subscriber list's cells: a tab typed into a spreadsheet's name cell is
# a space to one_line, not a reason to skip the reader.
CONTROL_BUT_TAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

MAX_EMAIL = 254  # octets of a whole address (RFC 5321 4.5.3.1.3, less the angle brackets)
MAX_LOCAL = 64  # octets before the @ (RFC 5321 4.5.3.1.1); servers refuse longer ones
NAME_MAX = 100  # characters of a display name; a longer one is cut, not refused

# The common address shape: an ASCII dot-atom local part and a domain without quotes or brackets.
# Only these take the fast path; the domain half is still checked by email-validator (cached).
_ATEXT = r"A-Za-z0-9_!#$%&'*+\-/=?^`{|}~"
_SIMPLE = re.compile(rf"([{_ATEXT}]+(?:\.[{_ATEXT}]+)*)@([^@\"<>()\[\]\\\s,;:]+)")
# RFC 2142 mailbox names that email-validator lower-cases; they go through the full check.
_ROLE_NAMES = frozenset(
    "info marketing sales support abuse noc security postmaster hostmaster usenet news webmaster"
    " www uucp ftp".split()
)
_SPECIALS = re.compile(r'[\x00-\x1f\x7f()<>@,;:\\".\[\]]')
_MAILBOX = re.compile(r"\s*(?:(?P<name>[^<>]*?)\s*<(?P<bracketed>[^<>]*)>|(?P<bare>[^<>]*?))\s*")


def one_line(value: str) -> str:
    """The value as one line of single spaces: every CONTROL character becomes a space, runs collapse.

    A control character that separated two words keeps them apart (post.py used to delete it and
    join them). Printable text with single spaces, what nearly every name is, is returned as it is
    without a regex pass: isprintable() is False for every CONTROL character and for every space but
    U+0020, so such a value has nothing to clean.
    """
    if value.isprintable() and "  " not in value and value[:1] != " " and value[-1:] != " ":
        return value
    return " ".join(CONTROL.sub(" ", value).split())


def normalize_email(raw: str) -> str:
    """Check an address's syntax (no DNS) and return the form to send to; raise ValueError if bad.

    The one address check of mailer: the list, the suppression list, the address settings and
    `send --test` all use it. One address only (no comma, semicolon, angle bracket, quoted local part
    or whitespace), at most MAX_EMAIL octets in all and MAX_LOCAL before the @; the domain in ASCII.
    """
    address = _normalize(raw)
    if len(address.rpartition("@")[0].encode("utf-8")) > MAX_LOCAL:
        raise ValueError(f"the part before the @ is longer than {MAX_LOCAL} characters")
    return address


def _normalize(raw: str) -> str:
    match = _SIMPLE.fullmatch(raw)
    if match and match[1].lower() not in _ROLE_NAMES:
        domains = _domain_forms(match[2])
        if domains is not None:
            local = match[1]
            unicode_domain, ascii_domain = domains
            longest = max(len(raw.encode()), len(local) + 1 + len(unicode_domain.encode()))
            if longest <= MAX_EMAIL and len(local) + 1 + len(ascii_domain) <= MAX_EMAIL:
                return f"{local}@{ascii_domain}"
    return _full_check(raw)


def _full_check(raw: str) -> str:
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return result.ascii_email or f"{result.local_part}@{result.ascii_domain}"


def ascii_domain(domain: str) -> str:
    """The domain in its ASCII (IDNA) form, as it is when it is not a valid domain (for keys, not checks)."""
    forms = _domain_forms(domain)
    return forms[1] if forms is not None else domain


@lru_cache(maxsize=65536)
def _domain_forms(domain: str) -> tuple[str, str] | None:
    """Return (unicode, ascii) forms of a valid domain, or None to take the slow path."""
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return result.domain, result.ascii_domain


def split_mailbox(value: str) -> tuple[str, str] | None:
    """`address`, `Name <address>` or `"Name" <address>` -> (name, address), else None.

    The address is not checked here (normalize_email does that); a name may not hold a quote of
    its own, since quoting it again is encode_display_name's work.
    """
    match = _MAILBOX.fullmatch(value)
    if not match:
        return None
    name = match["name"] or ""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1]
    if '"' in name:
        return None
    return name, match["bracketed"] if match["bracketed"] is not None else match["bare"]


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 base64 words of at most 75 characters, never splitting a character."""
    words: list[str] = []
    raw = b""
    for ch in text:
        b = ch.encode("utf-8")
        if len(raw) + len(b) > 45:
            words.append("=?utf-8?b?" + base64.b64encode(raw).decode("ascii") + "?=")
            raw = b""
        raw += b
    if raw:
        words.append("=?utf-8?b?" + base64.b64encode(raw).decode("ascii") + "?=")
    return words


def _needs_encoding(text: str) -> bool:
    # "=?" would be decoded by the reader as an encoded word (and by Python 3.11's own folder,
    # which then wrote a decoded CR LF into the header): such text is encoded like non-ASCII
    return (
        not text.isascii()
        or "=?" in text
        or (len(text) > 70 and any(len(word) > 70 for word in text.split(" ")))  # most names: no split
    )


def encode_display_name(name: str) -> str:
    """A display name as RFC 5322 allows it: quoted ASCII, or RFC 2047 encoded words (each <= 75 chars)."""
    name = one_line(name)[:NAME_MAX]
    if not name:
        return ""
    if not _needs_encoding(name):
        if not _SPECIALS.search(name):
            return name
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "\r\n ".join(_encoded_words(name))


def encode_text(value: str) -> str:
    """An unstructured header value (Subject): one line, folded at spaces, encoded words when needed."""
    value = one_line(value)
    if _needs_encoding(value):
        return "\r\n ".join(_encoded_words(value))
    lines = [""]
    for word in value.split(" "):
        if lines[-1] and len(lines[-1]) + 1 + len(word) > 70:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}" if lines[-1] else word
    return "\r\n ".join(lines)


def mailbox(name: str, address: str) -> str:
    """`Name <address>` for a header (the name encoded), or the bare address when there is no name.

    The address must have come through normalize_email: it is written as it is.
    """
    display = encode_display_name(name)
    return f"{display} <{address}>" if display else address
