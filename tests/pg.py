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
import socket
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mailer.engine import Server

USER = "mailer_test"  # the role the tests connect as, with a password (so the password paths are real)


def binaries() -> Path | None:
    """The folder with initdb and pg_ctl (the newest installed version), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """One running cluster: `database()` makes a fresh empty database and returns where it is."""

    bindir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mailer-pg-")))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    port: int = 0
    _names: itertools.count[int] = field(default_factory=itertools.count)

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> Cluster:
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        secret = self.root / "password"
        secret.write_text(self.password)
        if os.geteuid() == 0:
            os.chown(secret, pwd.getpwnam("postgres").pw_uid, -1)
        data, sockets = self.root / "data", self.root / "run"
        # scram over TCP: the tests connect with a password, as a publisher's senders do
        self._run(
            "initdb", "-D", str(data), "-U", USER, "--pwfile", str(secret), "-E", "UTF8", "--no-locale",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
        )  # fmt: skip
        secret.unlink()
        os.makedirs(sockets, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(sockets, pwd.getpwnam("postgres").pw_uid, -1)
        self.port = _free_port()
        # durability off: these databases are thrown away; a crash test kills mailer, never the server
        options = (
            f"-p {self.port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            " -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "start", "-w", "-D", str(data), "-l", str(self.root / "log"), "-o", options)
        self.admin("CREATE DATABASE empty")
        return self

    def admin(self, sql: str) -> None:
        """Run one statement as the cluster's owner (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(self.url("postgres"), password=self.password, autocommit=True) as conn:
            conn.execute(sql)

    def url(self, name: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def database(self) -> Server:
        """A fresh, empty database, with the password mailer is given (MAILER_DATABASE_PASSWORD)."""
        name = f"t{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE empty")
        return Server(self.url(name), password=self.password)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.root / "data"))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


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
