"""What a list's header line says: its separator, the address and name columns, and who is not to be mailed.

Lists come from Mailchimp, Substack, listmonk, Ghost or a spreadsheet, each naming the same things its own
way (`Email Address`, `email`, `E-mail`; `First Name` and `Last Name` or `name`), separated by commas,
semicolons (a European Excel) or tabs (Excel's "Unicode text"). Some say per row that a reader is not to be
mailed: Mailchimp's unsubscribed and cleaned exports (each a file of its own, told apart by `UNSUB_TIME` /
`CLEAN_TIME`), Substack's `email_disabled` and `active_subscription`, listmonk's `status`, Ghost's
`subscribed_to_emails`, mailer's own export (`subscribers export`) its `status`. This module reads the
header once into a `Layout`; the readers (subscribers.py, suppressions.py) ask it about each row.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SubscriberError

DELIMITERS = (",", ";", "\t")
_NOISE = re.compile(r"[\s_.\-]+")

# Header names, compared without case, spaces, '-', '_' or '.' (`E-mail`, `email_address`, `Email Address`)
ADDRESS = ("email", "emailaddress", "mail", "mailaddress")
NAME = ("name", "fullname")
FIRST = ("firstname", "fname", "givenname")
LAST = ("lastname", "lname", "surname", "familyname")
ATTRIBUTES = "attributes"  # listmonk: the reader's attributes as one JSON object

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def key(name: str) -> str:
    """A header name as it is compared: lower case, without spaces, '-', '_' or '.'."""
    return _NOISE.sub("", name.lower())


class BadValue(Exception):
    """A field of one row is unusable; the text is the bad row's reason."""


# a row's status: "" to mail it, else why not ("unsubscribed (Mailchimp)")
StatusRule = Callable[[list[str]], str]


@dataclass(frozen=True)
class Layout:
    """How one list is laid out, read from its header line."""

    delimiter: str
    names: list[str]  # each column's field name (the header lower-cased, as written; the address: "email")
    email: int  # the address column
    first: int | None = None  # name parts, used when there is no name column
    last: int | None = None
    attributes: int | None = None  # listmonk's JSON column: its keys become fields
    tool: str = ""  # "Mailchimp", "Substack", "listmonk", "Ghost"; "" for a plain list
    rules: list[StatusRule] = field(default_factory=list)

    def status(self, cells: list[str]) -> str:
        """Why the list says not to mail this row ("unsubscribed (Mailchimp)"), "" to mail it.

        BadValue when the row's status cannot be read (a flag neither true nor false).
        """
        for rule in self.rules:
            reason = rule(cells)
            if reason:
                return reason
        return ""


def sniff(text: str) -> tuple[str, list[str]]:
    """The separator a header line uses and its cells: the one that shows an address column, else ","."""
    found: list[tuple[int, str, list[str]]] = []
    for delimiter in DELIMITERS:
        try:
            cells = next(csv.reader([text], delimiter=delimiter), [])
        except csv.Error:
            continue
        if any(key(cell) in ADDRESS for cell in cells):
            found.append((len(cells), delimiter, cells))
    if not found:
        return ",", next(csv.reader([text]), [])
    _, delimiter, cells = max(found, key=lambda f: f[0])  # the split into most cells; "," on a tie
    return delimiter, cells


def layout(path: Path, delimiter: str, header: list[str]) -> Layout:
    """The layout of a subscriber list whose header line has these cells; SubscriberError if it has none."""
    names = [cell.strip().lower() for cell in header]
    keys = [key(name) for name in names]
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise SubscriberError(f"{path}:1: column {name!r} appears twice in the header line")
        seen.add(name)
    email = _one(path, header, keys, ADDRESS, "the address")
    if email is None:
        raise SubscriberError(f"{path}: no 'email' column in the header line{_hint(names)}")
    names[email] = "email"
    first = last = None
    if _one(path, header, keys, NAME, "the name") is None:
        first = _one(path, header, keys, FIRST, "the first name")
        last = _one(path, header, keys, LAST, "the last name")
    attributes = keys.index(ATTRIBUTES) if ATTRIBUTES in keys else None
    tool_name, rules = tool(keys)
    return Layout(delimiter, names, email, first, last, attributes, tool_name, rules)


def _one(path: Path, header: list[str], keys: list[str], aliases: tuple[str, ...], what: str) -> int | None:
    """The one column named like one of `aliases`; two such columns are an error (which one is meant?)."""
    found = [i for i, k in enumerate(keys) if k in aliases]
    if len(found) > 1:
        shown = " and ".join(f"{header[i].strip()!r} (column {i + 1})" for i in found)
        raise SubscriberError(f"{path}:1: {shown} both name {what}: keep one of them (or rename the other)")
    return found[0] if found else None


def _hint(names: list[str]) -> str:
    if any("\0" in cell for cell in names):
        return (
            " (it holds NUL bytes: UTF-16 without a byte-order mark, or not text at all? save the file as"
            " UTF-8 CSV)"
        )
    return ""


def tool(keys: list[str]) -> tuple[str, list[StatusRule]]:
    """Which tool exported a list, told by its columns (`key`s), and its rules for who is not to be mailed."""
    at = {k: i for i, k in enumerate(keys)}
    if at.keys() & {"unsubtime", "cleantime", "memberrating", "optintime", "leid", "euid"}:
        if "cleantime" in at:
            return "Mailchimp", [lambda cells: "cleaned (Mailchimp: bounced)"]
        if "unsubtime" in at:
            return "Mailchimp", [lambda cells: "unsubscribed (Mailchimp)"]
        return "Mailchimp", []
    if at.keys() & {"emaildisabled", "activesubscription"}:
        rules = []
        if "emaildisabled" in at:
            rules.append(_flag(at["emaildisabled"], "email_disabled", True, "email disabled (Substack)"))
        if "activesubscription" in at:
            rules.append(_flag(at["activesubscription"], "active_subscription", False, "inactive (Substack)"))
        return "Substack", rules
    if "subscribedtoemails" in at:
        return "Ghost", [
            _flag(at["subscribedtoemails"], "subscribed_to_emails", False, "not subscribed to emails (Ghost)")
        ]
    if {"consentdate", "consentsource", "status"} <= at.keys():  # `mailer subscribers export`
        status = at["status"]
        return "mailer", [lambda cells: "suppressed (mailer)" if _cell(cells, status) == "suppressed" else ""]
    if ATTRIBUTES in at:
        return "listmonk", [_listmonk(at["status"])] if "status" in at else []
    return "", []


def _flag(column: int, name: str, when: bool, reason: str) -> StatusRule:
    """A true/false column: the row is not mailed when it reads `when`; empty says nothing."""

    def rule(cells: list[str]) -> str:
        value = cells[column].strip().lower() if column < len(cells) else ""
        if not value:
            return ""
        if value not in _TRUE and value not in _FALSE:
            raise BadValue(f"the {name!r} field is {value!r}, neither true nor false")
        return reason if (value in _TRUE) == when else ""

    return rule


def _cell(cells: list[str], column: int) -> str:
    return cells[column].strip().lower() if column < len(cells) else ""


def _listmonk(column: int) -> StatusRule:
    def rule(cells: list[str]) -> str:
        value = cells[column].strip().lower() if column < len(cells) else ""
        return "blocklisted (listmonk)" if value == "blocklisted" else ""

    return rule


def attributes(raw: str) -> dict[str, str]:
    """listmonk's attributes JSON as fields, one level deep (`{"city": "Rome"}` -> city); BadValue if not an
    object."""
    raw = raw.strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise BadValue(f"the 'attributes' field is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadValue(f"the 'attributes' field is JSON but not an object ({type(value).__name__})")
    return {str(k).strip().lower(): _text(v) for k, v in value.items()}


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)  # true, 3.5, [..] and {..} as JSON writes them
