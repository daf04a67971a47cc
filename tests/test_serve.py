"""`mailer serve` as a process: bad listen addresses, slow clients, links that outlive a new sender."""

from __future__ import annotations

import email
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import policy
from http.client import HTTPConnection
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE
from tests.served import mailer_serve

HOST = "127.0.0.1"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _mailer(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailer", *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def serving(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """`mailer serve` on a free port; yields the port once it listens, stops it with Ctrl-C."""
    with mailer_serve(cwd, env or _env(), *args) as running:
        yield running.port
    assert "Traceback" not in running.log.read_text()


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("256.1.1.1", "0", "--host 256.1.1.1: not an address to listen on"),
        ("no-such-host.invalid", "0", "--host no-such-host.invalid: not an address to listen on"),
        ("127.0.0.1", "BUSY", "cannot listen: Address already in use"),
    ],
)
def test_a_bad_listen_address_is_one_line_and_exit_1(
    tmp_path: Path, host: str, port: str, message: str
) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        if port == "BUSY":
            port = str(busy.getsockname()[1])
        result = _mailer("serve", "--host", host, "--port", port, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert not result.stdout


def _healthz(port: int, timeout: float) -> tuple[int, bytes]:
    conn = HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


SLOW_CLIENTS = 150  # more than waitress's default connection_limit of 100


def test_healthz_answers_while_150_clients_send_their_headers_slowly(tmp_path: Path) -> None:
    """Each slow client sent half a request line and stalls; under the old limit of 100 /healthz hung."""
    with serving(tmp_path, env=_env(MAILER_DATA_DIR=str(tmp_path / "state"))) as port:
        slow = []
        try:
            for _ in range(SLOW_CLIENTS):
                sock = socket.create_connection((HOST, port), timeout=10)
                sock.sendall(b"GET /unsubscribe?t=")
                slow.append(sock)
            started = time.monotonic()
            assert _healthz(port, timeout=20) == (200, b"ok\n")
            waited = time.monotonic() - started
            assert waited < 20  # a bound far above the few milliseconds it takes, far below the 120 s cut-off
        finally:
            for sock in slow:
                sock.close()


def test_a_client_that_stops_sending_is_cut_off(tmp_path: Path) -> None:
    """A stalled half request is closed by the server (serve_idle_timeout), not held for ever."""
    # 2 s instead of the default 15: the same cut, 13 s sooner (the deadline for the whole request stays
    # 10 s, so it is the idle limit that cuts)
    env = _env(MAILER_DATA_DIR=str(tmp_path / "state"), MAILER_SERVE_IDLE_TIMEOUT="2")
    with serving(tmp_path, env=env) as port:
        with socket.create_connection((HOST, port), timeout=90) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: the headers never end
            started = time.monotonic()
            assert sock.recv(1024) == b""  # the server closed it
            # not at once, but once it had been silent for 2 s (checked every 2 s), not the default's 15
            assert 1.5 < time.monotonic() - started < 15


def test_a_client_that_trickles_its_headers_is_cut_off(tmp_path: Path) -> None:
    """One header byte every 0.5 s never looks idle; the server closes it once the headers take too long
    (serve_request_timeout: 2 s here instead of the default 10, the same cut 8 s sooner)."""
    env = _env(MAILER_DATA_DIR=str(tmp_path / "state"), MAILER_SERVE_REQUEST_TIMEOUT="2")
    with serving(tmp_path, env=env) as port:
        with socket.create_connection((HOST, port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            closed = False
            for byte in b"X-Slow: " + b"a" * 200:  # 100 s of trickling if nobody stops it
                readable, _, _ = select.select([sock], [], [], 0.5)
                if readable:
                    try:
                        closed = sock.recv(1024) == b""
                    except ConnectionResetError:
                        closed = True
                    break
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
            assert closed
            assert time.monotonic() - started < 10  # 2 s after the first byte, not the default's 10
        assert _healthz(port, timeout=20) == (200, b"ok\n")


def _one_click_link(outbox: Path) -> str:
    files = sorted((outbox / "new").iterdir())
    assert len(files) == 1
    msg = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    links = re.findall(r"<(https?://[^>]+)>", str(msg["List-Unsubscribe"]))
    assert len(links) == 1
    return links[0]


def _one_click(port: int, link: str) -> int:
    path = link.split("://", 1)[1].partition("/")[2]
    conn = HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(
            "POST",
            "/" + path,
            body=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return conn.getresponse().status
    finally:
        conn.close()


def test_an_old_link_still_unsubscribes_after_from_email_changes(tmp_path: Path) -> None:
    """Send as news@old.example, switch the site to letters@new.example, then one-click the old link."""
    site = tmp_path / "site"
    site.mkdir()
    config = site / "mailer.toml"
    shutil.copy(EXAMPLE, site / "2026-02-09.md")
    (site / "subs.csv").write_text("email,name\nreader@example.net,Reader\n", encoding="utf-8")
    settings = 'data_dir = "state"\nweb_url = "https://news.example.org"\nsubscribers = "subs.csv"\n'
    config.write_text(f'from_email = "news@old.example"\n{settings}', encoding="utf-8")
    sent = _mailer("send", "2026-02-09.md", "--yes", "--force", cwd=site)
    assert sent.returncode == 0, sent.stderr
    link = _one_click_link(site / "state" / "outbox")

    config.write_text(f'from_email = "letters@new.example"\n{settings}', encoding="utf-8")
    with serving(site) as port:
        assert _one_click(port, link) == 200
    listed = _mailer("suppressions", "list", cwd=site)
    assert listed.returncode == 0 and "reader@example.net" in listed.stdout, listed.stdout + listed.stderr


# Runs `mailer serve` with a signal (SIGINT: a Ctrl-C; SIGTERM: systemctl stop) sent by the process to itself
# at the first call of the named function after "Serving on ..." is said: at that point of the start (or of
# the server's loop: waitress's `poll2`) every time, not wherever a signal sent from outside happens to land
SIGNAL_AT = """
import os, signal, sys
from mailer.cli import main
signum, target, armed = getattr(signal, sys.argv.pop(1)), sys.argv.pop(1), []
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal: a test run under nohup ignores it
def watch(frame, event, arg):
    code = frame.f_code
    if event != "call":
        return
    if code.co_qualname == "Console.result" and frame.f_locals["line"].startswith("Serving on"):
        armed.append(True)
    elif armed and code.co_qualname == target:
        sys.setprofile(None)
        os.kill(os.getpid(), signum)
sys.setprofile(watch)
main()
"""


@pytest.mark.parametrize(
    ("signame", "at"),
    [
        ("SIGINT", "Mailroom.wake"),
        ("SIGINT", "Thread.start"),
        ("SIGINT", "BaseWSGIServer.run"),
        ("SIGTERM", "Mailroom.wake"),
        ("SIGTERM", "poll2"),
        ("SIGHUP", "poll2"),  # the terminal it ran in closed
    ],
)
def test_a_ctrl_c_or_sigterm_once_serving_stops_it_cleanly_wherever_it_lands(
    tmp_path: Path, signame: str, at: str
) -> None:
    # "Serving on ..." then "Press Ctrl-C to stop.": a Ctrl-C from then on is the stop it asks for, and so is
    # a SIGTERM (systemctl stop) or a SIGHUP. Before, a Ctrl-C that came before the server's loop took it was
    # "Interrupted." and exit 130 (the tests that stop a serve as soon as it said where it listens expect 0);
    # one as the signup mail's thread was being started left a thread not started, which the stop then
    # joined: a traceback ("cannot join thread before it is started"); a SIGTERM killed it outright (-15),
    # the signup message being mailed cut off
    args = [sys.executable, "-c", SIGNAL_AT, signame, at, "serve", "--host", HOST, "--port", "0"]
    done = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Serving on http://127.0.0.1:"), done.stdout
    assert done.stdout.endswith("Stopped.\n"), done.stdout


def _signals(pid: int, field: str) -> set[int]:
    """The signals /proc says a process ignores (SigIgn) or catches (SigCgt): what the kernel holds."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    found = re.search(rf"^{field}:\s*([0-9a-f]+)$", status, re.M)
    assert found, status
    mask = int(found[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def test_a_serve_started_under_nohup_keeps_ignoring_the_hang_up(tmp_path: Path) -> None:
    # `nohup mailer serve &` then logging out: serve takes SIGTERM (and a SIGHUP at its default) to stop as
    # Ctrl-C does, but a SIGHUP ignored when it started stays ignored, as the publisher asked
    args = ["nohup", sys.executable, "-m", "mailer", "serve", "--host", HOST, "--port", "0"]
    # unbuffered: a buffered readline() may take the next line too, and communicate() reads past that buffer
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()  # said with its stop signals in place
        match = re.search(rf"http://{re.escape(HOST)}:(\d+)/", first)
        assert match, first
        caught = _signals(proc.pid, "SigCgt")
        assert signal.SIGHUP in _signals(proc.pid, "SigIgn") and signal.SIGHUP not in caught
        assert signal.SIGTERM in caught
        proc.send_signal(signal.SIGHUP)  # an ignored signal is dropped as it is sent
        assert _healthz(int(match[1]), 60) == (200, b"ok\n")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err.decode(), err
    assert out.decode().endswith("Press Ctrl-C to stop.\nStopped.\n"), out
