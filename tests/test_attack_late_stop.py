"""A Ctrl-C that comes once no reader is left to start (the last message out, its reply awaited) does not
make the send a stopped one: the messages in flight go out, every reader is dealt with, so the run is
complete and the report says so, and that the Ctrl-C came after the end. Before, the send was called
stopped (exit 130, 'run the same command again') and the run not complete, though a rerun mailed no one.
A real SMTP server (tests/smtpd.py) holds the last reader's reply until the Ctrl-C is seen; the real CLI.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path

from mailer.engine import Location
from tests.sends import held_send
from tests.smtpd import SMTPServer
from tests.test_send import _read_until, recipients, send_args, write_list
from tests.test_workers import env_at
from tests.test_workers_lifecycle import mailer

LATE = "Interrupted: the signal came after the last message had started; every reader was dealt with"


def ctrl_c_at_the_last_reply(
    server: SMTPServer, tmp_path: Path, post: Path, record: Location, readers: int, *more: str
) -> None:
    """Send to `readers` readers over one connection, Ctrl-C as the last one's reply is awaited (held until
    the stop is said), and check the send went to its end."""
    emails = [f"user{i}@example.com" for i in range(readers)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(server, tmp_path, record, MAILER_SMTP_TIMEOUT="120")
    args = send_args(post, csv, "--connections", "1", *more)
    # one connection: the others have gone when this one waits
    with held_send(server, args, env, tmp_path, at=emails[-1]) as (proc, held):
        proc.send_signal(signal.SIGINT)
        said = _read_until(proc, b"after the messages in flight (a second", timeout=60)
        held.release.set()
        _, rest = proc.communicate(timeout=120)
    err = (said + rest).decode()
    assert "Traceback" not in err, err
    assert proc.returncode == 0, err
    assert LATE in err, err
    assert "run the same command again" not in err, err
    # no count from before the last replies drawn after the stop is said: the coordinator's first look then
    # drew "progress: 0/10 messages, 0 sent" (its workers' counts not yet in the record) before "10/10"
    after = err.split("after the messages in flight (a second", 1)[1]
    drawn = re.findall(r"progress: (\d+)/(\d+) messages", after)
    assert drawn and all(done == str(readers) for done, _ in drawn), after
    assert recipients(server) == Counter({e: 1 for e in emails})
    status = mailer(["status", str(post), "--json"], env, tmp_path)
    assert json.loads(status.stdout)["complete"] is True, status.stdout


def test_a_ctrl_c_as_the_last_reply_comes_in_leaves_the_send_complete(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    ctrl_c_at_the_last_reply(smtp_server, tmp_path, post, tmp_path / "state" / "mailer.db", 3)


def test_a_ctrl_c_as_a_workers_send_gets_its_last_reply_leaves_the_send_complete(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """The same by a send's coordinator, its worker at the last reader of the list (one batch of 10)."""
    ctrl_c_at_the_last_reply(smtp_server, tmp_path, post, record_at, 10, "--workers", "1")
