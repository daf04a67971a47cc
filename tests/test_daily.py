"""Running it daily: the systemd units in examples/systemd/ and the cron line in docs/sending.md are valid,
and the commands in them, run as systemd or cron would run them, send today's post and serve its links."""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from http.client import HTTPConnection
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.clock import DAYTIME

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "examples" / "systemd"
UNIT_NAMES = ["mailer-send.service", "mailer-send.timer", "mailer-serve.service"]
BOUNCE_UNITS = ["mailer-bounces.service", "mailer-bounces.timer"]
SITE_PATH, MAILER_PATH = "/srv/newsletter", "/opt/mailer/bin/mailer"  # as the files and docs name them
MAILER = Path(sys.executable).parent / "mailer"  # the command this test run installed
READERS = ["ann@example.com", "bob@example.org"]
SECRET = "a-signing-key-from-secrets-env-0123456789"


def _unit(name: str) -> dict[str, str]:
    """The settings of one unit file as `Section.Key` -> value (the last one wins, as in systemd)."""
    values, section = {}, ""
    for line in (UNITS / name).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            values[f"{section}.{key.strip()}"] = value.strip()
    return values


def _here(text: str, site: Path) -> str:
    """A path of the files, moved to where this test made the site and installed mailer."""
    return text.replace(MAILER_PATH, str(MAILER)).replace(SITE_PATH, str(site))


def _zone() -> str:
    """The time zone the timer fires in: the last word of its OnCalendar."""
    return _unit("mailer-send.timer")["Timer.OnCalendar"].split()[-1]


def _environment_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)
    return {name: value for name, value in pairs}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site made by `mailer init` where the publisher lives, with two readers.

    `init` dates its sample post today in the machine's zone (written into mailer.toml) and the send looks
    for the post dated today there: the publisher lives in DAYTIME (tests/clock.py), where midnight cannot
    fall between the two. In the timer's zone (Asia/Shanghai) a run at 16:00 UTC sent nothing.
    """
    folder = tmp_path / "srv" / "newsletter"
    made = subprocess.run(
        [str(MAILER), "init", str(folder)],
        env={"PATH": "/usr/bin:/bin", "TZ": DAYTIME},
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    assert f'timezone = "{DAYTIME}"' in (folder / "mailer.toml").read_text(encoding="utf-8")
    with open(folder / "subscribers.csv", "a", encoding="utf-8") as out:
        out.writelines(f"{a},\n" for a in READERS)
    (folder / "secrets.env").write_text(f"MAILER_SECRET_KEY={SECRET}\n", encoding="utf-8")
    return folder


def _cron_job(page: str) -> tuple[dict[str, str], str, str, str]:
    """The crontab block of docs/PAGE: its VARIABLE= lines, and its one job's minute, hour and command."""
    docs = (ROOT / "docs" / page).read_text(encoding="utf-8")
    [block] = re.findall(r"```cron\n(.*?)```", docs, re.DOTALL)
    variables = dict(line.split("=", 1) for line in block.splitlines() if re.match(r"^[A-Z_]+=", line))
    [job] = [
        line for line in block.splitlines() if line and not line.startswith("#") and "=" not in line[:12]
    ]
    minute, hour, *_, command = job.split(maxsplit=5)
    return variables, minute, hour, command


def _run_cron(command: str, site: Path, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a crontab command as cron would for the user newsletter: sh -c in its home, cron's bare env."""
    home = site.parent.parent
    env = {"HOME": str(home), "LOGNAME": "newsletter", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["/bin/sh", "-c", _here(command, site)],
        cwd=home,
        env={**env, **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _outbox(site: Path) -> list[Path]:
    new = site / ".mailer" / "outbox" / "new"
    return sorted(new.iterdir()) if new.exists() else []


def _run_service(name: str, site: Path) -> subprocess.CompletedProcess[str]:
    """Run a service's ExecStart as systemd would: its folder, its EnvironmentFile, systemd's bare PATH."""
    unit = _unit(name)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env.update(_environment_file(Path(_here(unit["Service.EnvironmentFile"], site))))
    return subprocess.run(
        shlex.split(_here(unit["Service.ExecStart"], site)),
        cwd=_here(unit["Service.WorkingDirectory"], site),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_files_pass_systemd_analyze_verify(site: Path, tmp_path: Path) -> None:
    installed = tmp_path / "units"
    installed.mkdir()
    for name in UNIT_NAMES + BOUNCE_UNITS:
        (installed / name).write_text(
            _here((UNITS / name).read_text(encoding="utf-8"), site), encoding="utf-8"
        )
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(installed / n) for n in UNIT_NAMES + BOUNCE_UNITS)],
        capture_output=True,
        text=True,
    )
    ours = [line for line in (verify.stdout + verify.stderr).splitlines() if "mailer-" in line]
    assert verify.returncode == 0 and not ours, verify.stdout + verify.stderr
    calendar = subprocess.run(
        ["systemd-analyze", "calendar", _unit("mailer-send.timer")["Timer.OnCalendar"]],
        capture_output=True,
        text=True,
    )
    assert calendar.returncode == 0 and _zone() in calendar.stdout, calendar.stderr
    every = _unit("mailer-bounces.timer")["Timer.OnCalendar"]
    calendar = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=2", every], capture_output=True, text=True
    )
    assert calendar.returncode == 0, calendar.stderr
    assert re.search(r"Next elapse: .* \d\d:\d[05]:00", calendar.stdout), calendar.stdout  # every 15 minutes


def test_the_units_are_a_daily_oneshot_send_and_a_served_app_stopped_like_ctrl_c() -> None:
    send, timer, serve = (_unit(n) for n in UNIT_NAMES)
    assert send["Service.Type"] == "oneshot"  # no start timeout cuts a long send short
    assert re.fullmatch(r"\*-\*-\* \d\d:\d\d:\d\d [\w/+-]+", timer["Timer.OnCalendar"])
    assert ZoneInfo(_zone())
    assert send["Service.KillSignal"] == serve["Service.KillSignal"] == "SIGINT"
    assert send["Service.EnvironmentFile"] == serve["Service.EnvironmentFile"]  # one signing key for both
    assert timer["Install.WantedBy"] == "timers.target"


def test_the_send_service_sends_todays_post_once(site: Path) -> None:
    first = _run_service("mailer-send.service", site)
    assert first.returncode == 0, first.stderr
    assert len(_outbox(site)) == len(READERS)
    again = _run_service("mailer-send.service", site)  # the timer firing twice, or Persistent= after a boot
    assert again.returncode == 0, again.stderr
    assert len(_outbox(site)) == len(READERS)
    assert not (site / ".mailer" / "secret.key").exists()  # the key came from secrets.env


def test_the_serve_service_answers_the_sends_links_and_stops_on_its_kill_signal(site: Path) -> None:
    assert _run_service("mailer-send.service", site).returncode == 0
    message = _outbox(site)[0].read_text(encoding="utf-8")
    token = re.search(r"/unsubscribe\?t=([^>\s]+)>", message)
    assert token, message
    unit = _unit("mailer-serve.service")
    argv = shlex.split(_here(unit["Service.ExecStart"], site))
    argv[argv.index("--port") + 1] = "0"  # 8080 may be taken on this machine; any free port
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env.update(_environment_file(Path(_here(unit["Service.EnvironmentFile"], site))))
    proc = subprocess.Popen(
        argv, cwd=_here(unit["Service.WorkingDirectory"], site), env=env, stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        listening = re.match(r"Serving on http://127\.0\.0\.1:(\d+)/", lines.get(timeout=60))
        assert listening
        conn = HTTPConnection("127.0.0.1", int(listening[1]), timeout=30)
        try:
            conn.request(
                "POST",
                f"/unsubscribe?t={token[1]}",
                body=b"List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert conn.getresponse().status == 200  # the same key as the send: from the same secrets.env
        finally:
            conn.close()
        proc.send_signal(signal.Signals[unit["Service.KillSignal"]])
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Stopped." in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_bounces_service_reads_the_sites_maildir_once(site: Path) -> None:
    """The service with the mailbox set as docs/bounces.md says: in mailer.toml, before any table."""
    bounces = site / "bounces"
    for sub in ("new", "cur", "tmp"):
        (bounces / sub).mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "bounces" / "postfix.eml", bounces / "new" / "1.dsn")
    toml = site / "mailer.toml"
    toml.write_text('bounce_maildir = "bounces"\n' + toml.read_text(encoding="utf-8"), encoding="utf-8")
    unit = _unit("mailer-bounces.service")
    assert (
        unit["Service.Type"] == "oneshot"
        and unit["Service.User"] == _unit("mailer-send.service")["Service.User"]
    )
    assert unit["Service.EnvironmentFile"] == _unit("mailer-send.service")["Service.EnvironmentFile"]
    first = _run_service("mailer-bounces.service", site)
    assert first.returncode == 0, first.stderr
    # the site's sends went to its outbox, so the DSN's reader was never mailed: read, marked, and ignored
    assert first.stdout == "new/1.dsn: dsn: gone@example.net: ignored: never mailed by mailer\n"
    assert os.listdir(bounces / "cur") == ["1.dsn:2,S"]
    again = _run_service("mailer-bounces.service", site)
    assert again.returncode == 0 and again.stdout == "", again.stderr


def test_the_cron_line_for_bounces_in_the_docs_reads_the_mailbox(site: Path) -> None:
    _, minute, hour, command = _cron_job("bounces.md")
    assert (minute, hour) == ("*/15", "*") and "%" not in command
    bounces = site / "bounces"
    for sub in ("new", "cur", "tmp"):
        (bounces / sub).mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "bounces" / "qmail.eml", bounces / "new" / "1.qmail")
    toml = site / "mailer.toml"
    toml.write_text('bounce_maildir = "bounces"\n' + toml.read_text(encoding="utf-8"), encoding="utf-8")
    ran = _run_cron(command, site, {})
    assert ran.returncode == 0, ran.stderr
    assert os.listdir(bounces / "cur") == ["1.qmail:2,S"]


def test_the_cron_line_in_the_docs_sends_todays_post(site: Path) -> None:
    variables, minute, hour, command = _cron_job("sending.md")
    assert variables["CRON_TZ"] == _zone() and (minute, hour) == ("0", "7")  # the docs' 07:00, one zone
    assert "%" not in command  # cron turns % into a newline
    ran = _run_cron(command, site, variables)
    log = site / "send.log"
    said = log.read_text(encoding="utf-8") if log.exists() else f"no {log}"
    assert ran.returncode == 0 and re.search(r"sent\s+2\b", said), ran.stderr + said
    assert len(_outbox(site)) == len(READERS)
