"""A send by workers that dealt with every reader is done, also when one worker stopped early on a failure
the others did not meet (here the record refusing its done mark of a batch, as a full disk would refuse that
write). Before, that worker's reason stopped the whole send: exit 4, 'run the same command again', and
`mailer status` said 'not complete', with every reader mailed once and recorded. Real workers, a real SMTP
server (tests/smtpd.py), the real CLI, both engines.
"""

from __future__ import annotations

import json
from pathlib import Path

from mailer.engine import Location
from tests.smtpd import SMTPServer
from tests.test_attack_attempts import refuse
from tests.test_workers import env_at, recipients, write_list
from tests.test_workers_lifecycle import mailer


def test_a_send_whose_other_workers_dealt_with_every_reader_is_done_when_one_stopped_early(
    smtp_server: SMTPServer, tmp_path: Path, post: Path, record_at: Location
) -> None:
    emails = [f"user{i}@example.com" for i in range(60)]  # 6 batches of 10 for two workers
    csv = write_list(tmp_path / "subs.csv", emails)
    env = env_at(smtp_server, tmp_path, record_at)
    assert mailer(["db", "migrate"], env, tmp_path).returncode == 0
    refuse(record_at, "NEW.done = 1")  # the first holder of batch 2 cannot mark a batch done: it stops
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--workers", "2", "--json"]
    sent = mailer(args, env, tmp_path)
    assert "Traceback" not in sent.stderr, sent.stderr
    assert "a worker stopped early (" in sent.stderr, sent.stderr  # said, as a line
    assert "; the others dealt with every reader" in sent.stderr, sent.stderr
    assert sent.returncode == 0, sent.stderr
    assert recipients(smtp_server) == {e: 1 for e in emails}
    report = json.loads(sent.stdout)
    assert report["status"] == "done" and "error" not in report, report
    assert {k: n for k, n in report["counts"].items() if n} == {"sent": 60}, report
    status = mailer(["status", str(post), "--json"], env, tmp_path)
    assert json.loads(status.stdout)["complete"] is True, status.stdout
