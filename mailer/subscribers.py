"""Read the subscriber CSV as a stream of validated, de-duplicated Subscribers.

The file as a whole is checked first (csvfile: a quote that swallows rows, a file not saved as UTF-8 text),
so a broken file stops the send before anyone is mailed; after that a bad row costs only that row, named
with the physical line it starts on. The check is the one pre-pass: it also takes the list's SHA-256 and,
when asked, hands on every reader the stream will yield, so a send can count them without another read.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from types import MappingProxyType
from typing import cast

from . import listformat
from .console import SILENT, Voice
from .csvfile import CsvFile
from .errors import SubscriberError
from .headers import CONTROL_BUT_TAB, MAX_EMAIL, ascii_domain, normalize_email
from .listformat import BadValue, Layout

MAX_FIELD = 200


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One deliverable row of the list."""

    email: str  # normalised: what we send to (ASCII domain, lower-cased)
    name: str  # "" when absent
    fields: Mapping[str, str]  # every column of the row (lower-cased header names), for templates
    line: int  # physical line number in the file (1 = header)

    @property
    def key(self) -> str:
        """The case-insensitive identity used for duplicates, deliveries and suppressions."""
        return dedupe_key(self.email)


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that was skipped, and why."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Tally:
    """What the check found in a list before its first row is used (rows that read as CSV only)."""

    valid: int = 0  # to mail: a good address, first seen, not marked by the list itself
    invalid: int = 0
    duplicates: int = 0  # of an earlier row, or of a row of an earlier list
    skipped: int = 0  # marked by the list as not to be mailed (unsubscribed, cleaned, blocklisted ...)
    reasons: dict[str, int] = field(default_factory=dict)  # the skipped rows by reason
    first_bad: BadRow | None = None


@dataclass
class ReadStats:
    """Counts filled in while iterating; rows == valid + invalid + duplicates + skipped."""

    expected: int = 0  # rows the check before reading found (blank lines not counted)
    sha256: str = ""  # of the bytes the check read: the list's identity in the delivery record
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    skipped: int = 0  # marked by the list itself as not to be mailed (see listformat)
    tool: str = ""  # the tool that exported the list, when its columns tell ("Mailchimp", ...)
    check: Tally = field(default_factory=Tally)


def dedupe_key(email: str) -> str:
    """Return the case-insensitive identity of an address (lower-cased, IDNA domain)."""
    local, at, domain = email.strip().rpartition("@")
    if at and not domain.isascii():
        domain = ascii_domain(domain)
    return f"{local}{at}{domain}".lower()


def _digest(key: str) -> int:
    # 8 bytes per address instead of the string; a false duplicate needs a 64-bit collision
    # (about 1 in 10**7 for a million-row list).
    return int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest())


class DigestSet:
    """A set of 64-bit digests in one flat array (open addressing, linear probing).

    A Python set of ints costs ~70 bytes an address (the int object plus a 16-byte slot at most
    60% full): ~70 MB for a million-row list. Here an address costs 8 bytes at 50% load, at most
    16: ~16 MB for a million rows.
    """

    __slots__ = ("_table", "_mask", "_count")

    def __init__(self, size: int = 1 << 12) -> None:
        self._table = array("Q", [0]) * size  # 0 marks an empty slot
        self._mask = size - 1
        self._count = 0

    def add(self, digest: int) -> bool:
        """Add a digest; False when it was there already."""
        digest = digest or 1
        table, mask = self._table, self._mask
        i = digest & mask
        while True:
            found = table[i]
            if found == digest:
                return False
            if not found:
                break
            i = (i + 1) & mask
        table[i] = digest
        self._count += 1
        if self._count * 2 > len(table):
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._table
        size = len(old) * 2
        table = self._table = array("Q", [0]) * size
        mask = self._mask = size - 1
        for digest in old:
            if digest:
                i = digest & mask
                while table[i]:
                    i = (i + 1) & mask
                table[i] = digest


class Seen:
    """The addresses met so far, when several lists are read as one: an address is mailed once, from the
    first list that has it. The check and the stream of each list keep their own set, in the same order."""

    def __init__(self) -> None:
        self.checked = DigestSet()
        self.streamed = DigestSet()


def read_subscribers(
    path: Path,
    *,
    voice: Voice = SILENT,
    stats: ReadStats | None = None,
    on_checked: Callable[[Subscriber], None] | None = None,
    seen: Seen | None = None,
    consequence: str = "nothing was sent",
) -> Generator[Subscriber, None, None]:
    """Stream the valid, first-seen subscribers of a CSV file, reporting skipped rows as they pass.

    The whole file is checked now, before the first row is used (SubscriberError if it cannot be read,
    has no address column, no rows, a quote that swallows lines, or only rows it marks as not to be
    mailed: see csvfile and listformat); then rows are read lazily, at a flat memory cost. The check fills
    `stats.check` and hands on_checked the subscribers the stream will yield, in order (before it knows
    the file is sound: count them, do not mail them). A row without a usable address is said through
    `voice` as it passes (`skipped: FILE:LINE: why`, an error); duplicates and rows the list marks (an
    unsubscribed export, `email_disabled`) are only counted. `seen` carries the addresses of earlier
    lists; `consequence` ends a refusal (an import says "nothing was imported"). The iterator raises
    FileChanged if the file changes under it, and SubscriberError at the end if no row had a valid address.
    """
    path = Path(path)
    source = CsvFile(path, "subscriber list")
    stats = stats if stats is not None else ReadStats()
    seen = seen or Seen()
    try:
        form = _read_header(source)
        each = _checked_rows(path, form, seen.checked, stats.check, on_checked)
        expected = source.scan(form.delimiter, after=1, consequence=consequence, each=each)
        if not expected:
            raise SubscriberError(
                f"{path}: no subscribers in it, only the header line (add one reader a line)"
            )
        check = stats.check
        if check.skipped and not check.valid + check.duplicates:
            raise SubscriberError(
                f"{path}: none of its {expected:,} row(s) is to be mailed ({_reasons(check.reasons)});"
                f" {consequence} (to suppress these addresses: mailer suppressions import {path})"
            )
    except BaseException:
        source.close()
        raise
    stats.expected = expected
    stats.sha256 = source.sha256
    stats.tool = form.tool
    rows = _rows(source, form, voice, stats, seen.streamed, consequence)
    next(rows)  # enters the generator's `with`, so the file is closed even if no row is ever asked for
    return cast(Generator[Subscriber, None, None], rows)


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{count:,} {reason}" for reason, count in reasons.items())


def no_valid_row(
    path: Path, rows: int, first_bad: BadRow | None, consequence: str = "nothing was sent"
) -> str:
    """The refusal of a list none of whose rows has a valid address."""
    where = f" (line {first_bad.line}: {first_bad.reason})" if first_bad else ""
    return f"{path}: none of its {rows:,} row(s) has a valid address{where}; {consequence}"


def _checked_rows(
    path: Path,
    form: Layout,
    seen: DigestSet,
    tally: Tally,
    use: Callable[[Subscriber], None] | None,
) -> Callable[[int, list[str]], None]:
    """The scan's per-row hook: the rows `_rows` would yield, decided by the same rules, passed to `use`."""

    def each(line: int, cells: list[str]) -> None:
        try:
            subscriber, why = _subscriber(cells, form, line)
        except BadValue as exc:
            tally.invalid += 1
            tally.first_bad = tally.first_bad or BadRow(path, line, str(exc))
            return  # the stream names it
        if why:
            tally.skipped += 1
            tally.reasons[why] = tally.reasons.get(why, 0) + 1
        elif not seen.add(_digest(dedupe_key(subscriber.email))):
            tally.duplicates += 1
        else:
            tally.valid += 1
            if use is not None:
                use(subscriber)

    return each


def _read_header(source: CsvFile) -> Layout:
    path = source.path
    line = next(source.records(None), None)
    if line is None:
        raise SubscriberError(f"{path}: the file is empty (a subscriber list starts with a header line)")
    if line.error:
        raise SubscriberError(f"{path}:1: header line: {line.error}")
    delimiter, _ = listformat.sniff(line.cells[0])
    header = next(source.records(delimiter))
    if header.error:
        raise SubscriberError(f"{path}:1: header line: {header.error}")
    if header.last > 1:
        raise SubscriberError(f"{path}:1: a quoted field in the header line is not closed on that line")
    return listformat.layout(path, delimiter, header.cells)


def _rows(
    source: CsvFile,
    form: Layout,
    voice: Voice,
    stats: ReadStats,
    seen: DigestSet,
    consequence: str,
) -> Iterator[Subscriber | None]:
    path = source.path
    first_bad: BadRow | None = None
    with source:
        yield None
        for record in source.records(form.delimiter):
            if record.first == 1 or record.blank:
                continue  # the header; a blank line: nothing to lose
            stats.rows += 1
            try:
                if record.error:
                    raise BadValue(record.error)
                subscriber, why = _subscriber(record.cells, form, record.first)
            except BadValue as exc:
                stats.invalid += 1
                bad = BadRow(path, record.first, str(exc))
                first_bad = first_bad or bad
                voice.error(f"skipped: {bad}")  # a reader not mailed: said even in a quiet run
                continue
            if why:
                stats.skipped += 1
                continue
            if not seen.add(_digest(dedupe_key(subscriber.email))):
                stats.duplicates += 1
                continue
            stats.valid += 1
            yield subscriber
    if stats.invalid == stats.rows:
        raise SubscriberError(no_valid_row(path, stats.rows, first_bad, consequence))


def _subscriber(record: list[str], form: Layout, line: int) -> tuple[Subscriber, str]:
    """The row's subscriber and why the list says not to mail it ("" to mail it); BadValue if unusable."""
    email_at = form.email
    raw_email = record[email_at].strip() if email_at < len(record) else ""
    who = f"{raw_email!r}: " if raw_email and not CONTROL_BUT_TAB.search(raw_email) else ""
    values: dict[str, str] = {}
    for i, name in enumerate(form.names):
        if not name or i == form.attributes:
            continue
        value = record[i].strip() if i < len(record) else ""
        values[name] = _checked(who, name, value, MAX_EMAIL if i == email_at else MAX_FIELD)
    if not raw_email:
        raise BadValue("empty email")
    try:
        email = normalize_email(raw_email)
    except ValueError as exc:
        raise BadValue(f"invalid address {raw_email!r}: {exc}") from None
    if form.attributes is not None and form.attributes < len(record):
        try:
            extra = listformat.attributes(record[form.attributes])
        except BadValue as exc:
            raise BadValue(f"{who}{exc}") from None
        for name, value in extra.items():
            if name not in values:  # a column of the list wins over an attribute of the same name
                values[name] = _checked(who, name, value.strip(), MAX_FIELD)
    if "name" not in values and (form.first is not None or form.last is not None):
        parts = [values.get(form.names[i], "") for i in (form.first, form.last) if i is not None]
        values["name"] = " ".join(part for part in parts if part)
    values["email"] = email
    try:
        why = form.status(record)
    except BadValue as exc:
        raise BadValue(f"{who}{exc}") from None
    return Subscriber(email, values.get("name", ""), MappingProxyType(values), line), why


def _checked(who: str, name: str, value: str, limit: int) -> str:
    bad = CONTROL_BUT_TAB.search(value)
    if bad:
        raise BadValue(f"{who}control character U+{ord(bad[0]):04X} in the {name!r} field")
    if len(value) > limit:
        shown = who or f"{value[:40]!r}...: "
        raise BadValue(f"{shown}the {name!r} field is longer than {limit} characters")
    return value
