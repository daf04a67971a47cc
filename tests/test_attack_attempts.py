"""A reader's attempts hold across the workers that hold its batch, also when the record refuses a write.

The worker that gives a reader up after `max_attempts` writes that to its batch's counts; a record that
refuses that one write (a full disk, a trigger, a statement cut off) ends that worker, and its batch goes to
another. That one must not try the reader `max_attempts` times again: before, with max_attempts 2 the record
held 4 attempts for the reader. Real workers, a real SMTP server (tests/smtpd.py), both engines; the refusal
is a trigger in the record, as a full disk would refuse that write and no other.
"""

from __future__ import annotations

import json
from pathlib import Path

from mailer.engine import Location
from tests.pg import rows
from tests.smtpd import SMTPServer
from tests.test_workers import env_at, recipients, states, write_list
from tests.test_workers_lifecycle import mailer

READERS = 60  # 6 batches of 10 for two workers (workers.batch_size)
REFUSED = "user22@example.com"  # in batch 2: refused for now (450) at every try

MARKED = 'NEW.counts LIKE \'%"given_up": {"' + REFUSED + "%'"  # counts that mark REFUSED given up
RETRIED = "NEW.counts LIKE '%\"retries\": 1%'"  # counts as a batch's first retry starts


def refuse(record: Location, when: str) -> None:
    """From now on the record notes the first holder of batch 2 (as it claims it) and refuses every write
    of its to a batch where `when` (SQL on the row as written, NEW): as a full disk would refuse that write
    and no other. A table and two triggers, in each engine's words."""
    if isinstance(record, Path):
        sql = [
            "CREATE TABLE IF NOT EXISTS refusing (owner TEXT)",
            "DELETE FROM refusing",
            "DROP TRIGGER IF EXISTS note_owner",
            "CREATE TRIGGER note_owner AFTER UPDATE OF counts ON send_batches WHEN NEW.batch_no = 2"
            " AND NOT EXISTS (SELECT 1 FROM refusing) BEGIN INSERT INTO refusing VALUES (NEW.owner); END",
            "DROP TRIGGER IF EXISTS refuse",
            f"CREATE TRIGGER refuse BEFORE UPDATE ON send_batches WHEN {when}"
            " AND NEW.owner IN (SELECT owner FROM refusing)"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
        ]
    else:
        when = when.replace("%", "%%")  # not psycopg's placeholders
        sql = [
            "CREATE TABLE IF NOT EXISTS refusing (owner text)",
            "DELETE FROM refusing",
            "CREATE OR REPLACE FUNCTION note_owner() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.batch_no = 2 AND NOT EXISTS (SELECT 1 FROM refusing) THEN"
            " INSERT INTO refusing VALUES (NEW.owner); END IF; RETURN NEW; END $$",
            "CREATE OR REPLACE TRIGGER note_owner AFTER UPDATE OF counts ON send_batches FOR EACH ROW"
            " EXECUTE FUNCTION note_owner()",
            "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF {when} AND NEW.owner IN (SELECT owner FROM refusing) THEN RAISE EXCEPTION"
            " 'could not extend file: No space left on device' USING ERRCODE = '53100'; END IF; RETURN NEW;"
            " END $$",
            "CREATE OR REPLACE TRIGGER refuse BEFORE UPDATE ON send_batches FOR EACH ROW"
            " EXECUTE FUNCTION refuse()",
        ]
    for statement in sql:
        rows(record, statement)


def test_a_reader_given_up_whose_mark_the_record_refused_is_not_tried_again_by_the_next_holder(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails = [f"user{i}@example.com" for i in range(READERS)]
    csv = write_list(tmp_path / "subs.csv", emails)
    smtp_server.reject(REFUSED, 450)
    env = env_at(smtp_server, tmp_path, record_at, MAILER_MAX_ATTEMPTS="2")
    migrated = mailer(["db", "migrate"], env, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    refuse(record_at, MARKED)  # the first holder's mark of REFUSED given up
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "2", "--json"]
    sent = mailer(args, env, tmp_path)
    # a reader failed (3): the other worker dealt with every reader, so the stopped one does not stop the send
    assert sent.returncode == 3, sent.stderr
    assert "cannot write this worker's end to the record" in sent.stderr  # the refusal happened
    assert "Traceback" not in sent.stderr, sent.stderr
    assert states(record_at)[REFUSED] == ("deferred", 2), "the next holder tried the reader again"
    assert recipients(smtp_server) == {e: 1 for e in emails if e != REFUSED}
    report = json.loads(sent.stdout)
    counts = {k: n for k, n in report["counts"].items() if n}
    assert counts == {"sent": READERS - 1, "failed_temporary": 1, "retries": 1}, counts
    assert report["failures"] == {f"450 4.2.0 try again later <{REFUSED}>": 1}, report["failures"]

    # the same command again: REFUSED has its 2 attempts of the first run in the record. The first holder of
    # batch 2 stops as it starts its retry (the record refuses that write); the next one makes the second
    # attempt of this run, not none (the record's 4 are not this run's) nor two more
    refuse(record_at, RETRIED)
    again = mailer(args, env, tmp_path)
    assert again.returncode == 3, again.stderr
    assert "cannot write this worker's end to the record" in again.stderr
    assert states(record_at)[REFUSED] == ("deferred", 4), "not two attempts in the second run"
    assert recipients(smtp_server) == {e: 1 for e in emails if e != REFUSED}
    counts = {k: n for k, n in json.loads(again.stdout)["counts"].items() if n}
    assert counts == {"already_sent": READERS - 1, "failed_temporary": 1, "retries": 1}, counts


def test_a_reader_given_up_in_a_batch_no_one_took_over_counts_as_failed_not_as_not_sent(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """The lone worker's mark of REFUSED given up is refused: it stops, and no one takes its batch over
    before the send ends stopped. REFUSED had its `max_attempts` (2): the report counts it failed for now,
    as the next holder would have, not among those not sent."""
    emails = [f"user{i}@example.com" for i in range(READERS)]
    csv = write_list(tmp_path / "subs.csv", emails)
    smtp_server.reject(REFUSED, 450)
    env = env_at(smtp_server, tmp_path, record_at, MAILER_MAX_ATTEMPTS="2")
    assert mailer(["db", "migrate"], env, tmp_path).returncode == 0
    refuse(record_at, MARKED)
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "1", "--json"]
    sent = mailer(args, env, tmp_path)
    assert "Traceback" not in sent.stderr, sent.stderr
    assert "cannot write this worker's end to the record" in sent.stderr  # the refusal happened
    assert states(record_at)[REFUSED] == ("deferred", 2)
    report = json.loads(sent.stdout)
    counts = report["counts"]
    assert counts["failed_temporary"] == 1, (counts, sent.stderr)
    assert report["failures"] == {f"450 4.2.0 try again later <{REFUSED}>": 1}, report["failures"]
    assert counts["sent"] + counts["pending"] == READERS - 1, counts
