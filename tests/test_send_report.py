"""What `mailer send` says at the end, pinned: the report on stderr and the --json object, for a dry run, a
send with a failure, a rerun, a second issue, a test send, a folder without today's post and a dry run that
a real send would refuse.

A regression guard, not a specification (like tests/text_pins): the pin was written by the code of the day,
so this test only says "the report did not change" while the code that shapes it moves. What each line
means is specified by the tests that can fail on their own (test_send_ux.py, test_send.py). Times, the
server's port, the temporary folder, the rate and the test message's Message-ID are masked; progress lines,
which depend on timing, and the pre-send checks' warnings about the post are left out. When a change to the
report is meant, read the diff and copy the new transcript into tests/send_pins/report.txt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.command import run
from tests.publisher import env_for
from tests.smtpd import SMTPServer
from tests.test_send_ux import real_send, write_list

PIN = Path(__file__).resolve().parent / "send_pins" / "report.txt"


def masked(text: str, tmp_path: Path, port: int) -> str:
    text = text.replace(str(tmp_path), "TMP").replace(f"127.0.0.1:{port}", "127.0.0.1:PORT")
    text = re.sub(r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d ", "T ", text)
    text = re.sub(r"(?m)^T progress: .*\n", "", text)
    text = re.sub(r"\d[\d,.]* msg/s", "N msg/s", text)
    text = re.sub(r"No post dated \d{4}-\d\d-\d\d", "No post dated DAY", text)
    text = re.sub(r"<2026-02-09\.test-[^>]+>", "<MESSAGE-ID>", text)
    return without_post_warnings(text)


def without_post_warnings(text: str) -> str:
    """The transcript without the pre-send checks' warnings about the post (image sizes, DKIM): they are
    the checks', not the report's, and change with them."""
    lines = []
    for line in text.split("\n"):
        if line.startswith("T Warning: TMP/posts/"):
            continue
        if line.startswith("{"):
            obj = json.loads(line)
            obj["warnings"] = [w for w in obj["warnings"] if not w.startswith("TMP/posts/")]
            line = json.dumps(obj, ensure_ascii=False, sort_keys=True)
        lines.append(line)
    return "\n".join(lines)


def test_the_send_report_and_its_json_are_as_pinned(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    emails = [f"user{i}@example.com" for i in range(4)]
    csv = write_list(tmp_path / "subs.csv", [*emails, "not-an-address", "USER0@example.com"])
    smtp_server.reject("user3@example.com", 550)
    env = env_for(smtp_server, tmp_path)
    refusing = {**env, "MAILER_FROM_EMAIL": "n@example.com"}
    second = post.with_name("2026-02-10.md")
    second.write_text(post.read_text(encoding="utf-8").replace("2026-02-09", "2026-02-10"), encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (real_send(post, csv, "--dry-run"), env),
        (real_send(post, csv, "--dry-run", "--json"), env),
        (real_send(post, csv), env),
        (real_send(post, csv, "--json"), env),
        (real_send(second, csv, "--json"), env),
        (["send", str(post), "--test", "me@example.org"], env),
        (["send", str(post), "--test", "me@example.org", "--json"], env),
        (["send", str(empty), "--to", str(csv), "--yes"], env),
        (["send", str(empty), "--to", str(csv), "--yes", "--json"], env),
        (real_send(post, csv, "--dry-run", "--json"), refusing),
        (real_send(post, csv, "--dry-run"), refusing),
    ]
    transcript = []
    for args, case_env in cases:
        code, out, err = run(args, case_env)
        transcript += [f"=== send {' '.join(args[2:])}: exit {code}", "--- stdout", out, "--- stderr", err]
    got = masked("\n".join(transcript), tmp_path, smtp_server.port)
    assert got == PIN.read_text(encoding="utf-8")
