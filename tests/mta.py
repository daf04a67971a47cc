"""A throwaway Postfix + Dovecot pair on loopback ports for end-to-end tests; nothing can leave the machine.

    with MailSystem.start(root, "inbox.example.net", ["alice", "bob"]) as mta:
        ...send to mta.smtp_port...
        mta.wait_for("alice", 1)           # poll IMAP until alice has 1 message (deadline)
        mta.fetch("alice")                 # every message in alice's INBOX, as bytes, over IMAP

Postfix runs from its own config folder (`postfix -c DIR`) with its own queue and data folders, one smtpd
on a free 127.0.0.1 port and no other listener; it accepts mail for the test's domain only and delivers it
with virtual(8) into one Maildir per mailbox (owned by `nobody`); every other destination is refused at RCPT
and default_transport is error(8). Dovecot runs from its own config file (`dovecot -c FILE`) with a static
passdb, listening for IMAP on another free 127.0.0.1 port. Both need root (Postfix's master does) and the
Debian packages postfix and dovecot-imapd; no system daemon or hand-made configuration is used.
"""

from __future__ import annotations

import atexit
import imaplib
import os
import pty
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.command import run
from tests.ports import HOST, free_port, free_ports, until_started
from tests.smtpd import TLSFiles

POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
DOVECOT = Path("/usr/sbin/dovecot")
PASSWORD = "imap-test-password"
_CHECKED_QUEUE: Path | None = None  # a queue folder as `postfix check` made it: MailSystem._make_queue


def missing() -> str:
    """Why this machine cannot run the MTA tests ("" when it can)."""
    for program in (POSTFIX, POSTCONF, DOVECOT):
        if not os.access(program, os.X_OK):
            return f"{program} is not installed (Debian packages postfix and dovecot-imapd)"
    if os.geteuid() != 0:
        return "Postfix's master process must start as root"
    for user in ("postfix", "dovecot", "dovenull", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"no system user {user!r} (made by the postfix and dovecot packages)"
    return ""


def _wait_listening(port: int, deadline: float, what: str, log: Path) -> None:
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
                raise RuntimeError(f"{what} did not listen on {HOST}:{port}; log:\n{tail}") from None
            time.sleep(0.05)


def run_on_tty(args: list[str], timeout: float = 60.0) -> tuple[int, str]:
    """Run a command with a terminal as stderr: Postfix's commands say why they fail only to a terminal.

    Reads until the command exits, not until the terminal closes: the daemons it starts inherit it.
    """
    main, side = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=side, stderr=side)
    finally:
        os.close(side)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            exited = proc.poll() is not None
            ready, _, _ = select.select([main], [], [], 0 if exited else 0.05)
            if ready:
                try:
                    chunks.append(os.read(main, 4096))
                    continue
                except OSError:  # EIO: no writer left
                    pass
            if exited:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                break
    finally:
        os.close(main)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace").strip()


def _postfix_main_cf(root: Path, domain: str, owner: pwd.struct_passwd, accept_unknown: bool) -> str:
    # accept_unknown: an unknown mailbox of the domain is accepted at RCPT and bounced by virtual(8), so
    # Postfix mails a DSN to the envelope sender (as a relay that accepts first and delivers later does)
    return f"""\
compatibility_level = 3.6
queue_directory = {root}/postfix-queue
data_directory = {root}/postfix-data
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
mail_owner = postfix
myhostname = mx.{domain}
mydomain = {domain}
myorigin = $myhostname
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# nothing but the test's domain is accepted, and nothing can leave
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
relay_domains =
smtpd_relay_restrictions = reject_unauth_destination
default_transport = error:this test server sends nothing out
relay_transport = error:this test server relays nothing
local_transport = error:no local delivery here
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{root}/postfix-mailboxes
virtual_uid_maps = static:{owner.pw_uid}
virtual_gid_maps = static:{owner.pw_gid}
virtual_minimum_uid = 1
smtpd_banner = $myhostname ESMTP mailer-test
biff = no
smtputf8_enable = yes
# bounce+TOKEN@domain is delivered to the mailbox bounce@domain
recipient_delimiter = +
smtpd_reject_unlisted_recipient = {"no" if accept_unknown else "yes"}
"""


def _postfix_master_cf(smtp_port: int) -> str:
    services = [
        f"{HOST}:{smtp_port} inet n - n - - smtpd",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "virtual unix - n n - - virtual",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(services) + "\n"


def _dovecot_conf(
    root: Path, imap_port: int, owner: pwd.struct_passwd, tls: TLSFiles | None, imaps_port: int
) -> str:
    ssl = f"ssl = yes\nssl_cert = <{tls.cert}\nssl_key = <{tls.key}" if tls else "ssl = no"
    return f"""\
base_dir = {root}/dovecot-run
state_dir = {root}/dovecot-state
log_path = {root}/dovecot.log
instance_name = mailer-test-{imap_port}
listen = {HOST}
protocols = imap
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:{root}/mail/%d/%n
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={owner.pw_uid} gid={owner.pw_gid} home={root}/mail/%d/%n
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {imaps_port if tls else 0}
  }}
}}
"""


class MailSystem:
    """Postfix (SMTP in) and Dovecot (IMAP out) for one test; stop() always cleans up."""

    def __init__(
        self,
        root: Path,
        domain: str,
        ports: Iterator[int],
        *,
        tls: TLSFiles | None = None,
        accept_unknown: bool = False,
    ) -> None:
        self.root = root
        self.domain = domain
        self.smtp_port = next(ports)
        self.imap_port = next(ports)  # IMAP, with STARTTLS when tls is given
        self.imaps_port = next(ports) if tls else 0  # implicit TLS, when tls is given
        self.tls = tls
        self.accept_unknown = accept_unknown
        self.postfix_dir = root / "postfix-etc"
        self.dovecot_conf = root / "dovecot.conf"
        self.postfix_log = root / "postfix.log"
        self.dovecot_log = root / "dovecot.log"
        self._postfix_started = False
        self._dovecot_started = False

    @classmethod
    def start(
        cls,
        domain: str,
        mailboxes: Iterable[str],
        *,
        timeout: float = 20.0,
        tls: TLSFiles | None = None,
        accept_unknown: bool = False,
        ports: Iterator[int] | None = None,
    ) -> MailSystem:
        """Configure and start both servers in a new folder; each mailbox is local@domain.

        With `tls`, Dovecot offers STARTTLS on imap_port and implicit TLS on imaps_port with that
        certificate; with `accept_unknown`, Postfix bounces mail for unknown mailboxes with a DSN. The ports
        are the next ones of `ports` (default: free ones); when another process took one before the server
        bound it, both start again in a new folder on the next ones.
        """
        taken = ports or free_ports()
        names = list(mailboxes)
        return until_started(
            lambda: cls._start_in_new_folder(domain, names, taken, timeout, tls, accept_unknown)
        )

    @classmethod
    def _start_in_new_folder(
        cls,
        domain: str,
        mailboxes: list[str],
        ports: Iterator[int],
        timeout: float,
        tls: TLSFiles | None,
        accept_unknown: bool,
    ) -> MailSystem:
        # not under pytest's tmp_path: its folders are 0700, and virtual(8) delivers as `nobody`
        root = Path(tempfile.mkdtemp(prefix="mailer-mta-"))
        root.chmod(0o755)
        system = cls(root, domain, ports, tls=tls, accept_unknown=accept_unknown)
        try:
            system._configure(mailboxes)
            system._start(time.monotonic() + timeout)
        except BaseException:
            system.stop()
            raise
        return system

    def __enter__(self) -> MailSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def address(self, mailbox: str) -> str:
        """The address of a mailbox (local part) at the test's domain."""
        return f"{mailbox}@{self.domain}"

    def _configure(self, mailboxes: list[str]) -> None:
        owner = pwd.getpwnam("nobody")
        self.postfix_dir.mkdir()
        _write_settled(
            self.postfix_dir / "main.cf", _postfix_main_cf(self.root, self.domain, owner, self.accept_unknown)
        )
        _write_settled(self.postfix_dir / "master.cf", _postfix_master_cf(self.smtp_port))
        for name in ("postfix-queue", "postfix-data"):
            (self.root / name).mkdir()
        shutil.chown(self.root / "postfix-data", "postfix")
        mail = self.root / "mail"
        mail.mkdir()
        shutil.chown(mail, owner.pw_uid, owner.pw_gid)
        # virtual(8) delivers to virtual_mailbox_base/<value>; a trailing / means Maildir
        table = "".join(f"{self.address(m)} {self.domain}/{m}/\n" for m in mailboxes)
        _write_settled(self.root / "postfix-mailboxes", table)
        self.dovecot_conf.write_text(
            _dovecot_conf(self.root, self.imap_port, owner, self.tls, self.imaps_port)
        )

    def _start(self, deadline: float) -> None:
        self._make_queue()
        self._run([str(POSTFIX), "-c", str(self.postfix_dir), "start"], "postfix start", self.postfix_log)
        self._postfix_started = True
        self._run([str(DOVECOT), "-c", str(self.dovecot_conf)], "dovecot", self.dovecot_log)
        self._dovecot_started = True
        _wait_listening(self.smtp_port, deadline, "Postfix", self.postfix_log)
        _wait_listening(self.imap_port, deadline, "Dovecot", self.dovecot_log)
        if self.imaps_port:
            _wait_listening(self.imaps_port, deadline, "Dovecot (imaps)", self.dovecot_log)

    def _make_queue(self) -> None:
        """Give Postfix its queue folders, and let its start skip the installation checks (`quick-start`).

        Those checks make the queue's folders with their owners and modes (post-install: ~40 postconf runs),
        then look for misplaced queue files and wrong owners: 1.7-2.2 s of a 2-2.5 s start at load 19, the
        same for every instance. The first instance of a test run is checked in full (`postfix check`), and
        the folders made for it are copied, owners and modes kept, for the next ones."""
        global _CHECKED_QUEUE
        queue = self.root / "postfix-queue"
        if _CHECKED_QUEUE is None:
            self._run([str(POSTFIX), "-c", str(self.postfix_dir), "check"], "postfix check", self.postfix_log)
            copy = Path(tempfile.mkdtemp(prefix="mailer-mta-queue-")) / "queue"
            subprocess.run(["cp", "-a", str(queue), str(copy)], check=True)
            atexit.register(shutil.rmtree, copy.parent, ignore_errors=True)
            _CHECKED_QUEUE = copy
        else:
            queue.rmdir()
            subprocess.run(["cp", "-a", str(_CHECKED_QUEUE), str(queue)], check=True)
        (queue / "quick-start").touch()

    def _run(self, args: list[str], what: str, log: Path) -> None:
        code, output = run_on_tty(args)
        if code != 0:
            told = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} failed ({code}): {output}\n{told}".strip())

    def stop(self) -> None:
        """Stop Postfix and Dovecot and remove the folder; safe to call more than once."""
        problems: list[str] = []
        if self._postfix_started:
            self._postfix_started = False
            code, output = run_on_tty([str(POSTFIX), "-c", str(self.postfix_dir), "stop"])
            if code != 0:
                problems.append(f"postfix stop ({code}): {output}")
        if self._dovecot_started:
            self._dovecot_started = False
            self._stop_dovecot(problems)
        shutil.rmtree(self.root, ignore_errors=True)
        if problems:
            raise RuntimeError("; ".join(problems))

    def _stop_dovecot(self, problems: list[str]) -> None:
        pid_file = self.root / "dovecot-run" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            problems.append(f"dovecot: no pid in {pid_file}")
            return
        # `dovecot stop` took 2 s: the master sleeps a second after each round of signals to its processes.
        # Nothing of this throwaway instance needs an orderly end (the test has read its mail, the folder goes
        # next), so its process group (the master leads one, every process of it is in it) is killed at once.
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            problems.append(f"dovecot {pid} was not running")
            return
        deadline = time.monotonic() + 10
        while _group_alive(pid):
            if time.monotonic() > deadline:
                problems.append(f"dovecot's processes (group {pid}) did not end after SIGKILL")
                return
            time.sleep(0.01)

    # --- reading mail, as a mail client does ----------------------------------------------------------

    def fetch(self, mailbox: str) -> list[bytes]:
        """Every message in the mailbox's INBOX, oldest first, read over IMAP (LOGIN, SELECT, FETCH)."""
        with imaplib.IMAP4(HOST, self.imap_port, timeout=10) as imap:
            imap.login(self.address(mailbox), PASSWORD)
            imap.select("INBOX", readonly=True)
            _, data = imap.uid("SEARCH", "ALL")
            uids = data[0].split() if data and data[0] else []
            messages = []
            for uid in uids:
                _, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
                messages.append(next(p[1] for p in parts if isinstance(p, tuple)))
            imap.logout()
        return messages

    def count(self, mailbox: str) -> int:
        """How many messages the mailbox's INBOX holds, asked over IMAP (STATUS)."""
        with imaplib.IMAP4(HOST, self.imap_port, timeout=10) as imap:
            imap.login(self.address(mailbox), PASSWORD)
            _, data = imap.status("INBOX", "(MESSAGES)")
            imap.logout()
        text = data[0].decode() if data and isinstance(data[0], bytes) else ""
        return int(text.rsplit("MESSAGES", 1)[1].strip(" )")) if "MESSAGES" in text else 0

    def wait_for(self, counts: dict[str, int], timeout: float = 30.0) -> None:
        """Poll IMAP until every mailbox holds its count of messages; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            got = {m: self.count(m) for m in counts}
            if got == counts:
                return
            if any(got[m] > counts[m] for m in counts) or time.monotonic() > deadline:
                raise AssertionError(f"mailboxes hold {got}, expected {counts}; {self.log_tail()}")
            time.sleep(0.1)

    def queue_is_empty(self) -> bool:
        """Whether Postfix holds no message in any queue (all delivered, or bounced)."""
        queue = self.root / "postfix-queue"
        for name in ("maildrop", "incoming", "active", "deferred", "hold"):
            folder = queue / name
            if folder.is_dir() and any(p.is_file() for p in folder.rglob("*")):
                return False
        return True

    def deliveries(self) -> list[str]:
        """The Postfix log lines of completed deliveries (status=sent)."""
        text = self.postfix_log.read_text(errors="replace") if self.postfix_log.exists() else ""
        return [line for line in text.splitlines() if "status=sent" in line]

    def log_tail(self) -> str:
        """The end of both logs, for a failure message."""
        out = []
        for log in (self.postfix_log, self.dovecot_log):
            text = log.read_text(errors="replace") if log.exists() else "(none)"
            out.append(f"--- {log.name}:\n{text[-2000:]}")
        return "\n".join(out)


def _write_settled(path: Path, text: str) -> None:
    """Write a file Postfix reads, dated a minute back: Postfix will not read a configuration or lookup table
    changed in the last two seconds (it might be half-written), and sleeps 0.3 s at a time until it is
    older; each start waited ~2.1 s for the main.cf it had just been given."""
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group runs (a zombie not yet reaped does not)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def send_env(system: MailSystem, folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The MAILER_* settings a send through this mail system needs, none inherited, one data folder; run
    from `folder` so no stray mailer.toml is read."""
    from tests import publisher

    monkeypatch.chdir(folder)
    for name in list(os.environ):
        if name.startswith("MAILER_"):
            monkeypatch.delenv(name)
    return {
        "MAILER_DATA_DIR": str(folder / "state"),
        "MAILER_SMTP_HOST": HOST,
        "MAILER_SMTP_PORT": str(system.smtp_port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_SMTP_TIMEOUT": "10",
        "MAILER_FROM_EMAIL": "news@example.org",
        "MAILER_WEB_URL": f"http://{HOST}:{free_port()}",
        "MAILER_POSTAL_ADDRESS": publisher.POSTAL_ADDRESS,
    }


def send(post: Path, subscribers: Path, env: dict[str, str]) -> str:
    """`mailer send` of the post to the list in env's mail system (send_env); what it said on stderr."""
    # the local Postfix delivers to example.org and the unsubscribe pages are on 127.0.0.1: both on purpose
    skip = ["--skip-check", "from-address", "--skip-check", "unsubscribe-url"]
    code, _, err = run(["send", str(post), "--to", str(subscribers), "--yes", "--force", *skip], env)
    assert code == 0, err
    return err


def figure(err: str, label: str) -> int:
    """A figure of the send's report (`sent  3`), 0 when the report has no such line."""
    match = re.search(rf"^\s*{re.escape(label)}\s+(\d+)$", err, re.MULTILINE)
    return int(match.group(1)) if match else 0


@contextmanager
def running(domain: str, mailboxes: Iterable[str], **options: Any) -> Iterator[MailSystem]:
    """Postfix and Dovecot for a test module, stopped at the end even when a test fails; the module is
    skipped where they cannot run, except in CI, where that is a failure."""
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the MTA tests, but {why}")
        pytest.skip(why)
    system = MailSystem.start(domain, mailboxes, **options)
    try:
        yield system
    finally:
        system.stop()
