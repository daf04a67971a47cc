"""The recheck of suppressions during a send (recheck.py) speaks only of readers it kept from being mailed.

The attack pass's finding: the recheck asked again about every reader of the batch looked up last, those
already mailed included. A reader who got their message and unsubscribed from it (seconds later, while the
send was still in the same batch of 256), or whose own address the server refused for good (a bounce that
suppresses them), was then said to be "suppressed during the send (...); not mailed": a false line about a
reader who was mailed, and a second one about a refused reader.
"""

from __future__ import annotations

from pathlib import Path

from mailer.engine import Location
from tests.smtpd import SMTPServer
from tests.test_unsubscribe_during_send import READERS, _said
from tests.test_workers import env_at, recipients, spawn, write_list


def test_readers_mailed_or_refused_before_they_were_suppressed_are_not_said_unmailed(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    """One connection, the reply to reader 100 held: reader 5 was mailed and unsubscribes, reader 50 was
    refused (550, a bounce that suppresses), then reader 150, still to come, unsubscribes. The send says
    it kept 150 from being mailed, and nothing of the kind about 5 or 50."""
    env = env_at(smtp_server, tmp_path, record_at, MAILER_SMTP_TIMEOUT="120")
    csv = write_list(tmp_path / "subs.csv", READERS)
    smtp_server.reject(READERS[50])
    hold = smtp_server.hold(READERS[100])
    options = ["--yes", "--force", "--connections", "1"]
    send = spawn(["send", str(post), "--to", str(csv), *options], env, tmp_path)
    said = b""
    try:
        assert hold.reached.wait(timeout=120), "the send never reached the held reader"
        # one after the other: a look that finds reader 150 suppressed finds reader 5 too
        for victim in (5, 150):
            unsubscribe = spawn(["unsubscribe", READERS[victim]], env, tmp_path)
            _, err = unsubscribe.communicate(timeout=120)
            assert unsubscribe.returncode == 0, err.decode()
        said = _said(send, [READERS[150]])
        hold.release.set()
        _, rest = send.communicate(timeout=300)
    finally:
        hold.release.set()
        if send.poll() is None:
            send.kill()
            send.communicate()
    err_text = (said + rest).decode()
    assert send.returncode == 3, err_text  # reader 50 undelivered
    assert "Traceback" not in err_text
    mailed = recipients(smtp_server)
    assert mailed[READERS[5]] == 1
    assert READERS[50] not in mailed and READERS[150] not in mailed
    assert f"{READERS[5]}: suppressed during the send" not in err_text
    assert f"{READERS[50]}: suppressed during the send" not in err_text
    assert err_text.count(f"{READERS[150]}: suppressed during the send") == 1
