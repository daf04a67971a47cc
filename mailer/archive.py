"""The archive as readers see it: the web copies `send` writes to data_dir/archive, an index of the issues
sent, their Atom feed, and the language the reader pages speak.

Unless the `lang` setting says it, the pages speak the language of the newest issue written there: the one the
emails of the list were last sent in. Only issues that reached a reader over SMTP are listed (an outbox
try-out mails no one); a web copy holds no one's personal data (send.write_archive).
"""

from __future__ import annotations

import html
import logging
import os
import re
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote
from zoneinfo import ZoneInfo

from .catalog import Words, words
from .headers import one_line

if TYPE_CHECKING:
    from .config import Settings
    from .hostcopies import HostCopies

log = logging.getLogger("mailer.web")
_HTML_LANG = re.compile(rb"<html\b[^>]*?\slang=[\"']?([A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*)", re.IGNORECASE)
_Stamp = tuple[int, int]  # (st_mtime_ns, st_size)
ATOM = "http://www.w3.org/2005/Atom"
# what XML 1.0 does not allow in a document (its Char production), escaped or not: one in a title and a feed
# reader shows no issue at all
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
FEED_ENTRIES = 50  # the newest issues in the feed; the index lists them all


class _NewestLang:
    """The newest archived issue's language, looked up again only when the folder or that file changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[Path, tuple[_Stamp, str, _Stamp, str]] = {}  # folder, newest file, its lang

    def __call__(self, folder: Path) -> str:
        folder_stamp = _stamp(folder)
        if folder_stamp is None:
            return ""
        with self._lock:
            seen = self._seen.get(folder)
        if seen and seen[0] == folder_stamp and _stamp(Path(seen[1])) == seen[2]:
            return seen[3]
        newest, file_stamp, lang = _newest(folder)
        with self._lock:
            self._seen[folder] = (folder_stamp, newest, file_stamp, lang)
        return lang


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _newest(folder: Path) -> tuple[str, _Stamp, str]:
    """The newest *.html of the folder, its stamp and the lang of its <html> ("" if none)."""
    files: list[tuple[_Stamp, str]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".html") and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    files.append(((st.st_mtime_ns, st.st_size), entry.path))
    except OSError:
        return "", (0, 0), ""
    if not files:
        return "", (0, 0), ""
    stamp, path = max(files)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return path, stamp, ""
    match = _HTML_LANG.search(head)
    return path, stamp, match[1].decode("ascii") if match else ""


archived_lang = _NewestLang()


@dataclass(frozen=True)
class Entry:
    """One issue of the archive: sent to readers over SMTP, and its web copy on disk."""

    issue_id: str
    title: str
    sent_at: datetime  # when its first send started (UTC); never changes, so the feed's ids and dates hold


def sent_issues(settings: Settings, copies: HostCopies) -> list[Entry]:
    """The issues that reached at least one reader (not try-outs to the outbox), newest first, each with a
    web copy to show: this host's files brought to the record's copies first."""
    from .ledger import SMTP, Ledger

    with Ledger(settings.db_path, create=False) as ledger:
        rows = ledger.rows(
            "SELECT i.issue_id, i.subject, i.created_at FROM issues AS i WHERE i.destination = ?"
            " AND EXISTS (SELECT 1 FROM deliveries AS d WHERE d.issue_id = i.issue_id"
            " AND d.destination = i.destination AND d.state = 'sent')"
            " ORDER BY i.created_at DESC, i.issue_id DESC",
            (SMTP,),
        )
        shown = copies.refresh(ledger, [row[0] for row in rows])
    return [
        Entry(issue_id, subject, datetime.fromisoformat(created).astimezone(UTC))
        for issue_id, subject, created in rows
        if issue_id in shown
    ]


def index_page(settings: Settings, t: Words, copies: HostCopies) -> bytes:
    """/issues/: every sent issue, newest first, with its title and the day it went out."""
    from .web import page

    zone = ZoneInfo(settings.timezone)
    issues = [(e.issue_id, e.title, e.sent_at.astimezone(zone).date()) for e in sent_issues(settings, copies)]
    list_name = settings.list_name or settings.from_name
    return page(
        t,
        t.text("archive.title", list=list_name),
        template="archive.html",
        issues=issues,
        list_name=list_name,
        feed_url=feed_url(settings),
        subscribe_url=settings.subscribe_link,
    )


def feed_url(settings: Settings) -> str:
    """The Atom feed's own address (relative when web_url is empty)."""
    return f"{settings.web_url.rstrip('/')}/feed.atom" if settings.web_url else "feed.atom"


def feed_link(settings: Settings, t: Words) -> bytes:
    """The <link> that lets a browser or feed reader find the feed from a page."""
    title = html.escape(t.text("archive.feed"))
    href = html.escape(feed_url(settings))
    return f'<link rel="alternate" type="application/atom+xml" title="{title}" href="{href}">'.encode()


def with_feed_link(settings: Settings, copy: bytes) -> bytes:
    """An issue's web copy with the feed's <link> in its head, in the issue's own language."""
    match = _HTML_LANG.search(copy[:4096])
    link = feed_link(settings, words(match[1].decode("ascii") if match else ""))
    head_end = copy.find(b"</head>")
    return copy if head_end < 0 else copy[:head_end] + link + copy[head_end:]


def feed(settings: Settings, t: Words, copies: HostCopies) -> bytes:
    """The Atom feed (RFC 4287) of the newest sent issues, with absolute links from web_url."""
    entries = sent_issues(settings, copies)[:FEED_ENTRIES]
    base = settings.web_url.rstrip("/")
    scope = settings.effective_list_id
    list_name = settings.list_name or settings.from_name
    root = ET.Element("feed", {"xmlns": ATOM, "xml:lang": t.lang})
    _add(root, "id", _urn(f"mailer:{scope}"))
    _add(root, "title", list_name)
    newest = entries[0].sent_at if entries else datetime.fromtimestamp(0, UTC)
    _add(root, "updated", _rfc3339(newest))
    ET.SubElement(root, "link", rel="self", type="application/atom+xml", href=feed_url(settings))
    ET.SubElement(root, "link", rel="alternate", type="text/html", href=f"{base}/issues/")
    author = ET.SubElement(root, "author")
    _add(author, "name", one_line(settings.from_name))
    _add(root, "generator", "mailer")
    for entry in entries:
        item = ET.SubElement(root, "entry")
        _add(item, "id", _urn(f"mailer:{scope}:issue:{entry.issue_id}"))
        _add(item, "title", entry.title)
        _add(item, "published", _rfc3339(entry.sent_at))
        _add(item, "updated", _rfc3339(entry.sent_at))
        link = f"{base}/issues/{quote(entry.issue_id)}"
        ET.SubElement(item, "link", rel="alternate", type="text/html", href=link)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _add(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = _NOT_XML.sub("", text)


def _urn(name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
