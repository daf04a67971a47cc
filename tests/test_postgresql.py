"""The record on PostgreSQL: its setting and password, `mailer db migrate` and `mailer db copy`, the send
lock, and what a user sees when the server cannot be used. The record's own behaviour is tested on both
engines by the tests that take the `engine` fixture (test_ledger, test_stored, test_policy, ...)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
from click.testing import CliRunner, Result

from mailer.cli import cli
from mailer.config import load_config
from mailer.engine import Server, issue_lock, redact
from mailer.engine_postgresql import _local_peer, _lock_key, _same_host
from mailer.errors import MailerError
from mailer.ledger import SCHEMA_VERSION, Ledger
from tests import publisher
from tests.conftest import EXAMPLE
from tests.pg import USER, Cluster, database_env, rows
from tests.smtpd import SMTPServer
from tests.test_ledger import SCHEMA_V3
from tests.test_unsubscribe_e2e import web  # noqa: F401  (its fixture: `mailer serve` on a free port)

pytestmark = pytest.mark.postgresql


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray mailer.toml
    for name in [n for n in os.environ if n.startswith(("MAILER_", "PG"))]:
        monkeypatch.delenv(name)


@pytest.fixture
def server(pg_cluster: Cluster) -> Server:
    """A fresh, empty database of the test cluster."""
    return pg_cluster.database()


def mailer(*args: str, env: dict[str, str]) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def errors(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def with_password_in_url(server: Server, password: str) -> str:
    return server.url.replace("mailer_test@", f"mailer_test:{password}@")


# --- the setting and its password ----------------------------------------------------------------------


def test_a_password_in_the_url_is_never_printed(server: Server, tmp_path: Path) -> None:
    url = with_password_in_url(server, server.password)
    (tmp_path / "mailer.toml").write_text(f'database = "{url}"\n', encoding="utf-8")
    shown = mailer("config", env={})
    assert shown.exit_code == 0, shown.output
    assert server.password not in shown.output
    masked = url.replace(server.password, "***")
    assert f'database = "{masked}"' in shown.stdout
    assert f"# in use: database {masked}," in shown.stdout
    assert (
        redact(f"{server.url}?sslmode=disable&password=pw1") == f"{server.url}?sslmode=disable&password=***"
    )
    # the password in the URL works (no MAILER_DATABASE_PASSWORD), and migrate names the database masked
    done = mailer("db", "migrate", env={})
    assert done.exit_code == 0, done.output
    assert done.stdout == f"{masked}: created the mailer schema (version {SCHEMA_VERSION})\n"
    # a wrong one is refused in one line, which does not show it either
    (tmp_path / "mailer.toml").write_text(f'database = "{with_password_in_url(server, "wrong-pw")}"\n')
    refused = mailer("db", "migrate", env={})
    assert refused.exit_code == 1
    [line] = errors(refused)
    assert "refused the password" in line and "wrong-pw" not in refused.output


def test_the_password_comes_from_the_environment_and_a_missing_one_is_one_line(server: Server) -> None:
    env = {"MAILER_DATABASE": server.url}
    missing = mailer("db", "migrate", env=env)
    assert missing.exit_code == 1
    [line] = errors(missing)
    assert line.startswith(f"Error: {server.url}: ") and "MAILER_DATABASE_PASSWORD" in line
    wrong = mailer("db", "migrate", env={**env, "MAILER_DATABASE_PASSWORD": "not-it"})
    assert wrong.exit_code == 1 and "refused the password" in wrong.stderr and "not-it" not in wrong.output
    right = mailer("db", "migrate", env={**env, "MAILER_DATABASE_PASSWORD": server.password})
    assert right.exit_code == 0, right.output
    again = mailer("db", "migrate", env={**env, "PGPASSWORD": server.password})  # libpq's own variable
    assert again.stdout == f"{server.url}: schema {SCHEMA_VERSION}, up to date\n"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u:pw9@127.0.0.1:99999/db", "is not a PostgreSQL URL"),
        ("postgresql://u:pw9@127.0.0.1:5432", "names no database"),
        ("postgresql://u:pw9@127.0.0.1:5432/db?nonsense=1", 'invalid URI query parameter: "nonsense"'),
    ],
)
def test_a_bad_url_is_one_line_without_its_password(url: str, says: str) -> None:
    result = mailer("db", "migrate", env={"MAILER_DATABASE": url})
    assert result.exit_code != 0
    [line] = errors(result)
    assert says in line and "pw9" not in result.output


@pytest.mark.parametrize("special", ["/", "?", "#", "@"])
def test_a_password_with_a_character_the_url_must_encode_is_refused_without_showing_any_of_it(
    special: str,
) -> None:
    # a generated password (base64 has '/', others '@', '?', '#') pasted into the URL unencoded: urllib and
    # libpq then split the URL elsewhere, and whatever part they took for the port or the host was printed
    password = f"Kx7Qz{special}Wm3Rt"
    url = f"postgresql://mailer:{password}@127.0.0.1:5432/mailer"
    for command in (["db", "migrate"], ["config"]):
        result = mailer(*command, env={"MAILER_DATABASE": url})
        assert result.exit_code == 1, result.output
        [line] = errors(result)
        assert "Kx7Qz" not in result.output and "Wm3Rt" not in result.output, line
        assert "percent-encode" in line and "MAILER_DATABASE_PASSWORD" in line, line


def test_an_unreachable_server_or_a_missing_database_is_one_line(server: Server) -> None:
    with socket.socket() as bound:  # bound and never listening: refused, and no other process can take it
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        down = mailer("db", "migrate", env={"MAILER_DATABASE": f"postgresql://u:pw7@127.0.0.1:{port}/db"})
    assert down.exit_code == 1
    [line] = errors(down)
    assert "cannot reach the PostgreSQL server" in line and "pw7" not in down.output
    nowhere = server.url.rpartition("/")[0] + "/no_such_db"
    gone = mailer(
        "db", "migrate", env={"MAILER_DATABASE": nowhere, "MAILER_DATABASE_PASSWORD": server.password}
    )
    assert gone.exit_code == 1
    [line] = errors(gone)
    assert '"no_such_db" does not exist' in line


def test_a_server_on_this_host_takes_two_writers_and_one_on_another_host_eight(
    server: Server, pg_cluster: Cluster
) -> None:
    # on this host a commit's round trip is short and the server's CPU is the sender's: two writers'
    # commits of every outcome waiting cost less (0.77-0.83x SQLite's rate, against 0.68-0.77x with eight);
    # elsewhere the round trip counts, and eight writers hide it (docs/benchmarks.md)
    name = server.url.rpartition("/")[2]
    over_unix = Server(f"postgresql://{USER}@/{name}?host={pg_cluster.root}&port={pg_cluster.port}")
    for where in (server, over_unix):  # TCP to 127.0.0.1, and the cluster's Unix socket
        with Ledger(where) as ledger:
            assert ledger.concurrent_writers == 2, where
    # another host cannot answer from here: the rule alone, on the addresses a connection's two ends have
    assert _local_peer("127.0.0.2", "127.0.0.1") and _local_peer("::1", "::1")
    assert _local_peer("::ffff:127.0.0.1", "::ffff:10.0.0.5")
    assert _local_peer("192.0.2.7", "192.0.2.7")  # this host's own LAN address
    assert not _local_peer("192.0.2.8", "192.0.2.7") and not _local_peer("2001:db8::2", "2001:db8::1")


def test_a_connection_reset_as_its_writers_are_counted_is_no_traceback(server: Server) -> None:
    # the adversarial pass's race (1 connection in 30 through a relay that reset it after the server's
    # first answer): getpeername() on the reset socket raised OSError out of the engine's set-up, a
    # traceback. Here the reset comes first, for certain: the count falls back to 8, the rest is psycopg's
    import psycopg

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        port = int(server.url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        ends: list[socket.socket] = []
        pipes: list[threading.Thread] = []

        def relay() -> None:
            client, _ = listening.accept()
            ends.extend((client, socket.create_connection(("127.0.0.1", port))))
            for one, other in (ends, ends[::-1]):
                pipes.append(threading.Thread(target=_pipe, args=(one, other), daemon=True))
                pipes[-1].start()

        threading.Thread(target=relay, daemon=True).start()
        url = server.url.replace(f":{port}/", f":{listening.getsockname()[1]}/")
        with psycopg.connect(url, password=server.password) as conn:
            client, upstream = ends
            client.shutdown(socket.SHUT_RDWR)  # its pipe's recv returns, so that the close below is now
            pipes[0].join(10)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset
            upstream.close()
            select.select([conn.pgconn.socket], [], [], 10)  # the reset has reached this end
            assert _same_host(conn) is False


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)


def test_a_url_with_several_hosts_reaches_the_one_that_answers(server: Server) -> None:
    # libpq's fail-over URL (a primary and its standby): the first host that answers is used; mailer took
    # the hosts for one port that is not a number and refused the URL
    here = server.url.split("@", 1)[1].split("/", 1)[0]  # 127.0.0.1:PORT
    with socket.socket() as bound:  # bound and never listening: the host that is down
        bound.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{bound.getsockname()[1]}"
        both = server.url.replace(f"@{here}/", f"@{down},{here}/")
        done = mailer(
            "db", "migrate", env={"MAILER_DATABASE": both, "MAILER_DATABASE_PASSWORD": server.password}
        )
    assert done.exit_code == 0, done.output
    assert done.stdout == f"{both}: created the mailer schema (version {SCHEMA_VERSION})\n"
    wrong = mailer("db", "migrate", env={"MAILER_DATABASE": server.url.replace(f"@{here}/", f"@{here},h:x/")})
    assert wrong.exit_code == 1 and "is not a PostgreSQL URL" in wrong.stderr, wrong.output


def test_without_psycopg_a_postgresql_url_is_one_line(server: Server) -> None:
    blocked = "import sys; sys.modules['psycopg'] = None; from mailer.cli import main; main()"
    env = {**os.environ, **database_env(server)}
    done = subprocess.run(
        [sys.executable, "-c", blocked, "db", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: {server}: PostgreSQL needs psycopg: pip install 'mailer-newsletter[postgresql]'"
    ]


# --- mailer db migrate ------------------------------------------------------------------------------------


def test_migrate_creates_upgrades_and_refuses_a_newer_schema(server: Server, tmp_path: Path) -> None:
    env = database_env(server)
    assert mailer("db", "migrate", env=env).stdout == (
        f"{server}: created the mailer schema (version {SCHEMA_VERSION})\n"
    )
    assert rows(server, "SELECT version FROM mailer_schema") == [(SCHEMA_VERSION,)]
    rows(server, "UPDATE mailer_schema SET version = ?", (SCHEMA_VERSION + 1,))
    newer = mailer("db", "migrate", env=env)
    assert newer.exit_code == 1
    [line] = errors(newer)
    assert f"schema {SCHEMA_VERSION + 1}" in line and "upgrade mailer" in line
    # SQLite too: a schema-3 file (test_ledger's, as mailer wrote it) is upgraded and says from which version
    sqlite = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(sqlite)) as conn:
        conn.executescript(SCHEMA_V3)
    upgraded = mailer("db", "migrate", env={"MAILER_DATABASE": str(sqlite)})
    assert upgraded.stdout == f"{sqlite}: upgraded the schema from version 3 to {SCHEMA_VERSION}\n"
    assert rows(sqlite, "SELECT count(*) FROM members") == [(0,)]


def test_a_database_without_a_record_is_not_made_one_by_a_writer_that_must_find_one(server: Server) -> None:
    with pytest.raises(MailerError, match="no mailer record in this database"):
        Ledger(server, create=False)


# --- mailer db copy -------------------------------------------------------------------------------------


def _a_sqlite_record(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A SQLite record with something in every table: a send, a bounce, suppressions, a stored list."""
    from datetime import UTC, datetime

    from mailer.bounces import SOFT, Bounce

    db = tmp_path / "state" / "mailer.db"
    env = {**publisher.ENV, "MAILER_DATA_DIR": str(tmp_path / "state")}
    lst = tmp_path / "a.csv"
    lst.write_text("email,name,city\nann@example.org,Ann,Oslo\nbo@example.org,Bo,\ncy@example.org,Cy,\n")
    assert mailer("subscribers", "import", str(lst), env=env).exit_code == 0
    with Ledger(db) as ledger:
        ledger.start_issue("2026-02-09", "hash-1", "Monday")
        run_id = ledger.start_run("2026-02-09", "list:main:1", "list main")
        ledger.record_outcomes(
            "2026-02-09",
            [("ann@example.org", "sent", 250, "ok"), ("bo@example.org", "failed", 550, "5.1.1 no such user")],
        )
        ledger.finish_run(run_id)
        at = datetime(2026, 2, 9, 7, tzinfo=UTC)
        ledger.add_bounce(Bounce("cy@example.org", SOFT, "4.2.2", "full", "2026-02-09", "dsn", "r1", at))
        ledger.suppress("gone@example.org", source="web", reason="asked")
        ledger.suppress("back@example.org", source="manual")
        ledger.unsuppress("back@example.org")
    return db, env


def test_copy_moves_every_table_with_its_ids_and_the_copy_works_on(
    server: Server, tmp_path: Path, smtp_server: SMTPServer
) -> None:
    db, env = _a_sqlite_record(tmp_path)
    tables = [str(t) for (t,) in rows(db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]
    before = {t: rows(db, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables if not t.startswith("sqlite_")}
    pg_env = {**env, **database_env(server)}
    copied = mailer("db", "copy", str(db), env=pg_env)
    assert copied.exit_code == 0, copied.output
    total = sum(len(r) for r in before.values())
    assert copied.stdout.splitlines()[0] == f"copied {db} to {server}: {total} rows"
    for table, expected in before.items():
        assert f"  {table}: {len(expected)} rows" in copied.stdout
        # the same rows, ids and bytes (a delivery's tag) included
        assert rows(server, f"SELECT * FROM {table} ORDER BY 1, 2") == [
            tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in expected
        ], table
    with Ledger(server) as ledger:  # the copy is a record mailer uses as it is
        assert ledger.status("2026-02-09").counts == {"sent": 1, "failed": 1}
        assert ledger.is_complete("2026-02-09", "list:main:1")
        assert ledger.start_run("2026-02-09", "x", "y") == 2  # ids go on after the copied ones
    more = tmp_path / "b.csv"
    more.write_text("email\ndee@example.org\n")
    assert mailer("subscribers", "import", str(more), env=pg_env).exit_code == 0
    assert rows(server, "SELECT member_id FROM members WHERE email = 'dee@example.org'") == [(4,)]
    # a send from the copy mails only who the SQLite record had not: ann got it, gone is suppressed
    smtp = {
        "MAILER_SMTP_HOST": smtp_server.host,
        "MAILER_SMTP_PORT": str(smtp_server.port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_SECRET_KEY": "the-key-of-the-host-that-sent-them",  # the record holds sent issues
    }
    post = shutil.copy(EXAMPLE, tmp_path / "2026-02-09.md")
    args = ["send", str(post), "--list", "main", "--yes", "--force", "--changed"]  # not the copied hash
    sent = mailer(*args, env={**pg_env, **smtp})
    assert sent.exit_code == 0, sent.output
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == [
        "cy@example.org",
        "dee@example.org",
    ]


def test_copy_refuses_a_target_with_rows_and_a_sqlite_target(server: Server, tmp_path: Path) -> None:
    db, env = _a_sqlite_record(tmp_path)
    with Ledger(server) as ledger:
        ledger.suppress("someone@example.org", source="manual")
    refused = mailer("db", "copy", str(db), env={**env, **database_env(server)})
    assert refused.exit_code == 1
    [line] = errors(refused)
    assert "already holds a record (table suppressions has rows)" in line
    assert rows(server, "SELECT count(*) FROM issues") == [(0,)]
    to_sqlite = mailer("db", "copy", str(db), env={**env, "MAILER_DATABASE": str(tmp_path / "x.db")})
    assert to_sqlite.exit_code == 1 and "a SQLite file" in to_sqlite.stderr
    missing = mailer("db", "copy", str(tmp_path / "nope.db"), env={**env, **database_env(server)})
    assert missing.exit_code == 1 and "no such SQLite file" in missing.stderr


def test_a_copy_that_fails_half_way_leaves_the_target_empty(server: Server, tmp_path: Path) -> None:
    db, env = _a_sqlite_record(tmp_path)
    # SQLite keeps a text where an integer belongs; PostgreSQL refuses it, after several tables went in
    rows(db, "UPDATE runs SET pid = 'not a number'")
    failed = mailer("db", "copy", str(db), env={**env, **database_env(server)})
    assert failed.exit_code == 1
    [line] = errors(failed)
    assert line.startswith(f"Error: {server}: ")
    for table in ("suppressions", "issues", "lists", "members", "runs", "deliveries", "bounces"):
        assert rows(server, f"SELECT count(*) FROM {table}") == [(0,)], table


# --- the send lock and senders sharing the record ---------------------------------------------------------

HOLDER = """
import os, sys, time
from mailer.engine import Server, issue_lock
with issue_lock(Server(sys.argv[1], os.environ["MAILER_DATABASE_PASSWORD"]), "2026-02-09"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_the_send_lock_is_shared_by_every_host_and_let_go_when_its_holder_dies(server: Server) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, server.url],
        env={**os.environ, **database_env(server)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(MailerError) as refused, issue_lock(server, "2026-02-09"):
            pass
        assert f"another send of this issue is running (pid {holder.pid} on " in str(refused.value)
        with issue_lock(server, "2026-02-10"):  # another issue is not held
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)
    # the server lets go once it sees the connection gone: wait for that on the lock itself (a blocking
    # take, up to 30 s), then the next sender gets it at once
    import psycopg

    with psycopg.connect(server.url, password=server.password, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key("2026-02-09"),))
        conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key("2026-02-09"),))
    with issue_lock(server, "2026-02-09"):
        pass


def test_a_lookup_of_many_addresses_is_planned_for_them_and_an_outcome_once(server: Server) -> None:
    """The server plans a prepared statement once for any values; an IN (...) list so planned is compared
    with every delivery of the issue (the send's per-batch lookup grew with the record, 130 ms at 10,000).
    So the lookups are planned for their values; the outcome written for every message stays prepared."""
    readers = [f"r{i:04d}@example.com" for i in range(40)]
    with Ledger(server) as ledger:
        ledger.start_issue("2026-02-09", "hash", "Subject")
        for reader in readers:  # one at a time, as eight connections' outcomes are
            ledger.record_outcomes("2026-02-09", [(reader, "sent", 250, "ok")])
        for _ in range(10):
            suppressed, states = ledger.states("2026-02-09", readers + ["new@example.com"])
        assert states == dict.fromkeys(readers, "sent") and not suppressed
        prepared = [row[0] for row in ledger.rows("SELECT statement FROM pg_prepared_statements")]
    assert [s for s in prepared if "INSERT INTO deliveries" in s]
    assert not [s for s in prepared if " IN (" in s or "unnest" in s], prepared


@pytest.mark.parametrize("engine", ["postgresql"])  # SQLite's run is test_web_abuse's
def test_a_one_click_during_a_running_send_stops_that_readers_message(
    smtp_server: SMTPServer,
    tmp_path: Path,
    web: tuple[str, dict[str, str]],  # noqa: F811
) -> None:
    """The send reads suppressions a batch at a time from the record: the web's write counts at once."""
    url, env = web
    readers = [f"r{i:04d}@example.com" for i in range(600)]
    victim = readers[550]  # in the second lookup batch (500 a batch)
    csv = tmp_path / "subs.csv"
    csv.write_text("email\n" + "\n".join(readers) + "\n", encoding="utf-8")
    post = shutil.copy(EXAMPLE, tmp_path / "2026-02-09.md")
    full = {
        **os.environ,
        **env,
        "MAILER_SMTP_HOST": smtp_server.host,
        "MAILER_SMTP_PORT": str(smtp_server.port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_SMTP_TIMEOUT": "120",
    }
    held = smtp_server.hold(readers[100])
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--skip-check", "unsubscribe-url"]
    send = subprocess.Popen(
        [sys.executable, "-m", "mailer", *args], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert held.reached.wait(timeout=60), "the send never reached the held reader"
        from mailer.tokens import load_keyring, unsubscribe_url

        settings = load_config(env=env).settings
        token = load_keyring(settings).sign(victim, settings.token_scope)
        request = Request(unsubscribe_url(settings, token), data=b"List-Unsubscribe=One-Click", method="POST")
        with urlopen(request, timeout=10) as answer:
            assert answer.status == 200
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
