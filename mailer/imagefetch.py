"""The natural size of images the post gives none for: from the cache in the data folder, else the image.

Each image is fetched once (then cached by URL): only http(s), at most a few redirects, only its first bytes
(a Range request, and the reading stops the moment the header says the size), all of an issue's images in
parallel within one time budget, so a server that hangs or trickles delays a render by seconds, not forever.
With `offline` nothing is fetched: cached sizes are used, the other images stay of unknown size.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit

from . import __version__
from .imageheader import MAX_SIDE, NotAnImage, Size, read_size
from .private import make_folder, write_file

if TYPE_CHECKING:
    from http.client import HTTPConnection, HTTPResponse

BUDGET = 5.0  # seconds for all the fetches of one issue
CAP = 512 * 1024  # bytes read from one image at most: a JPEG's size can come after a large EXIF block
MAX_REDIRECTS = 5
WORKERS = 6
FAILURE_TTL = 3600  # seconds a definite failure (HTTP 404, not an image) is remembered, not refetched
CACHE_NAME = "image-sizes.json"
HEADERS = {
    "Range": f"bytes=0-{CAP - 1}",
    "Accept": "image/*",
    "Accept-Encoding": "identity",
    "User-Agent": f"mailer/{__version__} (reads image sizes)",
}
TIMED_OUT = "timed out: the time allowed for image sizes ran out"
_SAFE = "/%:@!$&'()*+,;=-._~"  # what stays as it is in a path or query (a %XX escape included)
OFFLINE = "not in the image-size cache, and offline: nothing is fetched"


@dataclass
class Lookup:
    """What is known of some images' sizes, and why the others are unknown."""

    sizes: dict[str, Size] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)  # URL -> why
    cache_problem: str = ""  # why the cache could not be saved, if it could not


class Failed(Exception):
    """No size from this URL; `definite` when asking again soon would give the same answer."""

    def __init__(self, reason: str, definite: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.definite = definite


def cache_path(data_dir: Path) -> Path:
    """The cache of image sizes, keyed by URL: one JSON file in the site's data folder."""
    return Path(data_dir) / CACHE_NAME


def look_up(urls: Iterable[str], data_dir: Path, *, offline: bool, budget: float = BUDGET) -> Lookup:
    """The sizes of these images: cached, else fetched (unless offline) within `budget` seconds in all."""
    path = cache_path(data_dir)
    sizes, failures = _read(path)
    now = time.time()
    out = Lookup()
    todo = []
    for url in dict.fromkeys(urls):
        if url in sizes:
            out.sizes[url] = sizes[url]
        elif url in failures and now - failures[url][1] < FAILURE_TTL:
            out.unknown[url] = failures[url][0]
        elif urlsplit(url).scheme.lower() not in ("http", "https"):
            out.unknown[url] = "not an http(s) URL (a relative one needs base_url)"
        elif offline:
            out.unknown[url] = OFFLINE
        else:
            todo.append(url)
    if not todo:
        return out
    fetched = _fetch_all(todo, time.monotonic() + budget)
    new_sizes, new_failures = {}, {}
    for url in todo:
        result = fetched.get(url) or Failed(TIMED_OUT, False)
        if isinstance(result, Size):
            out.sizes[url] = new_sizes[url] = result
        else:
            out.unknown[url] = result.reason
            if result.definite:
                new_failures[url] = (result.reason, now)
    if new_sizes or new_failures:
        out.cache_problem = _save(path, new_sizes, new_failures)
    return out


def _read(path: Path) -> tuple[dict[str, Size], dict[str, tuple[str, float]]]:
    """The cache's entries; a missing, unreadable or damaged cache is an empty one (it is only a cache)."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}, {}
    sizes: dict[str, Size] = {}
    failures: dict[str, tuple[str, float]] = {}
    if not isinstance(raw, dict):
        return sizes, failures
    for url, value in (raw.get("sizes") or {}).items():
        if isinstance(value, list) and len(value) == 2 and all(_side(v) for v in value):
            sizes[url] = Size(*value)
    for url, value in (raw.get("failures") or {}).items():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            if isinstance(value[1], int | float):
                failures[url] = (value[0], float(value[1]))
    return sizes, failures


def _side(value: object) -> bool:
    return type(value) is int and 0 < value <= MAX_SIDE


def _save(path: Path, sizes: dict[str, Size], failures: dict[str, tuple[str, float]]) -> str:
    """Merge new entries into the cache, atomically (another mailer may be writing too); "" or why not."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        make_folder(path.parent)
        old_sizes, old_failures = _read(path)
        old_sizes.update(sizes)
        old_failures.update(failures)
        now = time.time()
        data = {
            "sizes": {url: [s.width, s.height] for url, s in sorted(old_sizes.items())},
            "failures": {
                url: [why, at]
                for url, (why, at) in sorted(old_failures.items())
                if url not in old_sizes and now - at < FAILURE_TTL
            },
        }
        write_file(tmp, json.dumps(data, ensure_ascii=False, indent=0).encode("utf-8"))
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        return f"{path}: cannot save image sizes ({exc.strerror or exc}); they are fetched again next time"
    return ""


def _fetch_all(urls: list[str], deadline: float) -> dict[str, Size | Failed]:
    """Fetch in a few daemon threads; what is not done by the deadline is left to finish unheard.

    Daemon threads, not an executor: a name lookup cannot be interrupted, and must not hold up the exit.
    """
    results: dict[str, Size | Failed] = {}
    queue = list(reversed(urls))
    done = threading.Condition()

    def work() -> None:
        while True:
            with done:
                if not queue:
                    return
                url = queue.pop()
            result: Size | Failed
            try:
                result = fetch_size(url, deadline)
            except Failed as exc:
                result = exc
            with done:
                results[url] = result
                done.notify_all()

    for _ in range(min(WORKERS, len(urls))):
        threading.Thread(target=work, name="image-size", daemon=True).start()
    with done:
        done.wait_for(lambda: len(results) == len(urls), timeout=max(0.0, deadline - time.monotonic()) + 1)
        return dict(results)


def fetch_size(url: str, deadline: float) -> Size:
    """The size read from the image's first bytes, following http(s) redirects; Failed says why not."""
    seen = {url}
    for _ in range(MAX_REDIRECTS + 1):
        location, size = _get(url, deadline)
        if size is not None:
            return size
        target = urljoin(url, location)
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            raise Failed(f"redirected to a {scheme or 'schemeless'} URL, not http(s)", True)
        if target in seen:
            raise Failed("a redirect loop", True)
        seen.add(target)
        url = target
    raise Failed(f"more than {MAX_REDIRECTS} redirects", True)


def _get(url: str, deadline: float) -> tuple[str, Size | None]:
    """One GET: (Location, None) for a redirect, ("", size) for an image.

    The HTTP client and TLS are imported here: a rendering whose sizes are all cached (any send after the
    first, each worker of `send --workers`) does not need them."""
    import ssl
    from http.client import HTTPConnection, HTTPException, HTTPSConnection

    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").encode("idna").decode("ascii"), parts.port
    except (ValueError, UnicodeError):
        raise Failed("not a valid URL", True) from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise Failed("not an http(s) URL", True)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Failed(TIMED_OUT, False)
    target = quote(parts.path or "/", safe=_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE + "?")
    conn: HTTPConnection
    if parts.scheme.lower() == "https":
        conn = HTTPSConnection(host, port, timeout=remaining, context=ssl.create_default_context())
    else:
        conn = HTTPConnection(host, port, timeout=remaining)
    # the socket timeout bounds each read; this bounds them all (a server trickling one byte at a time)
    watchdog = threading.Timer(remaining, _cut, (conn,))
    watchdog.daemon = True
    watchdog.start()
    response: HTTPResponse | None = None
    try:
        conn.request("GET", target, headers=HEADERS)
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            location = response.getheader("Location")
            if not location:
                raise Failed(f"HTTP {response.status} without a Location", True)
            return location, None
        if response.status not in (200, 206):
            raise Failed(f"HTTP {response.status} {response.reason}".strip(), response.status < 500)
        return "", _read_header(response, deadline)
    except (OSError, HTTPException) as exc:
        if time.monotonic() >= deadline:
            raise Failed(TIMED_OUT, False) from None
        raise Failed(f"cannot fetch it: {exc or type(exc).__name__}", False) from None
    finally:
        watchdog.cancel()
        if response is not None:
            response.close()  # it holds the socket open too
        conn.close()


def _read_header(response: HTTPResponse, deadline: float) -> Size:
    """Read only as far as the size: checked at 256 bytes, then each time the bytes read have doubled."""
    data = bytearray()
    check_at = 256
    while True:
        chunk = response.read1(min(65_536, CAP - len(data)))
        if not chunk and time.monotonic() >= deadline:  # the watchdog cut the connection
            raise Failed(TIMED_OUT, False)
        data += chunk
        if not chunk or len(data) >= check_at or len(data) >= CAP:
            try:
                size = read_size(bytes(data))
            except NotAnImage as exc:
                raise Failed(str(exc), True) from None
            if size is not None:
                return size
            if not chunk:
                raise Failed(f"it ended after {len(data)} bytes, before its size", True)
            if len(data) >= CAP:
                raise Failed(f"no size in its first {CAP // 1024} KB", True)
            check_at = len(data) * 2


def _cut(conn: HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
