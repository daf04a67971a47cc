"""The bounce mailbox, as a Maildir, an mbox file or an IMAP folder: its unread messages, and two marks.

A message is handed out once: `done` marks one that was read (Maildir: moved to cur/ with the S flag; mbox:
the R and O flags, written back under the mailbox's lock; IMAP: \\Seen, or moved to `imap_done_folder`), and
`leave` marks one that could not be read (Maildir and mbox: the F flag, not S; IMAP: \\Flagged), so a
person finds it flagged and unread, and mailer does not try it again. Messages already seen or flagged are
skipped. Only the first MAX_READ bytes of a message are read.
"""

from __future__ import annotations

import errno
import imaplib
import mailbox
import os
import re
import ssl
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from .errors import ConfigError, MailerError
from .reports import MAX_READ


@dataclass(frozen=True, slots=True)
class Item:
    """One unread message: how its mailbox names it, and its first MAX_READ bytes; or, for an entry that could
    not be read at all (a directory or a pipe in a Maildir, a file mailer may not open), why not: it is then
    left flagged for a person like any unreadable message, instead of stopping every pass at the same place.
    """

    key: str
    data: bytes
    problem: str = ""


class Source(Protocol):
    """A bounce mailbox, opened."""

    name: str  # for messages: the folder, file or imap URL (never a password)

    def unread(self) -> Iterator[Item]:
        """The messages neither read nor left flagged, oldest first."""
        ...

    def done(self, item: Item) -> None:
        """Mark the message as read: it is not handed out again."""
        ...

    def leave(self, item: Item) -> None:
        """Mark the message as one for a person (flagged, unread): it is not handed out again."""
        ...

    def close(self) -> None:
        """Write the marks (mbox) and let go of the mailbox."""
        ...


# --- Maildir ----------------------------------------------------------------------------------------------


class MaildirSource:
    """A Maildir (new/, cur/, tmp/), read and marked in place as a mail program does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        missing = [d for d in ("new", "cur", "tmp") if not (path / d).is_dir()]
        if missing:
            why = "does not exist" if not path.exists() else f"is not a Maildir (no {', '.join(missing)}/)"
            raise MailerError(f"{path}: {why}")

    def unread(self) -> Iterator[Item]:
        """Every message in new/, then those in cur/ without the S or F flag (or T: trashed)."""
        for folder in ("new", "cur"):
            try:
                names = sorted(os.listdir(self.path / folder))
            except OSError as exc:
                raise MailerError(f"{self.path / folder}: cannot list: {exc.strerror}") from None
            for name in names:
                if name.startswith(".") or set(_flags(name)) & {"S", "F", "T"}:
                    continue
                try:
                    data = _read_file(self.path / folder / name)
                except FileNotFoundError:
                    continue  # a mail program moved it meanwhile
                except OSError as exc:
                    yield Item(f"{folder}/{name}", b"", f"cannot read: {exc.strerror}")
                    continue
                yield Item(f"{folder}/{name}", data)

    def done(self, item: Item) -> None:
        """Move to cur/ with the S (seen) flag added."""
        self._move(item, "S")

    def leave(self, item: Item) -> None:
        """Move to cur/ with the F (flagged) flag added, not S."""
        self._move(item, "F")

    def close(self) -> None:
        """Nothing to write: every mark was a rename."""

    def _move(self, item: Item, flag: str) -> None:
        folder, _, name = item.key.partition("/")
        base = name.split(":", 1)[0]
        flags = "".join(sorted(set(_flags(name)) | {flag}))
        try:
            os.rename(self.path / folder / name, self.path / "cur" / f"{base}:2,{flags}")
        except FileNotFoundError:
            pass  # a mail program moved or deleted it meanwhile: it is not ours to mark any more
        except OSError as exc:
            raise MailerError(f"{self.path / folder / name}: cannot mark as read: {exc.strerror}") from None


def _read_file(path: Path) -> bytes:
    """The first MAX_READ bytes of a regular file; OSError for anything else (opened without blocking, so a
    named pipe cannot hold the pass up)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return file.read(MAX_READ)


def _flags(name: str) -> str:
    info = name.split(":", 1)[1] if ":" in name else ""
    return info[2:] if info.startswith("2,") else ""


# --- mbox -------------------------------------------------------------------------------------------------


class MboxSource:
    """An mbox file, locked (fcntl and dot-lock, as mail delivery agents lock it) while it is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        if not path.is_file():
            raise MailerError(f"{path}: {'is not a file' if path.exists() else 'does not exist'}")
        try:
            self._box = mailbox.mbox(path, create=False)
            self._box.lock()
            # taken before the messages are listed: a size other than this at close() means someone wrote
            # to the file while it was read, and the rewrite that writes the marks would drop their mail
            self._length = path.stat().st_size
        except (OSError, mailbox.Error) as exc:
            raise MailerError(f"{path}: cannot open or lock the mbox file: {exc}") from None
        self._marks: dict[str, str] = {}
        self._keys: dict[str, str] = {}  # the mailbox module's own key of each (an int, typed as str)

    def unread(self) -> Iterator[Item]:
        """The messages whose Status has no R and whose X-Status has no F."""
        for key in list(self._box.keys()):
            try:
                with self._box.get_file(key) as file:
                    data = file.read(MAX_READ)
            except (OSError, KeyError) as exc:
                raise MailerError(f"{self.path}: cannot read message {key}: {exc}") from None
            if _mbox_marked(data):
                continue
            self._keys[str(key)] = key
            yield Item(str(key), data)

    def done(self, item: Item) -> None:
        """Flag it read (R) and old (O); written by close()."""
        self._marks[item.key] = "RO"

    def leave(self, item: Item) -> None:
        """Flag it for a person (F) and old (O), not read; written by close()."""
        self._marks[item.key] = "FO"

    def close(self) -> None:
        """Write the flags (the mailbox module rewrites the file through a temporary one) and unlock.

        Mail delivery agents take the lock before they append; a writer that does not would lose what it
        appended to the rewrite (the mailbox module's own check is passed once a mark is set). So the file
        must still be the size it was: else no mark is written, and the next run reads these messages again,
        which changes nothing (every report counts once).
        """
        try:
            if self._marks and self.path.stat().st_size != self._length:
                raise MailerError(
                    f"{self.path}: the file changed while it was read (a writer that does not lock it?);"
                    " the read marks are not written and the next run reads these messages again, counting"
                    " each report once"
                )
            for name, flags in self._marks.items():
                key = self._keys[name]
                message = self._box.get_message(key)
                message.add_flag(flags)
                self._box[key] = message
            self._box.flush()
        except (OSError, mailbox.Error) as exc:
            raise MailerError(f"{self.path}: cannot write the read marks: {exc}") from None
        finally:
            self._marks.clear()
            self._box.unlock()
            self._box.close()


def _mbox_marked(data: bytes) -> bool:
    head = data.split(b"\n\n", 1)[0]
    status = re.search(rb"(?mi)^Status:[ \t]*([A-Z]*)", head)
    extra = re.search(rb"(?mi)^X-Status:[ \t]*([A-Z]*)", head)
    return bool(status and b"R" in status.group(1)) or bool(extra and b"F" in extra.group(1))


# --- IMAP -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImapAccount:
    """Where the IMAP bounce mailbox is; the password is kept out of repr and of every message."""

    host: str
    port: int
    security: str  # "tls" (implicit, port 993), "starttls" (143) or "none"
    user: str
    folder: str
    done_folder: str
    cafile: str
    password: str = ""

    def __repr__(self) -> str:
        return f"<ImapAccount {self.url}>"

    @property
    def url(self) -> str:
        """imaps://user@host:port/folder (imap:// for STARTTLS and none): how it is named in messages."""
        scheme = "imaps" if self.security == "tls" else "imap"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{self.user}@{host}:{self.port}/{self.folder}"


def imap_account(
    *, url: str, host: str, port: int, security: str, user: str, password: str, folder: str,
    done_folder: str, cafile: str,
) -> ImapAccount:  # fmt: skip
    """The account from the settings, with what an `imap[s]://user@host:port/folder` URL names put first.

    A URL with a password in it is refused: a password on the command line is seen by every user of the
    machine (ps) and kept in shell history.
    """
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("imap", "imaps") or not parts.hostname:
            raise ConfigError(f"--imap: {_safe(url)!r} is not imaps://user@host[:port][/folder]")
        if parts.password is not None:
            raise ConfigError(
                "--imap: the URL holds a password; put it in MAILER_IMAP_PASSWORD or imap_password in"
                " mailer.toml (a password on the command line is visible to every user of the machine)"
            )
        host = parts.hostname
        user = unquote(parts.username or "") or user
        folder = unquote(parts.path.lstrip("/")) or folder
        security = "tls" if parts.scheme == "imaps" else ("none" if security == "none" else "starttls")
        try:
            port = parts.port or 0
        except ValueError:
            raise ConfigError(f"--imap: {_safe(url)!r} has a bad port") from None
    if not host:
        raise ConfigError("no IMAP server: set imap_host (or pass --imap imaps://user@host/folder)")
    if not user or not password:
        raise ConfigError("the IMAP mailbox needs imap_user and imap_password (set MAILER_IMAP_PASSWORD)")
    port = port or (993 if security == "tls" else 143)
    return ImapAccount(host, port, security, user, folder or "INBOX", done_folder, cafile, password)


def _safe(url: str) -> str:
    """The URL with any password in it blanked, for an error message."""
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url)


class ImapSource:
    """An IMAP folder: TLS by default (implicit or STARTTLS), the server's certificate verified."""

    def __init__(self, account: ImapAccount, *, timeout: float = 30.0) -> None:
        self.account = account
        self.name = account.url
        self._imap = self._connect(timeout)
        self._move = b"MOVE" in self._capabilities()

    def _connect(self, timeout: float) -> imaplib.IMAP4:
        a = self.account
        step = "connect"
        imap: imaplib.IMAP4 | None = None
        try:
            context = ssl.create_default_context(cafile=a.cafile or None)
            if a.security == "tls":
                imap = imaplib.IMAP4_SSL(a.host, a.port, ssl_context=context, timeout=timeout)
            else:
                imap = imaplib.IMAP4(a.host, a.port, timeout=timeout)
                if a.security == "starttls":
                    step = "STARTTLS"
                    imap.starttls(context)
            step = "log in"
            _log_in(imap, a.user, a.password)
            step = f"open the folder {a.folder!r}"
            _ok(imap.select(_quote(a.folder)), "SELECT")
            return imap
        except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
            if imap is not None:
                _shut(imap)
            raise MailerError(f"{self.name}: cannot {step}: {_reason(exc, a.password)}") from None

    def _capabilities(self) -> tuple[bytes, ...]:
        return tuple(c.encode() if isinstance(c, str) else c for c in self._imap.capabilities)

    def unread(self) -> Iterator[Item]:
        """UNSEEN UNFLAGGED messages, by UID; each fetched as BODY.PEEK (which sets no flag)."""
        data = self._call("search", lambda: self._imap.uid("SEARCH", "UNSEEN UNFLAGGED"))
        uids = data[0].split() if data and isinstance(data[0], bytes) else []
        for uid in uids:
            parts = self._call(
                "fetch", lambda u=uid: self._imap.uid("FETCH", u, f"(BODY.PEEK[]<0.{MAX_READ}>)")
            )
            body = next((p[1] for p in parts if isinstance(p, tuple) and len(p) > 1), None)
            if isinstance(body, bytes):
                yield Item(uid.decode("ascii"), body)

    def done(self, item: Item) -> None:
        """\\Seen, then moved to imap_done_folder when one is set (MOVE, else COPY and delete)."""
        self._call("mark", lambda: self._imap.uid("STORE", item.key, "+FLAGS", "(\\Seen)"))
        target = self.account.done_folder
        if target:
            if self._move:
                self._call("move", lambda: self._imap.uid("MOVE", item.key, _quote(target)))
            else:
                self._call("copy", lambda: self._imap.uid("COPY", item.key, _quote(target)))
                self._call("delete", lambda: self._imap.uid("STORE", item.key, "+FLAGS", "(\\Deleted)"))
                self._call("expunge", lambda: self._imap.expunge())

    def leave(self, item: Item) -> None:
        """\\Flagged, and not \\Seen."""
        self._call("flag", lambda: self._imap.uid("STORE", item.key, "+FLAGS", "(\\Flagged)"))

    def close(self) -> None:
        """Log out (the flags are the server's already)."""
        _shut(self._imap)

    def _call(self, what: str, call: object) -> list[object]:
        try:
            typ, data = call()  # type: ignore[operator]
        except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
            raise MailerError(f"{self.name}: {what} failed: {_reason(exc, self.account.password)}") from None
        if typ != "OK":
            raise MailerError(f"{self.name}: {what} refused: {_words(data)}")
        return list(data)


def _log_in(imap: imaplib.IMAP4, user: str, password: str) -> None:
    """LOGIN when the user name and password are ASCII (imaplib sends LOGIN's arguments as ASCII); otherwise
    AUTHENTICATE PLAIN, whose credentials are UTF-8 (RFC 4616), so a password with an accent logs in."""
    if user.isascii() and password.isascii():
        imap.login(user, password)
        return
    credentials = f"\0{user}\0{password}".encode()
    imap.authenticate("PLAIN", lambda _challenge: credentials)


def _ok(answer: tuple[str, Sequence[object]], what: str) -> None:
    typ, data = answer
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{what}: {_words(data)}")


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _words(data: object) -> str:
    items = data if isinstance(data, list) else [data]
    text = " ".join(i.decode("utf-8", "replace") if isinstance(i, bytes) else str(i) for i in items if i)
    return text[:200] or "no reason given"


def _reason(exc: BaseException, password: str) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"the server's certificate is not trusted ({exc.verify_message}); set imap_cafile"
    elif isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if password:
        text = text.replace(password, "********")
    return text.strip().removeprefix("b'").removesuffix("'")[:300]


def _shut(imap: imaplib.IMAP4) -> None:
    """Log out, and close the socket even when the connection is already gone (logout alone would not)."""
    try:
        imap.logout()
    except (OSError, imaplib.IMAP4.error, ssl.SSLError):
        try:
            imap.shutdown()
        except OSError:
            pass
