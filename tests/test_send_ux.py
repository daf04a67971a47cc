"""What `mailer send` refuses and says: the pre-send checks, test sends, exit codes, --json, -q and status.

Every test runs the real CLI against aiosmtpd on 127.0.0.1 (or the local outbox) and reads what arrived.
"""

from __future__ import annotations

import email
import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailer.ledger import Ledger
from tests import publisher
from tests.command import run
from tests.smtpd import SMTPServer

SETUP_CHECKS = ("from-address", "unsubscribe-url", "postal-address")


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no mailer.toml but the test's own


def write_list(path: Path, emails: list[str]) -> Path:
    path.write_text("email,name\n" + "".join(f"{e},Reader\n" for e in emails), encoding="utf-8")
    return path


def parsed(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def real_send(post: Path, csv: Path, *more: str) -> list[str]:
    return ["send", str(post), "--to", str(csv), "--yes", "--force", *more]


# --- the checks before the first message ------------------------------------------------------------------


def test_a_config_with_only_the_smtp_host_mails_no_one(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text(
        f'smtp_host = "{smtp_server.host}"\nsmtp_port = {smtp_server.port}\nsmtp_security = "none"\n'
        f'data_dir = "{tmp_path / "state"}"\n',
        encoding="utf-8",
    )
    csv = write_list(tmp_path / "subs.csv", ["a@example.com", "b@example.com"])
    code, out, err = run(real_send(post, csv), {})
    assert code == 1, err
    assert smtp_server.messages == [] and smtp_server.connections == 0
    assert f"Error: {post}: not sending: 3 pre-send check(s) failed" in err
    for name in SETUP_CHECKS:
        assert f"\n  {name}: " in err and f"--skip-check {name}" in err
    assert err.count("    fix: set ") == 3  # how to fix each
    assert "newsletter@example.com" in err and "http://127.0.0.1:8080" in err
    assert "Traceback" not in err and out == ""
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        assert ledger.issues() == []  # refused before the record was touched

    code, out, err = run(["send", str(post), "--to", str(csv), "--dry-run"], {})
    assert code == 1  # a dry run says who would get it, then that a real send would be refused
    assert out.split() == ["a@example.com", "b@example.com"]
    assert "not sending: 3 pre-send check(s) failed" in err
    assert smtp_server.messages == []


def test_an_old_post_that_fails_a_check_is_told_both_at_once(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    # the example post is dated 2026-02-09: without --force a real send refuses it too. Before, the error
    # named only the checks to skip; done, the next try was refused for the date (two tries to learn it)
    csv = write_list(tmp_path / "subs.csv", ["a@example.com"])
    env = publisher.env_for(smtp_server, tmp_path, MAILER_MAX_AGE_DAYS="1")
    del env["MAILER_POSTAL_ADDRESS"]
    args = ["send", str(post), "--to", str(csv), "--yes"]
    code, _, err = run(args, env)
    assert code == 1 and "--skip-check postal-address" in err, err
    lines = err.split("not sending: 1 pre-send check(s) failed", 1)[1].splitlines()
    assert lines[-1].startswith("  And the post's date: dated 2026-02-09, "), err
    assert lines[-1].endswith("posts older than 1 day(s) need --force"), err
    code, out, _ = run([*args, "--json"], env)
    assert code == 1 and json.loads(out)["also_refused"].endswith("need --force")
    code, _, err = run([*args, "--skip-check", "postal-address"], env)  # what the first error said
    assert code == 1 and err.strip().endswith("need --force") and "pre-send check" not in err, err
    code, _, err = run([*args, "--dry-run"], env)  # a dry run says all that a real send would stop on
    assert code == 1 and "\n  And the post's date: dated 2026-02-09, " in err, err
    code, _, err = run([*args, "--dry-run", "--skip-check", "postal-address"], env)
    assert code == 0 and "a real send would stop: dated 2026-02-09, " in err, err  # the date alone: said
    code, _, err = run([*args, "--force"], env)  # --force alone: the check is still named, the date not
    assert code == 1 and "--skip-check postal-address" in err and "post's date" not in err, err
    code, _, err = run([*args, "--skip-check", "postal-address", "--force"], env)
    assert code == 0, err
    assert [r for m in smtp_server.messages for r in m.rcpt_tos] == ["a@example.com"]


def test_the_outbox_refusing_an_old_post_for_a_check_does_not_say_it_goes_ahead(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    # with no smtp_host the date stops nothing ("going ahead"), but a link that is relative stops even the
    # outbox; the note came first, then the refusal: "going ahead" and "not sending" for one send
    csv = write_list(tmp_path / "subs.csv", ["a@example.com"])
    env = publisher.env_for(smtp_server, tmp_path, MAILER_MAX_AGE_DAYS="1")
    del env["MAILER_SMTP_HOST"]
    text = post.read_text(encoding="utf-8")
    post.write_text(text.replace("\n# ", "\n[relative](/about/)\n\n# ", 1), encoding="utf-8")
    code, _, err = run(["send", str(post), "--to", str(csv), "--yes"], env)
    assert code == 1 and "relative-urls: " in err and "going ahead" not in err, err
    assert "post's date" not in err  # the outbox would not refuse it for that
    post.write_text(text, encoding="utf-8")
    code, _, err = run(["send", str(post), "--to", str(csv), "--yes"], env)
    assert code == 0 and "the local outbox mails no one, so going ahead" in err, err


def test_each_check_is_let_through_only_by_its_own_name(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    csv = write_list(tmp_path / "subs.csv", ["a@example.com", "b@example.com"])
    env = publisher.env_for(smtp_server, tmp_path)
    del env["MAILER_POSTAL_ADDRESS"]  # only the placeholder postal address is wrong
    code, _, err = run(real_send(post, csv, "--skip-check", "from-address"), env)
    assert code == 1 and "postal-address: " in err and "--skip-check postal-address" in err
    assert "from-address" not in err.split("pre-send check(s) failed")[1]  # it passed: not listed
    assert smtp_server.messages == []

    code, _, err = run(real_send(post, csv, "--skip-check", "everything"), env)
    assert code == 2  # a usage error, naming the checks there are
    assert "'everything' is not a check that stops a send" in err and "postal-address" in err
    assert smtp_server.messages == []

    code, _, err = run(real_send(post, csv, "--skip-check", "postal-address"), env)
    assert code == 0, err
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == ["a@example.com", "b@example.com"]
    assert "Warning: " in err and "skipped on purpose: --skip-check postal-address" in err


def test_the_local_outbox_takes_the_placeholders(tmp_path: Path, post: Path) -> None:
    csv = write_list(tmp_path / "subs.csv", ["a@example.com", "b@example.com"])
    code, _, err = run(real_send(post, csv), {"MAILER_DATA_DIR": str(tmp_path / "state")})
    assert code == 0, err
    assert len(list((tmp_path / "state" / "outbox" / "new").iterdir())) == 2
    for name in SETUP_CHECKS:
        assert f": {name}: " in err  # still said, as warnings
    assert err.count("(fine for the local outbox)") == 3


# --- test sends --------------------------------------------------------------------------------------------


def test_a_test_send_is_marked_has_its_own_message_id_and_is_no_delivery(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = publisher.env_for(smtp_server, tmp_path)
    for _ in range(2):
        code, out, err = run(["send", str(post), "--test", "me@example.org"], env)
        assert code == 0, err
        assert out.startswith("Test message sent to me@example.org via 127.0.0.1:")
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        assert ledger.issues() == []  # not recorded, not even the issue

    csv = write_list(tmp_path / "subs.csv", ["me@example.org", "other@example.com"])
    code, _, err = run(real_send(post, csv), env)
    assert code == 0, err
    assert [m.rcpt_tos for m in smtp_server.messages] == [
        ("me@example.org",),
        ("me@example.org",),
        ("me@example.org",),
        ("other@example.com",),
    ]  # the real send still mailed the tested address
    first, second, real, other = (parsed(m.data) for m in smtp_server.messages)
    assert first["Subject"] == "[TEST] " + real["Subject"] and second["Subject"] == first["Subject"]
    ids = {first["Message-ID"], second["Message-ID"], real["Message-ID"], other["Message-ID"]}
    assert len(ids) == 4  # never the real one's, nor another test's
    assert first["List-Unsubscribe"] == real["List-Unsubscribe"]  # the test address's own link
    assert first["List-Unsubscribe"] != other["List-Unsubscribe"]
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        assert ledger.status("2026-02-09").counts == {"sent": 2}

    smtp_server.clear()
    env["MAILER_TEST_SUBJECT_PREFIX"] = "(proof) "
    code, _, err = run(["send", str(post), "--test", "me@example.org"], env)
    assert code == 0, err
    assert parsed(smtp_server.messages[0].data)["Subject"] == "(proof) " + real["Subject"]


def test_a_test_send_with_placeholders_goes_out_and_says_a_real_send_would_stop(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = publisher.env_for(smtp_server, tmp_path, MAILER_FROM_EMAIL="news@example.com")
    code, _, err = run(["send", str(post), "--test", "me@example.org"], env)
    assert code == 0, err
    assert len(smtp_server.messages) == 1
    assert "from-address" in err and "(a real send stops here; fix: set from_email" in err


# --- exit codes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [("done", 0), ("refused", 1), ("usage", 2), ("some failed", 3), ("stopped early", 4)],
)
def test_exit_codes_tell_a_script_what_happened(
    case: str, expected: int, smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    emails = [f"user{i}@example.com" for i in range(6)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = publisher.env_for(smtp_server, tmp_path, MAILER_MAX_CONSECUTIVE_FAILURES="3")
    args = real_send(post, csv)
    if case == "refused":
        args = real_send(post, tmp_path / "missing.csv")
    elif case == "usage":
        args = [*args, "--bogus"]
    elif case == "some failed":
        smtp_server.reject("user2@example.com", 550)
    elif case == "stopped early":
        for address in emails:
            smtp_server.reject(address, 554)
    code, _, err = run(args, env)
    assert code == expected, err
    sent = len(smtp_server.messages)
    assert sent == {"done": 6, "refused": 0, "usage": 0, "some failed": 5, "stopped early": 0}[case]


# --- --json and -q -----------------------------------------------------------------------------------------


def test_json_is_one_object_on_stdout_with_counts_status_and_failures(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    emails = [f"user{i}@example.com" for i in range(5)]
    csv = write_list(tmp_path / "subs.csv", [*emails, "not-an-address", "USER0@example.com"])
    smtp_server.reject("user3@example.com", 550)
    env = publisher.env_for(smtp_server, tmp_path)
    code, out, err = run(real_send(post, csv, "--json"), env)
    assert code == 3, err
    obj = json.loads(out)  # the whole of stdout is one object
    assert obj["exit"] == 3 and obj["status"] == "incomplete"
    assert obj["issue"] == "2026-02-09" and obj["deliverable"] == 5
    counts = obj["counts"]
    assert (counts["sent"], counts["failed_permanent"], counts["invalid"], counts["duplicates"]) == (
        4,
        1,
        1,
        1,
    )
    assert len(smtp_server.messages) == counts["sent"]
    ((reason, count),) = obj["failures"].items()
    assert reason.startswith("550") and count == 1

    code, out, _ = run(
        real_send(post, csv, "--json"),
        publisher.env_for(smtp_server, tmp_path, MAILER_FROM_EMAIL="n@example.com"),
    )
    assert code == 1
    refused = json.loads(out)
    assert refused["exit"] == 1 and refused["status"] == "refused"
    assert [c["code"] for c in refused["failed_checks"]] == ["from-address"]
    assert refused["failed_checks"][0]["fix"].startswith("set from_email")

    code, out, _ = run(["status", str(post), "--json"], env)
    assert code == 0
    status = json.loads(out)
    assert status["counts"] == {"sent": 4, "failed": 1} and status["complete"] is False
    assert status["failure_groups"][0]["code"] == 550

    code, out, _ = run(["check", str(post), "--json"], env)
    check = json.loads(out)
    assert code == 0 and check["exit"] == 0 and check["errors"] == 0
    assert {c["code"] for c in check["checks"]} >= {"subject", "from-address", "postal-address"}


def test_quiet_prints_nothing_but_errors(smtp_server: SMTPServer, tmp_path: Path, post: Path) -> None:
    csv = write_list(tmp_path / "subs.csv", ["a@example.com", "b@example.com"])
    env = publisher.env_for(smtp_server, tmp_path)
    code, out, err = run(real_send(post, csv, "-q"), env)
    assert code == 0 and len(smtp_server.messages) == 2
    assert (out, err) == ("", "")

    post2 = post.with_name("2026-02-10.md")
    post2.write_text(post.read_text(encoding="utf-8").replace("2026-02-09", "2026-02-10"), encoding="utf-8")
    smtp_server.reject("b@example.com", 550)
    code, out, err = run(real_send(post2, csv, "-q"), env)
    assert code == 3 and out == ""
    assert "failed: b@example.com: 550" in err  # what went wrong, and only that
    assert "Warning" not in err and "Sending" not in err and "progress:" not in err


# --- status ------------------------------------------------------------------------------------------------


def test_status_without_a_post_lists_every_issue_sent(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    csv = write_list(
        tmp_path / "subs.csv", ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
    )
    env = publisher.env_for(smtp_server, tmp_path)
    first_day = datetime.now().astimezone().date().isoformat()  # status shows the local time
    assert run(["unsubscribe", "d@example.com"], env)[0] == 0
    assert run(real_send(post, csv), env)[0] == 0
    second = post.with_name("2026-02-10.md")
    second.write_text("---\ntitle: The second issue\ndate: 2026-02-10\n---\nBody.\n", encoding="utf-8")
    smtp_server.reject("c@example.com", 550)
    assert run(real_send(second, csv), env)[0] == 3

    code, out, err = run(["status"], env)
    assert code == 0, err
    header, *rows, key = out.splitlines()
    assert key.startswith("Signing key: the record's is mark ") and key.endswith(")"), key
    assert header.split() == [
        "first", "sent", "issue", "to", "sent", "failed", "suppressed", "bounced", "complaints", "complete",
        "title",
    ]  # fmt: skip
    assert len(rows) == 2
    newest, oldest = (row.split() for row in rows)
    # c@ refused with 550 5.1.1: a hard bounce, 1 of 3 messages; d@ unsubscribed, not mailed by either (the
    # column the --json's "suppressed" and `status POST` had, and the table had not)
    assert newest[2:13] == ["2026-02-10", "smtp", "2", "1", "1", "1", "33.33%", "0", "0.00%", "no", "The"]
    assert rows[0].endswith("The second issue")
    assert oldest[2:12] == ["2026-02-09", "smtp", "3", "0", "1", "0", "0.00%", "0", "0.00%", "yes"]
    # the date both were sent (today; the day after too if midnight came between the two sends)
    days = {first_day, datetime.now().astimezone().date().isoformat()}
    assert {newest[0], oldest[0]} <= days and newest[0] >= oldest[0]

    code, out, _ = run(["status", "--json"], env)
    issues = json.loads(out)["issues"]
    assert [(i["issue"], i["sent"], i["failed"], i["suppressed"], i["complete"]) for i in issues] == [
        ("2026-02-10", 2, 1, 1, False),
        ("2026-02-09", 3, 0, 1, True),
    ]

    code, out, _ = run(["status"], {"MAILER_DATA_DIR": str(tmp_path / "empty")})
    assert code == 0 and out.startswith("No issue has been sent yet.\nSigning key: none recorded yet;"), out
    assert not (tmp_path / "empty" / "secret.key").exists()


def test_json_after_ctrl_c_still_says_what_was_sent(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    emails = [f"user{i}@example.com" for i in range(20)]
    csv = write_list(tmp_path / "subs.csv", emails)
    env = {**os.environ, **publisher.env_for(smtp_server, tmp_path), "PYTHONUNBUFFERED": "1"}
    held = smtp_server.hold("user5@example.com")  # the send is mid-way, at a known place, when Ctrl-C comes
    with subprocess.Popen(
        [sys.executable, "-m", "mailer", *real_send(post, csv, "--json")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert held.reached.wait(60), "the send never reached user5"
            proc.send_signal(signal.SIGINT)
        finally:
            held.release.set()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    obj = json.loads(out)  # still one object on stdout, and only that
    assert obj["exit"] == 130 and obj["status"] == "interrupted"
    assert obj["counts"]["sent"] == len(smtp_server.messages)
    assert 5 <= obj["counts"]["sent"] < len(emails)
