"""Two `mailer serve` processes on one PostgreSQL record mailing the signups' confirmations: each is mailed
once, however their claims meet."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from mailer.config import Settings
from mailer.ledger import Ledger
from mailer.signup import Mailroom, Signups, read_request
from mailer.signupmail import Letters
from mailer.tokens import Keyring
from mailer.transport import OutboxTransport
from tests import publisher
from tests.pg import Cluster

pytestmark = pytest.mark.postgresql


def _waiting_on_locks(url: str, password: str) -> int:
    with psycopg.connect(url, password=password, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ).fetchone()
        return int(row[0]) if row else 0


def test_two_serve_processes_claiming_at_once_mail_a_confirmation_once(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    server = pg_cluster.database()
    settings = Settings(
        data_dir=tmp_path / "state",
        database=server,
        database_password=server.password or "",
        web_url=publisher.WEB_URL,
    )
    Ledger(settings.db_path).close()
    keyring = Keyring("k" * 32)
    Signups(settings, lambda: None).request(read_request({"email": "ann@example.org"}, settings), "192.0.2.1")
    rooms = [
        Mailroom(
            settings,
            lambda: keyring,
            Letters(settings, lambda: keyring, lambda: "en"),
            OutboxTransport(tmp_path / n),
        )
        for n in ("one", "two")
    ]
    mailed: list[int] = []
    # a third connection holds the row, so that both processes' claims are under way when it lets go
    with psycopg.connect(server.url, password=server.password) as holder:
        holder.execute("SELECT 1 FROM signups WHERE email = 'ann@example.org' FOR UPDATE")
        threads = [threading.Thread(target=lambda r=room: mailed.append(r.mail_all())) for room in rooms]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while _waiting_on_locks(server.url, server.password or "") < 2:
            assert time.monotonic() < deadline, "the two claims never both waited"
            time.sleep(0.01)
        holder.rollback()
    for thread in threads:
        thread.join(60)
    files = [
        f for n in ("one", "two") if (tmp_path / n / "new").is_dir() for f in (tmp_path / n / "new").iterdir()
    ]
    assert sorted(mailed) == [0, 1] and len(files) == 1
