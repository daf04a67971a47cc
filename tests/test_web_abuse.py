"""`mailer serve` under abuse: forged and replayed tokens, huge bodies, odd methods, traversal, floods.

One real `mailer serve` subprocess (waitress, 4 worker threads, as in production) on a free loopback port
serves the whole module; its log goes to a file that must never show a traceback. Every test uses its own
addresses, and reads what the server recorded straight from the SQLite suppression table.
"""

from __future__ import annotations

import base64
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mailer.campaign import LOOKUP_BATCH
from mailer.config import Settings
from mailer.ledger import Ledger
from mailer.tokens import Keyring, load_keyring
from tests import publisher
from tests.conftest import examples
from tests.served import mailer_serve
from tests.smtpd import SMTPServer

HOST = "127.0.0.1"
LIST_ID = "news.example.org"
ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"
ISSUE_TEXT = "The ninth issue, archived 九"
PROPERTY = hypothesis_settings(
    max_examples=examples(40), suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclass
class Server:
    """The running `mailer serve` and what the tests need to check it."""

    port: int
    settings: Settings
    keyring: Keyring
    log: Path
    proc: subprocess.Popen[bytes]

    def token(self, address: str) -> str:
        return self.keyring.sign(address, LIST_ID)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = HTTPConnection(HOST, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            conn.close()

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far: a cost that a busy machine does not inflate."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def one_click(self, token: str) -> int:
        return self.request("POST", f"/unsubscribe?t={quote(token)}", ONE_CLICK, {"Content-Type": FORM})[0]

    def raw(self, data: bytes, *, then: bytes = b"", timeout: float = 15.0, hold_open: bool = False) -> bytes:
        """Send bytes as they are and read the answer until the server closes the connection.

        With `hold_open` the client neither sends more nor says it is done, as a client that announced a
        body and never sends it: the answer must come without waiting for bytes that never come.
        """
        with socket.create_connection((HOST, self.port), timeout=timeout) as sock:
            sock.sendall(data)
            try:
                if then:
                    sock.sendall(then)
                if not hold_open:
                    sock.shutdown(socket.SHUT_WR)  # no more from us: a server waiting for bytes must give up
            except OSError:  # the server answered and closed before reading it all: fine
                pass
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def suppressed(self, like: str = "%") -> Counter[tuple[str, str]]:
        """(email, source) of every row in the suppression table matching `like`, counted."""
        conn = sqlite3.connect(self.settings.db_path)
        try:
            rows = conn.execute(
                "SELECT email, source FROM suppressions WHERE email LIKE ?", (like,)
            ).fetchall()
        finally:
            conn.close()
        return Counter((email, source) for email, source in rows)

    def assert_healthy(self) -> None:
        """Still up, still answering, and nothing in its log that looks like a crash."""
        assert self.proc.poll() is None, "mailer serve died"
        status, _, body = self.request("GET", "/healthz")
        assert (status, body) == (200, b"ok\n")
        log = self.log.read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("web-abuse")
    data_dir = root / "state"
    archive = data_dir / "archive"
    archive.mkdir(parents=True)
    (archive / "2026-02-09.html").write_text(f"<p>{ISSUE_TEXT}</p>", encoding="utf-8")
    (data_dir / "private.html").write_text("PRIVATE-FILE-CONTENT", encoding="utf-8")
    (archive / "linked.html").symlink_to(data_dir / "private.html")
    settings = Settings(data_dir=data_dir, list_id=LIST_ID, from_email="news@example.org")
    keyring = load_keyring(settings)  # makes state/secret.key, which serve then loads: a file worth stealing
    Ledger(settings.db_path).close()  # the tables exist before the first request
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(
        MAILER_DATA_DIR=str(data_dir),
        MAILER_LIST_ID=LIST_ID,
        MAILER_FROM_EMAIL="news@example.org",
        MAILER_WEB_URL="https://news.example.org",
        PYTHONUNBUFFERED="1",
    )
    with mailer_serve(root, env) as running:
        yield Server(running.port, settings, keyring, running.log, running.proc)


# --- tokens -----------------------------------------------------------------------------------------------


def _forgeries(server: Server, address: str) -> dict[str, str]:
    good = server.token(address)
    encoded, mac = good.split(".")
    other_mac = server.token("someone-else@example.com").split(".")[1]
    return {
        "other key": Keyring("attacker-key-0123456789").sign(address, LIST_ID),
        "other list": server.keyring.sign(address, "other.example.org"),
        "mac of another address": f"{encoded}.{other_mac}",
        "truncated mac": good[:-1],
        "mac one longer": good + "A",
        "padding added": f"{encoded}==.{mac}",
        "upper-case address": base64.urlsafe_b64encode(address.upper().encode()).decode().rstrip("=")
        + f".{mac}",
        "no mac": encoded,
        "empty": "",
        "dot only": ".",
        "spaces": f" {good} ",
        "NUL inside": f"{encoded}\x00.{mac}",
        "huge": "A" * 5000 + "." + mac,
        "script": '"><script>alert(1)</script>',
    }


def test_forged_tokens_are_refused_on_every_route(server: Server) -> None:
    address = "forged-victim@example.com"
    for name, token in _forgeries(server, address).items():
        t = quote(token)
        status, _, body = server.request("GET", f"/unsubscribe?t={t}")
        assert status == 400, name
        assert b"<button" not in body and b"<script" not in body, name
        assert server.one_click(token) == 400, name
        form = f"t={t}&action=unsubscribe".encode()
        assert server.request("POST", "/unsubscribe", form, {"Content-Type": FORM})[0] == 400, name
        if token:  # a valid token in the query does not rescue a forged one in the form: the form's wins
            status, _, _ = server.request(
                "POST", f"/unsubscribe?t={quote(server.token(address))}", form, {"Content-Type": FORM}
            )
            assert status == 400, name
        server.request("POST", "/unsubscribe", f"t={t}&action=resubscribe".encode(), {"Content-Type": FORM})
    assert server.suppressed("forged-victim%") == Counter()
    server.assert_healthy()


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


@PROPERTY
@given(data=st.data())
def test_any_change_to_a_genuine_token_makes_it_worthless(server: Server, data: st.DataObject) -> None:
    address = "mutation-target@example.com"
    good = server.token(address)
    position = data.draw(st.integers(0, len(good) - 1))
    replacement = data.draw(st.sampled_from(_B64).filter(lambda c: c != good[position]))
    forged = good[:position] + replacement + good[position + 1 :]
    assert server.one_click(forged) == 400
    assert server.suppressed("mutation-target%") == Counter()


@PROPERTY
@given(token=st.text(max_size=300))
def test_random_tokens_are_refused(server: Server, token: str) -> None:
    status = server.one_click(token)
    assert status == 400
    status, _, _ = server.request("GET", f"/unsubscribe?t={quote(token)}")
    assert status == 400


def test_a_replayed_one_click_is_recorded_once(server: Server) -> None:
    address = "replay@example.com"
    token = server.token(address)
    for _ in range(5):
        assert server.one_click(token) == 200
    # the same link pressed in a browser afterwards changes nothing either
    form = f"t={quote(token)}&action=unsubscribe".encode()
    assert server.request("POST", "/unsubscribe", form, {"Content-Type": FORM})[0] == 200
    assert server.suppressed("replay@%") == Counter({(address, "one-click"): 1})
    conn = sqlite3.connect(server.settings.db_path)
    try:
        [(created,)] = conn.execute(
            "SELECT created_at FROM suppressions WHERE email = ?", (address,)
        ).fetchall()
    finally:
        conn.close()
    assert server.one_click(token) == 200
    conn = sqlite3.connect(server.settings.db_path)
    try:
        [(again,)] = conn.execute(
            "SELECT created_at FROM suppressions WHERE email = ?", (address,)
        ).fetchall()
    finally:
        conn.close()
    assert again == created  # a replay does not even touch the row
    server.assert_healthy()


# --- bodies, headers and methods --------------------------------------------------------------------------


def _status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    assert match, answer[:200]
    return int(match.group(1))


def test_huge_and_broken_bodies_are_refused_without_effect(server: Server) -> None:
    address = "big-body@example.com"
    token = server.token(address)
    head = f"POST /unsubscribe?t={token} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {FORM}\r\n"
    head += "Connection: close\r\n"
    padded = ONE_CLICK + b"&pad=" + b"x" * 200_000

    # a gigabyte announced, none sent: answered without waiting for it (a server that waited would give up
    # only at its idle limit, after this client's read deadline, and the read would time out)
    announced = f"{head}Content-Length: 1000000000\r\n\r\n".encode()
    patience = server.settings.serve_idle_timeout * 2 / 3
    assert _status(server.raw(announced, hold_open=True, timeout=patience)) == 413
    # 200 KB actually sent, one-click field first
    assert _status(server.raw(f"{head}Content-Length: {len(padded)}\r\n\r\n".encode(), then=padded)) == 413
    # the same, chunked, with no length given
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(padded[i : i + 8192]), padded[i : i + 8192])
        for i in range(0, len(padded), 8192)
    )
    answer = server.raw(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode(), then=chunked + b"0\r\n\r\n")
    assert _status(answer) == 413
    # lengths that are not lengths
    for length in ("abc", "-1", "1e9", "0x10", "99999999999999999999999"):
        assert _status(server.raw(f"{head}Content-Length: {length}\r\n\r\n".encode())) in (400, 413), length
    # a 300 KB header and a 300 KB query string
    assert _status(server.raw(f"{head}X-Pad: {'y' * 300_000}\r\nContent-Length: 0\r\n\r\n".encode())) == 431
    long_query = f"POST /unsubscribe?t={'A' * 300_000} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n\r\n"
    assert _status(server.raw(long_query.encode())) in (400, 414, 431)
    # fewer bytes than announced, then the client goes away
    server.raw(f"{head}Content-Length: 100\r\n\r\n".encode(), then=b"List-Unsub")
    # 5,000 multipart parts in 64 KB: parsed quickly, and the lone genuine field still counts
    boundary = "b"
    parts = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(1000)
    )
    parts += f'--{boundary}\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n'
    parts += f"--{boundary}--\r\n"
    assert len(parts) < 64 * 1024
    cpu = server.cpu_seconds()
    status, _, _ = server.request(
        "POST",
        f"/unsubscribe?t={token}",
        parts.encode(),
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200 and server.cpu_seconds() - cpu < 1  # a parse quadratic in the parts takes far more
    assert server.suppressed("big-body@%") == Counter({(address, "one-click"): 1})
    server.assert_healthy()


def test_garbage_on_the_wire_gets_a_4xx_and_the_server_stays_up(server: Server) -> None:
    for data in [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello on the plain port
        b"GET /unsubscribe HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
        b"POST /unsubscribe?t=x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST /unsubscribe HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"\r\n" * 1000,
    ]:
        answer = server.raw(data)
        assert answer == b"" or 400 <= _status(answer) < 500, answer[:200]
    server.assert_healthy()


ROUTES = ["/", "/healthz", "/unsubscribe?t={token}", "/issues/2026-02-09"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOO"])
def test_wrong_methods_get_405_and_change_nothing(server: Server, method: str) -> None:
    address = f"method-{method.lower()}@example.com"
    token = server.token(address)
    for route in ROUTES:
        status, headers, body = server.request(
            method, route.format(token=token), ONE_CLICK, {"Content-Type": FORM}
        )
        assert status == 405, (method, route)
        assert "GET" in headers["allow"] and b"Traceback" not in body
    # GET and HEAD never unsubscribe, whatever the body says
    for safe in ("GET", "HEAD"):
        status, _, _ = server.request(safe, f"/unsubscribe?t={token}", ONE_CLICK, {"Content-Type": FORM})
        assert status == 200
    assert server.suppressed(f"method-{method.lower()}@%") == Counter()
    server.assert_healthy()


# --- the archive ------------------------------------------------------------------------------------------

SECRETS = (b"PRIVATE-FILE-CONTENT", b"SQLite format 3", b"root:x:0:0")
TRAVERSALS = [
    "/issues/../secret.key",
    "/issues/..%2fsecret.key",
    "/issues/..%2Fsecret.key",
    "/issues/%2e%2e%2fsecret.key",
    "/issues/%2E%2E%2Fsecret.key",
    "/issues/%2e%2e/secret.key",
    "/issues/%252e%252e%252fsecret.key",
    "/issues/..%5csecret.key",
    "/issues/..\\secret.key",
    "/issues/%c0%ae%c0%ae%c0%afsecret.key",
    "/issues/%ef%bc%8e%ef%bc%8e%ef%bc%8fsecret.key",
    "/issues/....//secret.key",
    "/issues/2026-02-09/../../secret.key",
    "/issues/..%2fprivate",
    "/issues/..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/issues/%2fetc%2fpasswd",
    "/issues//etc/passwd",
    "/issues/..%2fmailer.db%00",
    "/issues/2026-02-09%00.html",
    "/issues/2026-02-09.html",
    "/issues/linked",
    "/issues/..",
    "/issues/.",
    "/issues/",
    "/issues/%2e",
    "/issues/~root",
    "/issues/2026-02-09;/../../secret.key",
    "/issues/2026-02-09?/../../secret.key",
    "/issues/2026-02-09#/../../secret.key",
    "/%2e%2e/secret.key",
    "/issues%2f..%2fsecret.key",
]


def _assert_no_leak(server: Server, answer: bytes, path: str) -> None:
    """Nothing but the genuine archived issue (200) or a 400/404, and never a secret's bytes."""
    key = server.settings.data_dir.joinpath("secret.key").read_bytes().strip()
    assert key not in answer, path
    for secret in SECRETS:
        assert secret not in answer, path
    status = _status(answer)
    if status == 200 and re.match(r"/issues/(?:[?#]|$)", path):  # the index, which lists no issue here
        assert b'<html lang="en">' in answer and ISSUE_TEXT.encode() not in answer, path
    elif status == 200:  # "2026-02-09?/../x" is the issue with a query string: fine
        assert ISSUE_TEXT.encode() in answer, path
    else:
        assert status in (400, 404), (path, status)


@pytest.mark.parametrize("path", TRAVERSALS)
def test_archive_traversal_finds_nothing(server: Server, path: str) -> None:
    answer = server.raw(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    _assert_no_leak(server, answer, path)


_SEGMENTS = [
    "..", ".", "%2e", "%2e%2e", "%2f", "%5c", "%00", "secret.key", "secret", "mailer.db", "private",
    "archive", "state", "2026-02-09", "/", "//", "etc", "passwd", "%252e", "\\", ";", ".html",
]  # fmt: skip


@PROPERTY
@given(parts=st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=8))
def test_any_mix_of_dots_slashes_and_encodings_finds_nothing(server: Server, parts: list[str]) -> None:
    path = "/issues/" + "".join(parts)
    answer = server.raw(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    _assert_no_leak(server, answer, path)


def test_the_archive_still_serves_the_real_issue(server: Server) -> None:
    status, headers, body = server.request("GET", "/issues/2026-02-09")
    assert status == 200 and ISSUE_TEXT in body.decode()
    assert "script-src" not in headers["content-security-policy"]


# --- a flood of one-click POSTs ------------------------------------------------------------------------


def test_a_thousand_concurrent_one_clicks(server: Server) -> None:
    """1,000 POSTs from 50 threads: 800 genuine, 100 replays, 100 forged; each genuine one recorded once."""
    genuine = [f"flood{i:04d}@example.com" for i in range(800)]
    attacker = Keyring("attacker-key-0123456789")
    jobs = [(server.token(a), 200) for a in genuine]
    jobs += [(server.token(a), 200) for a in random.Random(7).sample(genuine, 100)]
    jobs += [(attacker.sign(f"flood-forged{i}@example.com", LIST_ID), 400) for i in range(100)]
    random.Random(8).shuffle(jobs)
    stop = threading.Event()

    def post(token: str) -> int:
        if stop.is_set():
            return -1
        return server.one_click(token)

    deadline = 90.0
    with ThreadPoolExecutor(max_workers=50) as pool:
        futures = {pool.submit(post, token): want for token, want in jobs}
        done, pending = wait(futures, timeout=deadline, return_when=FIRST_EXCEPTION)
        if pending:  # stop quickly instead of hanging the test run
            stop.set()
            for future in pending:
                future.cancel()
        statuses = Counter((futures[f], f.result()) for f in done if f.exception() is None)
        errors = [f.exception() for f in done if f.exception() is not None]
    assert not pending, f"{len(pending)} requests unanswered after {deadline}s"
    assert not errors, errors[:3]
    assert statuses == Counter({(200, 200): 900, (400, 400): 100})
    rows = server.suppressed("flood%")
    assert rows == Counter({(a, "one-click"): 1 for a in genuine})
    server.assert_healthy()


# --- an unsubscribe while a send is running -----------------------------------------------------------


def test_a_one_click_during_a_running_send_stops_that_readers_message(
    server: Server, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    """The send looks subscribers up a batch at a time, just before mailing them: a later batch sees it."""
    readers = [f"during{i:04d}@example.com" for i in range(LOOKUP_BATCH + 44)]
    victim = readers[LOOKUP_BATCH + 34]  # in the second lookup batch
    post = tmp_path / "2026-03-01.md"
    post.write_text("---\ntitle: During\ndate: 2026-03-01\n---\nHello.\n", encoding="utf-8")
    csv = tmp_path / "subscribers.csv"
    csv.write_text("email\n" + "\n".join(readers) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(
        MAILER_DATA_DIR=str(server.settings.data_dir),
        MAILER_LIST_ID=LIST_ID,
        **publisher.ENV,
        MAILER_SMTP_HOST=smtp_server.host,
        MAILER_SMTP_PORT=str(smtp_server.port),
        MAILER_SMTP_SECURITY="none",
        MAILER_SMTP_TIMEOUT="120",  # the send waits for the held reply below
    )
    # one connection, held at a reader of the first batch: the second batch cannot be looked up yet
    held = smtp_server.hold(readers[100])
    send = subprocess.Popen(
        [sys.executable, "-m", "mailer", "send", str(post), "--to", str(csv), "--yes", "--force"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert held.reached.wait(timeout=60), "the send never reached the held reader"
        assert server.one_click(server.token(victim)) == 200
        held.release.set()
        _, err = send.communicate(timeout=120)
    finally:
        held.release.set()
        if send.poll() is None:
            send.kill()
            send.communicate()
    assert send.returncode == 0, err.decode()
    got = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert got == Counter({r: 1 for r in readers if r != victim})
    assert re.search(rb"suppressed \(unsubscribed, bounced or complained\)\s+1\n", err), err.decode()
    server.assert_healthy()
