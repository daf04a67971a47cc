"""Signup with double opt-in: a form's request, the signed link that confirms it, and the mail they make.

Only a confirmed address joins a stored list, with its consent (when, "web signup", from where) kept. A
request is answered the same way (status, page, work done) whatever the address's state: new, waiting,
subscribed, suppressed or over its limits. So the request only writes the record; the confirmation is
mailed by a thread of whichever `mailer serve` process claims it first (Mailroom), never while the reader
waits, and an answer that mailed nothing takes as long as one that queued a message. The rate limits and
the queue are rows of the database, so every serve process on it counts and mails the same ones.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import MailerError
from .headers import CONTROL, MAX_EMAIL, NAME_MAX, normalize_email, one_line
from .ledger import Ledger, write_in_place
from .stored import check_name
from .subscribers import dedupe_key

if TYPE_CHECKING:
    from .config import Settings
    from .signupmail import Letters
    from .tokens import Keyring
    from .transport import Connection, Transport

log = logging.getLogger("mailer.signup")

SALT = b"mailer.signup"  # the keyring's purpose for confirmation links: they never verify as anything else
MAC_BYTES = 16
MAX_TOKEN = 1024
HONEYPOT = "website"  # a field people never see and bots fill in
MAX_FORM = 4 * 1024  # bytes of a signup form: an address, a name, a list and a return URL
MAX_NEXT = 500  # characters of a return URL
RESEND_AFTER = timedelta(minutes=10)  # no second confirmation to one address of a list within this
IP_WINDOW = timedelta(hours=1)  # signup_ip_limit counts the requests of one client over this span
ADDRESS_WINDOW = timedelta(days=1)  # signup_address_limit counts the requests for one address over this
CLAIM = timedelta(minutes=5)  # a serve process holds a message it mails; another takes it after this
POLL = 5.0  # seconds between looks for mail another process queued, or a claim that lapsed
FORGET_EVERY = 600.0  # seconds between deletions of signups never confirmed whose link has expired

# A fork waits for a mail pass to end: a child forked while a pass is inside SQLite or a socket call would
# inherit that library's lock held by a thread it does not have, and hang at its first connect.
_PASS = threading.Lock()
os.register_at_fork(before=_PASS.acquire, after_in_parent=_PASS.release, after_in_child=_PASS.release)
SOURCE = "web signup"  # the consent source of a member who confirmed


class SignupError(Exception):
    """A request answered with a page other than the usual one: its status, and what the page says (the
    catalog's `KEY.title` and `KEY.text`, with `values` in the text)."""

    def __init__(self, status: int, key: str, retry_after: int = 0, **values: str) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.retry_after = retry_after
        self.values = values


@dataclass(frozen=True)
class Request:
    """One form's wish: this address (and name) on this list."""

    list_name: str
    email: str  # the address's identity (dedupe_key)
    address: str  # as it is mailed
    name: str


@dataclass(frozen=True)
class Link:
    """What a genuine confirmation link names: the list, the address and the request it confirms."""

    list_name: str
    email: str
    requested_at: str


def _now() -> datetime:
    return datetime.now(UTC)


def _text(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def signup_lists(settings: Settings) -> tuple[str, ...]:
    """The lists a form may name: signup_list first, then signup_lists."""
    extra = [name.strip() for name in settings.signup_lists.split(",") if name.strip()]
    return tuple(dict.fromkeys([settings.signup_list, *extra]))


def read_request(form: Mapping[str, str], settings: Settings) -> Request | None:
    """The form's request; None when the honeypot is filled in (a bot: answered as usual, nothing done).

    An address that cannot be mailed, or one that would break a header, is refused with a page saying so:
    that depends on what was typed, never on who is subscribed.
    """
    if form.get(HONEYPOT, "").strip():
        return None
    raw = form.get("email", "").strip()
    if not raw:
        raise SignupError(400, "signup.no_address")
    bad = SignupError(400, "signup.bad_address", address=one_line(raw)[:100])
    if len(raw) > MAX_EMAIL or CONTROL.search(raw):
        raise bad
    try:
        address = normalize_email(raw)
    except ValueError:
        raise bad from None
    if not address.isascii():  # mailer does not use SMTPUTF8
        raise bad
    list_name = form.get("list", "").strip() or settings.signup_list
    if list_name not in signup_lists(settings):
        raise SignupError(400, "signup.no_list")
    name = one_line(form.get("name", ""))[:NAME_MAX]
    return Request(list_name, dedupe_key(address), address, name)


def safe_next(url: str, settings: Settings) -> str:
    """`url` if it is on the publisher's own site (the origin of base_url, web_url or signup_thanks_url),
    else "": the form's return address can never send a reader elsewhere (no open redirect)."""
    if not url or len(url) > MAX_NEXT or CONTROL.search(url) or any(c in url for c in "\\ \"'<>"):
        return ""
    try:
        parts = urlsplit(url)
        origin = _origin(url)
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or parts.username is not None or parts.password is not None:
        return ""
    for known in (settings.base_url, settings.web_url, settings.signup_thanks_url):
        if known and _origin(known) == origin:
            return url
    return ""


def _origin(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) as a browser compares them: the scheme's own port is no port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(scheme)


# --- links --------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def link_token(keyring: Keyring, list_name: str, email: str, requested_at: str) -> str:
    """The token of a confirmation link, sealed with the current key (old keys still open it)."""
    payload = f"{list_name}\n{email}\n{requested_at}".encode()
    return f"{_b64(payload)}.{_b64(keyring.seal(payload, SALT)[:MAC_BYTES])}"


BAD_LINK = SignupError(400, "signup.bad_link")


def read_link(keyring: Keyring, token: str, hours: float, now: datetime | None = None) -> Link:
    """The link's list, address and request; SignupError if it is not genuine or has expired."""
    if not token or len(token) > MAX_TOKEN or token.count(".") != 1:
        raise BAD_LINK
    encoded, mac = token.split(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        seal = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
    except (binascii.Error, ValueError):
        raise BAD_LINK from None
    if _b64(payload) != encoded or len(seal) != MAC_BYTES or not keyring.opens(payload, seal, SALT):
        raise BAD_LINK
    list_name, email, requested_at = payload.decode().split("\n")
    if _parse(requested_at) + timedelta(hours=hours) < (now or _now()):
        raise SignupError(410, "signup.expired", hours=f"{hours:g}")
    return Link(list_name, email, requested_at)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- the record ---------------------------------------------------------------------------------------


class Signups:
    """Requests and confirmations, written to the database `mailer serve` runs on."""

    def __init__(self, settings: Settings, wake: Callable[[], None]) -> None:
        self.settings = settings
        self.wake = wake
        self.welcome = bool(settings.signup_welcome)

    def request(self, request: Request | None, ip: str) -> None:
        """Record a form's request (None: the honeypot's) and queue its confirmation, if the limits allow.

        SignupError (429) when the client is over signup_ip_limit; nothing else is said: an address over
        its own limit, or mailed a link within RESEND_AFTER, is answered as any other.
        """
        now = _now()
        limits = self.settings
        client = client_key(ip)

        def write(ledger: Ledger) -> bool:
            with ledger.transaction():
                ledger.write("DELETE FROM signup_hits WHERE at < ?", (_text(now - ADDRESS_WINDOW),))
                ip_limit = limits.signup_ip_limit
                if ip_limit and _hits(ledger, "ip", client, now - IP_WINDOW) >= ip_limit:
                    raise SignupError(429, "signup.limit", retry_after=3600)
                _hit(ledger, "ip", client, now)
                if request is None:
                    return False
                seen = _hits(ledger, "address", request.email, now - ADDRESS_WINDOW)
                _hit(ledger, "address", request.email, now)
                if limits.signup_address_limit and seen >= limits.signup_address_limit:
                    return False
                last = ledger.rows(
                    "SELECT requested_at FROM signups WHERE list = ? AND email = ?",
                    (request.list_name, request.email),
                )
                if last and last[0][0] > _text(now - RESEND_AFTER):
                    return False
                ledger.write(
                    "INSERT INTO signups (list, email, address, name, requested_at, request_ip)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (list, email) DO UPDATE SET"
                    " address = excluded.address, name = excluded.name, requested_at = excluded.requested_at,"
                    " request_ip = excluded.request_ip, claimed_until = NULL, confirm_sent_at = NULL,"
                    " confirm_reply = '', confirmed_at = NULL, confirm_ip = NULL, lifted = ''",
                    (request.list_name, request.email, request.address, request.name, _text(now), ip),
                )
                return True

        if write_in_place(self.settings.db_path, write):
            self.wake()

    def confirm(self, link: Link, ip: str) -> str:
        """Confirm a genuine link's request: 'confirmed' (the address joined, or its consent was renewed),
        'already' (this link was used and the address is on the list: confirming twice is harmless), or
        'stale' (a newer link was sent, or the address left the list since: sign up again)."""
        if link.list_name not in signup_lists(self.settings):
            return "stale"  # the publisher closed this list to signups since the link was mailed
        now = _text(_now())
        welcome = self.welcome

        def write(ledger: Ledger) -> tuple[str, str]:
            with ledger.transaction():
                rows = ledger.rows(
                    "SELECT requested_at, confirmed_at, address, name FROM signups"
                    " WHERE list = ? AND email = ?",
                    (link.list_name, link.email),
                )
                if not rows or rows[0][0] != link.requested_at or rows[0][1] is not None:
                    member = ledger.rows(
                        "SELECT 1 FROM members WHERE list = ? AND email = ?", (link.list_name, link.email)
                    )
                    used = bool(rows) and rows[0][0] == link.requested_at
                    on_list = used and member and not ledger.is_suppressed(link.email)
                    return ("already" if on_list else "stale"), ""
                _, _, address, name = rows[0]
                lifted = ""
                suppression = ledger.suppression(link.email)
                if suppression is not None and suppression.created_at > _parse(link.requested_at):
                    return "stale", ""  # unsubscribed after asking for this link: a newer one is needed
                if suppression is not None:
                    ledger.unsuppress(link.email)
                    lifted = one_line(
                        f"{suppression.created_at.isoformat(timespec='seconds')} {suppression.source}:"
                        f" {suppression.reason}"
                    )
                added = _join(ledger, link.list_name, link.email, address, name, now)
                ledger.write(
                    "UPDATE signups SET confirmed_at = ?, confirm_ip = ?, lifted = ?, welcome_due = ?"
                    " WHERE list = ? AND email = ?",
                    (now, ip, lifted, int(welcome and (added or bool(lifted))), link.list_name, link.email),
                )
                return "confirmed", lifted

        state, lifted = write_in_place(self.settings.db_path, write)
        if state == "confirmed":
            lifting = f", lifting its suppression ({lifted})" if lifted else ""
            log.info("%s confirmed the signup to %s%s", link.email, link.list_name, lifting)
            self.wake()
        return state


def client_key(ip: str) -> str:
    """What signup_ip_limit counts a client by: its IPv4 address, or the /64 network of its IPv6 address
    (one host, or one home's router, is given a whole /64: counted per address it could take a new one for
    every request)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is 192.0.2.1
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _hits(ledger: Ledger, kind: str, key: str, since: datetime) -> int:
    rows = ledger.rows(
        "SELECT count(*) FROM signup_hits WHERE kind = ? AND hit_key = ? AND at >= ?",
        (kind, key, _text(since)),
    )
    return int(rows[0][0])


def _hit(ledger: Ledger, kind: str, key: str, now: datetime) -> None:
    ledger.write("INSERT INTO signup_hits (kind, hit_key, at) VALUES (?, ?, ?)", (kind, key, _text(now)))


def _join(ledger: Ledger, list_name: str, email: str, address: str, name: str, now: str) -> bool:
    """Put a confirmed address on the list, its consent renewed; True if it was not a member. A member keeps
    the name they have: the one typed in a form may be anyone's words."""
    check_name(list_name)
    ledger.write(
        "INSERT INTO lists (name, version, created_at, changed_at) VALUES (?, 0, ?, ?)"
        " ON CONFLICT (name) DO NOTHING",
        (list_name, now, now),
    )
    new = not ledger.rows("SELECT 1 FROM members WHERE list = ? AND email = ?", (list_name, email))
    ledger.write(
        "INSERT INTO members (list, email, address, name, fields, consent_at, consent_source, updated_at)"
        " VALUES (?, ?, ?, ?, '{}', ?, ?, ?) ON CONFLICT (list, email) DO UPDATE SET"
        " address = excluded.address, consent_at = excluded.consent_at,"
        " consent_source = excluded.consent_source, updated_at = excluded.updated_at,"
        " name = CASE WHEN members.name = '' THEN excluded.name ELSE members.name END",
        (list_name, email, address, name, now, SOURCE, now),
    )
    ledger.write("UPDATE lists SET version = version + 1, changed_at = ? WHERE name = ?", (now, list_name))
    return new


# --- the mail -----------------------------------------------------------------------------------------


class Mailroom:
    """A thread that mails the confirmations and welcomes the record holds, one claimed row at a time."""

    def __init__(
        self, settings: Settings, keys: Callable[[], Keyring], letters: Letters, transport: Transport
    ) -> None:
        self.settings = settings
        self.keys = keys  # the serve's, as they are now (servedkeys.py)
        self.letters = letters
        self.transport = transport
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._forgot_at: float | None = None

    def wake(self) -> None:
        """Look at the record now (a request queued a message); starts the thread on first use.

        Also in a process forked after that (a WSGI server's workers, when it built the app first): a
        fork keeps the thread's object but not the thread.
        """
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._wake = threading.Event()
                self._thread = threading.Thread(target=self._run, name="mailer-signup-mail", daemon=True)
                self._thread.start()
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the message being mailed finish, then end the thread."""
        self._stop.set()
        self._wake.set()
        # one whose start a Ctrl-C cut short never ran (and cannot be joined); one starting sees the stop
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                with _PASS:
                    self.mail_all()
            except MailerError as exc:
                log.error("signup mail: %s", exc)
            except Exception:
                log.exception("signup mail failed")
            self._wake.wait(POLL)

    def mail_all(self) -> int:
        """Mail every message due that no other process holds; how many were handed over."""
        self._forget_expired()
        done = 0
        connection: Connection | None = None
        try:
            while not self._stop.is_set():
                claimed = write_in_place(self.settings.db_path, self._claim)
                if claimed is None:
                    return done
                if connection is None:
                    connection = self.transport.connect()
                done += self._mail(connection, *claimed)
        finally:
            if connection is not None:
                connection.close()
        return done

    def _forget_expired(self) -> None:
        """Delete the requests never confirmed whose link has expired (every FORGET_EVERY seconds at most):
        the address, name and client address typed by anyone are kept only while their link can be used.
        Confirmed rows stay: they are the evidence of consent."""
        if self._forgot_at is not None and time.monotonic() - self._forgot_at < FORGET_EVERY:
            return
        self._forgot_at = time.monotonic()
        oldest = _text(_now() - timedelta(hours=self.settings.signup_confirm_hours))

        def forget(ledger: Ledger) -> int:
            with ledger.transaction():
                return ledger.write(
                    "DELETE FROM signups WHERE confirmed_at IS NULL AND requested_at < ?", (oldest,)
                )

        forgotten = write_in_place(self.settings.db_path, forget)
        if forgotten:
            log.info("forgot %d signup(s) never confirmed whose link expired", forgotten)

    def _claim(self, ledger: Ledger) -> tuple[str, ...] | None:
        now = _now()
        oldest = _text(now - timedelta(hours=self.settings.signup_confirm_hours))
        # welcomes due wait while no welcome post is set (unset since they were queued)
        welcomes = " OR welcome_due = 1" if self.letters.welcome_factory is not None else ""
        # in a write transaction (its lock up front): on PostgreSQL two processes' lone UPDATEs both took the
        # row their subquery had seen free, and both mailed it
        with ledger.transaction():
            rows = ledger.rows(
                "UPDATE signups SET claimed_until = ? WHERE (list, email) IN (SELECT list, email FROM signups"
                " WHERE (claimed_until IS NULL OR claimed_until < ?)"
                f" AND ((confirm_sent_at IS NULL AND requested_at > ?){welcomes})"
                " ORDER BY requested_at LIMIT 1)"
                " RETURNING list, email, address, name, requested_at, confirm_sent_at",
                (_text(now + CLAIM), _text(now), oldest),
            )
        if not rows:
            return None
        # the kind is told here: SQLite 3.40 answered `confirm_sent_at IS NULL` wrongly in RETURNING
        *claimed, sent_at = rows[0]
        return (*claimed, "confirm" if sent_at is None else "welcome")

    def _mail(self, connection: Connection, list_name: str, email: str, address: str, name: str,
              requested_at: str, kind: str) -> int:  # fmt: skip
        if kind == "confirm":
            token = link_token(self.keys(), list_name, email, requested_at)
            url = f"{self.settings.web_url.rstrip('/')}/subscribe/confirm?t={token}"
            data = self.letters.confirmation(address, url)
        elif write_in_place(self.settings.db_path, lambda ledger: ledger.is_suppressed(email)):
            return self._record(
                kind, "not sent: the address is suppressed since", list_name, email, requested_at
            )
        else:
            data = self.letters.welcome(address, name)
        outcome = connection.send(self.settings.from_email, address, data)
        reply = one_line(str(outcome))[:500]
        if not outcome.ok and not outcome.permanent:  # a temporary failure: tried again when the claim lapses
            log.warning("signup mail: %s to %s not sent yet: %s", kind, address, reply)
            return 0
        self._record(kind, reply, list_name, email, requested_at)
        level = logging.INFO if outcome.ok else logging.WARNING
        log.log(level, "signup mail: %s to %s: %s", kind, address, reply)
        return 1 if outcome.ok else 0

    def _record(self, kind: str, reply: str, list_name: str, email: str, requested_at: str) -> int:
        """Write down that the message is done with (mailed, refused for good, or not to be sent); 0."""
        done = _text(_now())
        if kind == "confirm":
            sql = "UPDATE signups SET confirm_sent_at = ?, confirm_reply = ?, claimed_until = NULL"
        else:
            sql = "UPDATE signups SET welcome_due = 0, welcome_reply = ? || ' at ' || ?, claimed_until = NULL"
        params = (done, reply) if kind == "confirm" else (reply, done)
        write_in_place(
            self.settings.db_path,
            lambda ledger: ledger.write(
                f"{sql} WHERE list = ? AND email = ? AND requested_at = ?",
                (*params, list_name, email, requested_at),
            ),
        )
        return 0
