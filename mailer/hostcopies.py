"""This host's archive folder kept to the record's web copies, for `mailer serve` (web.py, archive.py).

Every host's serve shows the record's copy of an issue: the one the last send of it kept, from whichever host
(a send with --changed replaces it for all of them). A host keeps the copies as files in its data
folder (data_dir/archive/ID.html) and shows its file when the file's digest is the record's; a copy it lacks,
or whose file differs, it writes there from the record first, whole (a reader being shown the old file
meanwhile gets all of it). The record's digests are read at most once every FRESH seconds however many
requests come: a bot walking unknown issue ids costs the record one query a second, not a connection each.

A folder that cannot take a copy (mounted read-only, full) is said once in the log, and the copy is shown from
the record instead: a web host of a read-only container still shows every issue as last sent. The copy is then
held in memory (the HELD last ones), so that its next views cost the record no connection. The folder is
tried again RETRY seconds later, so a disk that was freed or remounted takes the copy without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING

from .webcopies import FILE_NAME, digest, write_copy

if TYPE_CHECKING:
    from .config import Settings
    from .ledger import Ledger

log = logging.getLogger("mailer.web")
FRESH = 1.0  # seconds a reading of the record's digests is trusted: a send's new copy shows within this
RETRY = 5.0  # seconds before a folder that could not take a copy is tried again (not at each view)
HELD = 64  # copies held in memory while the folder cannot take them: some 50 kB each
_IN_QUERY = 500  # issue ids per IN (...) query
_Stamp = tuple[int, int, int]  # a file's (st_ino, st_mtime_ns, st_size): a file replaced or rewritten differs
_DIGESTS = "SELECT issue_id, digest FROM web_copy_digests"
# each copy with when its issue's first send started, the date its file gets (the newest is the newest issue)
_COPIES = (
    "SELECT w.issue_id, w.html, (SELECT min(i.created_at) FROM issues AS i WHERE i.issue_id = w.issue_id)"
    " FROM web_copies AS w WHERE w.issue_id IN ({})"
)


class HostCopies:
    """The web copies this host shows; one per `mailer serve` process, shared by its threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = settings.data_dir / "archive"
        self._reading = threading.Lock()  # one reading of the digests at a time; others wait for it
        self._digests: dict[str, str] = {}  # the record's digest of each issue's copy
        self._read_at: float | None = None  # time.monotonic() when that reading started
        self._failing = False  # the last try to read them met a record that did not answer
        self._files: dict[str, tuple[_Stamp, str]] = {}  # the digest of this host's file of an issue
        self._unwritable: dict[str, float] = {}  # issue -> when (monotonic) the folder could not take it
        self._held: dict[str, tuple[str, bytes, str | None]] = {}  # issue -> digest, copy, created (_hold)
        self._holding = threading.Lock()

    def digests(self, ledger: Ledger | None = None) -> dict[str, str]:
        """The digest of each issue's copy in the record, read again (through `ledger`, else a connection of
        its own) once the last reading is FRESH seconds old, by one thread while the others go on with it.

        A record that does not answer leaves the last reading in use until the next try (the log says
        so once): the issues keep being shown from this host's files, and no request waits for it."""
        if self._read_at is not None and time.monotonic() - self._read_at < FRESH:
            return self._digests
        if not self._reading.acquire(blocking=self._read_at is None):  # no reading yet: wait for the first
            return self._digests
        try:
            started = time.monotonic()
            if self._read_at is None or started - self._read_at >= FRESH:
                self._read(ledger)
                self._read_at = started
            return self._digests
        finally:
            self._reading.release()

    def _read(self, ledger: Ledger | None) -> None:
        from .errors import MailerError
        from .ledger import Ledger

        try:
            if ledger is None:
                with Ledger(self.settings.db_path, create=False) as own:
                    rows = own.rows(_DIGESTS)
            else:
                rows = ledger.rows(_DIGESTS)
        except MailerError as exc:
            if self._read_at is None:  # nothing to go on with
                raise
            if not self._failing:
                log.warning(
                    "the record's web copies not read: %s; showing this host's copies as they were", exc
                )
            self._failing = True
            return
        if self._failing:
            log.info("the record's web copies read again")
        self._digests, self._failing = dict(rows), False

    def show(self, issue_id: str) -> bytes | None:
        """The web copy to show for an issue (a file name): the record's, else a file put in the folder by
        hand (docs/archive.md); None when neither is there."""
        wanted = self.digests().get(issue_id)
        try:
            here: bytes | None = (self.folder / f"{issue_id}.html").read_bytes()
        except OSError:
            here = None
        if wanted is None or (here is not None and digest(here) == wanted):
            return here
        held = self._held.get(issue_id)
        if held is not None and held[0] == wanted:  # the folder could not take it: no connection each view
            self._keep(issue_id, held[1], held[2])  # tried again once RETRY has passed
            return held[1]
        from .ledger import Ledger

        with Ledger(self.settings.db_path, create=False) as ledger:
            for found, html, created in ledger.rows(_COPIES.format("?"), (issue_id,)):
                copy = bytes(html)
                self._keep(found, copy, created)
                return copy
        return here  # taken out of the record since its digest was read

    def refresh(self, ledger: Ledger, issue_ids: list[str]) -> set[str]:
        """Bring this host's files of these issues to the record's copies; the issues it can show."""
        digests = self.digests(ledger)
        stale = [
            i
            for i in issue_ids
            if i in digests and self._writable(i) and FILE_NAME.fullmatch(i) and self._file(i) != digests[i]
        ]
        for start in range(0, len(stale), _IN_QUERY):
            some = stale[start : start + _IN_QUERY]
            for issue_id, html, created in ledger.rows(_COPIES.format(", ".join("?" * len(some))), some):
                self._keep(issue_id, bytes(html), created)
        return {
            i
            for i in issue_ids
            if FILE_NAME.fullmatch(i) and (i in digests or (self.folder / f"{i}.html").is_file())
        }

    def _file(self, issue_id: str) -> str | None:
        """The digest of this host's file of the issue (None: none), hashed again only once it changed."""
        path = self.folder / f"{issue_id}.html"
        try:
            st = path.stat()
        except OSError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        known = self._files.get(issue_id)
        if known and known[0] == stamp:
            return known[1]
        try:
            found = digest(path.read_bytes())
        except OSError:
            return None
        self._files[issue_id] = (stamp, found)
        return found

    def _keep(self, issue_id: str, copy: bytes, created: str | None) -> None:
        """Write the record's copy as this host's file of the issue, whole (renamed over the old one); a
        copy the folder cannot take is held in memory instead."""
        found = self._digests[issue_id] = digest(copy)  # the record's now, which the reading may predate
        if not self._writable(issue_id):
            self._hold(issue_id, found, copy, created)
            return
        path = self.folder / f"{issue_id}.html"
        when = datetime.fromisoformat(created).timestamp() if created else None
        try:
            write_copy(path, copy, when)
        except OSError as exc:
            if issue_id not in self._unwritable:  # said once, not at each try
                log.warning(
                    "%s: cannot write the issue's web copy: %s; showing it from the record",
                    path,
                    exc.strerror or exc,
                )
            self._unwritable[issue_id] = time.monotonic()
            self._hold(issue_id, found, copy, created)
            return
        with self._holding:
            self._held.pop(issue_id, None)
        if self._unwritable.pop(issue_id, None) is not None:
            log.info("%s: the issue's web copy written again", path)

    def _hold(self, issue_id: str, found: str, copy: bytes, created: str | None) -> None:
        """Keep a copy the folder could not take, the HELD newest such (the oldest dropped first)."""
        with self._holding:
            self._held.pop(issue_id, None)
            self._held[issue_id] = (found, copy, created)
            while len(self._held) > HELD:
                del self._held[next(iter(self._held))]

    def _writable(self, issue_id: str) -> bool:
        """Whether to try writing the issue's copy: never failed, or failed RETRY seconds ago or more."""
        failed = self._unwritable.get(issue_id)
        return failed is None or time.monotonic() - failed >= RETRY
