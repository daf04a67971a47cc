"""The page with its CSS inlined, kept in the data folder for the next rendering of the same page.

Inlining (premailer, cssutils) is most of what rendering a post costs the first time in a process: 0.26 s of
CPU for the example post, most of it their imports and the regular expressions cssutils compiles, against 0.03
s for a second rendering in the same process. Each worker of `send --workers N` is a process of its own
that renders the post the coordinator rendered a moment before, and `mailer send` renders what `mailer
preview` or a dry run rendered already: they read the result here instead.

The key is the page and what else inlining takes (the post's own styles, the classes to keep), and the code
that does it: the size and time of every module of mailer, premailer, cssutils and cssselect (premailer's
selector matching), and of lxml's, binary ones included (it parses and writes the page), with lxml's and the
running libxml2's versions (a libxml2 shared with the system changes under an lxml that stays the same), so
that another version of any of them never reads what this one made. The result is stored as HTML and read
back by the same parser on a miss as on a hit, so that every process works from the same tree. At most KEEP
pages are kept. Only in a data folder that exists: a rendering (a preview, a dry run) does not make one; a
first send renders before it makes it, and keeps the page once it has (the `keep` inline_cached returns).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from lxml import etree

from .private import FILE_MODE, FOLDER_MODE

FOLDER = "inlined"  # in the data folder
KEEP = 16  # pages kept: a few posts, each in a few versions


def inline_cached(
    folder: Path,
    page: str,
    extra: Iterable[str],
    inline: Callable[[], etree._Element],
) -> tuple[etree._Element, Callable[[], object]]:
    """The root of `inline()`'s result, from `folder` if a process made it from the same page and code
    before; else made now and kept there. With it, what keeps it later if it could not be kept now (no
    data folder yet, or one that cannot be written): a send calls it once it has made its data folder."""
    key = _key(page, extra)
    path = folder / f"{key}.html"
    keep: Callable[[], object] = _kept
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = etree.tostring(inline().getroottree(), method="html", encoding="unicode")
        if not _keep(folder, path, text):
            keep = functools.partial(_keep, folder, path, text)
    return etree.fromstring(text, etree.HTMLParser()).getroottree().getroot(), keep


def _kept() -> None:
    """The page is in the folder already."""


def _key(page: str, extra: Iterable[str]) -> str:
    h = hashlib.sha256(_code().encode())
    for part in (page, *extra):
        h.update(len(part).to_bytes(8, "big") + part.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:40]


@functools.cache
def _code() -> str:
    """What identifies the code that inlines: each module file's name, size and time of mailer, premailer,
    cssutils, cssselect (found without importing them, which is what a hit saves) and lxml, and the
    versions of lxml and of the libxml2 it runs with."""
    folders = [Path(__file__).parent, Path(etree.__file__).parent]
    for name in ("premailer", "cssutils", "cssselect"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            folders.append(Path(spec.origin).parent)
    marks = [f"lxml {etree.LXML_VERSION} libxml2 {etree.LIBXML_VERSION}"]
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.name.endswith(_MODULES):
                st = path.stat()
                marks.append(f"{path} {st.st_size} {st.st_mtime_ns}")
    return "\n".join(marks)


_MODULES = (".py", *importlib.machinery.EXTENSION_SUFFIXES)  # source and binary modules


def _keep(folder: Path, path: Path, text: str) -> bool:
    """Write atomically (a worker may read it meanwhile), then drop all but the KEEP newest; False if the
    page could not be written (the data folder is not there)."""
    try:
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        kept = sorted(folder.glob("*.html"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in kept[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        return False  # a read-only or full data folder: the next rendering inlines again
    return True
