"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary folder, a loopback port, a fresh
database per test (copied from an empty template, which is fast), stopped and removed at the session's end.

The Debian packages keep the server binaries off PATH, in /usr/lib/postgresql/VERSION/bin. initdb and the
server refuse to run as root (CI runs the tests as root), so there they run as the `postgres` user, in a
folder it owns. Where PostgreSQL is not installed the PostgreSQL tests are skipped, except under CI=true,
where they fail: scripts/test installs it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailer.engine import Server
from tests.ports import free_ports, until_started

USER = "mailer_test"  # the role the tests connect as, with a password (so the password paths are real)


def binaries() -> Path | None:
    """The folder with initdb and pg_ctl (the newest installed version), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


# Runs as the server's user: start the cluster, say so, and when stdin closes stop it (immediate: the data is
# thrown away) and remove its folder. stdin closes when the test run ends or dies, however it dies: a killed
# pytest leaves no server behind.
_KEEPER = """
"$1/pg_ctl" start -w -D "$2/data" -l "$2/log" -o "$3" >/dev/null || exit 1
echo ready
cat >/dev/null
"$1/pg_ctl" stop -m immediate -w -D "$2/data" >/dev/null
rm -rf "$2"
"""


def _as_server_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse root: as root (CI), run them as the Debian package's `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Cluster:
    """One running cluster: `database()` makes a fresh empty database and returns where it is."""

    bindir: Path
    durable: bool = False  # the server's own fsync and synchronous_commit (bench/postgresql.py); else off
    ahead: bool = False  # database() makes the next database in the background (the test run's cluster)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mailer-pg-")))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    ports: Iterator[int] = field(default_factory=free_ports)  # where the server tries to listen, in turn
    port: int = 0  # where it listens
    env: dict[str, str] = field(default_factory=dict)  # more of the server's environment (libfaketime's)
    _names: itertools.count[int] = field(default_factory=itertools.count)
    _keeper: subprocess.Popen[str] | None = None
    _maker: ThreadPoolExecutor | None = None
    _next: Future[str] | None = None
    _handed: list[str] = field(default_factory=list)  # by database() since drop_handed() (with `ahead`)

    def start(self) -> Cluster:
        secret = self.root / "password"
        secret.write_text(self.password)
        if os.geteuid() == 0:  # the server's user owns its folder (mkdtemp made it 0700)
            entry = pwd.getpwnam("postgres")
            for path in (self.root, secret):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        # scram over TCP: the tests connect with a password, as a publisher's senders do
        initdb = [
            str(self.bindir / "initdb"), "-D", str(self.root / "data"), "-U", USER, "--pwfile", str(secret),
            "-E", "UTF8", "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
        ]  # fmt: skip
        done = subprocess.run(_as_server_user(initdb), capture_output=True, text=True, cwd=self.root)
        secret.unlink()
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        options = f"-k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if (
            not self.durable
        ):  # the tests' databases are thrown away; a crash test kills mailer, not the server
            options += (
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB"
            )
        try:
            until_started(lambda: self._launch(options))
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.admin("CREATE DATABASE empty")
        return self

    def _launch(self, options: str) -> None:
        """Start the server on the next of `ports` through its keeper; RuntimeError with its log if not."""
        self.port = next(self.ports)
        server = f"-p {self.port} {options}"
        keeper = ["sh", "-c", _KEEPER, "keeper", str(self.bindir), str(self.root), server]
        # `env` after the switch to the server's user: a preloaded library (libfaketime) is then loaded by
        # that user's processes only, whose shared memory a root process could not open
        extra = ["env", *(f"{name}={value}" for name, value in self.env.items())] if self.env else []
        self._keeper = subprocess.Popen(
            _as_server_user([*extra, *keeper]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=self.root,
        )
        assert self._keeper.stdout is not None
        if self._keeper.stdout.readline() == "ready\n":
            return
        self._keeper.communicate()
        self._keeper = None
        log = self.root / "log"
        why = log.read_text(errors="replace") if log.exists() else "(no log)"
        log.unlink(missing_ok=True)  # the next attempt's log says only what it did
        raise RuntimeError(f"the test cluster did not start on port {self.port}; its log:\n{why}")

    def admin(self, sql: str) -> None:
        """Run one statement as the cluster's owner (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(self.url("postgres"), password=self.password, autocommit=True) as conn:
            conn.execute(sql)

    def url(self, name: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def database(self) -> Server:
        """A fresh, empty database, with the password mailer is given (MAILER_DATABASE_PASSWORD).

        With `ahead`, each is made while the test before it runs (and the next one is started now): a copy of
        the template took 150-1,700 ms (median 784) at load 10, for each of ~150 tests a run."""
        if not self.ahead:
            return Server(self.url(self._make()), password=self.password)
        if self._maker is None:
            self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="next-database")
        name = self._next.result() if self._next is not None else self._make()
        self._next = self._maker.submit(self._make)
        self._handed.append(name)
        return Server(self.url(name), password=self.password)

    def drop_handed(self) -> None:
        """Drop the databases handed out since the last call (the test that had them has ended and its
        processes with it), in the background. Their files, all removed at once as the cluster stopped,
        took 25 s for 120 databases (1.4 GB) at load 21; and files removed within seconds are mostly never
        written to the disk at all (the server does not fsync here)."""
        names, self._handed = self._handed, []
        for name in names:
            assert self._maker is not None
            self._maker.submit(self.admin, f"DROP DATABASE {name} WITH (FORCE)")

    def _make(self) -> str:
        name = f"t{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE empty")
        return name

    def stop(self) -> None:
        """Stop the server (closing the keeper's stdin) and remove its files.

        On a loaded machine an immediate stop has been seen to outlast pg_ctl's own 60 s wait (several
        clusters and suites at once): the data is thrown away anyway, so the server is then killed outright
        rather than failing the test whose teardown this is."""
        if self._maker is not None:  # the database made ahead is not needed: let it be made, then stop
            self._maker.shutdown(wait=True)
        try:
            if self._keeper is not None:
                try:
                    self._keeper.communicate(timeout=90)
                except subprocess.TimeoutExpired:
                    self._kill_server()
                    self._keeper.kill()
                    self._keeper.communicate()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_server(self) -> None:
        """SIGKILL the postmaster (its first line in postmaster.pid); its backends exit when it is gone."""
        try:
            pid = int((self.root / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone already, or never written: nothing left to kill


def rows(where: Path | Server, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run SQL (`?` placeholders) on the record with a connection of the test's own, as a person would with
    sqlite3 or psql: the tests' view of what mailer stored, not mailer's own reading of it."""
    if isinstance(where, Path):
        with contextlib.closing(sqlite3.connect(f"file:{where}?mode=rw", uri=True)) as db, db:
            return [tuple(row) for row in db.execute(sql, params)]
    import psycopg

    with psycopg.connect(where.url, password=where.password, autocommit=True) as conn:
        cursor = conn.execute(sql.replace("?", "%s"), params)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


def without_runs_of_deliveries(where: Path | Server) -> None:
    """Take away what schema step 10 -> 11 added (each delivery's run, each batch's counts), for a test that
    makes the record of a mailer before it."""
    rows(where, "ALTER TABLE deliveries DROP COLUMN run_id")
    rows(where, "ALTER TABLE send_batches DROP COLUMN counts")


def set_schema_version(where: Path | Server, version: int) -> None:
    """Mark the record as of schema `version`, where each engine keeps it (a test that makes an older or a
    newer mailer's record)."""
    if isinstance(where, Path):
        rows(where, f"PRAGMA user_version = {int(version)}")
    else:
        rows(where, "UPDATE mailer_schema SET version = ?", (version,))


def database_env(where: Path | Server) -> dict[str, str]:
    """The MAILER_* variables that point mailer (a CLI run, a child process) at a test's record."""
    if isinstance(where, Path):
        return {"MAILER_DATABASE": str(where)}
    return {"MAILER_DATABASE": where.url, "MAILER_DATABASE_PASSWORD": where.password}


def location(env: Mapping[str, str]) -> Path | Server | None:
    """The record that MAILER_DATABASE (and its password) in `env` name, or None when it is not set."""
    where = env.get("MAILER_DATABASE")
    if not where:
        return None
    if where.startswith("postgresql://"):
        return Server(where, password=env.get("MAILER_DATABASE_PASSWORD", ""))
    return Path(where)


# for a test of something only a SQLite file has, in a module whose tests run on both engines
SQLITE_ONLY = pytest.mark.parametrize("engine", ["sqlite"])
