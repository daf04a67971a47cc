"""The local preview server: the issue in a browser exactly as the sample subscriber gets it, live on save.

Every request renders through the send path (render_issue, then the message factory's .eml for the sample
subscriber) when the post or a template changed, so what the page shows is what `send` would send.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import html
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from lxml import etree
from lxml import html as lhtml

from .checks import Check, check_issue
from .config import Settings
from .errors import MailerError

if TYPE_CHECKING:
    from .render import Issue

POLL_MS = 500
# The desktop pane is a little wider than the 600 px email: a desktop reading pane is, and an email's
# small-screen @media rules (max-width: 620px in ours) must not apply there. The phone is an iPhone's 375 px.
DESKTOP = 640
PHONE = 375
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
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

    def __init__(self, target: Path, settings: Settings, *, notify: Callable[[str], None] | None = None):
        self.target = target
        self.settings = settings
        self.notify = notify
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
            if self.notify is not None:
                self.notify(message)
            return Broken(version, path, message)

    def _build(self, path: Path, version: str) -> Rendered:
        from .message import make_factory
        from .post import load_post
        from .render import render_issue

        settings = self.settings
        issue = render_issue(load_post(path), settings)
        factory = make_factory(issue, settings, notify=self.notify)
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
            checks=check_issue(issue, settings),
        )


class PreviewServer(ThreadingHTTPServer):
    """The threaded HTTP server of one preview; `url` is where to point the browser."""

    daemon_threads = True

    def __init__(self, preview: Preview, host: str, port: int) -> None:
        self.preview = preview
        self.check_host = host in LOOPBACK
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        """The address the server answers on."""
        host, port = str(self.server_address[0]), self.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


def make_server(
    target: Path,
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    notify: Callable[[str], None] | None = None,
) -> PreviewServer:
    """A preview server for a post or a folder of posts, bound (port 0: a free one) but not serving yet."""
    if not target.exists():
        raise MailerError(f"{target}: no such file or folder")
    preview = Preview(target, settings, notify=notify)
    try:
        return PreviewServer(preview, host, port)
    except OSError as exc:
        raise MailerError(f"{host}:{port}: cannot listen: {exc.strerror or exc}") from None


class _Handler(BaseHTTPRequestHandler):
    server: PreviewServer
    server_version = "mailer-preview"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Stay quiet: the page polls twice a second."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        """Route one request; any failure becomes a friendly page, never a traceback."""
        try:
            if not self._host_allowed():
                self._send(HTTPStatus.MISDIRECTED_REQUEST, _plain_page("Not this host", "Use 127.0.0.1."))
                return
            self._route(unquote(urlsplit(self.path).path))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            notify = self.server.preview.notify
            if notify is not None:
                notify(f"preview: {self.path}: {type(exc).__name__}: {exc}")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, _plain_page("Something went wrong", str(exc)))

    def _host_allowed(self) -> bool:
        """Refuse other Host names on a loopback server (a web page cannot reach it by DNS rebinding)."""
        if not self.server.check_host:
            return True
        host = self.headers.get("Host")
        if host is None:
            return True
        name = urlsplit(f"//{host}").hostname or ""
        return name in LOOPBACK

    def _route(self, path: str) -> None:
        preview = self.server.preview
        if path == "/preview.js":
            self._send(HTTPStatus.OK, SCRIPT.encode(), "text/javascript; charset=utf-8")
        elif path == "/preview.css":
            self._send(HTTPStatus.OK, STYLE.encode(), "text/css; charset=utf-8")
        elif path == "/__version":
            self._send(HTTPStatus.OK, preview.version().encode(), "text/plain; charset=utf-8")
        elif path == "/":
            if preview.folder:
                self._send(HTTPStatus.OK, index_page(preview).encode())
            else:
                self._redirect(post_url(preview.target.name))
        elif path.startswith("/p/"):
            name, slash, view = path[3:].partition("/")
            if name not in preview.posts():
                self._send(
                    HTTPStatus.NOT_FOUND, _plain_page("No such post", f"{name} is not in {preview.target}")
                )
            elif not slash:
                self._redirect(post_url(name))
            else:
                self._post(name, view)
        else:
            self._send(HTTPStatus.NOT_FOUND, _plain_page("Not found", path))

    def _post(self, name: str, view: str) -> None:
        preview = self.server.preview
        if view == "__version":
            self._send(HTTPStatus.OK, preview.version(name).encode(), "text/plain; charset=utf-8")
            return
        result = preview.render(name)
        if isinstance(result, Broken):
            status = HTTPStatus.OK if view == "" else HTTPStatus.INTERNAL_SERVER_ERROR
            body = (
                post_page(preview, name, result)
                if view == ""
                else _plain_page("Cannot render", result.message)
            )
            self._send(status, body.encode())
            return
        if view == "":
            self._send(HTTPStatus.OK, post_page(preview, name, result).encode())
        elif view == "html":
            self._send(HTTPStatus.OK, result.html.encode(), email_frame=True)
        elif view == "dark":
            self._send(HTTPStatus.OK, dark_view(result.html).encode(), email_frame=True)
        elif view == "gmail":
            self._send(HTTPStatus.OK, gmail_view(result.html).encode(), email_frame=True)
        elif view == "text":
            self._send(HTTPStatus.OK, result.text.encode(), "text/plain; charset=utf-8")
        elif view == "message.eml":
            disposition = f'attachment; filename="{result.issue.issue_id}.eml"'
            self._send(HTTPStatus.OK, result.eml, "message/rfc822", disposition=disposition)
        else:
            self._send(HTTPStatus.NOT_FOUND, _plain_page("Not found", view))

    def _redirect(self, location: str) -> None:
        self.send_response(HTTPStatus.FOUND)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def _send(
        self,
        status: HTTPStatus,
        body: bytes | str,
        content_type: str = "text/html; charset=utf-8",
        *,
        email_frame: bool = False,
        disposition: str = "",
    ) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if email_frame:
            self.send_header("Content-Security-Policy", EMAIL_CSP)
            self.send_header("X-Frame-Options", "SAMEORIGIN")
        else:
            self.send_header("Content-Security-Policy", PAGE_CSP)
            self.send_header("X-Frame-Options", "DENY")
        if disposition:
            self.send_header("Content-Disposition", disposition)
        self.end_headers()
        self.wfile.write(body)


def post_url(name: str, view: str = "") -> str:
    """The address of a post's preview page (or of one of its views)."""
    return f"/p/{quote(name, safe='')}/{view}"


_e = html.escape


def _shell(title: str, body: str, *, version: str, version_url: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><link rel="stylesheet" href="/preview.css"></head>\n'
        f'<body data-version="{_e(version)}" data-version-url="{_e(version_url)}">\n{body}\n'
        '<script src="/preview.js"></script></body></html>\n'
    )


def _plain_page(title: str, message: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{_e(title)}</title><link rel="stylesheet" href="/preview.css"></head>'
        f'<body class="plain"><h1>{_e(title)}</h1>'
        f'<pre class="error-message">{_e(message)}</pre></body></html>\n'
    )


def index_page(preview: Preview) -> str:
    """The folder's posts, newest first, each linking to its preview."""
    version = preview.version()
    entries = list_posts(preview.target)
    rows = []
    for entry in entries:
        note = f' <span class="post-error">{_e(entry.error)}</span>' if entry.error else ""
        rows.append(
            f'<li><a href="{_e(post_url(entry.name))}">{_e(entry.title)}</a>'
            f' <span class="date">{_e(entry.date)}</span>'
            f' <span class="file">{_e(entry.name)}</span>{note}</li>'
        )
    listing = (
        f'<ol class="posts">{"".join(rows)}</ol>' if rows else '<p class="empty">No *.md posts here yet.</p>'
    )
    body = (
        f'<header class="bar"><div class="who"><h1 id="subject">Posts in {_e(str(preview.target))}</h1>'
        f'<p class="meta">{len(entries)} post(s), newest first · '
        '<span id="live">live</span></p></div></header>'
        f'<main class="index">{listing}</main>'
    )
    return _shell(f"Preview: {preview.target}", body, version=version, version_url="/__version")


def _tabs() -> str:
    buttons = "".join(
        f'<button type="button" role="tab" data-view="{key}" id="tab-{key}">{_e(label)}</button>'
        for key, label in VIEWS
    )
    return f'<nav class="tabs" role="tablist">{buttons}</nav>'


def _frame(name: str, view: str, frame_id: str, width: int, caption: str, *, lazy: bool) -> str:
    loading = ' loading="lazy"' if lazy else ""
    return (
        f'<figure class="device w{width}"><figcaption>{_e(caption)}</figcaption>'
        f'<iframe id="{frame_id}" src="{_e(post_url(name, view))}" width="{width}" title="{_e(caption)}"'
        f' sandbox="allow-popups allow-popups-to-escape-sandbox"{loading}></iframe></figure>'
    )


def _checks_panel(checks: list[Check]) -> str:
    order = {"error": 0, "warning": 1, "ok": 2}
    items = "".join(
        f'<li class="check {c.level}" data-code="{_e(c.code)}"><span class="level">{c.level}</span>'
        f' <span class="code">{_e(c.code)}</span> <span class="message">{_e(c.message)}</span></li>'
        for c in sorted(checks, key=lambda c: order[c.level])
    )
    return f'<aside id="checks" class="checks"><h2>Pre-send checks</h2><ul>{items}</ul></aside>'


def _badge(checks: list[Check]) -> str:
    errors = sum(c.level == "error" for c in checks)
    warnings = sum(c.level == "warning" for c in checks)
    level = "error" if errors else "warning" if warnings else "ok"
    text = f"{errors} error(s), {warnings} warning(s)" if errors or warnings else "all checks pass"
    return f'<a class="badge {level}" id="badge" href="#checks">{text}</a>'


def post_page(preview: Preview, name: str, result: Rendered | Broken) -> str:
    """A post's preview page: the views of the rendered message, or the error that stops it rendering."""
    back = '<a class="back" href="/">&larr; all posts</a>' if preview.folder else ""
    version_url = post_url(name, "__version")
    if isinstance(result, Broken):
        where = _WHERE.match(result.message)
        rows = ""
        if where:
            rows = (
                f'<dl class="where"><dt>File</dt><dd id="error-file">{_e(where["file"])}</dd>'
                f'<dt>Line</dt><dd id="error-line">{_e(where["line"] or "-")}</dd>'
                f'<dt>Problem</dt><dd id="error-what">{_e(where["what"])}</dd></dl>'
            )
        body = (
            f'<header class="bar"><div class="who">{back}<h1 id="subject">{_e(name)}</h1>'
            f'<p class="meta"><span id="live">live</span></p></div></header>'
            f'<main><section class="broken" id="error"><h2>This post cannot be rendered</h2>{rows}'
            f'<pre class="error-message" id="error-message">{_e(result.message)}</pre>'
            "<p>Fix the file and save it: this page comes back by itself.</p></section></main>"
        )
        return _shell(f"Error: {name}", body, version=result.version, version_url=version_url)
    issue, settings = result.issue, preview.settings
    header = dict(result.headers)
    headers = "".join(
        f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>'
        for k, v in [*result.headers, ("(preheader)", issue.preheader)]
    )
    size = f"{len(result.eml) / 1024:.0f} KB message, {issue.html_size() / 1024:.0f} KB HTML"
    desktop = _frame(name, "html", "frame-desktop", DESKTOP, "Desktop · the 600 px email", lazy=False)
    phone = _frame(name, "html", "frame-phone", PHONE, f"Phone · {PHONE} px", lazy=False)
    gmail_caption = "As Gmail shows it: no <style>, no classes"
    gmail = _frame(name, "gmail", "frame-gmail", DESKTOP, gmail_caption, lazy=True)
    panes = (
        f'<div class="pane row" data-for="both desktop phone">'
        f'<div data-for="both desktop">{desktop}</div><div data-for="both phone">{phone}</div>'
        "</div>"
        f'<div class="pane row dark" data-for="dark">'
        f"{_frame(name, 'dark', 'frame-dark', DESKTOP, 'Dark mode · desktop', lazy=True)}"
        f"{_frame(name, 'dark', 'frame-dark-phone', PHONE, 'Dark mode · phone', lazy=True)}</div>"
        f'<div class="pane" data-for="text"><figure class="device text"><figcaption>Plain-text part'
        f' · <a href="{_e(post_url(name, "text"))}">raw</a></figcaption>'
        f'<pre id="text">{_e(result.text)}</pre></figure></div>'
        f'<div class="pane" data-for="gmail">'
        f"{gmail}</div>"
        f'<div class="pane" data-for="headers">'
        f'<table id="headers" class="headers"><tbody>{headers}</tbody></table>'
        f'<h3>Raw header block</h3><pre id="raw-headers">{_e(result.raw_headers)}</pre></div>'
    )
    body = (
        f'<header class="bar"><div class="who">{back}<h1 id="subject">{_e(issue.subject)}</h1>'
        f'<p class="meta">From {_e(header.get("From", settings.from_email))} · to'
        f' {_e(header.get("To", settings.sample_email))} · {size} · <span id="live">live</span></p>'
        f'<p class="meta preheader">Inbox preview: '
        f'<span id="preheader">{_e(issue.preheader)}</span></p></div>'
        f'<div class="actions">{_badge(result.checks)}'
        f' <a class="download" id="download" href="{_e(post_url(name, "message.eml"))}" download>'
        "Download .eml</a>"
        f"</div>{_tabs()}</header>"
        f'<main><section class="views">{panes}</section>{_checks_panel(result.checks)}</main>'
    )
    return _shell(f"Preview: {issue.subject}", body, version=result.version, version_url=version_url)


SCRIPT = f"""(() => {{
  const body = document.body;
  const tabs = Array.from(document.querySelectorAll('[data-view]'));
  const panes = Array.from(document.querySelectorAll('[data-for]'));
  function show(view) {{
    if (!tabs.length) return;
    if (!tabs.some((t) => t.dataset.view === view)) view = tabs[0].dataset.view;
    body.dataset.view = view;
    for (const pane of panes) pane.hidden = !pane.dataset.for.split(' ').includes(view);
    for (const tab of tabs) tab.setAttribute('aria-selected', String(tab.dataset.view === view));
  }}
  for (const tab of tabs) {{
    tab.addEventListener('click', () => {{
      history.replaceState(null, '', '#' + tab.dataset.view);
      show(tab.dataset.view);
    }});
  }}
  show(location.hash.slice(1));
  const url = body.dataset.versionUrl;
  const version = body.dataset.version;
  const live = document.getElementById('live');
  if (!url) return;
  async function poll() {{
    try {{
      const response = await fetch(url, {{cache: 'no-store'}});
      if (response.ok) {{
        const now = (await response.text()).trim();
        if (now !== version) {{
          if (live) live.textContent = 'reloading';
          location.reload();
          return;
        }}
        if (live) {{ live.textContent = 'live'; live.className = ''; }}
      }}
    }} catch (err) {{
      if (live) {{ live.textContent = 'preview server stopped'; live.className = 'stopped'; }}
    }}
    setTimeout(poll, {POLL_MS});
  }}
  setTimeout(poll, {POLL_MS});
}})();
"""

STYLE = """
:root { color-scheme: light; --ink: #1f2328; --muted: #6b7280; --line: #d0d7de; --bg: #eef0f3; }
* { box-sizing: border-box; }
body { margin: 0;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans CJK SC", sans-serif;
  color: var(--ink); background: var(--bg); }
.bar { position: sticky; top: 0; z-index: 1; display: flex; flex-wrap: wrap; align-items: center;
  gap: 8px 24px;
  padding: 10px 20px; background: #fff; border-bottom: 1px solid var(--line); }
.who { flex: 1 1 420px; min-width: 0; }
.who h1 { margin: 0; font-size: 17px; line-height: 24px; overflow-wrap: anywhere; }
.meta { margin: 2px 0 0; color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
.back { font-size: 12px; color: var(--muted); }
.actions { display: flex; gap: 12px; align-items: center; }
.download, .badge { padding: 5px 10px; border-radius: 6px; text-decoration: none; font-weight: 600;
  font-size: 13px; }
.download { background: #1f6feb; color: #fff; }
.badge.ok { background: #dafbe1; color: #116329; }
.badge.warning { background: #fff8c5; color: #7d4e00; }
.badge.error { background: #ffebe9; color: #a40e26; }
.tabs { flex-basis: 100%; display: flex; flex-wrap: wrap; gap: 4px; }
.tabs button { font: inherit; font-size: 13px; padding: 5px 11px; border: 1px solid var(--line);
  border-radius: 6px;
  background: #f6f8fa; color: var(--ink); cursor: pointer; }
.tabs button[aria-selected="true"] { background: var(--ink); color: #fff; border-color: var(--ink); }
main { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 16px; padding: 16px 20px; }
.views { flex: 1 1 660px; min-width: 0; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
[hidden] { display: none !important; }
figure.device { margin: 0; }
figcaption { font-size: 12px; color: var(--muted); margin: 0 0 6px; }
iframe { box-sizing: content-box; display: block; border: 1px solid var(--line); border-radius: 10px;
  background: #fff; height: calc(100vh - 190px); min-height: 520px; }
.w375 iframe { border-width: 10px; border-color: #1f2328; border-radius: 28px; max-height: 760px; }
.dark iframe { background: #111318; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; }
#text { width: 640px; max-width: 100%; margin: 0; padding: 16px 20px; background: #fff;
  border: 1px solid var(--line);
  border-radius: 10px;
  font: 13px/1.6 ui-monospace, "DejaVu Sans Mono", "Noto Sans Mono CJK SC", monospace; }
.headers { border-collapse: collapse; background: #fff; max-width: 900px; }
.headers th, .headers td { text-align: left; vertical-align: top; padding: 6px 10px;
  border-bottom: 1px solid #eee;
  overflow-wrap: anywhere; }
.headers th { white-space: nowrap; color: var(--muted); font-weight: 600; }
#raw-headers { background: #fff; padding: 12px; border: 1px solid var(--line); border-radius: 8px;
  max-width: 900px;
  font: 12px/1.5 ui-monospace, monospace; }
.checks { flex: 0 1 300px; background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 12px 16px; }
.checks h2 { font-size: 14px; margin: 0 0 8px; }
.checks ul { list-style: none; margin: 0; padding: 0; }
.check { padding: 6px 0; border-top: 1px solid #eee; font-size: 13px; }
.check .level { display: inline-block; min-width: 58px; font-weight: 700; text-transform: uppercase;
  font-size: 11px; }
.check.error .level { color: #cf222e; }
.check.warning .level { color: #9a6700; }
.check.ok .level { color: #1a7f37; }
.check .code { color: var(--muted); font-size: 11px; }
.check .message { display: block; }
.broken { max-width: 860px; background: #fff; border: 2px solid #cf222e; border-radius: 10px;
  padding: 16px 22px; }
.broken h2 { margin-top: 0; color: #a40e26; }
.where { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; }
.where dt { font-weight: 600; color: var(--muted); }
.where dd { margin: 0; overflow-wrap: anywhere; }
.error-message { background: #fff5f5; padding: 10px 12px; border-radius: 6px; }
.posts { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 12px 12px 40px;
  max-width: 900px; flex: 1; }
.posts li { padding: 6px 0; }
.posts .date, .posts .file { color: var(--muted); font-size: 12px; margin-left: 8px; }
.post-error { display: block; color: #a40e26; font-size: 12px; }
#live.stopped { color: #cf222e; font-weight: 600; }
body.plain { padding: 24px; }
"""
