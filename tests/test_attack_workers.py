"""The attack pass on many senders: a `mailer worker` host set up otherwise than the coordinator's.

A worker renders the issue itself and signs each reader's unsubscribe link with its own key. A host whose
key (or web_url, list id, bounce address) differs mails links that the web hosts refuse: those readers
could not unsubscribe. Such a worker must be refused before it sends anything, as one that renders the
post otherwise is (test_workers.py). So must one whose messages would say otherwise who they are from (From,
Reply-To, List-Id) or be signed otherwise (DKIM): its share of the readers would get mail that replies
elsewhere, or that their provider junks or rejects (DMARC). And a worker of a newer mailer must not upgrade
the record under a send that an older one runs: every process of that send would then be refused by the
record ('written by a newer mailer'), mid-send, and so would the other hosts' `mailer serve`.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailer.engine import Location
from mailer.ledger import SCHEMA_VERSION
from tests.pg import Cluster, rows, set_schema_version, without_runs_of_deliveries
from tests.publisher import env_for
from tests.sends import held_send, rerun_finishes
from tests.smtpd import Hold, SMTPServer
from tests.test_workers import (
    LEASE,
    _running,
    env_at,
    finish_with_a_worker,
    recipients,
    spawn,
    wait_until,
    write_list,
)
from tests.test_workers_lifecycle import finish


def _distributed_send_of_two(
    tmp_path: Path, post: Path, env: dict[str, str], record: Location
) -> subprocess.Popen[bytes]:
    """`send --distributed --workers 0` of `post` to a@ and b@, once its send is in `record`: it waits for
    workers to join."""
    csv = write_list(tmp_path / "subs.csv", ["a@example.com", "b@example.com"])
    coordinator = spawn(
        ["send", str(post), "--to", str(csv), "--yes", "--force", "--distributed", "--workers", "0"],
        env, tmp_path,
    )  # fmt: skip
    try:
        wait_until("the send in the record", lambda: _running(record))
    except BaseException:
        coordinator.kill()
        coordinator.communicate()
        raise
    return coordinator


def _odd_worker_refused(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, env: dict[str, str], other: dict[str, str], said: str
) -> None:
    """A distributed send of a@ and b@ to `env`'s record: a worker with `other` on top of `env` is refused
    with an error line that has `said` in it, before it mails anyone; then one with `env` alone sends both."""
    coordinator = _distributed_send_of_two(tmp_path, post, env, Path(env["MAILER_DATABASE"]))
    try:
        odd = spawn(["worker"], {**env, **{k: v.format(tmp=tmp_path) for k, v in other.items()}}, tmp_path)
        _, odd_err = odd.communicate(timeout=60)
        assert odd.returncode == 1, odd_err.decode()
        [line] = [x for x in odd_err.decode().splitlines() if x.startswith("Error: ")]
        assert said in line and "not joining" in line, line
        assert "Traceback" not in odd_err.decode() and smtp_server.messages == []
        finish_with_a_worker(coordinator, env, tmp_path)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    assert recipients(smtp_server) == Counter({"a@example.com": 1, "b@example.com": 1})


@pytest.mark.parametrize(
    "other",
    [
        # another host: its own data folder, without the key file (none is made for it: keymarks.py)
        {"MAILER_DATA_DIR": "{tmp}/host-b"},
        {"MAILER_SECRET_KEY": "another-key-of-at-least-32-characters-0123456789"},
        {"MAILER_LIST_ID": "other.list.example.net"},
    ],
    ids=["own-key-file", "secret_key", "list_id"],
)
def test_a_worker_that_would_sign_or_link_readers_otherwise_is_refused(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, other: dict[str, str]
) -> None:
    db = tmp_path / "state" / "mailer.db"
    env = env_for(smtp_server, tmp_path, MAILER_WORKER_LEASE=LEASE, MAILER_DATABASE=str(db))
    _odd_worker_refused(smtp_server, tmp_path, post, env, other, "unsubscribe links")


def _dkim_key(path: Path) -> Path:
    path.parent.mkdir(exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


@pytest.mark.parametrize(
    "other",
    [
        {"MAILER_REPLY_TO": "someone-else@aidaily.news"},
        {"MAILER_FROM_EMAIL": "editor@aidaily.news"},  # the bounce address is set: MAIL FROM stays as it was
        {"MAILER_LIST_NAME": "Another List"},
        {"MAILER_DKIM_KEY_FILE": ""},  # the host whose key file was not copied, its setting taken out
        {"MAILER_DKIM_KEY_FILE": "{tmp}/other-key/dkim.pem"},  # a key of its own
        {"MAILER_DKIM_SELECTOR": "other"},
    ],
    ids=["reply_to", "from_email", "list_name", "no-dkim", "other-dkim-key", "dkim_selector"],
)
def test_a_worker_whose_messages_would_say_or_sign_their_sender_otherwise_is_refused(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, other: dict[str, str]
) -> None:
    key = _dkim_key(tmp_path / "dkim.pem")
    _dkim_key(tmp_path / "other-key" / "dkim.pem")
    db = tmp_path / "state" / "mailer.db"
    env = env_for(
        smtp_server, tmp_path, MAILER_WORKER_LEASE=LEASE, MAILER_DATABASE=str(db),
        MAILER_BOUNCE_ADDRESS="bounces@aidaily.news", MAILER_DKIM_KEY_FILE=str(key),
        MAILER_DKIM_SELECTOR="mail",
    )  # fmt: skip
    _odd_worker_refused(
        smtp_server, tmp_path, post, env, other, "otherwise than the host that started the send"
    )


def _schema(record: Location) -> int:
    if isinstance(record, Path):
        return int(rows(record, "PRAGMA user_version")[0][0])  # type: ignore[call-overload]
    return int(rows(record, "SELECT version FROM mailer_schema")[0][0])  # type: ignore[call-overload]


def test_a_worker_of_a_newer_mailer_leaves_the_record_of_an_older_send_as_it_is(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    env = env_at(smtp_server, tmp_path, record_at)
    coordinator = _distributed_send_of_two(tmp_path, post, env, record_at)
    try:
        # the record as an older mailer keeps it: the send is that older mailer's. This mailer's
        # coordinator stands in for it, so it is killed first (its send stays 'running' in the record): it
        # reads the batches' counts, which that record has not, and would stop the send and upgrade the
        # record as it left. Not stopped (SIGSTOP): stopped inside a write, it held the record's lock
        # and the changes below waited for it ("database is locked", a full run at load 0.7)
        coordinator.kill()
        coordinator.communicate()
        older = SCHEMA_VERSION - 1
        without_runs_of_deliveries(record_at)
        set_schema_version(record_at, older)
        newer = spawn(["worker"], env, tmp_path)
        _, said = newer.communicate(timeout=60)
        assert newer.returncode == 1, said.decode()
        [line] = [x for x in said.decode().splitlines() if x.startswith("Error: ")]
        assert f"schema {older}" in line and "older mailer" in line and "mailer db migrate" in line, line
        assert "Traceback" not in said.decode() and smtp_server.messages == []
        assert _schema(record_at) == older
    finally:
        coordinator.kill()
        coordinator.communicate()


@pytest.mark.postgresql
def test_a_send_by_workers_that_loses_the_record_exits_as_stopped_and_a_rerun_finishes(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, pg_cluster: Cluster
) -> None:
    # PostgreSQL restarted (or failed over) mid-send: every connection of the send ends at once. A lone send
    # exits 4 ("stopped early ... the record unwritable; rerun to resume", docs/sending.md); a send by workers
    # must say the same to the cron job that runs it, not 1 ("nothing was sent")
    server = pg_cluster.database()
    emails = [f"user{i}@example.com" for i in range(40)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, server, MAILER_SMTP_TIMEOUT="120")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "1"]
    with held_send(smtp_server, args, env, tmp_path) as (proc, held):
        rows(
            server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        held.release.set()
        _, err = proc.communicate(timeout=120)
    said = err.decode()
    assert proc.returncode == 4, said
    assert "Traceback" not in said and "Error: " in said
    rerun_finishes(
        smtp_server, args, env, tmp_path, emails, 1
    )  # the one in flight on the worker's connection


def _worker_at_user45(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record: Location
) -> tuple[list[str], list[str], dict[str, str], list[subprocess.Popen[bytes]], Hold]:
    """A `send --distributed --workers 0` of `post` to 80 readers and one `mailer worker`, held at user45's
    RCPT: (the readers, the plain send command, its environment, [coordinator, worker], the hold)."""
    emails = [f"user{i}@example.com" for i in range(80)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record, MAILER_SMTP_TIMEOUT="120")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force"]
    procs = [spawn([*args, "--distributed", "--workers", "0"], env, tmp_path)]
    held = smtp_server.hold("user45@example.com")
    try:
        wait_until("the send in the record", lambda: _running(record))
        procs.append(spawn(["worker"], env, tmp_path))
        assert held.reached.wait(timeout=120), "the worker never reached user45"
    except BaseException:
        held.release.set()
        finish(*procs)
        raise
    return emails, args, env, procs, held


@pytest.mark.slow
def test_a_lone_rerun_while_the_workers_of_a_gone_coordinator_still_send_is_refused(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    # the host of a `--distributed` send dies; its `mailer worker` elsewhere goes on with the readers (as
    # docs/workers.md says it should). The daily cron on another host runs the plain command, no --workers:
    # it took the lock, free now, and mailed the readers the worker was mailing, a second time
    emails, args, env, (coordinator, worker), held = _worker_at_user45(smtp_server, tmp_path, post, record_at)
    try:
        coordinator.kill()
        coordinator.communicate(timeout=60)
        before = recipients(smtp_server)
        lone = spawn(args, env, tmp_path)
        _, err = lone.communicate(timeout=120)
        assert lone.returncode == 1, err.decode()
        [line] = [x for x in err.decode().splitlines() if x.startswith("Error: ")]
        assert "which is gone, is still being finished by 1 worker(s)" in line, line
        assert "Traceback" not in err.decode() and recipients(smtp_server) == before
        held.release.set()
        _, said = worker.communicate(timeout=120)
        assert worker.returncode == 0, said.decode()
    finally:
        held.release.set()
        finish(coordinator, worker)
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})


@pytest.mark.slow
def test_a_worker_started_during_a_lone_rerun_of_a_dead_send_by_workers_does_not_join_the_dead_one(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    # every process of a `--distributed` send is killed; the publisher reruns the plain command, which goes
    # ahead; meanwhile systemd starts `mailer worker` again. It joined the dead send, still 'running' in the
    # record, and mailed its readers beside the rerun, which holds the lock but was not in that send
    emails, args, env, procs, held = _worker_at_user45(smtp_server, tmp_path, post, record_at)
    try:
        for proc in procs:  # the whole send dies
            proc.kill()
            proc.communicate(timeout=60)
        held = smtp_server.hold("user60@example.com")  # the rerun waits there
        lone = spawn(args, env, tmp_path)
        procs.append(lone)
        assert held.reached.wait(timeout=120), "the rerun never reached user60"
        late = spawn(["worker"], env, tmp_path)
        procs.append(late)
        _, said = late.communicate(timeout=120)
        assert late.returncode == 1, said.decode()
        [line] = [x for x in said.decode().splitlines() if x.startswith("Error: ")]
        assert "no send is running there to join" in line and "Traceback" not in said.decode(), line
        held.release.set()
        _, err = lone.communicate(timeout=120)
        assert lone.returncode == 0, err.decode()
    finally:
        held.release.set()
        finish(*procs)
    # user45's message died before its "." (its RCPT reply held): no one is mailed twice
    assert recipients(smtp_server) == Counter({e: 1 for e in emails})
