"""A visitor that trickles a request's body to `mailer serve`, one byte at a time, to hold its connections."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from mailer.config import Settings
from tests.served import HOST, serving
from tests.test_signup import _env

IDLE = Settings().serve_idle_timeout  # serve's default: a byte a second never looks idle to it
DEADLINE = 2  # serve_request_timeout here, instead of the default 10 s: the same cut, 8 s sooner


def test_a_body_trickled_a_byte_at_a_time_is_cut_off_like_slow_headers(tmp_path: Path) -> None:
    # waitress closes a connection only after serve_idle_timeout seconds without a byte, and serve stops
    # accepting at its connection limit: slow headers are cut off serve_request_timeout seconds after their
    # first byte, and a body sent a byte a second must be too, or a thousand such sockets lock every reader
    # out.
    env = _env(tmp_path, MAILER_SIGNUP_IP_LIMIT="0", MAILER_SERVE_REQUEST_TIMEOUT=str(DEADLINE))
    with serving(tmp_path, {}, **env) as served:
        body = b"email=slow%40example.org&name=" + b"x" * 200
        head = (
            f"POST /subscribe HTTP/1.1\r\nHost: {HOST}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection((HOST, served.port), timeout=IDLE) as conn:
            conn.sendall(head)
            started = time.monotonic()
            closed = False
            for byte in body[:-1]:  # never the last: the request must not complete
                try:
                    conn.sendall(bytes([byte]))
                    conn.settimeout(1.0)  # a byte a second: never idle long enough for serve_idle_timeout
                    closed = conn.recv(1) == b""
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                if closed:
                    break
            held = time.monotonic() - started
        assert closed, f"the connection was still open after {held:.0f} s of a trickled body"
    assert "took too long" in (tmp_path / "serve.log").read_text()  # the deadline cut it, not the idle limit
    assert DEADLINE < IDLE
