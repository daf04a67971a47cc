"""`mailer worker --wait` started before its database answers: a service on a host that boots before the
database server (docs/workers.md, "Keeping `mailer worker` running"). It must wait for the database as it
waits for a send, and send once it answers, not exit 1 (which its unit does not restart: that host would never
send); a stop ends the wait at once; a server that answers and refuses (a wrong password, no such database)
is still a refusal, exit 1 and one line.

Real processes and the real record. The database "not up yet" is a loopback port bound and not listening
(every connection refused, as on a host whose server has not started), then listening and forwarding to the
test cluster: every wait is on a line, a socket or a process's end.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailer.engine import Location, Server
from tests.pg import Cluster
from tests.smtpd import SMTPServer
from tests.test_worker_wait import _migrated, _waiting
from tests.test_workers import _running, env_at, recipients, spawn, wait_until, write_list


class _Gate:
    """A port where the database is not up yet (connections refused) until open(), then a forwarder to
    the real server."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # bound, not listening: the kernel refuses every connection
        self.port = int(self.sock.getsockname()[1])
        self.open_sockets: list[socket.socket] = []

    def open(self) -> None:
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:  # closed: the test is over
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.open_sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for sock in [self.sock, *self.open_sockets]:
            sock.close()


@contextmanager
def _gate(cluster: Cluster) -> Iterator[_Gate]:
    gate = _Gate(cluster.port)
    try:
        yield gate
    finally:
        gate.close()


def _finish(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.postgresql
def test_a_waiting_worker_started_before_its_database_waits_for_it_then_joins_the_send(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    server = pg_cluster.database()
    emails = [f"user{i}@example.com" for i in range(30)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, server)
    _migrated(env, tmp_path)
    with _gate(pg_cluster) as gate:
        behind_url = server.url.replace(f":{pg_cluster.port}/", f":{gate.port}/")
        behind = Server(behind_url, password=server.password)
        env_behind = env_at(smtp_server, tmp_path, behind)
        early = spawn(["worker", "--wait"], env_behind, tmp_path)  # the service, at boot
        stopped = spawn(["worker", "--wait"], env_behind, tmp_path)  # stopped while the database is down
        coordinator: subprocess.Popen[bytes] | None = None
        try:
            said = _said_waiting(early)
            assert said.startswith(f"Waiting for the database to answer ({behind}: cannot reach"), said
            assert "trying again" in said and server.password not in said
            _said_waiting(stopped)
            stopped.send_signal(signal.SIGTERM)
            _, stopped_err = stopped.communicate(timeout=60)
            assert stopped.returncode == 143, stopped_err.decode()
            assert b"Traceback" not in stopped_err
            gate.open()  # the database is up
            assert f"Waiting for a send to start in {behind}" in _waiting(early)
            args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed"]
            coordinator = spawn([*args, "--workers", "0"], env, tmp_path)
            wait_until("the send in the record", lambda: _running(server))
            _, early_err = early.communicate(timeout=120)
            _, err = coordinator.communicate(timeout=120)
        finally:
            _finish(early, stopped, coordinator)
    assert early.returncode == 0, early_err.decode()
    assert "sent by this worker" in early_err.decode()
    assert coordinator.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})


def _said_waiting(proc: subprocess.Popen[bytes]) -> str:
    """The worker's 'Waiting for the database' line (a timestamp before it), read as it comes."""
    stderr = proc.stderr
    assert stderr is not None
    lines: list[str] = []
    while not lines or "Waiting for the database" not in lines[-1]:
        line = stderr.readline().decode()
        assert line, f"the worker ended without waiting for the database: {lines}"
        lines.append(line)
    return lines[-1][lines[-1].index("Waiting") :].strip()


def test_a_waiting_worker_whose_database_answers_and_refuses_stops_with_one_line(
    smtp_server: SMTPServer, tmp_path: Path, record_at: Location
) -> None:
    """Not "not up yet": a wrong password, a database (a SQLite file) that is not there. Waiting would not
    mend them, and a unit restarting it would hide them: exit 1, one line naming the database."""
    if isinstance(record_at, Server):
        cases = [
            (Server(record_at.url, password="not-the-password"), "the server refused the password"),
            (Server(record_at.url.rsplit("/", 1)[0] + "/nosuch", password=record_at.password), "nosuch"),
        ]
    else:
        cases = [(record_at.parent / "nowhere" / "mailer.db", "")]
    for where, says in cases:
        proc = spawn(["worker", "--wait"], env_at(smtp_server, tmp_path, where), tmp_path)
        _, err = proc.communicate(timeout=60)
        lines = [line for line in err.decode().splitlines() if line.strip()]
        assert proc.returncode == 1, lines
        assert len(lines) == 1 and lines[0].startswith(f"Error: {where}"), lines
        assert says in lines[0] and "Waiting" not in lines[0], lines
        if isinstance(where, Server):
            assert record_at.password not in lines[0]
