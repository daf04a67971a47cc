"""The benchmark script runs in its quick mode, prints its table, and leaves no process or file behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def test_quick_run_prints_every_section(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--skip-mailmerge", "--json", str(out)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        table, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
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
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--skip-mailmerge", "--messages", "20000"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = ""
        deadline = time.monotonic() + 60
        while "... send" not in seen and time.monotonic() < deadline:
            seen += proc.stdout.read(1)
        assert "... send" in seen, seen
        deadline = time.monotonic() + 30
        while len(_group_members(proc.pid)) < 3 and time.monotonic() < deadline:  # bench, sink, a sender
            time.sleep(0.05)
        assert len(_group_members(proc.pid)) >= 3
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    deadline = time.monotonic() + 10
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_members(proc.pid) == []
    assert list((tmp_path / "tmp").iterdir()) == []
