"""The issues' web copies in the record, for every host's `mailer serve` (hostcopies.py shows them).

Since schema step 9 -> 10 a send keeps its issue's web copy in the record as well as in its data folder; an
issue sent before has its copy only in the data folder of the host that sent it. That host's `serve` (as it
starts) and its next send put those copies into the record, so that the other hosts show them too with no
one copying folders. Each copy's digest is kept beside it (schema 13): a serve whose file differs from it
shows the record's copy, the one the last send of the issue kept. Kept apart from archive.py so that a send
does not load the archive's pages and feed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .private import make_folder, write_file

if TYPE_CHECKING:
    from .config import Settings
    from .ledger import Ledger

FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")  # an issue id that is a file name here


def digest(html: bytes) -> str:
    """What tells one web copy from another (SHA-256, hex): the record keeps it beside each copy."""
    return hashlib.sha256(html).hexdigest()


def write_copy(path: Path, html: bytes, when: float | None = None) -> None:
    """Write a web copy whole: into a file of its own, renamed over the old one, so that a `mailer serve`
    showing the old one meanwhile reads all of it, never half of each; dated `when` (epoch s) if given."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        make_folder(path.parent)
        write_file(tmp, html)
        if when is not None:
            os.utime(tmp, (when, when))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def to_record(settings: Settings, ledger: Ledger) -> None:
    """Put into the record the web copies this host's archive folder has of the record's issues that the
    record lacks. A copy the record has is never replaced: it is the one every host shows."""
    folder = settings.data_dir / "archive"
    lacking = ledger.rows(
        "SELECT DISTINCT i.issue_id FROM issues AS i"
        " WHERE NOT EXISTS (SELECT 1 FROM web_copies AS w WHERE w.issue_id = i.issue_id)"
    )
    for (issue_id,) in lacking:
        if not FILE_NAME.fullmatch(issue_id):
            continue
        try:
            copy = (folder / f"{issue_id}.html").read_bytes()
        except OSError:  # none here (sent from another host, or a try-out not written), or unreadable
            continue
        ledger.keep_web_copy(issue_id, copy, replace=False)
