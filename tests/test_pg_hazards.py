"""What a send does when its PostgreSQL record stops answering, restarts or is not the one it should be.

A frozen server (SIGSTOP to the postmaster and every backend) answers nothing, and the kernel keeps its
sockets open, so no TCP error ever comes: only a limit of mailer's own ends the wait. Real processes, a
cluster of this module's own (the test run's shared one is never frozen), real signals; every wait is on
an event (a held RCPT, a row, a process's end), never on a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.campaign import LOOKUP_BATCH
from mailer.engine import Server
from tests.pg import Cluster, rows
from tests.sends import forty_readers, held_send, rerun_finishes
from tests.smtpd import SMTPServer
from tests.test_workers import (
    _stderr_of,
    env_at,
    recipients,
    spawn,
    states,
    wait_until,
    worker_pids,
    write_list,
)
from tests.test_workers_lifecycle import mailer

pytestmark = pytest.mark.postgresql

# database_timeout in these tests: seconds without an answer before mailer gives up (small, yet long enough
# that a loaded machine's answers before the freeze come within it)
LIMIT = "5"
RETRYING = b"cannot write this worker's end to the record"  # a stopped worker whose record is away


def _server_pids(cluster: Cluster) -> list[int]:
    """The postmaster (first) and every process it started (backends, checkpointer, ...)."""
    postmaster = int((cluster.root / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # the field after the parenthesised command name: state, then the parent's pid
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[1]) == postmaster:
                    children.append(int(entry.name))
    return [postmaster, *children]


@contextlib.contextmanager
def frozen(cluster: Cluster) -> Iterator[None]:
    """The whole server stopped (SIGSTOP) until the block ends, then continued, whatever happened."""
    pids = _server_pids(cluster)
    try:
        for pid in pids:  # the postmaster first: it starts no process after it; one listed may have ended
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _sessions(server: Server) -> int:
    """How many sessions the database has besides the one asking (only mailer's processes use it)."""
    found = rows(
        server,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    return int(found[0][0])  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("workers", "connections"), [([], 1), (["--workers", "2"], 2)], ids=["lone", "workers"]
)
def test_a_frozen_database_ends_the_send_with_one_line_and_nothing_sent_unrecorded(
    smtp_server: SMTPServer,
    tmp_path: Path,
    post: Path,
    own_cluster: Cluster,
    workers: list[str],
    connections: int,
) -> None:
    # with workers: the coordinator and each worker meet the silence; the publisher reads it once
    server = own_cluster.database()
    emails, args = forty_readers(tmp_path, post, *workers)
    env = env_at(smtp_server, tmp_path, server, MAILER_DATABASE_TIMEOUT=LIMIT, MAILER_SMTP_TIMEOUT="120")
    with held_send(smtp_server, args, env, tmp_path) as (proc, held), frozen(own_cluster):
        held.release.set()
        # the whole send must end while the server is still frozen: the limit, not the server, ends it
        _, err = proc.communicate(timeout=120)
    said = err.decode()
    assert proc.returncode not in (0, None), said
    assert "Traceback" not in said, said
    errors = [line for line in said.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, said
    assert str(server) in errors[0] and "no answer" in errors[0], errors[0]
    assert server.password not in said
    # nothing was sent past an outcome the record did not take: at most the message whose commit hung on
    # each connection (user10's on the lone send's)
    got = recipients(smtp_server)
    # the server answers again: each session reads what was sent to it before the freeze, then its end
    wait_until("the frozen send's sessions ended", lambda: not _sessions(server))
    recorded = {email for email, (state, _) in states(server).items() if state == "sent"}
    assert len(set(got) - recorded) <= connections, (sorted(got), sorted(recorded))
    assert all(n == 1 for n in got.values())
    if not workers:
        # user10's outcome went to the server before it froze and no answer came: the send could not know
        # whether it was written, and its error line must not say it was not. The server, continued, ran
        # the statement waiting in its socket: the record holds it (before: "are not in the record")
        assert "user10@example.com" in recorded, sorted(recorded)
        assert "1 message(s) accepted by the server may not be in the record" in errors[0], errors[0]
    # the same command finishes the send, repeating at most the message whose commit hung on each connection
    del env["MAILER_DATABASE_TIMEOUT"]
    rerun_finishes(smtp_server, args, env, tmp_path, emails, connections)


@contextlib.contextmanager
def record_away(cluster: Cluster, server: Server) -> Iterator[None]:
    """The server ends every session of the database and takes no new one (a restart, as the send sees it),
    until the block ends."""
    name = server.url.rpartition("/")[2]
    cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
    try:
        cluster.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        yield
    finally:
        cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


def test_a_command_started_while_the_database_is_frozen_says_so_in_one_line(
    tmp_path: Path, own_cluster: Cluster
) -> None:
    server = own_cluster.database()
    env = {"MAILER_DATABASE": server.url, "MAILER_DATABASE_PASSWORD": server.password}
    env["MAILER_DATABASE_TIMEOUT"] = LIMIT
    with frozen(own_cluster):
        proc = spawn(["db", "migrate"], env, tmp_path)
        _, err = proc.communicate(timeout=120)  # while still frozen: the limit ends it
    said = err.decode()
    assert proc.returncode == 1, said
    assert said.splitlines() == [
        f"Error: {server}: no answer from the server in {LIMIT} s while connecting (database_timeout): is it"
        " running, reachable from this host and not overloaded?"
    ]


def test_a_rerun_right_after_the_database_came_back_goes_ahead_at_once(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    # the database goes away mid-send (a restart: every session ends) and stays away while the coordinator
    # stops, so that nothing of the send can say in the record that it ended; it comes back, and the
    # publisher runs the same command. The issue's lock (free again) proves the old coordinator gone, and
    # its workers, of this host, are provably gone too: the rerun must not wait for their leases (60 s)
    server = pg_cluster.database()
    emails, args = forty_readers(tmp_path, post, "--workers", "2")
    env = {**env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120"), "MAILER_WORKER_LEASE": "60"}
    with held_send(smtp_server, args, env, tmp_path) as (proc, held):
        wait_until("both workers in the record", lambda: len(worker_pids(server)) == 2)
        workers = worker_pids(server)
        with record_away(pg_cluster, server):
            held.release.set()
            # a worker stopped by its coordinator tries to write its end every second for a lease (60 s) and
            # its coordinator waits for it: the further SIGTERM that ends those tries at once, to each that
            # says it tries, leaves the record as the lease's end would, but a minute sooner
            hurried: set[int] = set()

            def ended() -> bool:
                for pid in workers - hurried:
                    with contextlib.suppress(OSError):  # ended already
                        if RETRYING in _stderr_of(pid):
                            os.kill(pid, signal.SIGTERM)
                            hurried.add(pid)
                return proc.poll() is not None

            wait_until("the send stopped", ended)
            _, err = proc.communicate(timeout=120)
    said = err.decode()
    assert proc.returncode == 4, said
    assert len([line for line in said.splitlines() if line.startswith("Error: ")]) == 1, said
    assert rows(server, "SELECT state FROM sends") == [("running",)]  # as the old send left it
    # `mailer status` says what is true, not "sending now" until the lease runs out: the coordinator and its
    # workers, of this host, are gone
    status = mailer(["status", str(post)], env, tmp_path)
    assert "stopped half-way" in status.stdout and "sending now" not in status.stdout, status
    rerun_finishes(smtp_server, args, env, tmp_path, emails, 2)  # in flight on the two workers' connections


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["lone", "coordinator"])
def test_a_send_whose_issue_lock_is_lost_stops_and_a_rerun_finishes(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster, workers: list[str]
) -> None:
    # the session that holds the issue's lock ends alone (an administrator's pg_terminate_backend, an idle
    # connection cut, the server's keepalives after a partition of that connection only): the server let go
    # of the lock, so another send of the issue could take it and mail the same readers; the send must stop,
    # and a coordinator holding the lock proves it alive (which lets a rerun go ahead). 300 readers: past one
    # look-up batch (256), before which a lone send always looks at its lock, so none of the second batch goes
    server = pg_cluster.database()
    emails = [f"user{i:03}@example.com" for i in range(LOOKUP_BATCH + 44)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", *workers]
    with held_send(smtp_server, args, env, tmp_path, at="user010@example.com") as (proc, held):
        ended = rows(
            server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name LIKE ?",
            ("mailer send pid %",),
        )
        assert ended == [(True,)]
        held.release.set()
        _, err = proc.communicate(timeout=120)
    said = err.decode()
    assert proc.returncode == 4, said
    [line] = [line for line in said.splitlines() if line.startswith("Error: ")]
    assert "lost the lock of this issue's send" in line, said
    if workers:
        assert rows(server, "SELECT state FROM sends") == [("stopped",)]
    else:  # not one reader of the second batch: it was never looked up
        assert not set(recipients(smtp_server)) & set(emails[LOOKUP_BATCH:])
    rerun_finishes(smtp_server, args, env, tmp_path, emails, 1)


def test_a_send_stopped_by_a_signal_as_its_record_goes_away_says_what_may_not_be_in_it(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    # a SIGTERM (a coordinator's to its worker, or systemd's) reaches the send while the reply to user10 is
    # out and the record is gone: the message in flight is accepted, its outcome's write fails, and the
    # send stops for the signal: it said nothing of that message, which the rerun mails again
    server = pg_cluster.database()
    emails, args = forty_readers(tmp_path, post)
    env = env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120")
    with held_send(smtp_server, args, env, tmp_path) as (proc, held):
        with record_away(pg_cluster, server):
            proc.send_signal(signal.SIGTERM)
            held.release.set()
            _, err = proc.communicate(timeout=120)
    said = err.decode()
    assert "Traceback" not in said, said
    assert "user10@example.com" in recipients(smtp_server), said
    assert "1 message(s) accepted by the server may not be in the record" in said, said


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["lone", "workers"])
def test_a_send_whose_record_goes_away_reports_as_sent_only_what_the_record_holds(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster, workers: list[str]
) -> None:
    # the server ends every session of the send and takes no new one (a restart, as seen from the send) while
    # the reply to user10 is out: the message is accepted, and its outcome's write fails, so the record never
    # holds it (the rerun mails that reader again): the report counts it apart, and its "sent" is the
    # record's, which `mailer status` shows
    server = pg_cluster.database()
    emails, args = forty_readers(tmp_path, post, *workers)
    env = env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120")
    with held_send(smtp_server, args, env, tmp_path) as (proc, held):
        with record_away(pg_cluster, server):
            held.release.set()
            _, err = proc.communicate(timeout=120)
    said = err.decode()
    assert proc.returncode == 4, said
    recorded = [email for email, (state, _) in states(server).items() if state == "sent"]
    unrecorded = set(recipients(smtp_server)) - set(recorded)
    assert "user10@example.com" in unrecorded
    [error] = [line for line in said.splitlines() if line.startswith("Error: ")]
    if workers:
        # the coordinator cannot count from the record: it claims no count, and its error line adds up what
        # its workers said of their messages that may not be in the record (one per connection at most;
        # before, their lines were held back and the publisher read nothing of them)
        sent = [int(m[1]) for m in re.finditer(r"/40 messages, (\d+) sent,", said)]
        assert all(n <= len(recorded) for n in sent), said
        found = re.search(
            r"the workers: (\d+) message\(s\) accepted by the server may not be in the record", error
        )
        assert found and len(unrecorded) <= int(found[1]) <= 2, said
    else:
        # the counts at the stop, the send's last progress line, are the record's (11 sent, before)
        last = [line for line in said.splitlines() if "progress: " in line][-1]
        assert f"/40 messages, {len(recorded)} sent," in last, said
        assert "1 message(s) accepted by the server may not be in the record" in error, said
    status = mailer(["status", str(post), "--json"], env, tmp_path)
    assert json.loads(status.stdout)["sent"] == len(recorded), status.stdout
    rerun_finishes(smtp_server, args, env, tmp_path, emails, 1 if not workers else 2)
