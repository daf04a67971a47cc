"""`mailer bounces` on a real Maildir and a real mbox file, through the real CLI and a real record: who is
suppressed, which issue each report is attributed to, what is marked read, and that a second run changes
nothing. (IMAP, and the whole path through Postfix and Dovecot: tests/test_e2e_bounces.py.)"""

from __future__ import annotations

import base64
import json
import mailbox
import os
import queue
import shutil
import signal
import socket
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailer.envelope import ReturnPaths, message_tag
from mailer.errors import MailerError
from mailer.ledger import Ledger
from mailer.mailboxes import MboxSource
from mailer.tokens import Keyring
from tests.command import run

FIXTURES = Path(__file__).parent / "bounces"
ISSUE = "2026-02-09"
SECRET = "bounce-reading-test-secret-key-0123456789"
BOUNCE_ADDRESS = "bounce@bounces.example.org"
# everyone the fixtures are about, as if the issue had been sent to them
READERS = [
    "gone@example.net", "nobody@example.com", "left.company@example.com", "jane.doe@contoso.example",
    "lost.reader@example.com", "old.account@example.com", "bounced.reader@example.com", "ghost@example.net",
    "first.gone@example.net", "second.full@example.net", "third.ok@example.net", "slow.server@example.net",
    "on.holiday@example.com", "away.reader@example.net", "annoyed@example.com", "redacted.reader@example.com",
    "parti@example.fr", "broken.tree@example.net", "still.here@example.com",
]  # fmt: skip
# written by hand from the fixtures: a hard bounce or a complaint suppresses at once, a soft one does not
SUPPRESSED = {
    "gone@example.net": ("dsn", "hard bounce", "5.1.1"),
    "nobody@example.com": ("dsn", "hard bounce", "5.1.1"),
    "left.company@example.com": ("dsn", "hard bounce", "5.1.1"),
    "jane.doe@contoso.example": ("dsn", "hard bounce", "5.1.10"),
    "lost.reader@example.com": ("dsn", "hard bounce", "5.1.1"),
    "old.account@example.com": ("dsn", "hard bounce", ""),
    "bounced.reader@example.com": ("dsn", "hard bounce", "5.1.1"),
    "ghost@example.net": ("dsn", "hard bounce", "5.1.1"),
    "first.gone@example.net": ("dsn", "hard bounce", "5.1.1"),
    "annoyed@example.com": ("arf", "complaint", ""),
    "redacted.reader@example.com": ("arf", "complaint", ""),  # named by the quoted Message-ID alone
    "parti@example.fr": ("dsn", "hard bounce", "5.1.1"),
    "broken.tree@example.net": ("dsn", "hard bounce", "5.1.1"),
}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A data folder whose record holds issue 2026-02-09 sent to every reader; the env to run mailer in it."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("MAILER_"):
            monkeypatch.delenv(name)
    env = {"MAILER_DATA_DIR": str(tmp_path / "state"), "MAILER_SECRET_KEY": SECRET}
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        ledger.start_issue(ISSUE, "hash", "AI")
        ledger.record_outcomes(ISSUE, [(r, "sent", 250, "250 2.0.0 Ok") for r in READERS])
    return env


def _maildir(root: Path, names: list[str] | None = None) -> Path:
    folder = root / "bounces"
    for sub in ("new", "cur", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for path in sorted(FIXTURES.glob("*.eml")):
        if names is None or path.stem in names:
            shutil.copy(path, folder / "new" / f"{path.stem}.host")
    return folder


def _suppressed(site: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    with Ledger(Path(site["MAILER_DATA_DIR"]) / "mailer.db") as ledger:
        return {s.email: (s.source, s.reason, s.status) for s in ledger.suppressions()}


def _bounce_rows(site: dict[str, str]) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(Path(site["MAILER_DATA_DIR"]) / "mailer.db") as db:
        return sorted(db.execute("SELECT email, kind, issue_id FROM bounces"))


def test_a_maildir_of_every_format_suppresses_who_it_should_once(
    site: dict[str, str], tmp_path: Path
) -> None:
    folder = _maildir(tmp_path)
    code, out, err = run(["bounces", "--maildir", str(folder)], site)
    assert code == 0, err
    assert _suppressed(site) == SUPPRESSED
    rows = _bounce_rows(site)
    soft = [("second.full@example.net", "soft", ISSUE), ("slow.server@example.net", "soft", ISSUE)]
    assert set(soft) <= set(rows) and len(rows) == len(SUPPRESSED) + 2
    # every report is attributed to its issue, but the two that quote no message at all
    unknown = {email for email, _, issue in rows if issue != ISSUE}
    assert unknown == {"parti@example.fr", "broken.tree@example.net"}
    assert "new/autoreply.host: an auto-reply, not a bounce" in out
    assert "16 message(s) read, 11 hard, 2 soft bounce(s), 2 complaint(s), 13 address(es) suppressed" in err
    # every message was marked read in place: moved to cur/ with the S flag, as a mail program does
    assert not os.listdir(folder / "new")
    assert sorted(os.listdir(folder / "cur")) == sorted(f"{p.stem}.host:2,S" for p in FIXTURES.glob("*.eml"))

    code, out, err = run(["bounces", "--maildir", str(folder)], site)
    assert (code, out) == (0, "") and "no unread message" in err
    assert _bounce_rows(site) == rows


def test_a_run_stopped_before_marking_counts_nothing_twice(site: dict[str, str], tmp_path: Path) -> None:
    """Recorded, then killed before the marks: the next run reads the messages again and changes nothing."""
    folder = _maildir(tmp_path, ["postfix", "multi", "arf"])
    assert run(["bounces", "--maildir", str(folder)], site)[0] == 0
    before = (_suppressed(site), _bounce_rows(site))
    for name in os.listdir(folder / "cur"):
        os.rename(folder / "cur" / name, folder / "new" / name.split(":")[0])
    code, out, err = run(["bounces", "--maildir", str(folder), "--json"], site)
    assert code == 0, err
    result = json.loads(out)
    assert result["counts"]["messages"] == 3 and result["counts"]["new_reports"] == 0
    assert result["suppressed"] == []
    assert (_suppressed(site), _bounce_rows(site)) == before


def _dsn_to(sent_to: str, recipient: str, message_id: str) -> bytes:
    text = (FIXTURES / "postfix.eml").read_text(encoding="utf-8")
    return (
        text.replace("bounces@example.org", sent_to)
        .replace("gone@example.net", recipient)
        .replace("<20260208230006.4Zx1Yq3N0Rz9sR@mx.example.net>", message_id)
        .encode()
    )


def test_verp_names_the_reader_and_a_forged_signature_changes_nothing(
    site: dict[str, str], tmp_path: Path
) -> None:
    env = {**site, "MAILER_BOUNCE_ADDRESS": BOUNCE_ADDRESS}
    genuine = ReturnPaths(BOUNCE_ADDRESS, Keyring(SECRET)).address(
        message_tag(ISSUE, "still.here@example.com")
    )
    forged = ReturnPaths(BOUNCE_ADDRESS, Keyring("an-attackers-guess-of-the-key-000")).address(
        message_tag(ISSUE, "gone@example.net")
    )
    folder = _maildir(tmp_path, [])
    # the reader forwards to another address, which bounced: the VERP address still names the reader
    (folder / "new" / "1.genuine").write_bytes(_dsn_to(genuine, "forwarded@elsewhere.example", "<g@mx>"))
    (folder / "new" / "2.forged").write_bytes(_dsn_to(forged, "gone@example.net", "<f@mx>"))
    unsigned = _dsn_to(BOUNCE_ADDRESS, "ghost@example.net", "<u@mx>")
    (folder / "new" / "3.unsigned").write_bytes(
        unsigned.replace(b"bounces@example.org", BOUNCE_ADDRESS.encode())
    )
    code, out, err = run(["bounces", "--maildir", str(folder)], env)
    assert code == 0, err
    assert _suppressed(env) == {"still.here@example.com": ("dsn", "hard bounce", "5.1.1")}
    assert _bounce_rows(env) == [("still.here@example.com", "hard", ISSUE)]
    assert "new/2.forged: forged: its VERP address's signature is wrong; nothing changed" in out
    assert "new/3.unsigned: a bounce not sent to a signed bounce address" in out
    assert len(os.listdir(folder / "cur")) == 3  # read and marked: a forged report is not read again


def test_a_host_without_the_records_key_reads_no_bounce_rather_than_take_them_for_forged(
    site: dict[str, str], tmp_path: Path
) -> None:
    """`mailer bounces` on a host whose key is not the one the record says the send signed with stops before
    the first signed bounce is marked read (before: every genuine one was "forged; nothing changed")."""
    env = {**site, "MAILER_BOUNCE_ADDRESS": BOUNCE_ADDRESS}
    with Ledger(Path(site["MAILER_DATA_DIR"]) / "mailer.db") as ledger:
        ledger.start_run(ISSUE, "list", "subscribers.csv", key_mark=Keyring(SECRET).marks[0])
    genuine = ReturnPaths(BOUNCE_ADDRESS, Keyring(SECRET)).address(
        message_tag(ISSUE, "still.here@example.com")
    )
    folder = _maildir(tmp_path, [])
    (folder / "new" / "1.genuine").write_bytes(_dsn_to(genuine, "forwarded@elsewhere.example", "<g@mx>"))
    other = {**env, "MAILER_SECRET_KEY": "another-hosts-signing-key-0123456789"}
    keyless = {k: v for k, v in env.items() if k != "MAILER_SECRET_KEY"}
    for host, start in [(other, "secret_key: this host's signing keys"), (keyless, "no signing key")]:
        code, out, err = run(["bounces", "--maildir", str(folder)], host)
        assert code == 1 and out == "", out
        [line] = err.splitlines()
        assert line.startswith("Error: ") and start in line and line.endswith("no bounce read"), line
        assert os.listdir(folder / "new") == ["1.genuine"] and _bounce_rows(env) == []
    assert not (Path(site["MAILER_DATA_DIR"]) / "secret.key").exists()
    code, out, err = run(["bounces", "--maildir", str(folder)], env)
    assert code == 0, err
    assert _suppressed(env) == {"still.here@example.com": ("dsn", "hard bounce", "5.1.1")}


def test_a_host_without_a_key_on_a_record_that_names_none_is_told_to_copy_the_senders(
    site: dict[str, str], tmp_path: Path
) -> None:
    """A bounce host set up before the first send (its record empty: no key named yet) and without a key: a
    key it made would open none of the bounces the sending host's key signed, so it is told to copy that
    host's key file (it said to run `mailer serve` once, which makes a key of its own). `site` for its
    clean environment; this host's data folder is another."""
    state = tmp_path / "bounce-host"
    with Ledger(state / "mailer.db"):
        pass  # the shared record, empty
    signed = ReturnPaths(BOUNCE_ADDRESS, Keyring(SECRET)).address(
        message_tag(ISSUE, "still.here@example.com")
    )
    folder = _maildir(tmp_path, [])
    (folder / "new" / "1.signed").write_bytes(_dsn_to(signed, "still.here@example.com", "<s@mx>"))
    env = {"MAILER_DATA_DIR": str(state), "MAILER_BOUNCE_ADDRESS": BOUNCE_ADDRESS}
    code, out, err = run(["bounces", "--maildir", str(folder)], env)
    assert code == 1 and out == "", out
    [line] = err.splitlines()
    assert line.startswith(f"Error: {state / 'secret.key'}: no signing key here: copy the key file"), line
    assert "set secret_key" in line and line.endswith("; no bounce read") and "serve" not in line, line
    assert os.listdir(folder / "new") == ["1.signed"] and not (state / "secret.key").exists()


def test_a_bounce_about_an_address_never_mailed_changes_nothing(site: dict[str, str], tmp_path: Path) -> None:
    """The bounce mailbox may also get other mail's bounces: a stranger is not suppressed (a reader is)."""
    folder = _maildir(tmp_path, [])
    stranger = _dsn_to("bounces@example.org", "stranger@example.com", "<s@mx>")
    (folder / "new" / "1.stranger").write_bytes(stranger.replace(b"<2026-02-09.", b"<2026-01-01."))
    multi = (FIXTURES / "multi.eml").read_bytes().replace(b"second.full@example.net", b"other@example.com")
    (folder / "new" / "2.multi").write_bytes(multi)
    code, out, err = run(["bounces", "--maildir", str(folder)], site)
    assert code == 0, err
    assert "new/1.stranger: dsn: stranger@example.com: ignored: never mailed by mailer" in out
    assert "new/2.multi: dsn: other@example.com: ignored: never mailed by mailer" in out
    assert _bounce_rows(site) == [("first.gone@example.net", "hard", ISSUE)]
    assert "1 about addresses never mailed" in err


def test_an_unreadable_message_is_named_once_and_left_flagged(site: dict[str, str], tmp_path: Path) -> None:
    folder = _maildir(tmp_path, ["postfix"])
    (folder / "new" / "0.empty").write_bytes(b"")
    code, out, err = run(["bounces", "--maildir", str(folder), "-q"], site)
    assert (code, out) == (3, "")  # -q: nothing but what needs a person
    [line] = [line for line in err.splitlines() if "0.empty" in line]
    why = "unreadable: no header lines: not a mail message; left flagged for a person"
    assert line.endswith(f"Warning: {folder}: message new/0.empty: {why}")
    assert sorted(os.listdir(folder / "cur")) == ["0.empty:2,F", "postfix.host:2,S"]
    assert _suppressed(site) == {"gone@example.net": SUPPRESSED["gone@example.net"]}
    code, out, err = run(["bounces", "--maildir", str(folder)], site)
    assert code == 0 and "0.empty" not in out + err  # not tried again


def test_a_directory_or_a_pipe_in_the_maildir_is_named_once_and_the_rest_is_read(
    site: dict[str, str], tmp_path: Path
) -> None:
    """An entry that is no message file (a directory, a named pipe) was a stop on every pass (exit 4, "run
    again to go on", and the next run stopped at the same place) or hung the pass (a pipe); it is now named
    and left flagged like an unreadable message, and the reports after it are read."""
    folder = _maildir(tmp_path, ["qmail"])
    (folder / "new" / "0.dir").mkdir()
    os.mkfifo(folder / "new" / "1.pipe")
    code, out, err = run(["bounces", "--maildir", str(folder)], site)
    assert code == 3, err
    for name, why in (("0.dir", "Is a directory"), ("1.pipe", "not a regular file")):
        [line] = [line for line in err.splitlines() if name in line]
        said = f"unreadable: cannot read: {why}; left flagged for a person"
        assert line.endswith(f"Warning: {folder}: message new/{name}: {said}"), line
    assert "Traceback" not in err
    assert sorted(os.listdir(folder / "cur")) == ["0.dir:2,F", "1.pipe:2,F", "qmail.host:2,S"]
    assert _suppressed(site) == {"ghost@example.net": ("dsn", "hard bounce", "5.1.1")}
    code, out, err = run(["bounces", "--maildir", str(folder)], site)
    assert code == 0 and "0.dir" not in out + err and "1.pipe" not in out + err  # not tried again


def test_mail_appended_to_the_mbox_without_its_lock_during_a_pass_is_kept(tmp_path: Path) -> None:
    # A writer that skips the lock (a shell `>>`) appends while the pass reads: the rewrite that writes the
    # read marks would drop that mail (it did: 20 of 20 appended messages lost), so no mark is written.
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path)
    for n in range(3):
        box.add(f"From: MAILER-DAEMON@example.net\nSubject: report {n}\n\nbody {n}\n".encode())
    box.close()
    source = MboxSource(path)
    items = list(source.unread())
    with path.open("ab") as out:
        out.write(b"From someone@example.org Tue Dec  1 10:00:00 2026\nSubject: appended\n\nhello\n\n")
    for item in items:
        source.done(item)
    with pytest.raises(MailerError, match="changed while it was read"):
        source.close()
    after = mailbox.mbox(path)
    subjects = [m["Subject"] for m in after]
    assert subjects == ["report 0", "report 1", "report 2", "appended"]
    assert all("R" not in m.get_flags() for m in after)  # nothing marked: the next run reads them again
    after.lock()  # the pass let go of the lock
    after.unlock()
    after.close()


def test_an_mbox_file_is_read_and_marked_under_its_lock(site: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path)
    for name in ("gmail", "qmail", "autoreply", "delayed"):
        box.add((FIXTURES / f"{name}.eml").read_bytes())
    box.add(b"From: a person <someone@example.com>\nSubject: hello\nStatus: RO\n\nalready read by a person\n")
    box.close()
    code, out, err = run(["bounces", "--mbox", str(path), "--json"], site)
    assert code == 0, err
    result = json.loads(out)
    assert result["counts"] | {} == {
        "messages": 4, "hard": 2, "soft": 1, "complaints": 0, "new_reports": 3, "suppressed": 2,
        "unreadable": 0, "ignored_auto_reply": 1,
    }  # fmt: skip
    assert sorted(result["suppressed"]) == ["ghost@example.net", "lost.reader@example.com"]
    box = mailbox.mbox(path)
    assert [m.get_flags() for m in box] == ["RO", "RO", "RO", "RO", "RO"]
    assert len(box) == 5 and "qmail-send program" in box[1].get_payload()  # the messages themselves kept
    box.close()
    code, out, err = run(["bounces", "--mbox", str(path), "--json"], site)
    assert json.loads(out)["counts"]["messages"] == 0


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--maildir", "nowhere"], {}, "nowhere: does not exist"),
        (["--mbox", "nowhere.mbox"], {}, "nowhere.mbox: does not exist"),
        ([], {}, "no bounce mailbox is set: pass --maildir DIR, --mbox FILE or --imap"),
        (["--maildir", ".", "--mbox", "x"], {}, "--maildir and --mbox: read one mailbox at a time"),
        (["--imap", "imaps://news:hunter2-secret@127.0.0.1/INBOX"], {}, "--imap: the URL holds a password"),
        (["--imap"], {}, "no IMAP server: set imap_host"),
        (["--imap", "imaps://news@127.0.0.1/INBOX"], {}, "needs imap_user and imap_password"),
        (
            ["--imap"],
            {"MAILER_IMAP_SECURITY": "ssl"},
            "imap_security (MAILER_IMAP_SECURITY): 'ssl' must be one",
        ),
    ],
)
def test_a_bad_mailbox_is_refused_in_one_line(
    site: dict[str, str], args: list[str], env: dict[str, str], message: str
) -> None:
    code, out, err = run(["bounces", *args], {**site, **env})
    assert code == 1
    assert err.startswith("Error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert "hunter2" not in out + err and "Traceback" not in err


def test_every_seconds_reads_until_sigterm(site: dict[str, str], tmp_path: Path) -> None:
    """A loop: the first pass, a bounce that arrives later is read by a later pass, SIGTERM ends it (143)."""
    folder = _maildir(tmp_path, ["postfix"])
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "bounces", "--maildir", str(folder), "--every", "1"],
        env={**full, **site, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in iter(stdout.readline, "")], daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=60).startswith("new/postfix.host: dsn: gone@example.net hard 5.1.1")
        shutil.copy(FIXTURES / "qmail.eml", folder / "tmp" / "later")
        os.rename(folder / "tmp" / "later", folder / "new" / "later")  # delivered as an MDA does
        assert lines.get(timeout=60).startswith("new/later: bounce: ghost@example.net hard 5.1.1")
        _wait_for(lambda: "later:2,S" in os.listdir(folder / "cur"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=30)
        stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert err.rstrip().endswith("Terminated (SIGTERM).") and "Traceback" not in err
    assert set(_suppressed(site)) == {"gone@example.net", "ghost@example.net"}


def _wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.05)


class _DroppingImap(socketserver.BaseRequestHandler):
    """An IMAP server that lets a client in, lists two unread messages, and hangs up on the first FETCH."""

    def handle(self) -> None:
        sock = self.request
        sock.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fault server ready\r\n")
        reader = sock.makefile("rb")
        for line in reader:
            tag, _, command = line.decode("ascii", "replace").strip().partition(" ")
            verb = command.split(" ", 2)[:2]
            if verb[0] == "CAPABILITY":
                sock.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag.encode() + b" OK done\r\n")
            elif verb[0] == "LOGIN":
                sock.sendall(tag.encode() + b" OK logged in\r\n")
            elif verb[0] == "SELECT":
                sock.sendall(b"* 2 EXISTS\r\n" + tag.encode() + b" OK [READ-WRITE] selected\r\n")
            elif verb == ["UID", "SEARCH"]:
                sock.sendall(b"* SEARCH 1 2\r\n" + tag.encode() + b" OK searched\r\n")
            else:  # FETCH, and anything else: the connection is lost
                sock.shutdown(socket.SHUT_RDWR)
                return


def test_an_imap_connection_lost_mid_pass_stops_with_exit_4(site: dict[str, str]) -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _DroppingImap)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **site,
        "MAILER_IMAP_HOST": "127.0.0.1",
        "MAILER_IMAP_PORT": str(server.server_address[1]),
        "MAILER_IMAP_SECURITY": "none",
        "MAILER_IMAP_USER": "bounce",
        "MAILER_IMAP_PASSWORD": "a-secret-password",
    }
    try:
        code, out, err = run(["bounces", "--imap"], env)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 4, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"Error: imap://bounce@127.0.0.1:{server.server_address[1]}/INBOX: fetch failed:")
    assert line.endswith("stopped there: run again to go on") and "a-secret-password" not in out + err


class _Utf8Imap(socketserver.BaseRequestHandler):
    """An IMAP server that takes a user name and password in UTF-8 through AUTHENTICATE PLAIN (RFC 4616), and
    has an empty INBOX; `seen` gets the credentials it was given."""

    seen: list[bytes] = []

    def handle(self) -> None:
        sock = self.request
        sock.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
        reader = sock.makefile("rb")
        for line in reader:
            tag, _, command = line.decode("ascii", "replace").strip().partition(" ")
            ok = tag.encode() + b" OK done\r\n"
            if command == "CAPABILITY":
                sock.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + ok)
            elif command == "AUTHENTICATE PLAIN":
                sock.sendall(b"+ \r\n")
                credentials = base64.b64decode(reader.readline().strip())
                self.seen.append(credentials)
                good = credentials == "\0bounce\0pässwörd-ü-secret".encode()
                sock.sendall(ok if good else tag.encode() + b" NO [AUTHENTICATIONFAILED] no\r\n")
            elif command.startswith("SELECT"):
                sock.sendall(b"* 0 EXISTS\r\n" + ok)
            elif command.startswith("UID SEARCH"):
                sock.sendall(b"* SEARCH\r\n" + ok)
            elif command == "LOGOUT":
                sock.sendall(b"* BYE bye\r\n" + ok)
                return
            else:
                sock.sendall(tag.encode() + b" BAD unknown\r\n")


def test_an_imap_password_with_non_ascii_characters_logs_in(site: dict[str, str]) -> None:
    """imaplib's LOGIN sends ASCII only: a password with an umlaut was a UnicodeEncodeError traceback; it now
    goes as UTF-8 through AUTHENTICATE PLAIN, and the server gets exactly the user and password set."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Utf8Imap)
    server.daemon_threads = True  # a client that failed without hanging up does not hold the test
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **site,
        "MAILER_IMAP_HOST": "127.0.0.1",
        "MAILER_IMAP_PORT": str(server.server_address[1]),
        "MAILER_IMAP_SECURITY": "none",
        "MAILER_IMAP_USER": "bounce",
        "MAILER_IMAP_PASSWORD": "pässwörd-ü-secret",
    }
    try:
        code, out, err = run(["bounces", "--imap"], env)
        wrong, out2, err2 = run(["bounces", "--imap"], {**env, "MAILER_IMAP_PASSWORD": "wröng-secret"})
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    assert err.strip().endswith("no unread message")
    assert _Utf8Imap.seen[0] == "\0bounce\0pässwörd-ü-secret".encode()
    assert wrong == 1 and err2.startswith("Error: ") and len(err2.strip().splitlines()) == 1, err2
    assert "cannot log in" in err2 and "wröng" not in out2 + err2 and "pässwörd" not in out + err
