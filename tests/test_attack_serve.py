"""The attack pass on `mailer serve` with the record in PostgreSQL, as a load balancer sees it: two web hosts
share one record (docs/postgresql.md), and the balancer sends readers' clicks to the hosts whose
`GET /healthz` answers 200. A host that cannot reach the record answers every click with 503; its health
check must say so, or the balancer keeps sending it readers whose clicks are then not taken."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from http.client import HTTPConnection
from pathlib import Path

import pytest

from tests import publisher
from tests.pg import Cluster, database_env

pytestmark = pytest.mark.postgresql


def _get(port: int, path: str) -> int:
    conn = HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_healthz_fails_while_the_record_cannot_be_reached(pg_cluster: Cluster, tmp_path: Path) -> None:
    server = pg_cluster.database()
    name = server.url.rpartition("/")[2]
    env = {**os.environ, **publisher.ENV, "MAILER_DATA_DIR": str(tmp_path / "state"), **database_env(server)}
    serve = subprocess.Popen(
        [sys.executable, "-m", "mailer", "serve", "--port", "0"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert serve.stdout is not None
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", serve.stdout.readline())
        assert found, "serve said no address"
        port = int(found.group(1))
        assert _get(port, "/healthz") == 200
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")  # this host loses the record
        try:
            assert _get(port, "/healthz") == 503
        finally:
            pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        assert _get(port, "/healthz") == 200
    finally:
        serve.terminate()
        _, err = serve.communicate(timeout=60)
    assert "Traceback" not in err
