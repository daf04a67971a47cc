"""The attack pass on the disk: the delivery record cannot grow in the middle of a send.

A file size limit (ulimit -f, RLIMIT_FSIZE: a shell's or a service's limit) stops SQLite's write-ahead log
growing a few dozen messages into the send; Python ignores the SIGXFSZ, so the write fails (EFBIG) and the
send must stop with one line that says what to change, not SQLite's bare "disk I/O error".
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

from mailer.ledger import Ledger
from tests.publisher import env_for
from tests.smtpd import SMTPServer

LIMIT = 300_000  # bytes: the new record, the web copy and a few dozen outcomes, not 2,000


def test_a_file_size_limit_that_stops_the_record_growing_is_named_and_the_rerun_finishes(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    emails = [f"user{i}@example.com" for i in range(2000)]
    csv = tmp_path / "subs.csv"
    csv.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
    env = {**os.environ, **env_for(smtp_server, tmp_path)}
    args = [sys.executable, "-m", "mailer", "send", str(post), "--to", str(csv), "--yes", "--force"]
    limited = subprocess.run(
        args,
        env=env,
        capture_output=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT)),
    )
    err = limited.stderr.decode()
    assert limited.returncode == 4, err
    assert "Traceback" not in err
    [line] = [x for x in err.splitlines() if x.startswith("Error: ")]
    assert "mailer.db" in line and "file size limit" in line and f"{LIMIT:,} bytes" in line, line
    took = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        _, states = ledger.states("2026-02-09", emails)
    assert {e for e, s in states.items() if s == "sent"} <= set(took)
    again = subprocess.run(args, env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    got = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert set(got) == set(emails)
    assert sum(got.values()) - len(emails) <= 1  # the crash window: the one message whose commit failed


def test_a_send_whose_log_is_on_a_full_disk_still_mails_and_records_everyone(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    # cron's `mailer send ... >> send.log 2>&1` with the log's disk full: every line mailer writes fails
    # (ENOSPC; /dev/full here). The send is what matters: it must not die at its first line, nor half-way
    emails = [f"user{i}@example.com" for i in range(30)]
    csv = tmp_path / "subs.csv"
    csv.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
    env = {**os.environ, **env_for(smtp_server, tmp_path)}
    args = [sys.executable, "-m", "mailer", "send", str(post), "--to", str(csv), "--yes", "--force"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(args, env=env, stdout=full, stderr=full, timeout=300)
    assert done.returncode == 0
    assert Counter(r for m in smtp_server.messages for r in m.rcpt_tos) == Counter(emails)
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        _, states = ledger.states("2026-02-09", emails)
    assert set(states.values()) == {"sent"} and len(states) == len(emails)
