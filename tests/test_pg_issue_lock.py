"""The PostgreSQL send lock's check (issue_lock's held()) proves that this session holds the lock.

Behind a connection pooler in transaction mode (unsupported: docs/postgresql.md) one client connection is
served by one server session, then another: the lock stays with the first, and every statement still
answers. A real cluster, and a small proxy of the test's own that does what such a pooler does: it hands the
client's open connection a fresh server session (its startup replayed on the cluster's Unix socket, where
the cluster trusts local users) and ends the old one, which lets go of the lock.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from contextlib import closing

import pytest

from mailer.engine import Server, issue_lock
from mailer.errors import MailerError, SendRunning
from tests.pg import Cluster, rows
from tests.test_workers import wait_until

pytestmark = pytest.mark.postgresql

_NO_ENCRYPTION = (80877103, 80877104)  # SSLRequest, GSSENCRequest: answered "N", as a plain pooler does


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            raise ConnectionError("closed")
        data += part
    return data


class SwappingPooler:
    """A TCP front for one cluster that can move each open client connection to a new server session."""

    def __init__(self, cluster: Cluster) -> None:
        self._socket_path = str(cluster.root / f".s.PGSQL.{cluster.port}")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._startups: list[bytes] = []
        self._next: list[socket.socket | None] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _session(self, startup: bytes) -> socket.socket:
        """A new server session for the startup packet, past its ReadyForQuery (what it said is dropped)."""
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(self._socket_path)
        upstream.sendall(startup)
        while True:
            kind, size = struct.unpack("!cI", _exactly(upstream, 5))
            body = _exactly(upstream, size - 4)
            if kind == b"Z":
                return upstream
            if kind == b"E":
                raise ConnectionError(body.decode(errors="replace"))

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with closing(client):
            while True:
                size, code = struct.unpack("!II", _exactly(client, 8))
                packet = struct.pack("!II", size, code) + _exactly(client, size - 8)
                if code not in _NO_ENCRYPTION:
                    break
                client.sendall(b"N")
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self._socket_path)
            upstream.sendall(packet)  # the first session's answers go to the client, as the server's would
            with self._lock:
                slot = len(self._startups)
                self._startups.append(packet)
                self._next.append(None)
            self._pump(client, upstream, slot)

    def _pump(self, client: socket.socket, upstream: socket.socket, slot: int) -> None:
        while True:
            with self._lock:
                swapped, self._next[slot] = self._next[slot], None
            if swapped is not None:
                upstream.close()  # the old session ends, and the server lets go of what it held
                upstream = swapped
            with selectors.DefaultSelector() as chooser:
                chooser.register(client, selectors.EVENT_READ, upstream)
                chooser.register(upstream, selectors.EVENT_READ, client)
                for key, _ in chooser.select(timeout=0.05):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        upstream.close()
                        return
                    key.data.sendall(data)

    def swap(self) -> None:
        """Give every client connection, idle between statements, a new server session."""
        with self._lock:
            for slot, startup in enumerate(self._startups):
                self._next[slot] = self._session(startup)


@pytest.fixture
def pooled(pg_cluster: Cluster) -> tuple[Server, Server, SwappingPooler]:
    """A fresh database, straight and through a SwappingPooler, and the pooler."""
    straight = pg_cluster.database()
    pooler = SwappingPooler(pg_cluster)
    user_at, _, name = straight.url.partition("://")[2].rpartition("/")
    url = f"postgresql://{user_at.partition('@')[0]}@127.0.0.1:{pooler.port}/{name}?sslmode=disable"
    return straight, Server(url, password=straight.password), pooler


def test_the_lock_check_fails_once_the_session_behind_the_connection_changed(
    pooled: tuple[Server, Server, SwappingPooler],
) -> None:
    straight, through_pooler, pooler = pooled
    with issue_lock(through_pooler, "issue-1") as held:
        held()  # the session that took the lock answers
        with pytest.raises(SendRunning), issue_lock(straight, "issue-1"):
            pass
        [(old,)] = rows(
            straight, "SELECT pid FROM pg_stat_activity WHERE application_name LIKE ?", ("mailer send %",)
        )
        pooler.swap()
        wait_until(
            "the old session ended",
            lambda: not rows(straight, "SELECT 1 FROM pg_stat_activity WHERE pid = ?", (old,)),
        )
        with issue_lock(straight, "issue-1"):
            pass  # the lock is free: a second send of the issue could take it now
        with pytest.raises(MailerError, match="lost the lock of this issue's send") as failed:
            held()  # answered by the new session, which holds no lock (a plain SELECT 1 passed here)
        assert straight.password not in str(failed.value)
