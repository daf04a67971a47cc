"""Subscriber lists kept in mailer's database (`mailer subscribers ...`, `send --list NAME`).

A list is imported from files read by the same readers as `send --to` (every export, encoding and status
column they understand), in one transaction per run: a file that cannot be read whole, or has a row without
a usable address, imports nothing. A member keeps the date and source of its consent (the file it was first
imported from, and when); a later import of the same address updates the columns its file has and leaves
the rest. An address on the suppression list is not imported.

A send reads the list as it was at its start: the members up to the highest id seen then (ids never repeat),
so a reader imported during the send waits for the next run. The record keys a stored list by its name and
version, which goes up with every change to its members: a complete send of an issue holds for that version
only, and a rerun after an import reads the list again (whoever got the issue is not mailed twice: the
deliveries say so).
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TextIO

from .config import Settings
from .console import Console
from .engine import Location
from .errors import MailerError, SubscriberError
from .ledger import Ledger
from .lists import ListFile, Lists, read_lists
from .subscribers import Subscriber
from .suppressions import stored_addresses

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_BATCH = 500  # addresses per query, well under SQLite's limit on bound parameters
_PAGE = 1000  # members read per query while a send streams its list


def check_name(name: str) -> str:
    """The list name, or a MailerError saying what a name may be."""
    if not _NAME.match(name):
        raise MailerError(
            f"{name!r} is not a list name: up to 64 letters, digits, '.', '_' or '-', starting with a letter"
            " or digit"
        )
    return name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class FileImport:
    """What one file of an import did to the list."""

    path: Location
    tool: str = ""
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    suppressed: int = 0  # on the suppression list: not imported
    duplicates: int = 0  # of an earlier row or file of this import
    skipped: int = 0  # marked by the export as not to be mailed: not imported
    reasons: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """This file's report for a person."""
        tool = f" ({self.tool})" if self.tool else ""
        parts = [f"{self.added:,} added", f"{self.updated:,} updated", f"{self.unchanged:,} unchanged"]
        if self.skipped:
            why = ", ".join(f"{n:,} {reason}" for reason, n in self.reasons.items())
            parts.append(f"{self.skipped:,} not imported as the export says ({why})")
        if self.suppressed:
            parts.append(f"{self.suppressed:,} suppressed, not imported")
        if self.duplicates:
            parts.append(f"{self.duplicates:,} duplicate(s)")
        return f"{self.path}{tool}: {self.rows:,} row(s): {', '.join(parts)}"

    def fields(self) -> dict[str, object]:
        """This file's part of `subscribers import --json`."""
        return {
            "file": str(self.path),
            "tool": self.tool,
            "rows": self.rows,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "suppressed": self.suppressed,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
            "skipped_by": dict(self.reasons),
        }


@dataclass
class Imported:
    """What an import did: per file, and the list's size after it."""

    list_name: str
    files: list[FileImport]
    members: int = 0

    def total(self, what: str) -> int:
        """One count summed over the files."""
        return sum(getattr(f, what) for f in self.files)

    def fields(self) -> dict[str, object]:
        """The import's part of `--json`."""
        totals = {k: self.total(k) for k in ("added", "updated", "unchanged", "suppressed", "skipped")}
        return {"files": [f.fields() for f in self.files], "members": self.members, **totals}


def import_into_list(settings: Settings, paths: list[Path], name: str, console: Console) -> Imported:
    """`mailer subscribers import`: import the files, then say per file what it did and the list's size."""
    with Ledger(settings.db_path) as ledger:
        done = import_files(ledger, paths, name, console=console)
    for one in done.files:
        console.say(one.line())
    console.result(
        f"list {done.list_name}: {done.total('added'):,} added, {done.total('updated'):,} updated,"
        f" {done.members:,} subscriber(s) now"
    )
    return done


def import_files(ledger: Ledger, paths: list[Path], list_name: str, *, console: Console) -> Imported:
    """Import the files into the list, all or nothing; the console says each address updated or skipped."""
    name = check_name(list_name)
    for path in paths:
        if not path.is_file():
            raise SubscriberError(f"{path}: no such file; nothing was imported")

    # no voice for bad rows: _refuse_bad_rows stops an import the check found any in, and the rows read
    # after the check are the ones it saw (a block that changed since raises FileChanged)
    lists = read_lists(paths, consequence="nothing was imported")
    try:
        for one in lists.files:
            _refuse_bad_rows(one)
        return _import(ledger, lists, name, console)
    finally:
        lists.close()


def _refuse_bad_rows(one: ListFile) -> None:
    """An import takes a file whole: a row without a usable address stops it, naming the row."""
    bad = one.invalid
    if not bad:
        return
    first = one.stats.check.first_bad
    more = f" (and {bad - 1:,} more row(s) like it)" if bad > 1 else ""
    what = str(first) if first else f"{one.path}: {bad:,} row(s) that cannot be read"
    raise SubscriberError(f"{what}{more}; nothing was imported (fix or delete the row, then import again)")


def _import(ledger: Ledger, lists: Lists, name: str, console: Console) -> Imported:
    result = Imported(name, [])
    now = _now()
    with ledger.transaction():
        ledger.write(
            "INSERT INTO lists (name, version, created_at, changed_at) VALUES (?, 0, ?, ?)"
            " ON CONFLICT (name) DO NOTHING",
            (name, now, now),
        )
        for one, stream in zip(lists.files, lists.streams, strict=True):
            done = FileImport(one.path, one.stats.tool)
            result.files.append(done)
            while batch := list(itertools.islice(stream, _BATCH)):
                _import_batch(ledger, name, one, batch, done, now, console)
            stats = one.stats
            done.rows, done.duplicates = stats.rows, stats.duplicates
            done.skipped, done.reasons = stats.skipped, dict(stats.check.reasons)
        if result.total("added") or result.total("updated"):
            ledger.write("UPDATE lists SET version = version + 1, changed_at = ? WHERE name = ?", (now, name))
        result.members = ledger.rows("SELECT count(*) FROM members WHERE list = ?", (name,))[0][0]
    return result


def _import_batch(
    ledger: Ledger,
    name: str,
    one: ListFile,
    batch: list[Subscriber],
    done: FileImport,
    now: str,
    console: Console,
) -> None:
    path = one.path
    keys = [sub.key for sub in batch]
    marks = ",".join("?" * len(keys))
    existing = {
        email: (old_name, old_fields)
        for email, old_name, old_fields in ledger.rows(
            f"SELECT email, name, fields FROM members WHERE list = ? AND email IN ({marks})", (name, *keys)
        )
    }
    suppressed = {
        row[0] for row in ledger.rows(f"SELECT email FROM suppressions WHERE email IN ({marks})", keys)
    }
    added: list[tuple[str, ...]] = []
    updated: list[tuple[str, ...]] = []
    for sub in batch:
        key = sub.key
        if key in suppressed:
            done.suppressed += 1
            console.say(f"skipped: {path}:{sub.line}: {sub.email}: on the suppression list (not imported)")
            continue
        old = existing.get(key)
        values = {k: v for k, v in sub.fields.items() if k != "email"}
        consent = (now, f"imported from {path}")
        if one.stats.tool == "mailer":  # mailer's own export: the consent it kept travels with the reader
            consent = (values.pop("consent_date") or consent[0], values.pop("consent_source") or consent[1])
            values.pop("status")
        if old is None:
            member_name = values.pop("name", "")
            added.append((name, key, sub.email, member_name, _json(values), *consent, now))
            continue
        merged = {**json.loads(old[1]), "name": old[0]}
        changes = [f"{k} {merged.get(k, '')!r} -> {v!r}" for k, v in values.items() if merged.get(k, "") != v]
        if not changes:
            done.unchanged += 1
            continue
        merged.update(values)
        member_name = merged.pop("name")
        updated.append((sub.email, member_name, _json(merged), now, name, key))
        console.say(f"updated: {path}:{sub.line}: {sub.email}: {'; '.join(changes)}")
    ledger.write_many(
        "INSERT INTO members (list, email, address, name, fields, consent_at, consent_source, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        added,
    )
    ledger.write_many(
        "UPDATE members SET address = ?, name = ?, fields = ?, updated_at = ? WHERE list = ? AND email = ?",
        updated,
    )
    done.added += len(added)
    done.updated += len(updated)


def _json(values: dict[str, str]) -> str:
    return json.dumps(values, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


# --- the lists kept -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredList:
    """One list kept in the database, for `subscribers list` and `count`."""

    name: str
    members: int
    suppressed: int  # members on the suppression list: kept, never mailed
    changed_at: str


def stored_lists(ledger: Ledger) -> list[StoredList]:
    """Every list kept, by name."""
    rows = ledger.rows(
        "SELECT l.name, count(m.email), count(s.email), l.changed_at FROM lists AS l"
        " LEFT JOIN members AS m ON m.list = l.name LEFT JOIN suppressions AS s ON s.email = m.email"
        " GROUP BY l.name ORDER BY l.name"
    )
    return [StoredList(*row) for row in rows]


def stored_list(ledger: Ledger, name: str) -> StoredList:
    """One list kept, or a MailerError naming the lists there are."""
    for one in stored_lists(ledger):
        if one.name == check_name(name):
            return one
    raise SubscriberError(_unknown(ledger, name))


def _unknown(ledger: Ledger, name: str) -> str:
    names = [row[0] for row in ledger.rows("SELECT name FROM lists ORDER BY name")]
    there = f"the lists kept are: {', '.join(names)}" if names else "no list is kept there yet"
    return (
        f"no list {name!r} in {ledger.path} ({there}; make one with: mailer subscribers import FILE"
        f" --list {name})"
    )


def show_lists(settings: Settings, console: Console) -> list[StoredList]:
    """`mailer subscribers list`: one line per list kept."""
    with Ledger(settings.db_path) as ledger:
        kept = stored_lists(ledger)
    if not kept:
        console.say("No list is kept in the database (mailer subscribers import FILE makes one).")
    for one in kept:
        console.result(
            f"{one.name}  {one.members:,} subscriber(s)  {one.suppressed:,} suppressed"
            f"  changed {one.changed_at}"
        )
    return kept


def count_list(settings: Settings, name: str, console: Console) -> StoredList:
    """`mailer subscribers count`: the number alone on stdout, for a script."""
    with Ledger(settings.db_path) as ledger:
        one = stored_list(ledger, name)
    console.result(str(one.members))
    if one.suppressed:
        console.say(f"({one.suppressed:,} of them suppressed: never mailed)")
    return one


def remove_from_list(
    settings: Settings, name: str, addresses: tuple[str, ...], console: Console
) -> tuple[list[str], list[str]]:
    """`mailer subscribers remove`: (removed, not on the list); nothing changes if one is not an address."""
    emails = stored_addresses(addresses)
    with Ledger(settings.db_path) as ledger:
        gone = remove(ledger, name, emails)
    removed = [e for e, g in zip(emails, gone, strict=True) if g]
    missing = [e for e, g in zip(emails, gone, strict=True) if not g]
    for email in removed:
        console.result(f"removed {email} from {name}")
    for email in missing:
        console.result(f"{email} was not on {name}")
    return removed, missing


def export_list(settings: Settings, name: str, out: TextIO) -> None:
    """`mailer subscribers export`: the list as CSV on `out`."""
    with Ledger(settings.db_path) as ledger:
        export(ledger, name, out)


def remove(ledger: Ledger, name: str, emails: list[str]) -> list[bool]:
    """Take addresses off one list (not suppressed: another list, or a new import, may have them)."""
    stored_list(ledger, name)
    gone = []
    with ledger.transaction():
        for email in emails:
            gone.append(ledger.write("DELETE FROM members WHERE list = ? AND email = ?", (name, email)) == 1)
        if any(gone):
            ledger.write(
                "UPDATE lists SET version = version + 1, changed_at = ? WHERE name = ?", (_now(), name)
            )
    return gone


EXPORT_COLUMNS = ("consent_date", "consent_source", "status")


def export(ledger: Ledger, name: str, out: TextIO) -> int:
    """Write the list as CSV: email, name, every field, consent date and source, status; the rows written."""
    stored_list(ledger, name)
    fields = sorted(_field_names(ledger, name) - {"email", "name", *EXPORT_COLUMNS})
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["email", "name", *fields, *EXPORT_COLUMNS])
    written = 0
    after = 0
    while True:
        rows = ledger.rows(
            "SELECT m.member_id, m.address, m.name, m.fields, m.consent_at, m.consent_source,"
            " s.email IS NOT NULL FROM members AS m LEFT JOIN suppressions AS s ON s.email = m.email"
            " WHERE m.list = ? AND m.member_id > ? ORDER BY m.member_id LIMIT ?",
            (name, after, _PAGE),
        )
        for _, address, member_name, values, consent_at, source, suppressed in rows:
            extra = json.loads(values)
            status = "suppressed" if suppressed else "subscribed"
            writer.writerow(
                [address, member_name, *(extra.get(f, "") for f in fields), consent_at, source, status]
            )
        written += len(rows)
        if len(rows) < _PAGE:
            return written
        after = rows[-1][0]


def _field_names(ledger: Ledger, name: str) -> set[str]:
    """Every field any member of the list has, read a page at a time (the JSON is parsed here, not by the
    engine: SQLite and PostgreSQL spell their JSON functions differently)."""
    names: set[str] = set()
    after = 0
    while True:
        rows = ledger.rows(
            "SELECT member_id, fields FROM members"
            " WHERE list = ? AND member_id > ? ORDER BY member_id LIMIT ?",
            (name, after, _PAGE),
        )
        for _, values in rows:
            names.update(json.loads(values))
        if len(rows) < _PAGE:
            return names
        after = rows[-1][0]


# --- a send to a stored list ----------------------------------------------------------------------------


def read_stored(
    ledger: Ledger, name: str, *, count: Callable[[ListFile], Callable[[Subscriber], None]] | None = None
) -> Lists:
    """The list as it is now, checked before the first message like a file (`read_lists`).

    SubscriberError (exit 1) for an unknown or empty list. `count(list)` is handed every member the
    send will come to; the stream reads the members up to the highest id there is now, through a
    connection of its own, a page at a time.
    """
    check_name(name)
    row = ledger.rows(
        "SELECT version, (SELECT max(member_id) FROM members WHERE list = ?) FROM lists WHERE name = ?",
        (name, name),
    )
    if not row:
        raise SubscriberError(f"{_unknown(ledger, name)}; nothing was sent")
    version, top = row[0]
    if top is None:
        raise SubscriberError(
            f"list {name!r} has no subscribers (add some: mailer subscribers import FILE --list {name});"
            " nothing was sent"
        )
    one = ListFile(ledger.path, stored=name)
    one.stats.sha256 = f"list:{name}:{version}"  # the list's identity in the record: see the docstring
    use = count(one) if count is not None else None
    check = one.stats.check
    for sub in _members(ledger, name, top):
        check.valid += 1
        if use is not None:
            use(sub)
    one.stats.expected = check.valid
    return Lists([one], [_stream(ledger.path, name, top, one)])


def _stream(path: Location, name: str, top: int, one: ListFile) -> Iterator[Subscriber]:
    with Ledger(path, create=False) as own:
        for sub in _members(own, name, top):
            one.stats.rows += 1
            one.stats.valid += 1
            yield sub


def _members(ledger: Ledger, name: str, top: int) -> Iterator[Subscriber]:
    after = 0
    while True:
        rows = ledger.rows(
            "SELECT member_id, address, name, fields FROM members"
            " WHERE list = ? AND member_id > ? AND member_id <= ? ORDER BY member_id LIMIT ?",
            (name, after, top, _PAGE),
        )
        for member_id, address, member_name, values in rows:
            fields = {**json.loads(values), "name": member_name, "email": address}
            yield Subscriber(address, member_name, MappingProxyType(fields), member_id)
        if len(rows) < _PAGE:
            return
        after = rows[-1][0]
