"""The archive as readers see it: the web copies `send` writes to data_dir/archive, and their language.

The reader pages of `mailer serve` speak the list's language. Unless the `lang` setting says it, that is the
language of the newest issue written there: the one the emails of the list were last sent in.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

_HTML_LANG = re.compile(rb"<html\b[^>]*?\slang=[\"']?([A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*)", re.IGNORECASE)
_Stamp = tuple[int, int]  # (st_mtime_ns, st_size)


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
