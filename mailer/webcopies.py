"""The issues' web copies in the record, for every host's `mailer serve` (archive.py shows them).

Since schema step 9 -> 10 a send keeps its issue's web copy in the record as well as in its data folder; an
issue sent before has its copy only in the data folder of the host that sent it. That host's `serve` (as it
starts) and its next send put those copies into the record, so that the other hosts show them too with no
one copying folders. Kept apart from archive.py so that a send does not load the archive's pages and feed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings
    from .ledger import Ledger

FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")  # an issue id that is a file name here


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
        ledger.write(
            "INSERT INTO web_copies (issue_id, html) VALUES (?, ?) ON CONFLICT (issue_id) DO NOTHING",
            (issue_id, copy),
            rows_only=True,
        )
