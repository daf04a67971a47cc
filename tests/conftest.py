"""Shared fixtures: a real SMTP server (tests/smtpd.py) on 127.0.0.1 and settings that point at it.

Hypothesis runs derandomized (profile `ci`): the same examples on every run, so a run passes or fails on the
code, not on luck. `HYPOTHESIS_PROFILE=deep` (ignored when CI is set) draws fresh random examples, ten times
as many; run it on purpose to hunt for new failures, then add each one found as an @example.
"""

from __future__ import annotations

import compileall
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from mailer.config import Settings
from mailer.engine import Location
from mailer.engine_sqlite import ROOM
from mailer.subscribers import BadRow
from tests.chromium import ARGS, CHROMIUM, WAIT_MS
from tests.pg import Cluster, binaries
from tests.smtpd import SMTPServer, TLSFiles, make_tls_files, settings_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "2026-02-09.md"  # the example post: read it, or copy it to change it

# This machine sets PYTHONDONTWRITEBYTECODE=1, so each `mailer` process a test starts would compile mailer's
# sources again (~0.09 s of CPU each, hundreds of processes a run). Compile them once per run into
# __pycache__, which those processes read (the flag stops writing, not reading; a source changed later is
# recompiled by its time stamp, as ever). The wheel leaves __pycache__ out (tests/test_install.py).
compileall.compile_dir(ROOT / "mailer", quiet=1)

# deadline=None: a shared 2-core machine can take seconds over one example; timing belongs in bench/
settings.register_profile(
    "ci", derandomize=True, database=None, print_blob=True, max_examples=100, deadline=None
)
settings.register_profile("deep", max_examples=1000, deadline=None, print_blob=True)
PROFILE = "ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

# A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so would every
# `mailer` process the tests start: the Ctrl-C tests would then test nothing but the shell. Take SIGINT back,
# so children start with the default disposition, as under a terminal or a CI runner.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# No test reaches past this machine. mailer fetches the images a post gives no size for unless offline,
# so every mailer the tests start is offline (a test of the fetch serves its images on 127.0.0.1 itself),
# and in this process a name lookup of anything but this machine fails at once instead of asking DNS.
os.environ["MAILER_OFFLINE"] = "1"
_getaddrinfo = socket.getaddrinfo


def _this_machine(host: object) -> bool:
    name = host.decode() if isinstance(host, bytes) else host
    if name in (None, "", "localhost"):
        return True
    try:
        address = ipaddress.ip_address(str(name).strip("[]").partition("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _local_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _this_machine(host):
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: the tests reach only 127.0.0.1 and ::1")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _local_getaddrinfo


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Share the tests out among scripts/test's processes (pytest-xdist, `--dist loadgroup`): each test goes
    to whichever process is free, but tests that share one thing stay in one process: a module's tests whose
    fixture is made once per module (a Chromium, a wheel, a running server), those of the second PostgreSQL
    cluster (own_cluster), and Postfix with Dovecot (tests/mta.py). The tests marked slow go first, so that
    none of them starts last while the other processes have nothing left to do."""
    for item in items:
        group = _shared_by(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _shared_by(item: pytest.Item) -> str | None:
    """The name of what `item` shares with other tests and must not be made again in another process."""
    if item.get_closest_marker("mta"):
        return "mta"
    if not isinstance(item, pytest.Function):
        return None
    if "own_cluster" in item.fixturenames:
        return "own_cluster"
    defs = item._fixtureinfo.name2fixturedefs.values()
    if any(fixture.scope in ("module", "class") for chain in defs for fixture in chain):
        return item.nodeid.split("::", 1)[0]
    return None


def examples(count: int) -> int:
    """A property test's own example count (set low where each example is slow): ten times it when deep."""
    return count * 10 if PROFILE == "deep" else count


@pytest.fixture
def in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The test runs in tmp_path with no MAILER_* variable: no stray mailer.toml or setting reaches mailer."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("MAILER_")]:
        monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture
def post(tmp_path: Path) -> Path:
    """A copy of the example post, tmp_path/posts/2026-02-09.md, that a test may edit."""
    folder = tmp_path / "posts"
    folder.mkdir()
    return Path(shutil.copy(EXAMPLE, folder / EXAMPLE.name))


class Disk:
    """A small tmpfs mounted for one test: a real file system that fills up."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fill(self) -> None:
        """Take every free block, down to the last byte."""
        with open(self.path / "filler", "ab", buffering=0) as out:
            for size in (1 << 16, 4096, 1):
                try:
                    while True:
                        out.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == 28, exc  # ENOSPC

    def leave(self, free: int) -> None:
        """Take free blocks (into the file `filler`) until `free` bytes are left, to the block."""
        fs = os.statvfs(self.path)
        take = fs.f_bavail * fs.f_frsize - free
        assert take > 0, f"{self.path}: only {fs.f_bavail * fs.f_frsize} bytes free, not more than {free}"
        with open(self.path / "filler", "ab") as out:
            os.posix_fallocate(out.fileno(), out.tell(), take)

    def free(self) -> int:
        """Bytes free for an unprivileged process (what mailer counts)."""
        fs = os.statvfs(self.path)
        return fs.f_bavail * fs.f_frsize

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def read_write(self) -> None:
        subprocess.run(["mount", "-o", "remount,rw", str(self.path)], check=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    """A tmpfs of 4 MiB more than the room a send keeps free on the record's file system (ROOM)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "disk"
    path.mkdir()
    size = f"size={(ROOM >> 10) + 4096}k"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def smtp_servers() -> Iterator[Callable[..., SMTPServer]]:
    """A factory: smtp_servers(tls=..., users=...) starts another server, stopped after the test."""
    started: list[SMTPServer] = []

    def start(**options: Any) -> SMTPServer:
        server = SMTPServer(**options).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def smtp_server(smtp_servers: Callable[..., SMTPServer]) -> SMTPServer:
    """A plain-text SMTP server on 127.0.0.1 that records every message."""
    return smtp_servers()


@pytest.fixture
def smtp_settings(smtp_server: SMTPServer, tmp_path: Path) -> Settings:
    """Settings that send to `smtp_server` in plain text, with state under tmp_path."""
    return settings_for(smtp_server, data_dir=tmp_path / "state")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, made once per test run."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster of the test run's own (tests/pg.py), stopped at the end."""
    bindir = binaries()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (scripts/test installs the Debian package postgresql)")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    cluster = Cluster(bindir, ahead=True).start()
    _CLUSTERS.append(cluster)
    yield cluster
    _CLUSTERS.remove(cluster)
    cluster.stop()


_CLUSTERS: list[Cluster] = []  # pg_cluster, once a test has started it


@pytest.fixture(autouse=True)
def _drop_databases() -> Iterator[None]:
    """After each test (and the fixtures it used: this one ends last), the test cluster drops the databases
    the test had (Cluster.drop_handed)."""
    yield
    for cluster in _CLUSTERS:
        cluster.drop_handed()


@pytest.fixture(scope="session")
def own_cluster(pg_cluster: Cluster) -> Iterator[Cluster]:
    """A second cluster, for the tests that freeze their server or cut it off (test_pg_hazards.py,
    test_pg_partition.py) without holding up any other test's database (pg_cluster's binaries, and its skip
    where PostgreSQL is not installed). One for both modules: each of those tests has a database of its own
    and leaves the server running and reachable, whatever happened (frozen(), cut_off())."""
    cluster = Cluster(pg_cluster.bindir).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (Debian's, driven by Playwright) for each module of browser tests; missing, the
    tests are skipped, or fail under CI. Playwright's checks wait up to WAIT_MS, not their own 5 s."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (CI is set, so the browser tests must run)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium fonts-noto-cjk)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def engine(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs twice: on SQLite and on PostgreSQL."""
    return str(request.param)


@pytest.fixture
def record_at(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Location:
    """Where a test's record lives: a new SQLite file, or a new empty database in the test cluster."""
    if engine == "sqlite":
        return tmp_path / "state" / "mailer.db"
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    return cluster.database()


class Heard(list[str]):
    """A voice (mailer.console.Voice) that keeps every line it is told, for tests of what the core says."""

    def note(self, line: str) -> None:
        self.append(line)

    def warn(self, line: str) -> None:
        self.append(line)

    def error(self, line: str) -> None:
        self.append(line)

    def skipped(self) -> list[BadRow]:
        """The rows a list reader said it skipped (`skipped: FILE:LINE: why`), as BadRow values."""
        rows = []
        for line in self:
            match = re.fullmatch(r"skipped: (.+?):(\d+): (.*)", line, re.S)
            assert match, line
            rows.append(BadRow(Path(match[1]), int(match[2]), match[3]))
        return rows
