"""What the two web apps (`mailer serve`, `mailer preview`) share.

Their jinja2 pages and static files shipped in the package, one set of security headers, one way of answering
and one of serving on waitress.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable
from http import HTTPStatus
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from .errors import MailerError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from jinja2 import Environment

HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
# RFC 9110's name for 413; http.HTTPStatus has it only from Python 3.13
_REASONS = {413: "Content Too Large"}


def security_headers(csp: str, frame_options: str = "DENY") -> list[tuple[str, str]]:
    """The headers every answer of both apps carries; only the Content-Security-Policy differs by page."""
    return [
        ("Content-Security-Policy", csp),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", frame_options),
        ("Cache-Control", "no-store"),
    ]


def _escaped(value: Any) -> Any:
    """Text as html.escape writes it (&quot; and &#x27;, as the pages always did); markup is left alone."""
    from markupsafe import Markup

    if isinstance(value, str) and not isinstance(value, Markup):
        return Markup(html.escape(value, quote=True))
    return value


@functools.cache
def _environment() -> Environment:
    from jinja2 import Environment, PackageLoader

    return Environment(
        loader=PackageLoader("mailer", "pages"),
        autoescape=True,  # and whatever finalize does not escape, autoescape does
        finalize=_escaped,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(template: str, **context: Any) -> bytes:
    """A page of mailer/pages as UTF-8; every value is escaped unless marked safe."""
    return _environment().get_template(template).render(**context).encode()


@functools.cache
def static(name: str) -> bytes:
    """A file of mailer/static (the apps' CSS and JavaScript), read once."""
    return files("mailer").joinpath("static", name).read_bytes()


def respond(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    status: int,
    body: bytes,
    content_type: str,
    headers: Iterable[tuple[str, str]],
) -> list[bytes]:
    """Start the response with its length and headers; a HEAD gets the headers only."""
    reason = _REASONS.get(status) or HTTPStatus(status).phrase
    head = [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers]
    start_response(f"{status} {reason}", head)
    return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def request_path(environ: WSGIEnvironment) -> str:
    """The decoded path of the request (WSGI hands it over as latin-1 text of the URL's bytes)."""
    path = environ.get("PATH_INFO", "") or "/"
    return str(path.encode("latin-1", "replace").decode("utf-8", "replace"))


def listen(app: WSGIApplication, host: str, port: int, *, threads: int, **limits: Any) -> Any:
    """A listening (not yet running) waitress server for app; MailerError if it cannot listen there.

    `run()` serves until Ctrl-C, then stops the worker threads; `close()` frees the sockets.
    """
    import socket

    from waitress.server import create_server

    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a host name"
        raise MailerError(f"--host {host}: not an address to listen on ({reason})") from None
    try:
        return create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            asyncore_use_poll=True,  # select() cannot watch descriptors above 1024
            **limits,
        )
    except OSError as exc:
        raise MailerError(f"{host}:{port}: cannot listen: {exc.strerror or exc}") from None
    except ValueError:
        raise MailerError(f"--host {host}: not an address to listen on") from None


def url(server: Any) -> str:
    """The address a waitress server answers on (its first, when the host name has several)."""
    listening = getattr(server, "effective_listen", None)
    host, port = listening[0] if listening else (server.effective_host, server.effective_port)
    shown = f"[{host}]" if ":" in str(host) else host
    return f"http://{shown}:{port}/"
