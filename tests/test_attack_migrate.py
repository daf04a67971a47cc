"""The attack pass on schema upgrades: `mailer db migrate` (or any command of a newer mailer, which upgrades
the record as it opens it) run while an older mailer's send runs on the record. Upgraded under it, that
send's own processes (its workers, a worker that replaces a dead one, `mailer worker` elsewhere) and the
older web hosts are refused by the record mid-send ('written by a newer mailer'). docs/postgresql.md says
to migrate before restarting the senders; the record now holds mailer to it."""

from __future__ import annotations

import os
from pathlib import Path

from mailer.engine import Location, Server, issue_lock
from mailer.ledger import SCHEMA_VERSION
from tests import publisher
from tests.pg import database_env, rows, set_schema_version
from tests.record import ann_mailed
from tests.test_workers_lifecycle import mailer


def _schema(record: Location) -> int:
    sql = "SELECT version FROM mailer_schema" if isinstance(record, Server) else "PRAGMA user_version"
    return int(rows(record, sql)[0][0])  # type: ignore[call-overload]


def test_an_upgrade_while_an_older_mailers_send_runs_waits_for_its_end(
    tmp_path: Path, record_at: Location
) -> None:
    ann_mailed(record_at)
    older = SCHEMA_VERSION - 1
    set_schema_version(record_at, older)  # the record as the mailer before the last step keeps it, as far as
    # this test goes (the step's tables are there already: it makes them IF NOT EXISTS)
    env = {**publisher.ENV, "MAILER_DATA_DIR": str(tmp_path / "state"), **database_env(record_at)}
    with issue_lock(record_at, "2026-02-10"):  # the older mailer's send of the next issue holds its lock
        for command in (["db", "migrate"], ["status"]):  # `status`: any command that opens the record
            done = mailer(command, env, tmp_path)
            assert done.returncode == 1, done
            [line] = done.stderr.splitlines()
            assert line.startswith(f"Error: {record_at}: written by an older mailer (schema {older}, "), line
            assert f"whose send runs on it now (pid {os.getpid()}" in line, line
            assert line.endswith("run this again once it has ended"), line
            assert _schema(record_at) == older
    done = mailer(["db", "migrate"], env, tmp_path)  # the send has ended
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip() == f"{record_at}: upgraded the schema from version {older} to {SCHEMA_VERSION}"
    assert rows(record_at, "SELECT email, state FROM deliveries") == [("ann@example.org", "sent")]
