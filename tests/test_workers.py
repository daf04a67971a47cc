"""Sends made by several processes (issue 16 B): `send --workers N`, `send --distributed` + `mailer worker`.

Real processes against a real SMTP server (tests/smtpd.py) and the real record; kills are real SIGKILLs and
stops real SIGTERMs. Every wait is on something that happened (a message arrived, a row in the record, a
process ended), never on a sleep.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from mailer.engine import Location, Server
from mailer.ledger import SCHEMA_VERSION, Ledger
from tests.pg import rows
from tests.publisher import env_for
from tests.smtpd import SMTPServer

LEASE = "3"  # seconds: how long a killed worker's batch waits before another takes it over


def write_list(path: Path, emails: list[str]) -> Path:
    lines = ["email,name"] + [f"{e},Reader {i}" for i, e in enumerate(emails)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def recipients(server: SMTPServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", *args],
        env=full,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def env_at(server: SMTPServer, tmp_path: Path, record: Location, **extra: str) -> dict[str, str]:
    """The environment of a mailer process whose record is `record` (a SQLite file or a PostgreSQL one)."""
    env = env_for(server, tmp_path, MAILER_WORKER_LEASE=LEASE, **extra)
    env["MAILER_DATABASE"] = record.url if isinstance(record, Server) else str(record)
    if isinstance(record, Server):
        env["MAILER_DATABASE_PASSWORD"] = record.password
    return env


def states(record: Location, issue: str = "2026-02-09") -> dict[str, tuple[str, int]]:
    """Every reader's delivery in the record: (state, attempts)."""
    found = rows(
        record,
        "SELECT email, state, attempts FROM deliveries WHERE issue_id = ? AND destination = 'smtp'",
        (issue,),
    )
    return {str(email): (str(state), int(attempts)) for email, state, attempts in found}  # type: ignore[call-overload]


def test_three_workers_mail_everyone_once_and_the_report_adds_them_up(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails = [f"user{i}@example.com" for i in range(150)]
    csv = write_list(tmp_path / "subs.csv", emails)
    smtp_server.reject("user7@example.com")
    env = env_at(smtp_server, tmp_path, record_at)
    proc = spawn(
        ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "3", "--json"], env, tmp_path
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err.decode()  # one reader failed for good
    got = recipients(smtp_server)
    assert got == Counter({e: 1 for e in emails if e != "user7@example.com"})
    report = json.loads(out)
    assert report["counts"]["sent"] == 149
    assert report["counts"]["failed_permanent"] == 1
    # three workers, each with its counts in the record
    workers = rows(record_at, "SELECT worker, state, counts FROM send_workers")
    assert len(workers) == 3 and {w[1] for w in workers} == {"done"}
    assert sum(json.loads(str(w[2]))["sent"] for w in workers) == 149
    assert b"Traceback" not in err
    recorded = states(record_at)
    assert recorded["user7@example.com"][0] == "failed"
    assert sorted(e for e, (s, _) in recorded.items() if s == "sent") == sorted(
        set(emails) - {"user7@example.com"}
    )
    with Ledger(record_at) as ledger:
        assert ledger.status("2026-02-09").count("sent") == 149


def worker_pids(record: Location) -> set[int]:
    """The process ids of the workers registered in the record ('HOST pid N TOKEN')."""
    return {
        int(str(name).split(" pid ")[1].split()[0])
        for (name,) in rows(record, "SELECT worker FROM send_workers")
    }


def wait_until(what: str, done: object, timeout: float = 120.0) -> None:
    """Poll a condition on the record or on processes (an event outside this process: no other hook)."""
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.02)


@pytest.mark.slow
def test_three_workers_with_one_killed_20_times_lose_no_reader_and_repeat_only_what_was_in_flight(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    rng = random.Random(16)  # the kill points: the same on every run
    # the 20 kills come 5-20 messages apart (274 in all with this seed), and the messages that arrive as each
    # is made add more: the last came at message 300-325 at load 18-19. 450 readers leave ~120 for the
    # batches taken over after the last kill
    emails = [f"user{i}@example.com" for i in range(450)]
    csv = write_list(tmp_path / "subs.csv", emails)
    rejected = {f"user{i}@example.com" for i in range(5, 450, 97)}
    deferred_once = {f"user{i}@example.com" for i in range(11, 450, 61)}
    for address in rejected:
        smtp_server.reject(address)
    for address in deferred_once:
        smtp_server.fail(address, 451, times=1)
    smtp_server.delay(0.005)
    connections = 2
    env = env_at(smtp_server, tmp_path, record_at, MAILER_SMTP_TIMEOUT="60")
    db = record_at
    coordinator = spawn(
        ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed", "--workers", "0",
         "--connections", str(connections)],
        env, tmp_path,
    )  # fmt: skip
    workers: list[subprocess.Popen[bytes]] = []
    finished: list[subprocess.Popen[bytes]] = []
    said = b""  # what the workers wrote to stderr
    try:
        wait_until("the send in the record", lambda: _running(db))
        workers = [spawn(["worker"], env, tmp_path) for _ in range(3)]
        for kill in range(20):
            target = len(smtp_server.messages) + rng.randint(5, 20)
            smtp_server.wait_for(target, timeout=120)
            victim = workers.pop(rng.randrange(len(workers)))
            victim.send_signal(signal.SIGKILL)
            said += victim.communicate(timeout=60)[1]
            assert victim.returncode == -signal.SIGKILL, f"kill {kill}: the worker had ended already"
            workers.append(spawn(["worker"], env, tmp_path))
        # a worker started after the send ended would find none to join (exit 1): the last ones start while
        # the server holds every reply back, so the send cannot end before each live worker has joined it
        smtp_server.pause()
        try:
            wait_until("every live worker joined", lambda: {w.pid for w in workers} <= worker_pids(db))
        finally:
            smtp_server.resume()
        out, err = coordinator.communicate(timeout=300)
        for w in workers:
            said += w.communicate(timeout=120)[1]
            finished.append(w)
    finally:
        for proc in [coordinator, *workers]:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert coordinator.returncode == 3, err.decode()  # done, but the rejected readers failed
    assert all(w.returncode == 0 for w in finished), said.decode()
    assert b"Traceback" not in said + err
    got = recipients(smtp_server)
    assert set(got) == set(emails) - rejected  # no reader lost
    # each kill repeats at most the messages its worker had in flight (one per connection); a live worker
    # that lost its lease to a slow renewal says so, and may repeat as many
    lost = said.count(b"taking up the batches still free")
    repeats = sum(n - 1 for n in got.values())
    assert repeats <= connections * (20 + lost), repeats
    # every outcome recorded once: one row per reader; its attempts are those the server answered, but for an
    # outcome the kill took with it (a deferral in flight, answered again when the batch was taken over)
    recorded = states(db)
    assert set(recorded) == set(emails)
    for address, (state, attempts) in recorded.items():
        if address in rejected:
            assert (state, attempts) == ("failed", 1), address
        elif address in deferred_once:
            assert state == "sent" and attempts in (1, 2), address
        else:
            assert (state, attempts) == ("sent", 1), address


def finish_with_a_worker(coordinator: subprocess.Popen[bytes], env: dict[str, str], cwd: Path) -> None:
    """A worker of `env` finishes the distributed send that `coordinator` started, which then exits 0 (the
    tests whose other workers were refused: the send itself must not have suffered)."""
    spawn(["worker"], env, cwd).communicate(timeout=120)
    _, err = coordinator.communicate(timeout=120)
    assert coordinator.returncode == 0, err.decode()


def _running(record: Location) -> bool:
    """Whether the record holds a running send (its tables exist from the coordinator's first open on)."""
    try:
        return bool(rows(record, "SELECT 1 FROM sends WHERE state = 'running'"))
    except Exception:  # the database is not there yet, or not made yet: sqlite3's or psycopg's error
        return False


def _read_until(proc: subprocess.Popen[bytes], text: bytes, timeout: float = 60.0) -> bytes:
    """What the process wrote to stderr up to and including `text`."""
    import select

    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        ready, _, _ = select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
        assert chunk, f"no {text!r} on stderr within {timeout}s: {seen.decode(errors='replace')}"
        seen += chunk
    return seen


@contextmanager
def stop_write_held(record: Location) -> Iterator[None]:
    """On PostgreSQL, hold up the coordinator's write of the send's 'stopping' state, and nothing else, until
    the block ends (as a busy record would: a trigger makes that one UPDATE wait for an advisory lock this
    test holds). On SQLite nothing: its lock is the whole file's, and would hold up the coordinator's every
    write, including those before it has seen the signal."""
    if isinstance(record, Path):
        yield
        return
    import psycopg

    with psycopg.connect(record.url, password=record.password, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION held_stop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.state = 'stopping' THEN PERFORM pg_advisory_xact_lock(16); END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER held_stop BEFORE UPDATE ON sends FOR EACH ROW EXECUTE FUNCTION held_stop()"
        )
        conn.execute("SELECT pg_advisory_lock(16)")
        yield
        conn.execute("SELECT pg_advisory_unlock(16)")


def _stderr_of(pid: int) -> bytes:
    """What a live local worker has written to its stderr (a file of its coordinator's) so far."""
    return Path(f"/proc/{pid}/fd/2").read_bytes()


WORKER_STOPS = b"Terminated (SIGTERM): stopping after the messages in flight"  # a local worker's line


@pytest.mark.slow
def test_sigterm_on_the_coordinator_stops_every_worker_cleanly_and_a_rerun_finishes(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails = [f"user{i}@example.com" for i in range(120)]  # 12 batches of 10
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record_at, MAILER_SMTP_TIMEOUT="120")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "2", "--connections", "1"]
    holds = [smtp_server.hold(f"user{i}@example.com") for i in range(0, 120, 10)]  # each batch's first
    proc = spawn(args, env, tmp_path)
    try:
        wait_until("both workers at a reader", lambda: sum(h.reached.is_set() for h in holds) == 2)
        wait_until("both workers in the record", lambda: len(worker_pids(record_at)) == 2)
        pids = worker_pids(record_at)
        # Seen once under load on SQLite: the coordinator said the stop, then waited for the record's lock
        # before passing it on, and this test, released by its line, let a held reply go to a worker that
        # sent on. Its workers hear the stop while its write to the record waits; each says it once its loop
        # has stopped (then no message starts), and only then are the replies let go.
        with stop_write_held(record_at):
            proc.send_signal(signal.SIGTERM)
            said = _read_until(proc, b"stopping every worker after the messages in flight")
            for pid in pids:  # each worker's own stderr (the coordinator relays it only as it looks again)
                wait_until(f"worker {pid} stopping", lambda p=pid: WORKER_STOPS in _stderr_of(p), timeout=25)
    finally:
        for hold in holds:
            hold.release.set()
        _, rest = proc.communicate(timeout=120)
    err = said + rest
    assert proc.returncode == 143, err.decode()
    assert b"run the same command again" in err and b"Traceback" not in err
    for pid in pids:  # the workers ended with the coordinator
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes()
    held = {f"user{i}@example.com" for i in range(0, 120, 10) if holds[i // 10].reached.is_set()}
    assert recipients(smtp_server) == Counter(held)  # the messages in flight, and no other
    recorded = states(record_at)
    assert {e: recorded[e] for e in held} == {e: ("sent", 1) for e in held}
    assert "sending" not in {state for state, _ in recorded.values()}
    done = spawn(args, env, tmp_path)
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})  # a clean stop repeats no one


def test_a_worker_joins_a_distributed_send_and_the_report_counts_its_share(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails = [f"user{i}@example.com" for i in range(60)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record_at)
    db = record_at
    # no local worker: nothing is sent until the worker "on another host" joins
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed", "--workers", "0"]
    coordinator = spawn([*args, "--json", "--rate", "40"], env, tmp_path)
    try:
        wait_until("the send in the record", lambda: _running(db))
        assert smtp_server.messages == []
        status = subprocess.run(
            [sys.executable, "-m", "mailer", "status", str(post)], env={**os.environ, **env}, cwd=tmp_path,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        line = "sending now: 0 worker(s), 0 of 6 batches done (coordinated by"  # 60 readers, 10 a batch
        assert line in status.stdout, status
        joined = spawn(["worker", "--json"], env, tmp_path)
        worker_out, worker_err = joined.communicate(timeout=120)
        out, err = coordinator.communicate(timeout=120)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    assert joined.returncode == 0, worker_err.decode()
    assert coordinator.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})
    assert json.loads(worker_out)["counts"]["sent"] == 60
    assert json.loads(out)["counts"]["sent"] == 60
    # until the worker joined, the coordinator's log said what it waited for (tests/test_worker_start.py)
    assert "progress: 0/60 messages: waiting for a `mailer worker` to join\n" in err.decode(), err.decode()
    # a worker does not know the size of its share: its progress gives a count, not "60/60" out of nothing
    shares = re.findall(r"progress: (\S+) messages?,", worker_err.decode())
    assert shares and all(s.isdigit() for s in shares), worker_err.decode()
    # its report's rate is over the whole of its share: at most the send's --rate 40 (60 messages take at
    # least 59/40 s; the first goes at once), not 60 over the moment its report was made
    rates = re.findall(r"([\d,.]+) msg/s", worker_err.decode())
    assert rates and float(rates[-1].replace(",", "")) <= 41, worker_err.decode()
    with Ledger(record_at) as ledger:
        assert ledger.status("2026-02-09").count("sent") == 60
    # and a worker started when no send runs is refused (tests/test_worker_wait.py)
    late = spawn(["worker"], env, tmp_path)
    _, late_err = late.communicate(timeout=60)
    assert late.returncode == 1 and b"no send is running there to join" in late_err


def test_a_worker_on_a_terminal_counts_its_share_without_a_bar_out_of_nothing(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    from tests.test_send import _on_a_terminal, _redrawn

    csv = write_list(tmp_path / "subs.csv", [f"user{i}@example.com" for i in range(30)])
    env = env_at(smtp_server, tmp_path, tmp_path / "state" / "mailer.db")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed", "--workers", "0"]
    coordinator = spawn(args, env, tmp_path)
    try:
        wait_until("the send in the record", lambda: _running(tmp_path / "state" / "mailer.db"))
        code, screen = _on_a_terminal(["worker"], env, columns=60)
        _, err = coordinator.communicate(timeout=120)
        assert coordinator.returncode == 0, err.decode()
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    assert code == 0, screen
    drawn = _redrawn(screen)
    assert drawn and all(re.fullmatch(r"\d+ messages?  [\d,.]+ msg/s *", line) for line in drawn), drawn
    assert drawn[-1].startswith("30 messages"), drawn


def test_a_worker_that_renders_the_issue_otherwise_is_refused(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    csv = write_list(tmp_path / "subs.csv", ["a@example.com"])
    env = env_for(smtp_server, tmp_path, MAILER_WORKER_LEASE=LEASE)
    db = tmp_path / "state" / "mailer.db"
    coordinator = spawn(
        ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed", "--workers", "0"],
        env, tmp_path,
    )  # fmt: skip
    try:
        wait_until("the send in the record", lambda: _running(db))
        other = {**env, "MAILER_POSTAL_ADDRESS": "Another Address 1, Elsewhere"}  # in every footer
        odd = spawn(["worker"], other, tmp_path)
        _, odd_err = odd.communicate(timeout=60)
        assert odd.returncode == 1
        assert b"renders issue 2026-02-09 otherwise than the host that started the send" in odd_err
        assert b"Traceback" not in odd_err and smtp_server.messages == []
        finish_with_a_worker(coordinator, env, tmp_path)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    assert recipients(smtp_server) == Counter({"a@example.com": 1})


def test_a_schema_7_database_gets_the_tables_of_sends_with_workers(tmp_path: Path) -> None:
    db = tmp_path / "state" / "mailer.db"
    with Ledger(db) as ledger:
        ledger.start_issue("2026-02-08", "h", "Old")
        ledger.record_outcomes("2026-02-08", [("ann@example.com", "sent", 250, "ok")])
    with closing(sqlite3.connect(db)) as conn:  # back to what schema 7's mailer wrote
        for table in ("send_workers", "send_batches", "sends"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("ALTER TABLE deliveries DROP COLUMN run_id")
        conn.execute("PRAGMA user_version = 7")
        conn.commit()
    with Ledger(db) as ledger:
        assert ledger.status("2026-02-08").count("sent") == 1
        assert ledger.rows("SELECT count(*) FROM send_batches") == [(0,)]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_the_rate_limit_holds_across_workers(smtp_server: SMTPServer, tmp_path: Path, post: Path) -> None:
    rate, count, workers = 10.0, 40, 2
    emails = [f"user{i}@example.com" for i in range(count)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_for(smtp_server, tmp_path, MAILER_WORKER_LEASE=LEASE)
    db = tmp_path / "state" / "mailer.db"
    held = smtp_server.hold(emails[0])  # the first worker waits there until the other has a batch too
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", str(workers)]
    proc = spawn([*args, "--rate", str(rate)], env, tmp_path)
    try:
        owners = "SELECT count(DISTINCT owner) FROM send_batches WHERE owner != ''"
        wait_until("two workers with a batch each", lambda: _running(db) and rows(db, owners) == [(2,)])
    finally:
        held.release.set()
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})
    # One schedule of start times, `rate` a second, for both workers; each worker at the full rate would
    # pass it.
    assert not _faster_than(rate, smtp_server, workers)


def test_a_worker_held_up_does_not_make_up_for_lost_time(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    """A worker reserves a quarter second of start times at a time. Held up past them (its server slow to
    answer), it must not send every one of them at once when it gets going again, on top of the other
    worker's messages on schedule: like a lone send's connection, a late start does not make up for the time
    it lost. Before, the held worker's 9 stale start times went out back to back."""
    rate, count, workers = 40.0, 60, 2
    emails = [f"user{i}@example.com" for i in range(count)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_for(smtp_server, tmp_path, MAILER_WORKER_LEASE=LEASE)
    held = smtp_server.hold(emails[0])  # its worker's next 9 start times pass while it waits there
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", str(workers)]
    proc = spawn([*args, "--rate", str(rate)], env, tmp_path)
    try:  # the other worker has used two quarter seconds of start times meanwhile
        wait_until("12 messages from the other worker", lambda: len(smtp_server.messages) >= 12)
    finally:
        held.release.set()
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})
    assert not _faster_than(rate, smtp_server, workers)


def _faster_than(rate: float, server: SMTPServer, connections: int) -> list[tuple[int, float]]:
    """The spans of time in which the server took more messages than `rate` allows (the first five).

    Every message starts on a start time of its own, `1 / rate` apart across every worker, and at most one
    interval after it (a later one is dropped): the messages the server took in a span started on start
    times in it or one interval before it (span * rate + 2 of them at most), or were on their way when it
    began (one per connection). However slow the machine, no span holds more."""
    at = sorted(m.at for m in server.messages)
    slack = 2 + connections
    return [
        (j - i + 1, round(at[j] - at[i], 3))
        for i in range(len(at))
        for j in range(i, len(at))
        if j - i + 1 > (at[j] - at[i]) * rate + slack
    ][:5]


def test_the_last_batches_shrink_so_that_the_workers_end_together(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """A send's batches are of one size until its last quarter or so, then each smaller than the one before
    (workers.tail_size), down to 10 readers: the worker that takes the last one does not send it alone for
    as long as a whole batch takes while the others have none left. Every reader is in one batch."""
    emails = [f"user{i}@example.com" for i in range(400)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record_at)
    proc = spawn(["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "2"], env, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert recipients(smtp_server) == Counter(emails)
    found = rows(record_at, "SELECT batch_no, readers FROM send_batches ORDER BY batch_no")
    sizes = [len(json.loads(str(readers))) for _, readers in found]
    put = [email for _, readers in found for email, _, _ in json.loads(str(readers))]
    assert sorted(put) == sorted(emails)
    first = sizes[0]
    assert first == 25  # 400 readers, 2 workers: 8 batches each at first (workers.batch_size)
    assert sizes == sorted(sizes, reverse=True), sizes
    assert sizes[-2] == 10 and sizes[-1] <= 10, sizes
    assert sum(1 for size in sizes if size == first) < len(sizes) - 4, sizes
