"""An unsubscribe made while a send runs keeps that reader's message from starting, however far ahead the
send looked the reader up and built the message (campaign._unsent, HAND_OVER; recheck.py).

The attack pass's finding: 200 readers at one connection, the server holding its reply at reader 3, and
`mailer unsubscribe` of readers 8, 60, 100 and 199 meanwhile: all four were mailed, since the send had
looked the first 256 up before the unsubscribe. Here the send must say that it found each of them
suppressed (the line is the test's sign that the send saw the unsubscribe: no sleep), then, once the reply
goes, mail everyone else once and none of them, count them as suppressed, and leave a record that a rerun
finds complete. The same with `--rate` (each message then waits for its start time in the connection's
hand, and is checked after the wait), with `--workers`, and with `--distributed`, where a `mailer worker`
started apart from the send does the sending and says what it found.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailer.engine import Location
from mailer.envelope import ReturnPaths, message_tag
from mailer.ledger import SCHEMA_VERSION, Ledger
from mailer.tokens import Keyring
from mailer.workers import batch_size
from tests.pg import rows, set_schema_version
from tests.smtpd import Hold, SMTPServer
from tests.test_bounce_reading import _dsn_to
from tests.test_workers import _running, env_at, recipients, spawn, wait_until, write_list

READERS = [f"reader{i:03}@example.com" for i in range(200)]


def _said(proc: subprocess.Popen[bytes], emails: list[str], timeout: float = 120.0) -> bytes:
    """What the send wrote to stderr until it said of each of `emails` that it found them suppressed."""
    assert proc.stderr is not None
    wanted = [f"{email}: suppressed during the send".encode() for email in emails]
    seen = b""
    deadline = time.monotonic() + timeout
    while not all(line in seen for line in wanted):
        ready, _, _ = select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(proc.stderr.fileno(), 65536) if ready else b""
        assert chunk, f"the send did not see every unsubscribe within {timeout}s: {seen.decode()}"
        seen += chunk
    return seen


@contextmanager
def _sending(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    record: Location,
    holds: list[Hold],
    *,
    joined: bool = False,
) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """`mailer ARGS` and, `joined`, a `mailer worker` joining its send once it is in the record: (the send,
    the process that sends). After the block the held replies go and a process still running is killed."""
    procs = [spawn(args, env, cwd)]
    try:
        if joined:
            wait_until("the send in the record", lambda: _running(record))
            procs.append(spawn(["worker"], env, cwd))
        yield procs[0], procs[-1]
    finally:
        for hold in holds:
            hold.release.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def _ended(send: subprocess.Popen[bytes], sender: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Once both have ended: what the send, and what a joined worker (which must exit 0), said since."""
    _, rest = send.communicate(timeout=300)
    if sender is send:
        return rest, b""
    _, worker_rest = sender.communicate(timeout=120)
    assert sender.returncode == 0, worker_rest.decode()
    return rest, worker_rest


def _unsubscribe_while_held(
    smtp_server: SMTPServer,
    tmp_path: Path,
    post: Path,
    record: Location,
    options: list[str],
    held_at: list[int],
    victims: list[int],
    seen: list[int],
    *,
    joined: bool = False,
) -> None:
    """`mailer send` of READERS with `options`, the replies to the readers `held_at` held; meanwhile `mailer
    unsubscribe` of the `victims`, of whom the send must say it found those it had looked up (`seen`).
    `joined`: the send is `--distributed` with no worker of its own, and a `mailer worker` joins it: the
    worker says what it found, the send reports."""
    env = env_at(smtp_server, tmp_path, record, MAILER_SMTP_TIMEOUT="120")  # the held replies take a while
    csv = write_list(tmp_path / "subs.csv", READERS)
    holds = [smtp_server.hold(READERS[i]) for i in held_at]
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", *options]
    with _sending(args, env, tmp_path, record, holds, joined=joined) as (send, sender):
        for hold in holds:
            assert hold.reached.wait(timeout=120), "the send never reached a held reader"
        _say(env, tmp_path, "unsubscribe", *(READERS[i] for i in victims))
        said = _said(sender, [READERS[i] for i in seen])
        for hold in holds:
            hold.release.set()
        rest, _ = _ended(send, sender)
    err_text = (
        (said if sender is send else b"") + rest
    ).decode()  # a worker's words: the report is the send's
    assert send.returncode == 0, err_text
    assert "Traceback" not in err_text
    kept = {READERS[i] for i in victims}
    assert recipients(smtp_server) == {r: 1 for r in READERS if r not in kept}
    counted = rf"suppressed \(unsubscribed, bounced or complained\)\s+{len(victims)}\n"
    assert re.search(counted, err_text), err_text
    _status_counts(env, tmp_path, post, len(victims))
    # the record holds no delivery of theirs, and a rerun finds nothing left to send
    delivered = {str(email) for (email,) in rows(record, "SELECT email FROM deliveries")}
    assert delivered == set(READERS) - kept
    again = spawn(["send", str(post), "--to", str(csv), "--yes", "--force"], env, tmp_path)
    _, again_err = again.communicate(timeout=120)
    assert again.returncode == 0, again_err.decode()
    assert sum(recipients(smtp_server).values()) == len(READERS) - len(kept)


def test_readers_unsubscribed_while_the_send_waits_are_not_mailed(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """One connection held at reader 3: reader 8 is in the connection's hand, 60 in the queue, 100 and 199
    in the batch looked up but not handed out yet."""
    victims = [8, 60, 100, 199]
    _unsubscribe_while_held(
        smtp_server, tmp_path, post, record_at, ["--connections", "1"], [3], victims, victims
    )


def test_readers_unsubscribed_while_the_workers_wait_are_not_mailed(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """Two workers of one connection each, each held in a batch of its own: readers of those batches built
    or looked up are found again; those of later batches are looked up after the unsubscribe."""
    size = batch_size(len(READERS), 2)
    held = [3, size + 3]
    seen = [5, size - 1, size + 5, 2 * size - 1]
    victims = [*seen, len(READERS) - 1]
    _unsubscribe_while_held(
        smtp_server, tmp_path, post, record_at, ["--workers", "2", "--connections", "1"], held, victims, seen
    )


def test_readers_unsubscribed_while_a_rate_limited_send_waits_are_not_mailed(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """`--rate`: no MAIL FROM goes early behind the "." before; each message starts once the shared schedule
    lets it, and is checked against the late suppressions after that wait, not before."""
    victims = [8, 60, 100, 199]
    _unsubscribe_while_held(
        smtp_server, tmp_path, post, record_at, ["--connections", "1", "--rate", "200"], [3], victims, victims
    )


def test_readers_unsubscribed_while_a_joined_worker_waits_are_not_mailed(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """`send --distributed --workers 0` and a `mailer worker` joining it, under a rate limit shared through
    the record: the worker, held in its first batch, finds the readers of that batch again; those of later
    batches are looked up after the unsubscribe. The send's report counts all of them."""
    size = batch_size(len(READERS), 0)
    seen = [8, size - 1]
    victims = [*seen, size + 5, len(READERS) - 1]
    options = ["--distributed", "--workers", "0", "--connections", "1", "--rate", "200"]
    _unsubscribe_while_held(smtp_server, tmp_path, post, record_at, options, [3], victims, seen, joined=True)


def _status_counts(env: dict[str, str], cwd: Path, post: Path, suppressed: int) -> None:
    """`mailer status POST`, as text and as --json, counts the readers suppressed as the send's report did."""
    status = spawn(["status", str(post), "--json"], env, cwd)
    out, err = status.communicate(timeout=120)
    assert status.returncode == 0, err.decode()
    assert json.loads(out)["suppressed"] == suppressed
    status = spawn(["status", str(post)], env, cwd)
    out, err = status.communicate(timeout=120)
    assert status.returncode == 0, err.decode()
    assert f"  {suppressed} suppressed (unsubscribed, bounced or complained): not mailed" in out.decode()


def _say(env: dict[str, str], cwd: Path, *args: str) -> None:
    """`mailer ARGS`, which must succeed."""
    proc = spawn(list(args), env, cwd)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()


def _leave_and_come_back(
    smtp_server: SMTPServer,
    tmp_path: Path,
    post: Path,
    record: Location,
    options: list[str],
    at: list[int],
    *,
    joined: bool = False,
) -> None:
    """`mailer send` of READERS with `options` (`joined`: and a `mailer worker` joining it), held at reader
    at[0]: readers at[1], at[2] and at[3] unsubscribe, and the sender says so; at[3] comes back at once
    (before its turn), at[1] only once the send is held again at reader at[4] (its turn has passed: found
    suppressed then, not mailed then). The send mails at[1] and at[3] once each before it ends, and not
    at[2]; its report counts at[2] alone as suppressed; a rerun mails no one."""
    first, back_late, stays, back_soon, second = (READERS[i] for i in at)
    env = env_at(smtp_server, tmp_path, record, MAILER_SMTP_TIMEOUT="120")
    csv = write_list(tmp_path / "subs.csv", READERS)
    holds = [smtp_server.hold(first), smtp_server.hold(second)]
    args = ["send", str(post), "--to", str(csv), "--yes", "--force"]
    with _sending([*args, *options], env, tmp_path, record, holds, joined=joined) as (send, sender):
        assert holds[0].reached.wait(timeout=120), f"the send never reached {first}"
        _say(env, tmp_path, "unsubscribe", back_late, stays, back_soon)
        said = _said(sender, [back_late, stays, back_soon])
        _say(env, tmp_path, "unsubscribe", "--undo", back_soon)
        holds[0].release.set()
        assert holds[1].reached.wait(timeout=120), f"the send never reached {second}"
        _say(env, tmp_path, "unsubscribe", "--undo", back_late)
        holds[1].release.set()
        rest, worker_rest = _ended(send, sender)
    said += worker_rest
    err_text = rest.decode()
    assert send.returncode == 0, err_text
    assert recipients(smtp_server) == {r: 1 for r in READERS if r != stays}
    assert re.search(r"suppressed \(unsubscribed, bounced or complained\)\s+1\n", err_text), err_text
    assert f"{back_late}: subscribed again during the send" in (said + rest).decode()
    _status_counts(env, tmp_path, post, 1)
    again = spawn(args, env, tmp_path)
    _, again_err = again.communicate(timeout=120)
    assert again.returncode == 0, again_err.decode()
    assert sum(recipients(smtp_server).values()) == len(READERS) - 1


def test_a_reader_who_leaves_and_comes_back_during_the_send_is_mailed_once(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """One connection, held at reader 3 and then at 150: 60 comes back after its turn, 120 before it."""
    _leave_and_come_back(
        smtp_server, tmp_path, post, record_at, ["--connections", "1"], [3, 60, 100, 120, 150]
    )


def test_a_reader_who_leaves_and_comes_back_while_a_joined_worker_sends_is_mailed_once(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """A `mailer worker` joining a `--distributed` send, held at reader 3 and then at 20 of its first batch:
    8 comes back after its turn (the worker keeps that batch until it has asked about 8 again, at the end of
    its share), 15 before it."""
    options = ["--distributed", "--workers", "0", "--connections", "1"]
    _leave_and_come_back(smtp_server, tmp_path, post, record_at, options, [3, 8, 12, 15, 20], joined=True)


def test_a_record_of_schema_13_keeps_its_runs_and_counts_the_next_ones(
    tmp_path: Path, record_at: Location
) -> None:
    """Schema step 14 (run_counts) from a record of 13 with an issue sent and a run in it: the upgrade keeps
    both; status has no count for the old run (None, no line), and one for a run counted after."""
    with Ledger(record_at) as ledger:
        ledger.start_issue("2026-02-09", "hash-1", "Monday")
        old_run = ledger.start_run("2026-02-09", "list-1", "subs.csv")
        ledger.record_outcomes("2026-02-09", [("ann@example.org", "sent", 250, "ok")], old_run)
        ledger.finish_run(old_run)
    rows(record_at, "DROP TABLE run_counts")
    set_schema_version(record_at, 13)
    with Ledger(record_at) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
        [before] = ledger.statuses("2026-02-09")
        assert (before.count("sent"), before.suppressed, before.completed_at is not None) == (1, None, True)
        assert "suppressed" not in before.format(False)
        assert "complete since" in before.format(False) and "not complete" not in before.format(False)
        new_run = ledger.start_run("2026-02-09", "list-1", "subs.csv")
        ledger.count_run(new_run, 3)
        [after] = ledger.statuses("2026-02-09")
        assert (after.count("sent"), after.suppressed) == (1, 3)


def test_a_reader_whose_bounce_is_read_while_the_send_waits_is_not_mailed(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """A bounce suppresses as an unsubscribe does: held at reader 3, `mailer bounces` reads a hard bounce
    of the issue before, signed for reader 60 (its VERP address); the send says so and does not mail 60."""
    bounce_address = "bounce@bounces.aidaily.news"
    secret = "during-the-send-test-secret-key-0123456789"
    env = env_at(
        smtp_server, tmp_path, record_at, MAILER_SMTP_TIMEOUT="120", MAILER_SECRET_KEY=secret,
        MAILER_BOUNCE_ADDRESS=bounce_address,
    )  # fmt: skip
    victim = READERS[60]
    with Ledger(record_at) as ledger:  # the issue before went to the reader
        ledger.start_issue("2026-02-08", "hash-0", "Sunday")
        ledger.record_outcomes("2026-02-08", [(victim, "sent", 250, "ok")])
    folder = tmp_path / "bounces"
    for sub in ("new", "cur", "tmp"):
        (folder / sub).mkdir(parents=True)
    signed = ReturnPaths(bounce_address, Keyring(secret)).address(message_tag("2026-02-08", victim))
    (folder / "new" / "1.bounce").write_bytes(_dsn_to(signed, victim, "<b@mx>"))
    csv = write_list(tmp_path / "subs.csv", READERS)
    hold = smtp_server.hold(READERS[3])
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--connections", "1"]
    with _sending(args, env, tmp_path, record_at, [hold]) as (send, _):
        assert hold.reached.wait(timeout=120), "the send never reached reader 3"
        _say(env, tmp_path, "bounces", "--maildir", str(folder))
        said = _said(send, [victim])
        hold.release.set()
        rest, _ = _ended(send, send)
    err_text = (said + rest).decode()
    assert send.returncode == 0, err_text
    assert recipients(smtp_server) == {r: 1 for r in READERS if r != victim}
    assert re.search(r"suppressed \(unsubscribed, bounced or complained\)\s+1\n", err_text), err_text
    assert rows(record_at, "SELECT email, reason FROM suppressions") == [(victim, "hard bounce")]
    _status_counts(env, tmp_path, post, 1)
