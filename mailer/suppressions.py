"""Read a file of addresses to suppress and add them to the record: all of them, or none.

A suppression file comes from an email provider's export (Mailchimp's `Email Address`, Mailgun's `address`,
...), a spreadsheet, or a hand-kept list. Accepted: a CSV whose header line names an address column,
separated by commas, semicolons or tabs (found from the header line), or one address a line with `#`
comments. The file is checked whole first (csvfile), so a quote that swallows lines refuses it before
anything is imported: these are people who asked not to be mailed, and a file that hides some of them
is worse than no import. An export that says per row who is not to be mailed (Mailchimp's unsubscribed or
cleaned export, Substack's `email_disabled`, listmonk's `blocklisted`, Ghost's `subscribed_to_emails`:
see listformat) imports exactly those rows, each with the tool's reason.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from . import listformat
from .config import Settings
from .console import Console, Voice
from .csvfile import CsvFile
from .errors import MailerError, SubscriberError
from .headers import normalize_email
from .ledger import Ledger
from .subscribers import dedupe_key

# Header names of an address column (listformat.key), earlier names first: a subscriber list's, then
# Mailgun's `address`, which loses to them (Mailchimp has both "Email Address" and a postal "Address").
ADDRESS_COLUMNS = (*listformat.ADDRESS, "address")


@dataclass
class ImportReport:
    """What an import did; bad lines were said as errors as they were found."""

    added: int = 0
    already: int = 0
    bad: int = 0
    kept: int = 0  # rows the export says are still to be mailed: not imported
    tool: str = ""  # the exporting tool, when the file says who is not to be mailed


@dataclass(frozen=True)
class _Layout:
    """How the file is laid out: CSV (header line, delimiter, address column) or one address a line."""

    header_line: int = 0  # 0: no header, one address a line
    delimiter: str | None = None
    column: int = 0
    tool: str = ""
    rules: tuple[listformat.StatusRule, ...] = ()  # who the export says is not to be mailed


def import_suppressions(path: Path, ledger: Ledger, *, reason: str, voice: Voice) -> ImportReport:
    """Suppress every address of the file in one transaction.

    SubscriberError, with nothing imported, if the file cannot be read whole (csvfile) or holds no
    address at all; a line that is not an address is said through `voice` (`FILE:LINE: skipped: why`, an
    error) and the others are imported. From an
    export with status columns only the rows it marks are imported, the reason saying why ("reason:
    unsubscribed (Mailchimp)"); the others are counted as kept.
    """
    report = ImportReport()
    rows = 0
    with CsvFile(path, "suppression file") as source:
        layout = _layout(source)
        report.tool = layout.tool if layout.rules else ""
        source.scan(layout.delimiter, after=layout.header_line, consequence="nothing was imported")
        with ledger.transaction():
            for line, raw, error, cells in _addresses(source, layout):
                rows += 1
                try:
                    if error:
                        raise ValueError(error)
                    key = dedupe_key(normalize_email(raw))
                    status = _status(layout, cells)
                except (ValueError, listformat.BadValue) as exc:
                    report.bad += 1
                    why = f"{raw!r}: {exc}" if raw else str(exc)
                    voice.error(f"{path}:{line}: skipped: {why}")
                    continue
                if layout.rules and not status:
                    report.kept += 1
                    continue
                why = f"{reason}: {status}" if status else reason
                if ledger.suppress(key, source="import", reason=why):
                    report.added += 1
                else:
                    report.already += 1
            if not report.added + report.already:
                raise SubscriberError(_nothing_found(path, layout, rows, report.kept))
    return report


def _status(layout: _Layout, cells: list[str]) -> str:
    for rule in layout.rules:
        status = rule(cells)
        if status:
            return status
    return ""


def _layout(source: CsvFile) -> _Layout:
    """Find the header line (the first line neither blank nor a # comment) and how it is separated."""
    for record in source.records(None):
        text = record.cells[0].strip()
        if record.error:
            break  # the scan names the problem
        if not text or text.startswith("#"):
            continue
        found: list[tuple[int, int, str]] = []  # (cells, address column, delimiter)
        for delimiter in listformat.DELIMITERS:
            cells = next(csv.reader([text], delimiter=delimiter), [])
            keys = [listformat.key(cell) for cell in cells]
            columns = [keys.index(name) for name in ADDRESS_COLUMNS if name in keys]
            if columns:
                found.append((len(cells), columns[0], delimiter))
        if found:
            _, column, delimiter = max(found, key=lambda f: f[0])  # the split into most cells; "," on a tie
            cells = next(csv.reader([text], delimiter=delimiter), [])
            tool, rules = listformat.tool([listformat.key(cell) for cell in cells])
            return _Layout(record.first, delimiter, column, tool, tuple(rules))
        break
    return _Layout()


def _addresses(source: CsvFile, layout: _Layout) -> Iterator[tuple[int, str, str, list[str]]]:
    """(line, address as written, why the line is unreadable, cells) for every row after the header."""
    for record in source.records(layout.delimiter):
        if record.first <= layout.header_line or record.blank:
            continue
        if layout.delimiter is None:
            text = record.cells[0].strip()
            if text.startswith("#"):
                continue
        else:
            cells = record.cells
            text = cells[layout.column].strip() if layout.column < len(cells) else ""
        yield record.first, text, record.error or ("" if text else "no address"), record.cells


def _nothing_found(path: Path, layout: _Layout, rows: int, kept: int) -> str:
    if not rows:
        return f"{path}: no addresses in it; nothing was imported"
    if kept:
        return (
            f"{path}: none of its {rows:,} row(s) is marked as not to be mailed ({layout.tool} export:"
            f" {kept:,} still subscribed); nothing was imported"
        )
    if layout.delimiter is None:
        hint = (
            "no header line names an address column (email, Email Address, E-mail, email_address,"
            " address), so each line should be one address"
        )
    else:
        hint = f"the address column is column {layout.column + 1} of line {layout.header_line}"
    return f"{path}: none of its {rows:,} line(s) is an address ({hint}); nothing was imported"


def stored_addresses(addresses: tuple[str, ...] | list[str]) -> list[str]:
    """The addresses as the send loop and the tokens know them (ASCII domain, lower-cased), or a MailerError
    naming every one that is not an address."""
    good, bad = [], []
    for address in addresses:
        try:
            good.append(dedupe_key(normalize_email(address.strip())))
        except ValueError as exc:
            bad.append(f"{address!r}: {exc}")
    if bad:
        raise MailerError("not an email address: " + "; ".join(bad))
    return good


def suppress_by_hand(
    settings: Settings, addresses: tuple[str, ...], *, reason: str, undo: bool, console: Console
) -> None:
    """`mailer unsubscribe`: suppress the addresses (source 'manual'), or take them off the list with `undo`;
    one line each saying what changed. Nothing is changed when any of them is not an address."""
    emails = stored_addresses(addresses)
    if undo:
        resubscribe(settings, emails, console)
        return
    with Ledger(settings.db_path) as ledger:
        for email in emails:
            changed = ledger.suppress(email, source="manual", reason=reason)
            console.result(f"suppressed {email}" if changed else f"{email} was already suppressed")


def remove_suppressions(settings: Settings, addresses: tuple[str, ...], console: Console) -> None:
    """`mailer suppressions remove`: take the addresses off the list (a bounce or complaint judged wrong)."""
    resubscribe(settings, stored_addresses(addresses), console)


def resubscribe(settings: Settings, emails: list[str], console: Console) -> None:
    """Take addresses off the suppression list, saying what each suppression was (`remove`, `--undo`)."""
    with Ledger(settings.db_path) as ledger:
        for email in emails:
            was = ledger.suppression(email)
            if was is None or not ledger.unsuppress(email):
                console.result(f"{email} was not suppressed")
                continue
            why = ", ".join(filter(None, [was.reason or was.source, was.issue_id, was.status]))
            console.result(f"resubscribed {email} (suppressed {_when(was.created_at)}: {why})")


def _when(value: object) -> str:
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def list_suppressions(settings: Settings, console: Console) -> None:
    """`mailer suppressions list`: every suppressed address with its source, when, reason, issue, status
    code and the server's words, in aligned columns."""
    with Ledger(settings.db_path) as ledger:
        rows = [
            (s.email, s.source, _when(s.created_at), s.reason or "-", s.issue_id or "-", s.status or "-",
             s.diagnostic[:100])
            for s in ledger.suppressions()
        ]  # fmt: skip
    if not rows:
        console.result("No suppressed addresses.")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        console.result(
            "  ".join([*(f"{c:<{w}}" for c, w in zip(row, widths, strict=False)), row[6]]).rstrip()
        )
    console.say(f"{len(rows)} suppressed address(es)")


def import_file(settings: Settings, path: Path, *, reason: str, console: Console) -> ImportReport:
    """`mailer suppressions import`: import_suppressions into the record, each bad line said as an error."""
    with Ledger(settings.db_path) as ledger:
        report = import_suppressions(
            path, ledger, reason=reason or f"imported from {path.name}", voice=console
        )
    kept = (
        f"; {report.kept} still subscribed in the {report.tool} export, not imported" if report.kept else ""
    )
    if not console.quiet:
        console.result(
            f"{report.added} newly suppressed, {report.already} already suppressed,"
            f" {report.bad} bad line(s) skipped{kept}"
        )
    return report


def export_suppressions(settings: Settings, out: TextIO) -> None:
    """`mailer suppressions export`: the list as CSV (email, source, reason, created_at, issue, status,
    diagnostic)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["email", "source", "reason", "created_at", "issue", "status", "diagnostic"])
    with Ledger(settings.db_path) as ledger:
        for s in ledger.suppressions():
            writer.writerow(
                [s.email, s.source, s.reason, _when(s.created_at), s.issue_id or "", s.status, s.diagnostic]
            )
