"""Free loopback ports for the servers the tests start.

A port is found free by binding port 0 and closing the socket; the server binds it a moment later, and
another process (another test run on a busy machine) can take it in between. A server started on a port
from here must therefore start again on the next port when it finds its own taken (tests/pg.py,
tests/mta.py); a server that can listen on port 0 and say where it listens needs none of this.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import TypeVar

HOST = "127.0.0.1"
START_ATTEMPTS = 5
PORT_TAKEN = "Address already in use"  # what PostgreSQL's and Postfix's logs and Dovecot's errors say then
T = TypeVar("T")
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it), never the same one twice in this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def free_ports() -> Iterator[int]:
    """Free ports one after another: those a server tries in turn until one is still free when it binds."""
    while True:
        yield free_port()


def until_started(start: Callable[[], T]) -> T:
    """start() (which takes its ports from free_ports()) once more each time it failed because another
    process took a port of its first; at most START_ATTEMPTS times. It raises RuntimeError naming why."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return start()
        except RuntimeError as exc:
            if PORT_TAKEN not in str(exc) or attempt == START_ATTEMPTS:
                raise
    raise AssertionError("not reached")
