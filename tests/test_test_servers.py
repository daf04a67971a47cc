"""The suite's own servers (tests/pg.py's PostgreSQL, tests/mta.py's Postfix and Dovecot) start even when
another process takes the port picked for them before they listen: tests/ports.py finds a port free by
binding port 0 and closing it, the server binds it a moment later, and on a busy machine another test run
can take it in between. Here a socket of the test's own takes the first port the server is given."""

from __future__ import annotations

import itertools
import smtplib
import socket
from collections.abc import Iterator

import pytest

from tests import mta
from tests.pg import Cluster, rows
from tests.ports import HOST, free_ports


def _listening() -> socket.socket:
    """A socket listening on a free loopback port: another process's server, there first."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen()
    return sock


@pytest.mark.postgresql
def test_the_postgresql_cluster_starts_when_its_first_port_is_taken(pg_cluster: Cluster) -> None:
    with _listening() as thief:
        taken = thief.getsockname()[1]
        cluster = Cluster(pg_cluster.bindir, ports=itertools.chain([taken], free_ports())).start()
        try:
            assert cluster.port != taken
            assert rows(cluster.database(), "SELECT 1") == [(1,)]
        finally:
            cluster.stop()


@pytest.mark.mta
@pytest.mark.parametrize("server", ["postfix", "dovecot"])
def test_postfix_and_dovecot_start_when_a_port_of_theirs_is_taken(server: str) -> None:
    with _listening() as thief:
        taken = thief.getsockname()[1]
        fresh = free_ports()
        # Postfix takes the first port, Dovecot the second
        first: Iterator[int] = iter([taken] if server == "postfix" else [next(fresh), taken])
        with mta.running("ports.example.net", ["alice"], ports=itertools.chain(first, fresh)) as system:
            assert taken not in (system.smtp_port, system.imap_port)
            with smtplib.SMTP(timeout=10) as smtp:
                code, banner = smtp.connect(HOST, system.smtp_port)
                assert (code, banner) == (
                    220,
                    b"mx.ports.example.net ESMTP mailer-test",
                )  # Postfix's, not ours
            assert system.count("alice") == 0  # Dovecot answers a login and a STATUS
