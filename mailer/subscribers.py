"""Read the subscriber CSV as a stream of validated, de-duplicated Subscribers.

The file as a whole is checked first (csvfile: a quote that swallows rows, a file not saved as UTF-8 text),
so a broken file stops the send before anyone is mailed; after that a bad row costs only that row, named
with the physical line it starts on. The check is the one pre-pass: it also takes the list's SHA-256 and,
when asked, hands on every reader the stream will yield, so a send can count them without another read.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from types import MappingProxyType
from typing import cast

from .csvfile import CsvFile
from .errors import SubscriberError
from .headers import CONTROL_BUT_TAB, MAX_EMAIL, ascii_domain, normalize_email

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

    @property
    def smtputf8(self) -> bool:
        """Whether the address has a non-ASCII local part, which needs a server with SMTPUTF8."""
        return not self.email.isascii()


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that was skipped, and why."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ReadStats:
    """Counts filled in while iterating; rows == valid + invalid + duplicates."""

    expected: int = 0  # rows the check before reading found (blank lines not counted)
    sha256: str = ""  # of the bytes the check read: the list's identity in the delivery record
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0


class _BadValue(Exception):
    """A field of one row is unusable; the text is the BadRow reason."""


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


def read_subscribers(
    path: Path,
    *,
    on_bad: Callable[[BadRow], None] | None = None,
    stats: ReadStats | None = None,
    on_duplicate: Callable[[BadRow], None] | None = None,
    on_checked: Callable[[Subscriber], None] | None = None,
) -> Iterator[Subscriber]:
    """Stream the valid, first-seen subscribers of a CSV file, reporting skipped rows as they pass.

    The whole file is checked now, before the first row is used (SubscriberError if it cannot be read,
    has no `email` column, no rows, or a quote that swallows lines: see csvfile); then rows are read
    lazily, at a flat memory cost. The check hands on_checked the subscribers the stream will yield, in
    order (before it knows the file is sound: count them, do not mail them). Duplicates go to
    on_duplicate, never to on_bad. The iterator raises FileChanged if the file changes under it, and
    SubscriberError at the end if no row was valid.
    """
    path = Path(path)
    source = CsvFile(path, "subscriber list")
    try:
        names = _read_header(source)
        each = None if on_checked is None else _checked_rows(names, on_checked)
        expected = source.scan(",", after=1, consequence="nothing was sent", each=each)
        if not expected:
            raise SubscriberError(
                f"{path}: no subscribers in it, only the header line (add one reader a line)"
            )
    except BaseException:
        source.close()
        raise
    stats = stats if stats is not None else ReadStats()
    stats.expected = expected
    stats.sha256 = source.sha256
    rows = _rows(source, names, on_bad, stats, on_duplicate)
    next(rows)  # enters the generator's `with`, so the file is closed even if no row is ever asked for
    return cast(Iterator[Subscriber], rows)


def _checked_rows(names: list[str], use: Callable[[Subscriber], None]) -> Callable[[int, list[str]], None]:
    """The scan's per-row hook: the rows `_rows` would yield, decided by the same rules, passed to `use`."""
    seen = DigestSet()
    email_at = names.index("email")
    columns = [(i, name) for i, name in enumerate(names) if name]

    def each(line: int, cells: list[str]) -> None:
        try:
            subscriber = _subscriber(cells, columns, email_at, line)
        except _BadValue:
            return  # the stream names it
        if seen.add(_digest(dedupe_key(subscriber.email))):
            use(subscriber)

    return each


def _read_header(source: CsvFile) -> list[str]:
    path = source.path
    header = next(source.records(","), None)
    if header is None:
        raise SubscriberError(f"{path}: the file is empty (a subscriber list starts with a header line)")
    if header.error:
        raise SubscriberError(f"{path}:1: header line: {header.error}")
    if header.last > 1:
        raise SubscriberError(f"{path}:1: a quoted field in the header line is not closed on that line")
    names = [cell.strip().lower() for cell in header.cells]
    if "email" not in names:
        hint = ""
        if any("\0" in cell for cell in names):
            hint = " (it holds NUL bytes: UTF-16 or not text at all? save the file as UTF-8 CSV)"
        elif any(sep in cell for cell in names for sep in ";\t"):
            hint = " (it looks separated by ';' or tabs: save the file as comma-separated CSV)"
        elif any(cell in ("e-mail", "email address", "e-mail address", "mail") for cell in names):
            hint = " (rename the address column to 'email')"
        raise SubscriberError(f"{path}: no 'email' column in the header line{hint}")
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise SubscriberError(f"{path}:1: column {name!r} appears twice in the header line")
        seen.add(name)
    return names


def _rows(
    source: CsvFile,
    names: list[str],
    on_bad: Callable[[BadRow], None] | None,
    stats: ReadStats,
    on_duplicate: Callable[[BadRow], None] | None,
) -> Iterator[Subscriber | None]:
    path = source.path
    seen = DigestSet()
    email_at = names.index("email")
    columns = [(i, name) for i, name in enumerate(names) if name]
    first_bad: BadRow | None = None
    with source:
        yield None
        for record in source.records(","):
            if record.first == 1 or record.blank:
                continue  # the header; a blank line: nothing to lose
            stats.rows += 1
            try:
                if record.error:
                    raise _BadValue(record.error)
                subscriber = _subscriber(record.cells, columns, email_at, record.first)
            except _BadValue as exc:
                stats.invalid += 1
                bad = BadRow(path, record.first, str(exc))
                first_bad = first_bad or bad
                if on_bad is not None:
                    on_bad(bad)
                continue
            if not seen.add(_digest(dedupe_key(subscriber.email))):
                stats.duplicates += 1
                if on_duplicate is not None:
                    reason = f"{subscriber.email}: duplicate of an earlier row"
                    on_duplicate(BadRow(path, record.first, reason))
                continue
            stats.valid += 1
            yield subscriber
    if not stats.valid:
        assert first_bad is not None  # the scan found a row, and it was not valid
        raise SubscriberError(
            f"{path}: none of its {stats.rows:,} row(s) has a valid address (line {first_bad.line}:"
            f" {first_bad.reason}); nothing was sent"
        )


def _subscriber(record: list[str], columns: list[tuple[int, str]], email_at: int, line: int) -> Subscriber:
    raw_email = record[email_at].strip() if email_at < len(record) else ""
    who = f"{raw_email!r}: " if raw_email and not CONTROL_BUT_TAB.search(raw_email) else ""
    values: dict[str, str] = {}
    for i, name in columns:
        value = record[i].strip() if i < len(record) else ""
        bad = CONTROL_BUT_TAB.search(value)
        if bad:
            raise _BadValue(f"{who}control character U+{ord(bad[0]):04X} in the {name!r} field")
        limit = MAX_EMAIL if i == email_at else MAX_FIELD
        if len(value) > limit:
            shown = who or f"{value[:40]!r}...: "
            raise _BadValue(f"{shown}the {name!r} field is longer than {limit} characters")
        values[name] = value
    if not raw_email:
        raise _BadValue("empty email")
    try:
        email = normalize_email(raw_email)
    except ValueError as exc:
        raise _BadValue(f"invalid address {raw_email!r}: {exc}") from None
    values["email"] = email
    return Subscriber(email, values.get("name", ""), MappingProxyType(values), line)
