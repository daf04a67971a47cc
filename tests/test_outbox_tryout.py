"""The README's try-out: the same send to the local outbox, then over SMTP, with the real CLI.

The outbox mails no one, so what it records must never make a send over SMTP skip a reader, and a send over
SMTP must stay exactly as it was after a later outbox try-out.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest

from mailer.ledger import OUTBOX, SCHEMA_VERSION, Ledger
from mailer.post import load_post
from mailer.transport import OutboxTransport
from tests import publisher
from tests.clock import DAYTIME, today
from tests.command import run
from tests.record import delivery
from tests.smtpd import SMTPServer

READERS = ["ann@example.com", "bo@example.com", "cy@example.com"]


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def posts(post: Path) -> Path:
    """The posts folder holding only today's post (in DAYTIME), as the daily run finds it."""
    day = today().isoformat()
    text = post.read_text(encoding="utf-8").replace("date: 2026-02-09", f"date: {day}")
    (post.parent / f"{day}.md").write_text(text, encoding="utf-8")
    post.unlink()
    return post.parent


def outbox_env(tmp_path: Path) -> dict[str, str]:
    return {**publisher.ENV, "MAILER_DATA_DIR": str(tmp_path / "state"), "MAILER_TIMEZONE": DAYTIME}


def smtp_env(server: SMTPServer, tmp_path: Path) -> dict[str, str]:
    return {
        **outbox_env(tmp_path),
        "MAILER_SMTP_HOST": server.host,
        "MAILER_SMTP_PORT": str(server.port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_SMTP_TIMEOUT": "5",
    }


def write_list(path: Path, emails: list[str]) -> Path:
    path.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
    return path


def outbox_recipients(tmp_path: Path) -> Counter[str]:
    """Who the outbox holds a message for, from each message's Delivered-To line."""
    found: Counter[str] = Counter()
    for message in (tmp_path / "state" / "outbox" / "new").iterdir():
        for line in message.read_bytes().splitlines():
            if line.startswith(b"Delivered-To: "):
                found[line.split(b" ", 1)[1].decode()] += 1
                break
    return found


def smtp_recipients(server: SMTPServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


def test_an_outbox_try_out_then_the_real_send_mails_every_reader_once(
    smtp_server: SMTPServer, tmp_path: Path, posts: Path
) -> None:
    subs = write_list(tmp_path / "subs.csv", [*READERS, "gone@example.com"])
    assert run(["unsubscribe", "gone@example.com"], outbox_env(tmp_path))[0] == 0
    send = ["send", str(posts), "--to", str(subs), "--yes"]

    code, _, err = run(send, outbox_env(tmp_path))  # the try-out the README suggests
    assert code == 0, err
    assert outbox_recipients(tmp_path) == Counter({e: 1 for e in READERS})
    assert smtp_server.messages == []
    (today_post,) = posts.iterdir()  # the try-out showed a typo: fixing it is no "changed post" for SMTP
    today_post.write_text(today_post.read_text(encoding="utf-8") + "\nOne more line.\n", encoding="utf-8")

    code, _, err = run(send, smtp_env(smtp_server, tmp_path))  # the same send, for real
    assert code == 0, err
    assert "already sent" not in err
    assert smtp_recipients(smtp_server) == Counter({e: 1 for e in READERS})

    code, _, err = run(send, smtp_env(smtp_server, tmp_path))  # again: nothing more
    assert code == 0, err
    assert "nothing to do" in err
    assert smtp_recipients(smtp_server) == Counter({e: 1 for e in READERS})
    assert outbox_recipients(tmp_path) == Counter({e: 1 for e in READERS})


def test_an_outbox_try_out_after_the_real_send_leaves_its_record_alone(
    smtp_server: SMTPServer, tmp_path: Path, posts: Path
) -> None:
    subs = write_list(tmp_path / "subs.csv", [*READERS, "gone@example.com"])
    assert run(["unsubscribe", "gone@example.com"], outbox_env(tmp_path))[0] == 0
    send = ["send", str(posts), "--to", str(subs), "--yes"]
    assert run(send, smtp_env(smtp_server, tmp_path))[0] == 0
    assert smtp_recipients(smtp_server) == Counter({e: 1 for e in READERS})

    code, _, err = run(send, outbox_env(tmp_path))  # a try-out after the real thing still shows it all
    assert code == 0, err
    assert outbox_recipients(tmp_path) == Counter({e: 1 for e in READERS})

    write_list(subs, [*READERS, "gone@example.com", "new@example.com"])  # a reader joins
    code, _, err = run(send, smtp_env(smtp_server, tmp_path))
    assert code == 0, err
    assert smtp_recipients(smtp_server) == Counter({e: 1 for e in [*READERS, "new@example.com"]})

    code, out, err = run(["status", "--json"], outbox_env(tmp_path))
    assert code == 0, err
    rows = {(i["issue"], i["destination"]): i["counts"] for i in json.loads(out)["issues"]}
    day = today().isoformat()
    assert rows == {(day, "smtp"): {"sent": 4}, (day, "outbox"): {"sent": 3}}


# The record as schema 2 wrote it (mailer before the outbox was kept apart), PRAGMA user_version = 2.
SCHEMA_V2 = """
CREATE TABLE issues (issue_id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, subject TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE runs (run_id INTEGER PRIMARY KEY, issue_id TEXT NOT NULL REFERENCES issues(issue_id),
    content_hash TEXT NOT NULL, list_key TEXT NOT NULL, list_path TEXT NOT NULL, pid INTEGER NOT NULL,
    started_at TEXT NOT NULL, completed_at TEXT);
CREATE INDEX runs_by_list ON runs(issue_id, list_key);
CREATE TABLE deliveries (issue_id TEXT NOT NULL REFERENCES issues(issue_id), email TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'deferred', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0, last_code INTEGER, last_reply TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL, PRIMARY KEY (issue_id, email)) WITHOUT ROWID;
CREATE INDEX deliveries_by_state ON deliveries(issue_id, state);
CREATE TABLE suppressions (email TEXT PRIMARY KEY, source TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL);
PRAGMA user_version = 2;
"""
T = "2026-02-09T06:00:00+00:00"


def outbox_replies(tmp_path: Path) -> tuple[str, str]:
    """What the real outbox answers to a message it keeps and to one it refuses (recorded as last_reply)."""
    conn = OutboxTransport(tmp_path / "scratch-outbox").connect()
    kept = conn.send("news@aidaily.news", "ann@example.com", b"Subject: x\r\n\r\nx\r\n")
    refused = conn.send("news@aidaily.news", "bad\r\n@example.com", b"Subject: x\r\n\r\nx\r\n")
    assert kept.ok and refused.permanent
    return kept.text, refused.text


def test_a_try_out_recorded_by_schema_2_no_longer_keeps_readers_from_the_real_send(
    smtp_server: SMTPServer, tmp_path: Path, posts: Path
) -> None:
    subs = write_list(tmp_path / "subs.csv", READERS)
    (today_post,) = posts.iterdir()
    day, content = today_post.stem, load_post(today_post).content_hash
    list_key = hashlib.sha256(subs.read_bytes()).hexdigest()
    kept, refused = outbox_replies(tmp_path)
    db = tmp_path / "state" / "mailer.db"
    db.parent.mkdir()
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.executescript(SCHEMA_V2)
        issues = [
            (day, content),
            ("2026-02-10", "h-smtp"),
            ("2026-02-11", "h-both"),
            ("2026-02-12", "h-none"),
        ]
        conn.executemany("INSERT INTO issues VALUES (?, ?, 'S', ?)", [(i, h, T) for i, h in issues])
        conn.executemany(  # each issue's send reached the whole list
            "INSERT INTO runs (issue_id, content_hash, list_key, list_path, pid, started_at, completed_at)"
            " VALUES (?, ?, ?, 'subs.csv', 1, ?, ?)",
            [(i, h, list_key, T, T) for i, h in issues],
        )
        conn.executemany(
            "INSERT INTO deliveries VALUES (?, ?, ?, 1, ?, ?, ?)",
            [
                *((day, e, "sent", 250, kept, T) for e in READERS),  # the README's try-out
                (day, "bad@example.com", "failed", 553, refused, T),
                ("2026-02-10", "ann@example.com", "sent", 250, "2.0.0 Ok: queued as 4F2A", T),
                ("2026-02-10", "bo@example.com", "failed", 550, "5.1.1 no such user", T),
                ("2026-02-11", "ann@example.com", "sent", 250, kept, T),
                ("2026-02-11", "bo@example.com", "sent", 250, "2.0.0 Ok: queued as 4F2B", T),
            ],
        )
        conn.execute("INSERT INTO suppressions VALUES ('gone@example.com', 'web', '', ?)", (T,))

    with Ledger(db) as smtp, Ledger(db, destination=OUTBOX) as outbox:
        assert delivery(smtp, day, "ann@example.com") is None and not smtp.is_complete(day, list_key)
        assert delivery(outbox, day, "ann@example.com").state == "sent"  # type: ignore[union-attr]
        assert delivery(outbox, day, "bad@example.com").last_code == 553  # type: ignore[union-attr]
        assert outbox.is_complete(day, list_key)
        assert delivery(smtp, "2026-02-10", "bo@example.com").last_reply == "5.1.1 no such user"  # type: ignore[union-attr]
        assert (
            smtp.is_complete("2026-02-10", list_key)
            and delivery(outbox, "2026-02-10", "ann@example.com") is None
        )
        # an issue that went to both: each keeps its own readers, and neither claims the whole list
        assert delivery(smtp, "2026-02-11", "bo@example.com").state == "sent"  # type: ignore[union-attr]
        assert delivery(smtp, "2026-02-11", "ann@example.com") is None
        assert delivery(outbox, "2026-02-11", "ann@example.com").state == "sent"  # type: ignore[union-attr]
        assert not smtp.is_complete("2026-02-11", list_key) and not outbox.is_complete("2026-02-11", list_key)
        assert smtp.is_complete("2026-02-12", list_key)  # no deliveries at all: SMTP's, as before
        assert smtp.is_suppressed("gone@example.com")
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # the key file of the data folder that made the sends above (a host without one makes none: keymarks.py)
    (tmp_path / "state" / "secret.key").write_text("the-key-those-sends-were-signed-with\n")
    (tmp_path / "state" / "secret.key").chmod(0o600)
    send = ["send", str(posts), "--to", str(subs), "--yes"]
    code, _, err = run(send, smtp_env(smtp_server, tmp_path))
    assert code == 0, err
    assert smtp_recipients(smtp_server) == Counter({e: 1 for e in READERS})
    code, _, err = run(send, smtp_env(smtp_server, tmp_path))
    assert code == 0 and "nothing to do" in err
    assert len(smtp_server.messages) == len(READERS)
