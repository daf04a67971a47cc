"""The benchmark script runs in its quick mode, prints its table, and leaves no process or file behind."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.conftest import ROOT, examples
from tests.smtpd import SMTPServer

SCRIPT = ROOT / "bench" / "run.py"
HAS_POSTFIX_TOOLS = all(
    os.access(shutil.which(name) or f"/usr/sbin/{name}", os.X_OK) for name in ("smtp-sink", "smtp-source")
)


def _env(tmp_path: Path) -> dict[str, str]:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env["TMPDIR"] = str(tmp)
    return env


def _group_members(pgid: int) -> list[int]:
    """Processes still alive in a process group (the bench's children would stay in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _wait_for_group(pgid: int, done: Callable[[list[int]], bool], timeout: float) -> list[int]:
    """The group's members once `done` holds for them, or at the deadline: the one read the caller checks.

    Reading the group again to assert would race: a sender may end between two reads.
    """
    deadline = time.monotonic() + timeout
    while True:
        members = _group_members(pgid)
        if done(members) or time.monotonic() > deadline:
            return members
        time.sleep(0.05)


def _read_until(proc: subprocess.Popen[bytes], text: bytes, timeout: float) -> bytes:
    """What the process printed on stdout up to `text`, read as it comes, never past the deadline."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        seen += chunk
    return seen


def _bench(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """bench/run.py in a session of its own (its process group is what a terminal's Ctrl-C reaches)."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--skip-mailmerge", *args],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """On the way out of a failed test: nothing of the bench's group outlives it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_quick_run_prints_every_section(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    # --runs 1: the sections and rows are the same at any count (a median of one is the figure); --quick's
    # 3 runs took twice as long for the same verdict. `with` closes the pipes, however the test ends
    with _bench(tmp_path, "--runs", "1", "--json", str(out)) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=600)
        finally:
            _kill(proc)
    table, err = stdout.decode(), stderr.decode(errors="replace")
    assert proc.returncode == 0, err[-3000:]
    rows = json.loads(out.read_text())["rows"]
    sections = {r["section"] for r in rows}
    assert {"start-up", "render", "per subscriber"} <= sections
    for r in rows:
        if r["value"] is not None:
            assert r["value"] > 0, r
        if r["ratio"] is not None:
            assert r["ratio"] > 0 and r["ref_value"] > 0, r
    build = next(r for r in rows if r["section"] == "per subscriber")
    assert build["ref_value"] > build["value"], "the naive EmailMessage should be the slower one"
    if HAS_POSTFIX_TOOLS:
        sends = [r for r in rows if r["section"] == "send" and r["unit"] == "msg/s"]
        assert [r["what"].split(", ")[-1] for r in sends] == ["1 connection", "8 connections"]
        assert all(r["reference"].startswith("smtp-source") for r in sends)
    assert "mailer --help" in table and "MessageFactory.build" in table and "| ratio" in table
    assert list((tmp_path / "tmp").iterdir()) == [], "temporary files left behind"
    assert _group_members(proc.pid) == [], "a server or sender outlived the script"


@pytest.mark.skipif(not HAS_POSTFIX_TOOLS, reason="needs Debian postfix (smtp-sink, smtp-source)")
def test_ctrl_c_stops_servers_and_removes_files(tmp_path: Path) -> None:
    # --only send: Ctrl-C comes during the send, the one part with servers and senders running; the parts
    # before it start none and took two thirds of the test
    with _bench(tmp_path, "--only", "send", "--messages", "20000") as proc:
        try:
            seen = _read_until(proc, b"... send", timeout=300)
            assert b"... send" in seen, seen
            running = _wait_for_group(proc.pid, lambda m: len(m) >= 3, timeout=60)
            assert len(running) >= 3, running  # bench, sink, a sender
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
            _, stderr = proc.communicate(timeout=120)
        finally:
            _kill(proc)
    assert proc.returncode == 130, stderr.decode(errors="replace")[-2000:]
    assert _wait_for_group(proc.pid, lambda m: not m, timeout=30) == []
    assert list((tmp_path / "tmp").iterdir()) == []


# --- the fast paths the benchmark measures, against the plain ones they replace ------------------------

FAST_POST = """---
title: Dots at line starts
date: 2026-02-09
summary: "- .first item starts with a dot"
---
# Dots at line starts

.NET and .env files: this paragraph's first line starts with a dot.

```
.hidden
..two dots
.
```

- .item
"""


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mailer.config import Settings
    from mailer.message import make_factory
    from mailer.post import load_post
    from mailer.render import render_issue

    folder = tmp_path_factory.mktemp("fast")
    post = folder / "2026-02-09.md"
    post.write_text(FAST_POST, encoding="utf-8")
    settings = Settings(data_dir=folder / "state", secret_key="fast-path-secret-key-123")
    return make_factory(render_issue(load_post(post), settings), settings)


def _same_second(make: Callable[[], bytes], other: Callable[[], bytes]) -> tuple[bytes, bytes]:
    """Two builds in the same second (the Date header), retried once across a second boundary."""
    a, b = make(), other()
    if a != b:
        a, b = make(), other()
    return a, b


@given(
    name=st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
    | st.sampled_from([".", "..dot", " .x", "a\r\n.b", "王芳"]),
    city=st.text(max_size=20) | st.just(".Oxford"),
)
@hypothesis_settings(max_examples=examples(60), suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_pieces_the_send_hands_over_are_the_message(factory: Any, name: str, city: str) -> None:
    from mailer.transport import DotStuffer

    email = "ann@example.com"
    pieces = factory.build_pieces(email, name, {"city": city})
    # the example parts take the fast path: their text is shared, only the head and values are personal
    assert sum(map(len, pieces.shared)) > 4 * sum(map(len, pieces.personal))
    assert all(p.count(b"\n") == p.count(b"\r\n") == p.count(b"\r") for p in pieces.personal)
    stuff = DotStuffer()
    fast, slow = _same_second(
        lambda: stuff(factory.build_pieces(email, name, {"city": city})),
        lambda: DotStuffer()(factory.build(email, name, {"city": city})),
    )
    assert fast == slow
    assert b"\r\n.\r\n" not in fast and not fast.startswith(b".\r\n")  # nothing ends DATA early
    plain, back = _same_second(  # both made now: `fast` may be from the second before
        lambda: factory.build(email, name, {"city": city}),
        lambda: _unstuffed(stuff(factory.build_pieces(email, name, {"city": city}))),
    )
    assert back == plain


def _unstuffed(data: bytes) -> bytes:
    """What a receiving server stores of a DATA payload (RFC 5321 4.5.2): each line-initial dot dropped."""
    body = data.replace(b"\r\n..", b"\r\n.")
    return body[1:] if body.startswith(b"..") else body


def test_a_line_starting_with_a_dot_is_doubled_on_the_wire(factory: Any) -> None:
    from mailer.transport import DotStuffer

    data = DotStuffer()(factory.build_pieces("ann@example.com", "Ann"))
    assert b"\r\n..NET and .env" in data and b"\r\n..\r\n" in data and b"\r\n...two dots" in data
    lines = data.split(b"\r\n")
    assert all(line.startswith(b"..") for line in lines if line.startswith(b"."))


@pytest.mark.parametrize("offers", ["lockstep", "pipelining", "chunking"])
def test_ready_runs_before_the_final_dot_and_can_call_the_message_off(
    smtp_servers: Callable[..., SMTPServer], offers: str
) -> None:
    from mailer.config import Settings
    from mailer.transport import SMTPTransport

    server = smtp_servers(pipelining=offers != "lockstep", chunking=offers == "chunking")
    settings = Settings(smtp_host=server.host, smtp_port=server.port, smtp_security="none", smtp_timeout=5.0)
    data = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\n.dot\r\nbody\r\n"
    seen: list[int] = []
    conn = SMTPTransport(settings).connect()
    try:
        outcome = conn.send(
            "a@example.com", "b@example.com", data, ready=lambda: seen.append(len(server.messages))
        )
        assert outcome.ok and seen == [0]  # called once, while the server still had nothing
        first = server.wait_for(1)[0]
        assert first.data.endswith(b"\r\n.dot\r\nbody\r\n")
        assert first.chunks == (2 if offers == "chunking" else 0)  # BDAT: the message, then BDAT 0 LAST

        def refuse() -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            conn.send("a@example.com", "c@example.com", data, ready=refuse)
        assert not conn.connected  # the session was dropped before the "."
        again = conn.send("a@example.com", "d@example.com", data)
        assert again.ok
        got = [r.rcpt_tos for r in server.wait_for(2)]
        assert got == [("b@example.com",), ("d@example.com",)]  # c's message was never delivered
    finally:
        conn.close()


def test_outbox_ready_that_raises_leaves_no_message(tmp_path: Path) -> None:
    from mailer.transport import OutboxTransport

    box = tmp_path / "outbox"

    def refuse() -> None:
        raise RuntimeError("record failed")

    with OutboxTransport(box).connect() as conn:
        with pytest.raises(RuntimeError):
            conn.send("a@example.com", "b@example.com", b"Subject: x\r\n\r\nhi\r\n", ready=refuse)
        assert conn.send("a@example.com", "c@example.com", b"Subject: x\r\n\r\n.hi\r\n").ok
    assert list((box / "tmp").iterdir()) == []
    files = list((box / "new").iterdir())
    assert len(files) == 1 and files[0].read_bytes().endswith(b"\r\n\r\n.hi\r\n")


def test_batched_records_match_the_one_by_one_ones(tmp_path: Path) -> None:
    from mailer.ledger import Ledger
    from tests.record import delivery

    with Ledger(tmp_path / "one.db") as one, Ledger(tmp_path / "many.db") as many:
        for ledger in (one, many):
            ledger.start_issue("i1", "h", "subject")
            ledger.record_outcomes("i1", [("done@example.com", "sent", 250, "ok")])
            ledger.suppress("Gone@Example.com", source="manual")
        outcomes = [
            ("Ann@Example.com", "sent", 250, "2.0.0 queued"),
            ("bo@example.com", "deferred", 451, "later"),
            ("cy@example.com", "failed", 550, "no such user"),
            ("done@example.com", "failed", 550, "too late: already sent"),
        ]
        for outcome in outcomes:  # one statement each (its own transaction) against one executemany
            one.record_outcomes("i1", [outcome])
        many.record_outcomes("i1", outcomes)
        emails = [o[0] for o in outcomes] + ["new@example.com", "gone@example.com"]
        for email in emails:
            a, b = delivery(one, "i1", email), delivery(many, "i1", email)
            assert (a is None) == (b is None), email
            if a is not None and b is not None:
                assert a.outcome() == b.outcome(), email
        suppressed, states = many.states("i1", emails)
        assert suppressed == {"gone@example.com"}
        assert states == {
            "ann@example.com": "sent",
            "bo@example.com": "deferred",
            "cy@example.com": "failed",
            "done@example.com": "sent",
        }
        with pytest.raises(ValueError):
            many.record_outcomes("i1", [("x@example.com", "queued", 0, "")])  # "sending" is in doubt now


@given(st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2, 2**64 - 1]), max_size=3000))
@hypothesis_settings(max_examples=examples(40))
def test_the_compact_duplicate_table_is_a_set(digests: list[int]) -> None:
    from mailer.subscribers import DigestSet

    seen = DigestSet(size=8)  # tiny, so it grows many times
    reference: set[int] = set()
    for digest in digests:
        key = digest or 1  # 0 marks an empty slot: it is stored as 1
        assert seen.add(digest) == (key not in reference)
        reference.add(key)
    assert all(not seen.add(d) for d in digests)


def test_when_the_record_cannot_be_written_nothing_is_delivered(
    smtp_servers: Callable[..., SMTPServer], tmp_path: Path, factory: Any
) -> None:
    from types import MappingProxyType

    from mailer.campaign import Feedback, Report, SendOptions, run_send
    from mailer.config import Settings
    from mailer.errors import SendAborted
    from mailer.ledger import Ledger
    from mailer.stopping import StopSignals
    from mailer.subscribers import Subscriber
    from mailer.transport import SMTPTransport

    class Seen(Feedback):
        report: Report | None = None

        def progress(self, report: Report) -> None:
            self.report = report

    server = smtp_servers(pipelining=True)
    settings = Settings(smtp_host=server.host, smtp_port=server.port, smtp_security="none", smtp_timeout=5.0)
    state = tmp_path / "state"
    feedback = Seen()
    with Ledger(state / "mailer.db") as ledger:
        ledger.suppress("gone@example.com", source="manual")  # skipped first: the feedback sees the report
        ledger.start_issue("i1", "h", "x")
        # the loop's record is open, but the recorder's own connection cannot be: its folder is now a file
        shutil.rmtree(state)
        state.write_text("not a folder")
        readers = ["gone@example.com", *(f"r{i}@example.com" for i in range(3))]
        with pytest.raises(SendAborted, match="cannot record deliveries"):
            run_send(
                issue_id="i1",
                factory=factory,
                transport=SMTPTransport(settings),
                subscribers=[Subscriber(e, "", MappingProxyType({}), n) for n, e in enumerate(readers, 2)],
                ledger=ledger,
                options=SendOptions(connections=2),
                feedback=feedback,
                signals=StopSignals(),
                check_lock=lambda: None,
            )
    report = feedback.report
    assert report is not None and report.suppressed == 1
    # each connection stopped at its first message, the third was never handed out: none went
    assert (report.sent, report.failed, report.in_doubt, report.pending) == (0, 0, 0, 3)
    assert server.messages == []  # no "." was ever sent: the server discarded every message
