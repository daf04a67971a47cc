"""What the deliveries' foreign key to their issue costs PostgreSQL, and which part of it: pgbench commits.

    .venv/bin/python bench/pg_key.py                    # 8 clients, 1,000 commits each, 5 rounds
    .venv/bin/python bench/pg_key.py --rounds 3 --commits 500

Each commit is what a send's recorder writer makes at 8 connections: one outcome, the INSERT ... ON CONFLICT
of mailer.ledger, its own transaction, from 8 pgbench clients at once (C, so the sender's Python is out of the
picture) into a throwaway cluster with PostgreSQL's default durability (tests/pg.py, as bench/postgresql.py).
Four records, alternated round by round, each made by mailer and a fresh database:

- `key`: the schema as it is; each new delivery's check looks its issue up and locks the row (FOR KEY SHARE);
  eight writers' transactions overlap, so most locks make a MultiXact;
- `key, own issue`: the same key, each client writing an issue of its own: the look-up and the lock, no
  MultiXact (no second locker);
- `no key`: the key dropped;
- `trigger`: the key dropped for a trigger that looks the issue up without a lock (plpgsql).

Printed: commits a second, the server's CPU per commit (its processes', ended backends included) and the WAL
records and bytes per commit (pg_stat_wal), medians over the rounds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.postgresql import _children, postmaster, server_cpu, settled  # noqa: E402
from bench.run import median  # noqa: E402
from mailer.engine import Server  # noqa: E402
from mailer.ledger import _RECORD, Ledger  # noqa: E402
from tests.pg import Cluster, binaries  # noqa: E402

VARIANTS = ("key", "key, own issue", "no key", "trigger")
_CHECK = """CREATE FUNCTION issue_known() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  PERFORM 1 FROM issues WHERE issue_id = NEW.issue_id AND destination = NEW.destination;
  IF NOT FOUND THEN RAISE foreign_key_violation USING MESSAGE = 'no such issue'; END IF;
  RETURN NEW; END $$"""


def script(own_issue: bool) -> str:
    """pgbench's transaction: the recorder's INSERT of one outcome, a new reader each time."""
    issue = "'i' || :client_id" if own_issue else "'i0'"
    values = (
        f"{issue}, 'smtp', 'r' || :n || '@example.com', 'sent', 1, 250, '250 2.0.0 Ok', '2026-12-02', NULL, 1"
    )
    statement = _RECORD.replace("VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?)", f"VALUES ({values})")
    return f"\\set n random(1, 2000000000)\n{statement};\n"


def make(server: Server, variant: str, clients: int) -> None:
    with Ledger(server) as ledger:
        for i in range(clients):
            ledger.start_issue(f"i{i}", f"hash {i}", "Subject", allow_resend=True)
        if variant in ("no key", "trigger"):
            ledger.write("ALTER TABLE deliveries DROP CONSTRAINT deliveries_issue_id_destination_fkey")
        if variant == "trigger":
            ledger.write(_CHECK)
            ledger.write(
                "CREATE TRIGGER issue_known BEFORE INSERT ON deliveries"
                " FOR EACH ROW EXECUTE FUNCTION issue_known()"
            )


def wal(cluster: Cluster) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(cluster.url("postgres"), password=cluster.password, autocommit=True) as conn:
        row = conn.execute("SELECT wal_records, wal_bytes FROM pg_stat_wal").fetchone()
        return int(row[0]), int(row[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--commits", type=int, default=1000, help="per client")
    p.add_argument("--clients", type=int, default=8)
    a = p.parse_args(argv)
    bindir = binaries()
    if bindir is None:
        print("skipped: PostgreSQL is not installed (Debian package postgresql)")
        return 0
    total = a.clients * a.commits
    found: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in VARIANTS}
    cluster = Cluster(bindir, durable=True).start()
    try:
        with tempfile.TemporaryDirectory(prefix="mailer-bench-key-") as tmp:
            for _ in range(a.rounds):
                for variant in VARIANTS:
                    server = cluster.database()
                    make(server, variant, a.clients)
                    path = Path(tmp) / "commit.sql"
                    path.write_text(script(variant == "key, own issue"))
                    idle = len(_children(postmaster(cluster)))
                    used, (records, size) = server_cpu(cluster), wal(cluster)
                    cmd = [str(bindir / "pgbench"), "-n", "-M", "prepared", "-c", str(a.clients), "-j", "2"]
                    cmd += ["-t", str(a.commits), "-f", str(path), server.url]
                    done = subprocess.run(
                        cmd, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": server.password}
                    )
                    if done.returncode:
                        raise RuntimeError(f"pgbench failed:\n{done.stdout}{done.stderr}")
                    tps = float(done.stdout.split("tps = ")[1].split()[0])
                    settled(cluster, idle)
                    cpu = (server_cpu(cluster) - used) / total * 1e6
                    after = wal(cluster)
                    found[variant].append((tps, cpu, (after[0] - records) / total, (after[1] - size) / total))
    finally:
        cluster.stop()
    load = os.getloadavg()[0]
    print(f"{a.clients} clients x {a.commits:,} one-outcome commits, median of {a.rounds}, load {load:.1f}")
    print("record          | commits/s | server CPU µs/commit | WAL records/commit | WAL bytes/commit")
    for variant, runs in found.items():
        tps, cpu, records, size = (median([r[i] for r in runs]) for i in range(4))
        print(f"{variant:<15} | {tps:9,.0f} | {cpu:20.0f} | {records:18.2f} | {size:16.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
