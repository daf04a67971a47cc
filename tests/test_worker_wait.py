"""`mailer worker` with no send to join: pointed at another database than the send's, or started before the
send (a service started at boot). It must not pass for a worker that finished its share (exit 0, a line
that says nothing of where it looked); `--wait` waits for the send instead, as a service's worker does.

Real processes, the real record on both engines; every wait is on a line, a row or a process's end.
"""

from __future__ import annotations

import configparser
import shlex
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from mailer.engine import Location, Server
from tests.pg import database_env
from tests.smtpd import SMTPServer
from tests.test_worker_kills import _unit
from tests.test_workers import _running, env_at, recipients, spawn, wait_until, write_list


def _waiting(proc: subprocess.Popen[bytes]) -> str:
    """The worker's 'Waiting for a send' line, read as it comes (then the worker is waiting)."""
    assert proc.stderr is not None
    lines: list[str] = []
    while not lines or "Waiting for a send" not in lines[-1]:
        line = proc.stderr.readline().decode()
        assert line, f"the worker ended without waiting: {lines}"
        lines.append(line)
    return lines[-1]


def _migrated(env: dict[str, str], tmp_path: Path) -> None:
    made = spawn(["db", "migrate"], env, tmp_path)
    _, err = made.communicate(timeout=60)
    assert made.returncode == 0, err.decode()


def test_a_worker_with_no_send_in_its_database_fails_naming_it_and_one_that_waits_joins_the_send(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location, request: pytest.FixtureRequest
) -> None:
    emails = [f"user{i}@example.com" for i in range(30)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record_at)
    elsewhere: Location = tmp_path / "elsewhere" / "mailer.db"
    if isinstance(record_at, Server):
        elsewhere = request.getfixturevalue("pg_cluster").database()
    env_elsewhere = {**env, **database_env(elsewhere)}
    _migrated(env, tmp_path)  # `mailer db migrate` before the services start
    _migrated(env_elsewhere, tmp_path)
    # a service's worker, started before the send: it waits, saying where
    early = spawn(["worker", "--wait"], env, tmp_path)
    stopped = spawn(["worker", "--wait"], env, tmp_path)  # stopped while it waits: as any stop, 143
    coordinator: subprocess.Popen[bytes] | None = None
    try:
        assert f"Waiting for a send to start in {record_at}" in _waiting(early)
        _waiting(stopped)
        stopped.send_signal(signal.SIGTERM)
        _, stopped_err = stopped.communicate(timeout=60)
        assert stopped.returncode == 143, stopped_err.decode()
        assert b"Traceback" not in stopped_err
        args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed", "--workers", "0"]
        coordinator = spawn(args, env, tmp_path)
        wait_until("the send in the record", lambda: _running(record_at))
        # a worker pointed at another database (a typo, another host's settings) finds no send there
        lost = spawn(["worker"], env_elsewhere, tmp_path)
        _, lost_err = lost.communicate(timeout=60)
        assert lost.returncode == 1, lost_err.decode()
        assert [line for line in lost_err.decode().splitlines() if line.strip()] == [
            f"Error: {elsewhere}: no send is running there to join (is it the database of the host that"
            " starts the send, and has the send started? --wait waits for one)"
        ]
        _, early_err = early.communicate(timeout=120)
        _, err = coordinator.communicate(timeout=120)
    finally:
        for proc in (early, stopped, coordinator):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert early.returncode == 0, early_err.decode()
    assert coordinator.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})


def test_the_worker_of_the_docs_systemd_unit_says_in_its_journal_where_it_waits(
    smtp_server: SMTPServer, tmp_path: Path
) -> None:
    """The unit of docs/workers.md ran `mailer worker --wait --quiet`: its journal said nothing while it
    waited, neither the database it looks in nor that the database does not answer (as the docs promise)."""
    unit = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    unit.read_string(_unit())
    command = shlex.split(unit["Service"]["ExecStart"])
    assert command[0].endswith("/mailer"), command
    record = tmp_path / "state" / "mailer.db"
    env = env_at(smtp_server, tmp_path, record)
    _migrated(env, tmp_path)  # no send in it: the service waits
    service = spawn(command[1:], env, tmp_path)
    silent = threading.Timer(60, service.send_signal, (signal.SIGTERM,))  # ends one that never says it
    silent.start()
    try:
        assert f"Waiting for a send to start in {record}" in _waiting(service)
    finally:
        silent.cancel()
        service.send_signal(signal.SIGTERM)  # systemctl stop
        service.communicate(timeout=60)
    assert service.returncode == 143
