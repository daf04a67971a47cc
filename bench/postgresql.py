"""The send rate with the record in PostgreSQL against the same send with the record in SQLite.

    .venv/bin/python bench/postgresql.py              # 10,000 messages, 1 and 8 connections, median of 5
    .venv/bin/python bench/postgresql.py --messages 3000 --runs 3 --connections 8 --workers 0,2
    .venv/bin/python bench/postgresql.py --against /tmp/main   # also an earlier checkout, alternating

Each run is `mailer send` of the example post as a fresh process to Postfix's smtp-sink on a loopback port
(bench/run.py's sink and settings), once with the record in a SQLite file and once in a PostgreSQL database of
a throwaway cluster started here (tests/pg.py: initdb in a temporary folder, a loopback port, stopped and
removed at the end), alternating so both see the same machine load; each record is made (`mailer db
migrate`) before the timed send, as a publisher's is. Unlike the test cluster, this one keeps
PostgreSQL's durability settings (fsync, synchronous_commit on), as a production server has them. With
--against DIR, the same runs of the mailer in DIR (a checkout: `git archive REV | tar -x -C DIR`, run through
PYTHONPATH) alternate with this one's, for a before/after under the same load. `--workers N` runs are
`send --workers N` (N processes), 0 is a lone send. The rate is messages over the wall time of the whole
command; CPU is the `mailer send` process's own (with workers: the coordinator's alone, so not shown), and
"server" the PostgreSQL cluster's for the same run (its processes' CPU, the ended backends' included: they
share the machine's cores with the sender); "commits" the database's committed transactions and "flushes"
the cluster's WAL syncs per 1,000 messages (pg_stat_database, pg_stat_wal, once the send's sessions ended):
each commit is a round trip and the server's work beyond its rows, and waits for a flush, which the server
makes one at a time for every commit waiting. The target (issue 16) is PostgreSQL at least 0.8x SQLite at 8
connections.

--db-delay MS puts a relay of this script's between mailer and the cluster that holds every chunk of bytes
MS milliseconds each way: a database a round trip of 2 x MS away (a LAN, another zone), where each commit
costs that round trip more than on the same host. (`tc netem` would do it in the kernel; this machine's
kernel has no netem.) The relay runs in this process, outside the sender's and the server's CPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    CHILDREN,
    EXAMPLE_POST,
    Finished,
    mailer_env,
    median,
    run_child,
    smtp_sink,
    write_subscribers,
)
from tests.pg import Cluster, binaries, database_env  # noqa: E402

TARGET = 0.8
ENGINES = ("sqlite", "postgresql")


def postmaster(cluster: Cluster) -> int:
    return int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])


def server_cpu(cluster: Cluster) -> float:
    """CPU seconds the cluster has used so far: the postmaster's own and its ended children's (reaped by
    it), and its live children's (checkpointer, WAL writer, any backend still ending)."""
    main = postmaster(cluster)
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in [main, *_children(main)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # ended meanwhile: counted in the postmaster's children's time
            continue
        own = sum(int(f) for f in fields[11:13])  # utime, stime
        total += own + (sum(int(f) for f in fields[13:15]) if pid == main else 0)  # cutime, cstime
    return total / ticks


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def settled(cluster: Cluster, before: int) -> None:
    """Wait (up to 5 s) until the backends of a finished send have ended, so their CPU is counted."""
    main = postmaster(cluster)
    deadline = time.monotonic() + 5
    while len(_children(main)) > before and time.monotonic() < deadline:
        time.sleep(0.02)


def commits(cluster: Cluster, database: str) -> tuple[int, int]:
    """The transactions committed in one database and the cluster's WAL flushes so far (a session's are
    counted once it ends)."""
    import psycopg

    with psycopg.connect(cluster.url("postgres"), password=cluster.password, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, (SELECT wal_sync FROM pg_stat_wal) FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
        return int(row[0]), int(row[1])


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Pass each chunk on `delay` seconds after it came, in order."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def later() -> None:
        while True:
            due, chunk = await chunks.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not chunk:
                writer.close()
                return
            writer.write(chunk)
            await writer.drain()

    sending = asyncio.create_task(later())
    try:
        while chunk := await reader.read(1 << 16):
            chunks.put_nowait((loop.time() + delay, chunk))
    finally:
        chunks.put_nowait((loop.time() + delay, b""))
        await sending


@contextlib.contextmanager
def delayed(port: int, ms: float) -> Iterator[int]:
    """A loopback port that relays to `port`, each chunk held `ms` ms each way (0: `port` itself)."""
    if not ms:
        yield port
        return
    loop = asyncio.new_event_loop()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(OSError):
            await asyncio.gather(_pump(reader, up_writer, ms / 1000), _pump(up_reader, writer, ms / 1000))

    server = loop.run_until_complete(asyncio.start_server(client, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def make_record(port: int, data_dir: Path, extra: dict[str, str]) -> None:
    """`mailer db migrate` before the timed send (a publisher's sends find the record made): PostgreSQL's
    CREATE TABLEs, a WAL flush each, took ~0.8 s more than SQLite's on the loaded machine, a twentieth of a
    10,000-message send."""
    mailer_command([sys.executable, "-m", "mailer", "db", "migrate"], port, data_dir, extra)


def send(
    port: int, csv: Path, data_dir: Path, connections: int, workers: int, extra: dict[str, str]
) -> Finished:
    """One `mailer send`, start-up included."""
    cmd = [sys.executable, "-m", "mailer", "send", str(EXAMPLE_POST), "--to", str(csv), "--yes", "--force"]
    cmd += ["--connections", str(connections)]
    if workers:
        cmd += ["--workers", str(workers)]
    return mailer_command(cmd, port, data_dir, extra)


def mailer_command(cmd: list[str], port: int, data_dir: Path, extra: dict[str, str]) -> Finished:
    done = run_child(cmd, env={**mailer_env(port, data_dir), **extra}, cwd=data_dir.parent)
    if done.rc != 0 or "Traceback" in done.stderr:
        raise RuntimeError(f"mailer {cmd[3]} failed ({done.rc}):\n{done.stderr[-2000:]}")
    return done


def row(
    version: str,
    conns: int,
    workers: int,
    runs: dict[tuple[str, str], list[Finished]],
    servers: dict[str, list[float]],
    committed: dict[str, list[tuple[int, int]]],
    n: int,
) -> str:
    """One line of the table: each engine's median rate (and CPU per 1,000 messages), the PostgreSQL
    server's CPU, commits and WAL flushes per 1,000, the ratio of the median rates and, for its spread, the
    ratio in each run (the two engines' sends of one run are made one after the other)."""
    rate, cells = {}, []
    for engine in ENGINES:
        done = runs[(version, engine)]
        rate[engine] = n / median([d.wall for d in done])
        cpu = median([d.cpu for d in done]) * 1000 / n
        cells.append(f"{rate[engine]:6,.0f}" + (f" ({cpu:.2f})" if not workers else ""))
    ratio = rate["postgresql"] / rate["sqlite"]
    met = "yes" if ratio >= TARGET else "no"
    pairs = zip(runs[(version, "postgresql")], runs[(version, "sqlite")], strict=True)
    each = ", ".join(f"{sqlite.wall / pg.wall:.2f}" for pg, sqlite in pairs)
    server = median(servers[version]) * 1000 / n
    commit, flush = (median([c[i] for c in committed[version]]) * 1000 / n for i in (0, 1))
    return (
        f"{version:>7} | {conns:>5} | {workers:>7} | {cells[0]:>18} | {cells[1]:>22} | {server:6.2f} |"
        f" {commit:7,.0f} | {flush:7,.0f} |"
        f" {ratio:.2f}x (≥ {TARGET}x: {met}; each run {each})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--connections", default="1,8")
    p.add_argument("--workers", default="0", help="comma-separated; 0 is a lone send")
    p.add_argument("--against", type=Path, help="a checkout of another mailer version to alternate with")
    p.add_argument("--db-delay", type=float, default=0.0, help="ms each chunk to and from the database waits")
    a = p.parse_args(argv)
    bindir = binaries()
    if bindir is None:
        print("skipped: PostgreSQL is not installed (Debian package postgresql)")
        return 0
    versions = {"this": {}} | ({"against": {"PYTHONPATH": str(a.against.resolve())}} if a.against else {})
    with tempfile.TemporaryDirectory(prefix="mailer-bench-pg-") as name:
        tmp = Path(name)
        csv = tmp / "subscribers.csv"
        write_subscribers(csv, a.messages)
        cluster = Cluster(bindir, durable=True).start()
        try:
            with smtp_sink() as port, delayed(cluster.port, a.db_delay) as db_port:
                away = f"; the database {2 * a.db_delay:g} ms away" if a.db_delay else ""
                print(f"{a.messages:,} messages, median of {a.runs}{away}; msg/s over the whole command,")
                print("CPU s per 1,000 messages of the mailer send process (lone sends) and of the server")
                print(
                    "version | conns | workers | SQLite msg/s (CPU) | PostgreSQL msg/s (CPU) | server |"
                    " commits | flushes | ratio"
                )
                for workers in (int(w) for w in a.workers.split(",")):
                    for conns in (int(c) for c in a.connections.split(",")):
                        runs: dict[tuple[str, str], list[Finished]] = {}
                        servers: dict[str, list[float]] = {}
                        committed: dict[str, list[tuple[int, int]]] = {}
                        for run in range(a.runs):
                            for version, env in versions.items():
                                for engine in ENGINES:
                                    data_dir = tmp / f"{version}-{engine}-{conns}-{workers}-{run}" / "state"
                                    data_dir.parent.mkdir()
                                    extra = dict(env)
                                    if engine == "postgresql":
                                        database = cluster.database()
                                        extra |= database_env(database)
                                        extra["MAILER_DATABASE"] = database.url.replace(
                                            f":{cluster.port}/", f":{db_port}/"
                                        )
                                    make_record(port, data_dir, extra)
                                    if engine == "postgresql":
                                        name = database.url.rpartition("/")[2]
                                        idle = len(_children(postmaster(cluster)))
                                        used, before = server_cpu(cluster), commits(cluster, name)
                                    done = send(port, csv, data_dir, conns, workers, extra)
                                    if engine == "postgresql":
                                        settled(cluster, idle)
                                        servers.setdefault(version, []).append(server_cpu(cluster) - used)
                                        after = commits(cluster, name)
                                        made = (after[0] - before[0], after[1] - before[1])
                                        committed.setdefault(version, []).append(made)
                                    runs.setdefault((version, engine), []).append(done)
                                    shutil.rmtree(data_dir.parent)
                        for version in versions:
                            print(row(version, conns, workers, runs, servers, committed, a.messages))
        finally:
            CHILDREN.stop_all()
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
