"""Several subscriber lists sent as one (`send --to a.csv --to b.csv`): each checked whole before the first
message, an address mailed once, and a report of what was read from each.

The lists are read in the order given, through one set of the addresses met so far: the first list that
has an address as a row to mail mails it, with that row's fields; a later row of it is a duplicate, counted
in its own list's report. The key of the lists in the delivery record is one list's SHA-256, as it always
was, and for several the SHA-256 of their SHA-256s sorted: the same files given in another order are the
same lists, so a daily run finds the issue already sent to them (and whatever the order, the record never
mails an address twice for one issue).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .console import SILENT, Voice
from .engine import Location
from .errors import SubscriberError
from .subscribers import ReadStats, Seen, Subscriber, no_valid_row, read_subscribers


@dataclass
class ListFile:
    """One list of a send: what its check found, and what the record says of its readers."""

    path: Location  # the file; for a list kept in the database (stored.py), the database
    stats: ReadStats = field(default_factory=ReadStats)
    stored: str = ""  # the name of a list kept in the database
    to_mail: int = 0  # readers of this list the send will mail (not suppressed, not already sent)
    already_sent: int = 0
    suppressed: int = 0

    @property
    def named(self) -> str:
        """The list as a person gives it: `a.csv`, or `list main`."""
        return f"list {self.stored}" if self.stored else str(self.path)

    @property
    def invalid(self) -> int:
        """Rows without a usable address (counted by the check: rows less the rows it could use)."""
        check = self.stats.check
        return self.stats.expected - check.valid - check.duplicates - check.skipped

    def fields(self) -> dict[str, object]:
        """This list's part of `send --json`."""
        check = self.stats.check
        return {
            **({"list": self.stored} if self.stored else {"file": str(self.path)}),
            "tool": self.stats.tool,
            "rows": self.stats.expected,
            "to_mail": self.to_mail,
            "already_sent": self.already_sent,
            "skipped": check.skipped,
            "skipped_by": dict(check.reasons),
            "duplicates": check.duplicates,
            "invalid": self.invalid,
            "suppressed": self.suppressed,
        }

    def line(self) -> str:
        """This list's report for a person: what was read, and what of it is mailed."""
        check = self.stats.check
        tool = f" ({self.stats.tool})" if self.stats.tool else ""
        parts = [f"{self.to_mail:,} to mail"]
        if self.already_sent:
            parts.append(f"{self.already_sent:,} already sent")
        if check.skipped:
            reasons = ", ".join(f"{n:,} {why}" for why, n in check.reasons.items())
            parts.append(f"{check.skipped:,} not to be mailed ({reasons})")
        for count, what in (
            (check.duplicates, "duplicate(s)"),
            (self.suppressed, "suppressed"),
            (self.invalid, "invalid"),
        ):
            if count:
                parts.append(f"{count:,} {what}")
        rows = "reader(s)" if self.stored else "row(s)"
        return f"{self.named}{tool}: {self.stats.expected:,} {rows}: {', '.join(parts)}"


@dataclass
class Lists:
    """The lists of one send, checked; `subscribers` streams them one after the other."""

    files: list[ListFile]
    streams: list[Iterator[Subscriber]]  # one per list, in order

    @property
    def subscribers(self) -> Iterator[Subscriber]:
        """Every list's readers to mail, one list after the other."""
        return itertools.chain.from_iterable(self.streams)

    def close(self) -> None:
        """Close every list's file (a stream not read to its end)."""
        for stream in self.streams:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    @property
    def key(self) -> str:
        """The lists' identity in the delivery record (see the module's docstring)."""
        if len(self.files) == 1:
            return self.files[0].stats.sha256
        digests = sorted(f.stats.sha256 for f in self.files)
        return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()

    @property
    def named(self) -> str:
        """The lists as a person gives them: `a.csv, b.csv`."""
        return ", ".join(f.named for f in self.files)

    @property
    def resolved(self) -> str:
        """The lists' absolute paths, for the record."""
        return ", ".join(
            f"{f.named} in {_resolved(f.path)}" if f.stored else str(_resolved(f.path)) for f in self.files
        )

    def totals(self) -> ReadStats:
        """The rows read so far from all the lists, as one list's counts."""
        total = ReadStats()
        for f in self.files:
            for name in ("expected", "rows", "valid", "invalid", "duplicates", "skipped"):
                setattr(total, name, getattr(total, name) + getattr(f.stats, name))
        return total


def read_lists(
    paths: list[Path],
    *,
    voice: Voice = SILENT,
    count: Callable[[ListFile], Callable[[Subscriber], None]] | None = None,
    consequence: str = "nothing was sent",
) -> Lists:
    """Check every list (csvfile, listformat), in order, before the first reader is mailed.

    SubscriberError names the first list that cannot be read whole or has no row with a valid address
    (and closes them all). `count(list)` gives each list's check a callback for the readers the stream
    will yield from it.
    """
    seen = Seen()
    files: list[ListFile] = []
    streams: list[Generator[Subscriber, None, None]] = []
    try:
        for path in paths:
            one = ListFile(path)
            on_checked = count(one) if count is not None else None
            stream = read_subscribers(
                path, voice=voice, stats=one.stats, on_checked=on_checked, seen=seen,
                consequence=consequence,
            )  # fmt: skip
            streams.append(stream)
            check = one.stats.check
            if not check.valid + check.duplicates + check.skipped:
                raise SubscriberError(no_valid_row(path, one.stats.expected, check.first_bad, consequence))
            files.append(one)
    except BaseException:
        for stream in streams:
            stream.close()  # closes its file
        raise
    return Lists(files, list(streams))


def _resolved(where: Location) -> Location:
    """A file by its absolute path; a database server as it is (its URL printed without a password)."""
    return where.resolve() if isinstance(where, Path) else where
