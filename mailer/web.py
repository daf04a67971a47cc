"""The WSGI app behind every unsubscribe link: confirm page, RFC 8058 one-click POST, undo, and the archive;
and the ESPs' bounce and complaint webhooks (mailer/webhooks.py).

A GET never changes anything (mail scanners fetch links); only a POST with a genuine token does. Run it with
`mailer serve`, or under any WSGI server: `waitress-serve --call mailer.web:app_from_env`.
"""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from markupsafe import Markup

from . import archive
from .catalog import Words, words
from .errors import Interrupted, MailerError
from .hostcopies import HostCopies
from .signup import MAX_FORM, Link, SignupError, read_link, read_request, safe_next, signup_lists
from .tokens import Keyring
from .webcopies import to_record
from .wsgi import HTML, TEXT, listen, render_page, respond, security_headers, static

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .config import Settings
    from .console import Console, Voice

log = logging.getLogger("mailer.web")

MAX_BODY = 64 * 1024  # forms: an unsubscribe needs a few bytes
# An ESP's webhook may carry the bounced message's headers: SNS delivers messages of up to 256 KiB, and a
# genuine bounce refused for its size would be retried by SNS and then lost.
WEBHOOK_MAX_BODY = 256 * 1024
ATOM = "application/atom+xml; charset=utf-8"
ISSUE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
# Pages carry no script and submit only to this app; their style is inline (web.css, one request per page).
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)
# An archived issue shows its images and inline styles, but still runs no script and submits nowhere else.
ARCHIVE_CSP = (
    "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; font-src https: data:;"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class HTTPError(Exception):
    """An answer other than 200, raised anywhere while handling a request; its page says the catalog's
    `title` and `text` (mailer/catalog.py) in the reader's language."""

    def __init__(self, status: int, title: str, text: str, headers: Iterable[tuple[str, str]] = ()):
        super().__init__(title)
        self.status = status
        self.title = title
        self.text = text
        self.headers = list(headers)


def page(t: Words, title: str, text: str = "", template: str = "web.html", **context: Any) -> bytes:
    """A small, self-contained page of the app in t's language: a heading and a paragraph, or one of
    mailer/pages (which say their own words through `t`)."""
    style = Markup(static("web.css").decode())
    return render_page(template, lang=t.lang, t=t, title=title, text=text, style=style, **context)


def _parse_form(environ: WSGIEnvironment, limit: int = MAX_BODY) -> dict[str, str]:
    """Read a urlencoded or multipart body of at most `limit` bytes into its simple fields."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HTTPError(400, "bad_request.title", "bad_request.length") from None
    if length > limit:
        raise HTTPError(413, "too_large.title", "too_large.text")
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    ctype = environ.get("CONTENT_TYPE", "")
    kind = ctype.partition(";")[0].strip().lower()
    fields: dict[str, str] = {}
    if kind == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", errors="replace")
        for name, values in parse_qs(text, keep_blank_values=True).items():
            fields[name] = values[0]
    elif kind == "multipart/form-data":
        head = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        if message.is_multipart():
            for part in message.iter_parts():
                _add_part(fields, part)
    return fields


def _add_part(fields: dict[str, str], part: Message) -> None:
    name = part.get_param("name", header="content-disposition")
    if not isinstance(name, str) or part.get_filename() is not None or name in fields:
        return
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        fields[name] = payload.decode(part.get_content_charset() or "utf-8", errors="replace")


class UnsubscribeApp:
    """The WSGI application; one instance serves every thread."""

    def __init__(self, settings: Settings, keyring: Keyring) -> None:
        self.settings = settings
        from .servedkeys import ServedKeys

        self.keys = ServedKeys(settings, keyring, ServerLog())  # a replaced key file is taken while serving
        self.scopes = settings.accepted_token_scopes
        self.list_name = settings.list_name or settings.from_name
        self.archive = (settings.data_dir / "archive").resolve()
        from .ledger import Ledger
        from .signup import Mailroom, Signups
        from .signupmail import Letters
        from .transport import make_transport
        from .webhooks import Webhooks

        self.webhooks = Webhooks(settings, self.keys)
        letters = Letters(settings, self.keys, lambda: self.words().lang)
        self.mailroom = Mailroom(settings, self.keys, letters, make_transport(settings, ServerLog()))
        self.signups = Signups(settings, self.mailroom.wake)

        # made (or checked) now: later a missing database is an error
        with Ledger(settings.db_path) as ledger:
            to_record(settings, ledger)  # the copies only this host has, for the other hosts
        self.copies = HostCopies(settings)
        archive.sent_issues(
            settings, self.copies
        )  # with the copies from other hosts: the pages speak their language

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")  # case-sensitive (RFC 9110 9.1)
        path = environ.get("PATH_INFO", "") or "/"
        extra: list[tuple[str, str]] = []
        try:
            status, ctype, body, extra = self.dispatch(method, path, environ)
        except HTTPError as exc:
            status, ctype, extra = exc.status, HTML, exc.headers
            body = self.say(exc.title, exc.text)
        except MailerError as exc:
            log.error("%s %s: %s", method, path, exc)
            status, ctype, body = 503, HTML, self.say("busy.title", "busy.text")
            extra = [("Retry-After", "60")]
        except Exception:
            log.exception("%s %s failed", method, path)
            status, ctype, body = 500, HTML, self.say("error.title", "error.text")
        csp = next((value for name, value in extra if name == "Content-Security-Policy"), PAGE_CSP)
        headers = security_headers(csp) + [h for h in extra if h[0] != "Content-Security-Policy"]
        return respond(environ, start_response, status, body, ctype, headers)

    def dispatch(
        self, method: str, path: str, environ: WSGIEnvironment
    ) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        """Route one request; return status, content type, body and extra headers."""
        if path == "/":
            _allow(method, "GET, HEAD")
            return 200, HTML, self.home(), []
        if path == "/healthz":
            _allow(method, "GET, HEAD")
            # a host cut off from the record answers every click with 503, and one without the record's
            # signing key refuses them (servedkeys.py): a load balancer must hear so
            from .ledger import Ledger

            with Ledger(self.settings.db_path, create=False) as ledger:
                if self.keys.check(ledger) is not None:
                    return 503, TEXT, b"this host does not hold the record's signing key (see its log)\n", []
            return 200, TEXT, b"ok\n", []
        if path == "/unsubscribe":
            _allow(method, "GET, HEAD, POST")
            query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
            if method == "POST":
                return self.post(query, _parse_form(environ))
            return 200, HTML, self.confirm(_first(query, "t")), []
        if path in ("/subscribe", "/subscribe/confirm"):
            _allow(method, "GET, HEAD, POST")
            return self.subscribe(method, path, environ)
        if path.startswith("/webhooks/"):
            _allow(method, "POST")
            return self.webhooks.handle(path.removeprefix("/webhooks/"), environ, WEBHOOK_MAX_BODY)
        if path == "/issues":  # relative: under a proxy's path prefix too
            _allow(method, "GET, HEAD")
            return 301, HTML, b"", [("Location", "issues/")]
        if path == "/issues/":
            _allow(method, "GET, HEAD")
            return 200, HTML, archive.index_page(self.settings, self.words(), self.copies), []
        if path == "/feed.atom":
            _allow(method, "GET, HEAD")
            return 200, ATOM, archive.feed(self.settings, self.words(), self.copies), []
        if path.startswith("/issues/"):
            _allow(method, "GET, HEAD")
            copy = archive.with_feed_link(self.settings, self.issue(path.removeprefix("/issues/")))
            return 200, HTML, copy, [("Content-Security-Policy", ARCHIVE_CSP)]
        raise HTTPError(404, "not_found.title", "not_found.text")

    def home(self) -> bytes:
        """The front page: what is here, and the way to the archive, its feed and the subscribe page."""
        return page(
            self.words(),
            self.list_name,
            template="home.html",
            list_name=self.list_name,
            subscribe_url=self.settings.subscribe_link,
            feed_url=archive.feed_url(self.settings),
        )

    def words(self) -> Words:
        """The reader's language: the `lang` setting, else the newest archived issue's, else English."""
        return words(self.settings.lang or archive.archived_lang(self.archive) or "en")

    def say(self, title: str, text: str) -> bytes:
        """A page of a heading and a paragraph, both keys of the catalog."""
        t = self.words()
        return page(t, t[title], t[text])

    def _address(self, token: str) -> str:
        address = self.keys().verify(token, *self.scopes)
        if address is None and self.keys.reread():  # signed with the key of a key file replaced since
            address = self.keys().verify(token, *self.scopes)
        if address is None:
            raise HTTPError(400, "bad_link.title", "bad_link.text")
        return address

    def confirm(self, token: str) -> bytes:
        """The page behind the link: one button, nothing changed yet."""
        address = self._address(token)
        return self._page("confirm", token, address)

    def _page(self, state: str, token: str, address: str) -> bytes:
        t = self.words()
        title = t[{"confirm": "unsubscribe.title"}.get(state, f"{state}.title")]
        context = {"state": state, "token": token, "address": address, "list_name": self.list_name}
        return page(t, title, template="unsubscribe.html", **context)

    def post(
        self, query: dict[str, list[str]], form: dict[str, str]
    ) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        """Unsubscribe (form button or RFC 8058 one-click) or undo it."""
        token = form.get("t") or _first(query, "t")
        one_click = form.get("List-Unsubscribe", "").strip().lower() == "one-click"
        action = "unsubscribe" if one_click else form.get("action", "unsubscribe")
        if action not in ("unsubscribe", "resubscribe"):
            raise HTTPError(400, "bad_request.title", "bad_request.action")
        address = self._address(token)
        from .ledger import Ledger, write_in_place

        def record(ledger: Ledger) -> bool:
            if action == "unsubscribe":
                source = "one-click" if one_click else "web"
                return ledger.suppress(address, source=source, reason=f"unsubscribed via {source}")
            return ledger.unsuppress(address)

        # the database must exist (made at start-up): a deleted one is a 503, never a new empty record, and
        # a write that went into a file deleted or replaced meanwhile is made again in the one there now
        if write_in_place(self.settings.db_path, record):
            log.info("%s %s (%s)", f"{action}d", address, "one-click" if one_click else "web")
        state = "unsubscribed" if action == "unsubscribe" else "resubscribed"
        return 200, HTML, self._page(state, token, address), []

    def subscribe(
        self, method: str, path: str, environ: WSGIEnvironment
    ) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        """The signup form and its answer, and the confirmation link's page and button (mailer/signup.py)."""
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        form = _parse_form(environ, MAX_FORM) if method == "POST" else {}
        client = str(environ.get("REMOTE_ADDR", ""))
        try:
            if path == "/subscribe" and method != "POST":
                named = _first(query, "list")
                shown = named if named in signup_lists(self.settings) else ""
                return 200, HTML, self._signup_page("form", list=shown), []
            if path == "/subscribe":
                self.signups.request(read_request(form, self.settings), client)
                sent = self._signup_page("sent")
                target = safe_next(form.get("next", ""), self.settings) or self.settings.signup_thanks_url
                return (303, HTML, sent, [("Location", target)]) if target else (200, HTML, sent, [])
            token = form.get("t") or _first(query, "t")
            link = self._link(token)
            if method != "POST":
                return 200, HTML, self._signup_page("confirm", token=token, address=link.email), []
            state = self.signups.confirm(link, client)
            return 200, HTML, self._signup_page(state, address=link.email), []
        except SignupError as exc:
            retry = [("Retry-After", str(exc.retry_after))] if exc.retry_after else []
            t = self.words()
            again = self._signup_page(
                "form", title=t[f"{exc.key}.title"], error=t.say(f"{exc.key}.text", **exc.values),
                email=form.get("email", ""), name=form.get("name", ""), list=form.get("list", ""),
                action="subscribe" if path == "/subscribe" else "../subscribe",
                next=safe_next(form.get("next", ""), self.settings),
            )  # fmt: skip
            return exc.status, HTML, again, retry

    def _link(self, token: str) -> Link:
        """The signup a confirmation link is for (SignupError: none, or no longer)."""
        try:
            return read_link(self.keys(), token, self.settings.signup_confirm_hours)
        except SignupError:
            if not self.keys.reread():  # signed with the key of a key file replaced since?
                raise
        return read_link(self.keys(), token, self.settings.signup_confirm_hours)

    def _signup_page(self, state: str, title: str = "", **context: Any) -> bytes:
        t = self.words()
        heading = (
            title
            or t[
                {"form": "signup.title", "already": "signup.confirmed.title"}.get(
                    state, f"signup.{state}.title"
                )
            ]
        )
        return page(t, heading, template="subscribe.html", state=state, list_name=self.list_name, **context)

    def close(self) -> None:
        """Let the signup mail being sent finish (the record keeps the rest for the next start)."""
        self.mailroom.stop()

    def issue(self, issue_id: str) -> bytes:
        """An issue's web copy as its last send kept it in the record (or a file put there by hand)."""
        not_found = HTTPError(404, "not_found.title", "no_issue.text")
        if not ISSUE_ID.fullmatch(issue_id):
            raise not_found
        if (self.archive / f"{issue_id}.html").resolve().parent != self.archive:
            raise not_found
        copy = self.copies.show(issue_id)  # the record's, written here if this host's file is not it
        if copy is None:
            raise not_found
        return copy


def _first(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    return values[0] if values else ""


def _allow(method: str, allowed: str) -> None:
    if method not in allowed.split(", "):
        raise HTTPError(405, "method.title", "method.text", [("Allow", allowed)])


class ServerLog:
    """The voice of the app under another WSGI server (waitress-serve --call): its log, as its requests."""

    def note(self, line: str) -> None:
        """An INFO line."""
        log.info("%s", line)

    def warn(self, line: str) -> None:
        """A WARNING line."""
        log.warning("%s", line)

    def error(self, line: str) -> None:
        """An ERROR line."""
        log.error("%s", line)


def make_app(settings: Settings, *, keyring: Keyring | None = None) -> UnsubscribeApp:
    """Build the WSGI app, loading (or making) the same signing key that `mailer send` uses."""
    return UnsubscribeApp(settings, keyring or signing_keyring(settings, ServerLog()))


def signing_keyring(settings: Settings, console: Voice) -> Keyring:
    """The keys the unsubscribe links were signed with: the record's key among them (keymarks.py), and never a
    key made here for a record that holds sent issues (a second web host set up without it, a lost key
    file): every reader's unsubscribe would be refused."""
    from .keymarks import serving_keyring
    from .ledger import Ledger

    with Ledger(settings.db_path) as ledger:
        return serving_keyring(settings, ledger, console)


# Limits for facing the open internet through a reverse proxy (docs/configuration.md says what it must add).
# Waitress stops accepting at connection_limit, so a low limit let 100 idle sockets lock out every reader;
# a stalled client is cut off after serve_idle_timeout seconds without a byte, checked every CLEANUP_INTERVAL
# (or more often, when that timeout is shorter), and a trickling one serve_request_timeout seconds after its
# request's first byte (slowloris).
MAX_CONNECTIONS = 1000
CLEANUP_INTERVAL = 5
MAX_HEADER_BYTES = 16 * 1024


def _connection_limit() -> int:
    """MAX_CONNECTIONS, or fewer when the open-file limit is lower (each connection holds a descriptor)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + 100  # the database, the key, the log and the listening sockets
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(10, min(MAX_CONNECTIONS, soft - 100))


def _deadline_channel(deadline: float) -> type:
    """Waitress's channel, closing a connection whose request (headers or body) is unfinished `deadline`
    seconds after its first byte: a client trickling a byte at a time never looks idle to channel_timeout."""
    import time

    from waitress.channel import HTTPChannel

    class DeadlineChannel(HTTPChannel):
        headers_since: float | None = None

        def received(self, data: bytes) -> bool:
            now = time.monotonic()
            if self.headers_since is not None and now - self.headers_since > deadline:
                log.info("closed a connection from %s: its request took too long to arrive", self.addr[0])
                self.will_close = True
                return False
            done: bool = super().received(data)
            pending = self.request is not None  # a request's headers or body still coming
            self.headers_since = (self.headers_since or now) if pending else None
            return done

    return DeadlineChannel


def make_server(
    build: Callable[[], UnsubscribeApp], host: str, port: int, threads: int, limits: Settings
) -> Any:
    """A listening waitress server with limits fit for the internet (`limits`' serve_* timeouts);
    MailerError if it cannot listen.

    It listens before `build` runs, so a bad address fails before a signing key is made.
    """
    built: list[UnsubscribeApp] = []
    server = listen(
        lambda environ, start_response: built[0](environ, start_response),
        host,
        port,
        threads=threads,
        ident="mailer",
        max_request_body_size=WEBHOOK_MAX_BODY,  # and at most MAX_BODY outside /webhooks/
        max_request_header_size=MAX_HEADER_BYTES,
        connection_limit=_connection_limit(),
        channel_timeout=limits.serve_idle_timeout,
        cleanup_interval=min(CLEANUP_INTERVAL, limits.serve_idle_timeout),
        # behind a proxy on this machine (docs/unsubscribe.md) the client is the address it appends to
        # X-Forwarded-For: what the signup limits count per client and the consent record keeps
        trusted_proxy="127.0.0.1",
        trusted_proxy_headers={"x-forwarded-for"},
        trusted_proxy_count=1,
    )
    from waitress.server import BaseWSGIServer

    channel = _deadline_channel(limits.serve_request_timeout)
    for listener in [server, *getattr(server, "map", {}).values()]:  # one, or one per address of the host
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = channel
    try:
        built.append(build())
    except BaseException:
        server.close()
        raise
    return server


@contextmanager
def _terminated_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (`systemctl stop`, `docker stop`) and SIGHUP (the terminal closed) stop `serve` as Ctrl-C does,
    not killing it mid-way: the signup message being mailed is finished and recorded (killed after the
    server took it, it would be mailed again once its claim lapsed). A SIGHUP ignored (`nohup`) stays so."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    taken = [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else [])
    previous = {sig: signal.signal(sig, stop) for sig in taken}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_until_stopped(settings: Settings, host: str, port: int, threads: int, console: Console) -> None:
    """`mailer serve`: listen, make the app (and the signing key, said through `console`), serve until
    Ctrl-C or SIGTERM; the running server's requests go to its log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    built: list[UnsubscribeApp] = []

    def build() -> UnsubscribeApp:
        built.append(make_app(settings, keyring=signing_keyring(settings, console)))
        return built[0]

    with _terminated_like_ctrl_c():
        server = make_server(build, host, port, threads, settings)
        # from here on a Ctrl-C (or SIGTERM) is the stop that "Press Ctrl-C to stop." asks for, wherever it
        # lands: in the server's loop (which returns, its threads stopped) or before it; "Stopped.", exit 0
        try:
            shown = f"[{host}]" if ":" in host else host
            address = f"http://{shown}:{server.effective_port}/"
            console.result(f"Serving on {address} (links point to {settings.web_url})")
            if not settings.web_url.startswith("https://"):
                console.note(
                    f"Note: web_url is {settings.web_url}; set it to the public https:// address of this"
                    " server so the links in messages reach it (mail clients need https for one-click)."
                )
            console.result("Press Ctrl-C to stop.")
            built[0].mailroom.wake()  # mail what an earlier run left queued
            server.run()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
            built[0].close()
    console.result("Stopped.")


def app_from_env() -> UnsubscribeApp:
    """Build the app from mailer.toml and MAILER_* for a WSGI server (waitress-serve --call)."""
    from .config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    loaded = load_config()
    for line in loaded.warnings:
        log.warning("%s", line)
    return make_app(loaded.settings)
