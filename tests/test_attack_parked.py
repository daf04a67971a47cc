"""A reader found suppressed at their turn, and back since, is still mailed when the worker that held them
back is stopped from outside the send (issue 16; d134dda, c0c2fe1).

A worker keeps such a reader aside, and their batch open, until it asks about them once more at the end of
its share. A worker stopped before then (an admin's `kill PID`: since c0c2fe1 another takes its place and
the send goes on) counted them as suppressed and closed their batch: no one asked again, and a reader who had
subscribed again before the send ended never got the issue. Real workers, a real SMTP server
(tests/smtpd.py), the real CLI, both engines; every wait is on a line, a held reply or the record.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from mailer.engine import Location
from tests.smtpd import SMTPServer
from tests.test_unsubscribe_during_send import READERS, _said, _say, _sending
from tests.test_workers import (
    WORKER_STOPS,
    _stderr_of,
    env_at,
    recipients,
    wait_until,
    worker_pids,
    write_list,
)
from tests.test_workers_lifecycle import mailer

FIRST, BACK, SECOND = READERS[3], READERS[8], READERS[150]  # held, left and back, held


def test_a_reader_back_before_the_end_is_mailed_when_the_worker_holding_them_aside_is_stopped(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    env = env_at(smtp_server, tmp_path, record_at, MAILER_SMTP_TIMEOUT="120")
    csv = write_list(tmp_path / "subs.csv", READERS)
    holds = [smtp_server.hold(FIRST), smtp_server.hold(SECOND)]
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "1", "--connections", "1"]
    with _sending(args, env, tmp_path, record_at, holds) as (send, _):
        assert holds[0].reached.wait(timeout=120), f"the send never reached {FIRST}"
        _say(env, tmp_path, "unsubscribe", BACK)
        said = _said(send, [BACK])  # looked up before: found suppressed, and kept aside at its turn
        holds[0].release.set()
        assert holds[1].reached.wait(timeout=120), f"the send never reached {SECOND}"  # BACK's turn passed
        _say(env, tmp_path, "unsubscribe", "--undo", BACK)
        (victim,) = worker_pids(record_at)
        os.kill(victim, signal.SIGTERM)  # from outside the send: the worker is replaced
        wait_until("the worker stopping", lambda: WORKER_STOPS in _stderr_of(victim), timeout=60)
        holds[1].release.set()
        _, rest = send.communicate(timeout=300)
    text = (said + rest).decode()
    assert send.returncode == 0, text
    assert "Traceback" not in text
    assert f"worker pid {victim} was stopped by SIGTERM from outside the send; pid " in text, text
    assert recipients(smtp_server) == {r: 1 for r in READERS}, "a reader back before the end was not mailed"
    assert not re.search(r"suppressed \(unsubscribed, bounced or complained\)\s+[1-9]", text), text
    status = mailer(["status", str(post), "--json"], env, tmp_path)
    assert json.loads(status.stdout)["suppressed"] == 0, status.stderr  # nor does status
