"""The local preview server: the issue in a browser exactly as the sample subscriber gets it, live on save.

Every request renders through the send path (render_issue, then the message factory's .eml for the sample
subscriber) when the post or a template changed, so what the page shows is what `send` would send.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from lxml import etree
from lxml import html as lhtml

from .checks import Check, check_issue
from .config import Settings
from .console import SILENT, Console, Voice
from .errors import MailerError
from .wsgi import HTML, TEXT, listen, render_page, request_path, respond, security_headers, static

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .render import Issue

# The desktop pane is a little wider than the 600 px email: a desktop reading pane is, and an email's
# small-screen @media rules (max-width: 620px in ours) must not apply there. The phone is an iPhone's 375 px.
DESKTOP = 640
PHONE = 375
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# The page loads its own script and style, polls its own __version and frames its own views; nothing else.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-src 'self';"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
EMAIL_CSP = (
    "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
VIEWS = (
    ("both", "Desktop + phone"),
    ("desktop", "Desktop"),
    ("phone", "Phone"),
    ("dark", "Dark mode"),
    ("text", "Plain text"),
    ("gmail", "As Gmail shows it"),
    ("headers", "Headers"),
)
_DARK = re.compile(r"\(\s*prefers-color-scheme\s*:\s*dark\s*\)", re.I)
_LIGHT = re.compile(r"\(\s*prefers-color-scheme\s*:\s*light\s*\)", re.I)
_WHERE = re.compile(r"^(?P<file>.+?)(?::(?P<line>\d+))?: (?P<what>.+)$", re.S)


@dataclass(frozen=True)
class Rendered:
    """One post rendered for the sample subscriber, with what every view of the page needs."""

    version: str
    path: Path
    issue: Issue
    eml: bytes
    html: str
    text: str
    headers: list[tuple[str, str]]
    raw_headers: str
    checks: list[Check]


@dataclass(frozen=True)
class Broken:
    """A post that cannot be rendered: the one-line error the page shows instead."""

    version: str
    path: Path
    message: str


@dataclass(frozen=True)
class PostEntry:
    """One line of the folder index."""

    name: str
    path: Path
    title: str
    date: str
    error: str


def gmail_view(page: str) -> str:
    """The HTML as Gmail shows it: no <style> elements and no class attributes, only inlined styles left."""
    root = lhtml.document_fromstring(page)
    etree.strip_elements(root, "style", with_tail=False)
    for el in root.iter():
        if isinstance(el.tag, str):
            el.attrib.pop("class", None)
    return "<!DOCTYPE html>\n" + lhtml.tostring(root, encoding="unicode")


def dark_view(page: str) -> str:
    """The HTML as a dark-mode client applies it: the prefers-color-scheme: dark rules in force."""
    root = lhtml.document_fromstring(page)
    for style in root.iter("style"):
        css = _DARK.sub("(min-width: 0px)", style.text or "")
        style.text = _LIGHT.sub("(max-width: 0px)", css)
    return "<!DOCTYPE html>\n" + lhtml.tostring(root, encoding="unicode")


def files_version(paths: list[Path]) -> str:
    """A short value that changes when any of the files (or folders' files) changes, appears or goes."""
    stamps: list[str] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                st = file.stat()
            except OSError:
                stamps.append(f"{file}:missing")
                continue
            stamps.append(f"{file}:{st.st_mtime_ns}:{st.st_size}")
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16]


def list_posts(folder: Path) -> list[PostEntry]:
    """The folder's *.md posts: unreadable ones first, then newest first (front-matter date, else name)."""
    from .post import load_post

    entries = []
    for path in sorted(folder.glob("*.md")):
        try:
            post = load_post(path)
        except MailerError as exc:
            entries.append(PostEntry(path.name, path, path.name, "", str(exc)))
            continue
        date = post.date.isoformat() if post.date else ""
        entries.append(PostEntry(path.name, path, post.title, date, ""))
    entries.sort(key=lambda e: (bool(e.error), e.date or e.path.stem, e.name), reverse=True)
    return entries


class Preview:
    """What the server shows: one post or a folder of them, rendered on request and kept until they change."""

    def __init__(self, target: Path, settings: Settings, *, console: Voice = SILENT):
        self.target = target
        self.settings = settings
        self.console = console  # a key made on first render, a post that fails on a bug
        self.folder = target.is_dir()
        self._lock = threading.Lock()
        self._cache: dict[str, Rendered | Broken] = {}

    def posts(self) -> dict[str, Path]:
        """The posts this preview may show, by file name (nothing outside the target is reachable)."""
        if self.folder:
            return {p.name: p for p in self.target.glob("*.md") if p.is_file()}
        return {self.target.name: self.target}

    def version(self, name: str | None = None) -> str:
        """The live-reload value: the post and the templates (or, for the index, the folder's posts)."""
        if name is None:
            if not self.folder:
                return self.version(self.target.name)
            return files_version(sorted(self.target.glob("*.md")))  # not the images beside the posts
        return files_version(
            [self.target / name if self.folder else self.target, self.settings.templates_dir]
        )

    def render(self, name: str) -> Rendered | Broken:
        """The post rendered as it would be sent, re-rendered only when it or a template changed."""
        path = self.target / name if self.folder else self.target
        with self._lock:
            version = self.version(name)
            cached = self._cache.get(name)
            if cached is not None and cached.version == version:
                return cached
            result = self._render(path, version)
            self._cache[name] = result
            return result

    def _render(self, path: Path, version: str) -> Rendered | Broken:
        try:
            return self._build(path, version)
        except MailerError as exc:
            return Broken(version, path, str(exc))
        except OSError as exc:
            return Broken(version, path, f"{exc.filename or path}: {exc.strerror or exc}")
        except Exception as exc:  # a bug must not stop the preview; the page says what happened
            message = f"{path}: cannot render ({type(exc).__name__}: {exc})"
            self.console.error(message)
            return Broken(version, path, message)

    def _build(self, path: Path, version: str) -> Rendered:
        from .keymarks import copy_keyring
        from .message import make_factory
        from .post import load_post
        from .render import render_issue

        settings = self.settings
        issue = render_issue(load_post(path), settings)
        heard = _KeyWarnings(self.console)
        keyring = copy_keyring(settings, heard)  # the links as a send would sign them
        factory = make_factory(issue, settings, console=self.console, keyring=keyring)
        eml = factory.build(settings.sample_email, settings.sample_name)  # the path of `render --eml`
        message = email.message_from_bytes(eml, policy=email.policy.default)
        parts = {}
        for kind in ("html", "plain"):
            part = message.get_body((kind,))
            parts[kind] = part.get_content().replace("\r\n", "\n") if part is not None else ""
        end = eml.find(b"\r\n\r\n")
        return Rendered(
            version=version,
            path=path,
            issue=issue,
            eml=eml,
            html=parts["html"],
            text=parts["plain"],
            headers=[(k, str(v)) for k, v in message.items()],
            raw_headers=eml[: end if end >= 0 else len(eml)].decode("utf-8", "replace"),
            checks=[*check_issue(issue, settings), *(Check("warning", "signing-key", w) for w in heard)],
        )


class _KeyWarnings(list[str]):
    """The console's voice that also keeps its warnings: what the terminal says of the copy's signing key
    (a throwaway key, or one the record does not hold: links that would be refused) the page says too."""

    def __init__(self, console: Voice) -> None:
        super().__init__()
        self.console = console

    def note(self, line: str) -> None:
        self.console.note(line)

    def warn(self, line: str) -> None:
        self.append(line)
        self.console.warn(line)

    def error(self, line: str) -> None:
        self.console.error(line)


# status, body, content type and the headers beyond the shared ones
Answer = tuple[int, bytes, str, list[tuple[str, str]]]


class PreviewApp:
    """The WSGI application of one preview: the pages of mailer/pages, the views of the rendered message."""

    def __init__(self, preview: Preview, host: str) -> None:
        self.preview = preview
        self.check_host = host in LOOPBACK

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Route one request; any failure becomes a friendly page, never a traceback."""
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method not in ("GET", "HEAD"):
                status, body, ctype, extra = _error(405, "Method not allowed", method)
                extra = [("Allow", "GET, HEAD")]
            elif not self._host_allowed(environ.get("HTTP_HOST")):
                status, body, ctype, extra = _error(421, "Not this host", "Use 127.0.0.1.")
            else:
                status, body, ctype, extra = self.route(request_path(environ))
        except Exception as exc:
            self.preview.console.error(f"preview: {environ.get('PATH_INFO')}: {type(exc).__name__}: {exc}")
            status, body, ctype, extra = _error(500, "Something went wrong", str(exc))
        csp = next((value for name, value in extra if name == "Content-Security-Policy"), PAGE_CSP)
        headers = security_headers(csp, "SAMEORIGIN" if csp == EMAIL_CSP else "DENY")  # views are framed
        headers += [h for h in extra if h[0] != "Content-Security-Policy"]
        return respond(environ, start_response, status, body, ctype, headers)

    def _host_allowed(self, host: str | None) -> bool:
        """Refuse other Host names on a loopback server (a web page cannot reach it by DNS rebinding)."""
        if not self.check_host or host is None:
            return True
        return (urlsplit(f"//{host}").hostname or "") in LOOPBACK

    def route(self, path: str) -> Answer:
        """Status, body, content type and extra headers of the answer to a GET of path."""
        preview = self.preview
        if path in ("/preview.js", "/preview.css"):
            kind = "text/javascript" if path.endswith(".js") else "text/css"
            return 200, static(path[1:]), f"{kind}; charset=utf-8", []
        if path == "/__version":
            return 200, preview.version().encode(), TEXT, []
        if path == "/":
            if preview.folder:
                return 200, index_page(preview), HTML, []
            return _redirect(post_url(preview.target.name))
        if path.startswith("/p/"):
            name, slash, view = path[3:].partition("/")
            if name not in preview.posts():
                return _error(404, "No such post", f"{name} is not in {preview.target}")
            if not slash:
                return _redirect(post_url(name))
            return self._post(name, view)
        return _error(404, "Not found", path)

    def _post(self, name: str, view: str) -> Answer:
        preview = self.preview
        if view == "__version":
            return 200, preview.version(name).encode(), TEXT, []
        result = preview.render(name)
        if view == "":
            return 200, post_page(preview, name, result), HTML, []
        if isinstance(result, Broken):
            return _error(500, "Cannot render", result.message)
        frame = [("Content-Security-Policy", EMAIL_CSP)]
        if view == "html":
            return 200, result.html.encode(), HTML, frame
        if view == "dark":
            return 200, dark_view(result.html).encode(), HTML, frame
        if view == "gmail":
            return 200, gmail_view(result.html).encode(), HTML, frame
        if view == "text":
            return 200, result.text.encode(), TEXT, []
        if view == "message.eml":
            disposition = f'attachment; filename="{result.issue.issue_id}.eml"'
            return 200, result.eml, "message/rfc822", [("Content-Disposition", disposition)]
        return _error(404, "Not found", view)


def _error(status: int, title: str, message: str) -> Answer:
    return status, render_page("preview-error.html", title=title, message=message), HTML, []


def _redirect(location: str) -> Answer:
    return 302, b"", HTML, [("Location", location)]


def make_server(
    target: Path,
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    console: Voice = SILENT,
) -> Any:
    """A waitress server for a post or a folder of posts, bound (port 0: any free one), not serving yet."""
    if not target.exists():
        raise MailerError(f"{target}: no such file or folder")
    app = PreviewApp(Preview(target, settings, console=console), host)
    # the page, its frames and its reload poll; local only, so waitress's own limits are enough
    return listen(app, host, port, threads=8, ident="mailer-preview")


def preview_until_stopped(
    target: Path, settings: Settings, host: str, port: int, console: Console, *, open_browser: bool
) -> None:
    """`mailer preview`: serve the preview, open it in a browser (unless told not to), serve until Ctrl-C."""
    import webbrowser

    from .wsgi import url

    server = make_server(target, settings, host=host, port=port, console=console)
    address = url(server)
    console.result(f"Previewing {target} at {address}")
    if host not in LOOPBACK:
        console.warn(f"listening on {host}: anyone who can reach it can read the post")
    console.result("Press Ctrl-C to stop.")
    if open_browser:
        webbrowser.open(address)
    try:
        server.run()  # returns on Ctrl-C, after stopping the worker threads
    finally:
        server.close()
    console.result("Stopped.")


def post_url(name: str, view: str = "") -> str:
    """The address of a post's preview page (or of one of its views)."""
    return f"/p/{quote(name, safe='')}/{view}"


def index_page(preview: Preview) -> bytes:
    """The folder's posts, newest first, each linking to its preview."""
    return render_page(
        "preview-index.html",
        title=f"Preview: {preview.target}",
        heading=f"Posts in {preview.target}",
        version=preview.version(),
        version_url="/__version",
        entries=list_posts(preview.target),
        post_url=post_url,
    )


def _badge(checks: list[Check]) -> tuple[str, str]:
    errors = sum(c.level == "error" for c in checks)
    warnings = sum(c.level == "warning" for c in checks)
    level = "error" if errors else "warning" if warnings else "ok"
    text = f"{errors} error(s), {warnings} warning(s)" if errors or warnings else "all checks pass"
    return level, text


def post_page(preview: Preview, name: str, result: Rendered | Broken) -> bytes:
    """A post's preview page: the views of the rendered message, or the error that stops it rendering."""
    common = {"back": preview.folder, "version": result.version, "version_url": post_url(name, "__version")}
    if isinstance(result, Broken):
        return render_page(
            "preview-broken.html",
            title=f"Error: {name}",
            heading=name,
            message=result.message,
            where=_WHERE.match(result.message),
            **common,
        )
    issue, settings = result.issue, preview.settings
    header = dict(result.headers)
    order = {"error": 0, "warning": 1, "ok": 2}
    level, text = _badge(result.checks)
    return render_page(
        "preview-post.html",
        title=f"Preview: {issue.subject}",
        heading=issue.subject,
        name=name,
        issue=issue,
        sender=header.get("From", settings.from_email),
        recipient=header.get("To", settings.sample_email),
        size=f"{len(result.eml) / 1024:.0f} KB message, {issue.html_size() / 1024:.0f} KB HTML",
        badge_level=level,
        badge_text=text,
        views=VIEWS,
        desktop=DESKTOP,
        phone=PHONE,
        text=result.text,
        headers=[*result.headers, ("(preheader)", issue.preheader)],
        raw_headers=result.raw_headers,
        checks=sorted(result.checks, key=lambda c: order[c.level]),
        post_url=post_url,
        **common,
    )
