"""Files that hold the subscriber list or a secret are the owner's alone: folders 0700, files 0600.

The database, its WAL and SHM files, the outbox and the locks all name readers; under the usual umask 022
they would be world-readable. Each place that creates such a file goes through here instead of relying on
the umask.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def make_folder(path: Path) -> None:
    """Create the folder and its missing parents if needed; every folder mailer creates is 0700."""
    missing = []
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{folder} is a file, not a folder")
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)


def open_new(path: Path) -> int:
    """Create a file that must not exist yet, 0600, and return its descriptor for writing."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)


def write_file(path: Path, data: bytes) -> None:
    """Write the whole file, created 0600 (an existing file keeps its owner but loses group/other access)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), FILE_MODE)
        out.write(data)


def restrict(path: Path) -> None:
    """Take group and other access away from an existing file of ours (made by an older mailer)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, st.st_mode & 0o700)
