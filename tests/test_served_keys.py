"""A running `mailer serve` whose record's key changes under it (a send on another host that signs with a new
key): it says so loudly and answers /healthz with 503 while it lacks the key, takes its key file once it is
replaced (the keys it held still verifying), and never takes a token that none of its keys signed
(servedkeys.py).

Hosts are data folders on one record (SQLite file or PostgreSQL database); real CLI sends to the test's SMTP
server, a real `mailer serve`, real HTTP requests.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from mailer.engine import Location
from mailer.ledger import Ledger
from mailer.tokens import Keyring
from tests.pg import rows
from tests.served import BOUNCE_ADDRESS, mailer_serve
from tests.smtpd import SMTPServer
from tests.test_key_marks import (
    FIRST_KEY,
    ROTATED,
    SECOND_KEY,
    _host,
    _one_click,
    _send,
    _serve_env,
    _token,
    posted,
)
from tests.test_serve import _healthz
from tests.test_webhooks_esp import MAILGUN_KEY, mailgun_signature

FORGED_KEY = "a-key-no-host-of-this-list-holds"
SAME_SIZE_KEY = "other-signing-key-0123456789abcdef"  # FIRST_KEY's length


def _replace_key_file(state: Path, key: str) -> None:
    """A new key file moved over the old one, as a publisher copies one from another host."""
    new = state / "secret.key.new"
    new.write_text(key + "\n", encoding="utf-8")
    new.chmod(0o600)
    os.replace(new, state / "secret.key")


def _lines(log: Path, words: str) -> list[str]:
    return [line for line in log.read_text(encoding="utf-8").splitlines() if words in line]


def test_a_serve_takes_its_replaced_key_file_after_a_rotation_elsewhere(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    sender = _host(tmp_path, "sender")
    assert _send(tmp_path, sender, record_at, smtp_server, 9, MAILER_SECRET_KEY=FIRST_KEY).exit_code == 0
    web = _host(tmp_path, "web", key=FIRST_KEY)
    with mailer_serve(tmp_path, _serve_env(web, record_at)) as served:
        assert _healthz(served.port, 60) == (200, b"ok\n")
        # the sending host rotates (docs/unsubscribe.md step 2) before this web host got the new key
        assert _send(tmp_path, sender, record_at, smtp_server, 10, **ROTATED).exit_code == 0
        new_link = _token(smtp_server, "ann@example.org", 1)
        for _ in range(2):
            status, body = _healthz(served.port, 60)
            assert status == 503 and b"signing key" in body, body
        [said] = _lines(served.log, "now signed with a key this serve does not hold")
        assert "ERROR" in said and "issue 2026-02-10" in said and str(web / "secret.key") in said, said
        assert _one_click(served.port, new_link) == 400  # refused, and still said only once
        assert len(_lines(served.log, "does not hold")) == 1
        forged = Keyring(FORGED_KEY).sign("ann@example.org", "")
        assert _one_click(served.port, forged) == 400

        # the publisher copies the new key file over: the next link that did not verify takes it
        _replace_key_file(web, SECOND_KEY)
        assert _one_click(served.port, new_link) == 200
        [taken] = _lines(served.log, "the signing key file was replaced")
        assert "WARNING" in taken and "still verify until `mailer serve` restarts" in taken, taken
        assert _one_click(served.port, _token(smtp_server, "bob@example.org", 0)) == 200  # the old key's
        assert _healthz(served.port, 60) == (200, b"ok\n")
        assert _one_click(served.port, forged) == 400
        # a key file that cannot be used is said, and the keys held go on
        (web / "secret.key").write_text("short\n", encoding="utf-8")
        assert _healthz(served.port, 60) == (200, b"ok\n")
        [bad] = _lines(served.log, "signing key too short")
        assert "still signing with mark" in bad, bad
        assert _one_click(served.port, _token(smtp_server, "bob@example.org", 1)) == 200
    with Ledger(record_at) as ledger:
        assert [ledger.is_suppressed(r) for r in ("ann@example.org", "bob@example.org")] == [True, True]
    log = served.log.read_text(encoding="utf-8")
    assert "Traceback" not in log and FIRST_KEY not in log and SECOND_KEY not in log


def test_a_serve_given_its_key_in_settings_says_a_rotation_elsewhere_needs_a_restart(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    sender = _host(tmp_path, "sender")
    assert _send(tmp_path, sender, record_at, smtp_server, 9, MAILER_SECRET_KEY=FIRST_KEY).exit_code == 0
    web = _host(tmp_path, "web")
    with mailer_serve(tmp_path, _serve_env(web, record_at, MAILER_SECRET_KEY=FIRST_KEY)) as served:
        assert _send(tmp_path, sender, record_at, smtp_server, 10, **ROTATED).exit_code == 0
        assert _healthz(served.port, 60)[0] == 503
        [said] = _lines(served.log, "does not hold")
        assert "set secret_key to it (the old one in old_secret_keys) and restart" in said, said
        assert _one_click(served.port, _token(smtp_server, "ann@example.org", 1)) == 400
        assert _one_click(served.port, _token(smtp_server, "ann@example.org", 0)) == 200
    assert not (web / "secret.key").exists()
    # restarted as docs/unsubscribe.md says: both issues' links work
    with mailer_serve(tmp_path, _serve_env(web, record_at, **ROTATED)) as served:
        assert _healthz(served.port, 60) == (200, b"ok\n")
        assert _one_click(served.port, _token(smtp_server, "bob@example.org", 1)) == 200


def _rewrite_in_place(key_file: Path, key: str) -> None:
    """The key file's bytes overwritten in the same file, its size and times kept: what a rewrite in place
    within one tick of a coarse file-system clock looks like to stat."""
    before = key_file.stat()
    with open(key_file, "r+b") as out:
        out.write(key.encode() + b"\n")
    os.utime(key_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = key_file.stat()
    stamp = (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns)
    assert stamp == (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)


def test_a_key_file_rewritten_in_place_with_the_same_size_and_time_is_taken(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    assert len(SAME_SIZE_KEY) == len(FIRST_KEY)
    sender = _host(tmp_path, "sender")
    assert _send(tmp_path, sender, record_at, smtp_server, 9, MAILER_SECRET_KEY=FIRST_KEY).exit_code == 0
    web = _host(tmp_path, "web", key=FIRST_KEY)
    rotated = {"MAILER_SECRET_KEY": SAME_SIZE_KEY, "MAILER_OLD_SECRET_KEYS": FIRST_KEY}
    with mailer_serve(tmp_path, _serve_env(web, record_at)) as served:
        assert _send(tmp_path, sender, record_at, smtp_server, 10, **rotated).exit_code == 0
        new_link = _token(smtp_server, "ann@example.org", 1)
        assert _one_click(served.port, new_link) == 400
        _rewrite_in_place(web / "secret.key", SAME_SIZE_KEY)
        assert _one_click(served.port, new_link) == 200
        assert _healthz(served.port, 60) == (200, b"ok\n")
        assert len(_lines(served.log, "the signing key file was replaced")) == 1
        assert _one_click(served.port, _token(smtp_server, "bob@example.org", 0)) == 200  # the old key's
    with Ledger(record_at) as ledger:
        assert [ledger.is_suppressed(r) for r in ("ann@example.org", "bob@example.org")] == [True, True]


def _mailgun_bounce(port: int, reader: str, return_path: str) -> int:
    """A signed Mailgun "failed" event about `reader` that quotes only the envelope sender (no Message-ID), so
    that the signed envelope sender alone can say which issue it is about."""
    data = {
        "event": "failed", "severity": "permanent", "reason": "bounce", "id": secrets.token_urlsafe(16),
        "timestamp": time.time(), "recipient": reader, "envelope": {"sender": return_path},
        "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist."},
    }  # fmt: skip
    body = json.dumps({"signature": mailgun_signature(MAILGUN_KEY), "event-data": data})
    return posted(port, "/webhooks/mailgun", body.encode(), "application/json")


def test_a_webhook_bounce_signed_with_a_replaced_key_file_takes_it(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    bounces = {"MAILER_BOUNCE_ADDRESS": BOUNCE_ADDRESS}
    sender = _host(tmp_path, "sender")
    first = _send(tmp_path, sender, record_at, smtp_server, 9, MAILER_SECRET_KEY=FIRST_KEY, **bounces)
    assert first.exit_code == 0, first.output
    web = _host(tmp_path, "web", key=FIRST_KEY)
    env = _serve_env(web, record_at, MAILER_MAILGUN_WEBHOOK_KEY=MAILGUN_KEY, **bounces)
    with mailer_serve(tmp_path, env) as served:
        assert _send(tmp_path, sender, record_at, smtp_server, 10, **ROTATED, **bounces).exit_code == 0
        [ann_new] = [m.mail_from for m in smtp_server.messages if m.rcpt_tos == ("ann@example.org",)][1:]
        _replace_key_file(web, SECOND_KEY)  # the publisher copies the new key over; no link clicked since
        assert _mailgun_bounce(served.port, "ann@example.org", ann_new) == 200
        [taken] = _lines(served.log, "the signing key file was replaced")
        assert "WARNING" in taken, taken
    kept = rows(record_at, "SELECT email, kind, issue_id FROM bounces")
    assert kept == [("ann@example.org", "hard", "2026-02-10")]
