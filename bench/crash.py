"""Stop real sends at random points (kill -9, SIGTERM) and count what readers got after a rerun.

    .venv/bin/python bench/crash.py                         # 20 runs per stop, at 1 and 4 connections
    .venv/bin/python bench/crash.py --runs 5 --readers 60   # a quicker look
    .venv/bin/python bench/crash.py --json out.json

Each run: a fresh folder and a fresh aiosmtpd server on 127.0.0.1 (tests/smtpd.py, answering the final "."
after --delay seconds), `mailer send` as a real process; after a random number of delivered messages (and a
random fraction of one message more) the process gets the signal; then the same command runs again to the
end. Per run it counts readers lost (no copy), the most copies one reader got and the extra copies in all,
and notes both exit codes. Minutes, not seconds: this is why it is not in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import publisher  # noqa: E402
from tests.smtpd import SMTPServer  # noqa: E402

POST = ROOT / "examples" / "2026-02-09.md"
MODES = ("kill -9", "SIGTERM", "SIGTERM+INT")  # the last: SIGTERM, then SIGINT during the clean stop


@dataclass
class Run:
    """One stopped send and its rerun."""

    mode: str
    connections: int
    stopped_after: int  # messages the server had taken when the signal was sent
    stop_exit: int
    rerun_exit: int
    lost: int
    max_copies: int
    extra: int


def one_run(mode: str, connections: int, readers: int, delay: float, rng: random.Random) -> Run:
    emails = [f"reader{i}@example.com" for i in range(readers)]
    folder = Path(tempfile.mkdtemp(prefix="mailer-crash-"))
    server = SMTPServer().start()
    try:
        csv = folder / "subs.csv"
        csv.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
        env = {
            **os.environ,
            "MAILER_SMTP_HOST": server.host,
            "MAILER_SMTP_PORT": str(server.port),
            "MAILER_SMTP_SECURITY": "none",
            "MAILER_DATA_DIR": str(folder / "state"),
            "MAILER_RETRY_DELAY": "0.05",
            "MAILER_OFFLINE": "1",
            "MAILER_SECRET_KEY": "crash-bench-key-0123456789abcdef",
            **publisher.ENV,  # settings that pass the pre-send checks
        }
        args = [sys.executable, "-m", "mailer", "send", str(POST), "--to", str(csv), "--yes", "--force"]
        args += ["--connections", str(connections)]
        server.delay(delay)
        proc = subprocess.Popen(args, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = rng.randint(1, readers * 3 // 4)
        server.wait_for(target, timeout=120)
        time.sleep(rng.uniform(0, delay * 2))  # a random point inside the next message, not just after one
        stopped_after = len(server.messages)
        proc.send_signal(signal.SIGKILL if mode == "kill -9" else signal.SIGTERM)
        if mode == "SIGTERM+INT":
            time.sleep(rng.uniform(0, delay * 2))
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        server.delay(0)
        rerun = subprocess.run(args, env=env, cwd=folder, capture_output=True, timeout=300)
        got = Counter(r for m in server.messages for r in m.rcpt_tos)
        return Run(
            mode,
            connections,
            stopped_after,
            proc.returncode,
            rerun.returncode,
            lost=sum(1 for e in emails if got[e] == 0),
            max_copies=max(got[e] for e in emails),
            extra=sum(max(got[e] - 1, 0) for e in emails),
        )
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def summarize(runs: list[Run]) -> list[str]:
    lines = [
        f"{'stop':<11} {'conns':>5} {'runs':>4} {'lost':>5} {'max copies':>10} {'extra':>6} "
        f"{'runs w/ extra':>13}  exit codes (stop -> rerun)"
    ]
    for mode in MODES:
        for connections in sorted({r.connections for r in runs}):
            group = [r for r in runs if r.mode == mode and r.connections == connections]
            if not group:
                continue
            codes = Counter(f"{r.stop_exit}->{r.rerun_exit}" for r in group)
            lines.append(
                f"{mode:<11} {connections:>5} {len(group):>4} {sum(r.lost for r in group):>5} "
                f"{max(r.max_copies for r in group):>10} {sum(r.extra for r in group):>6} "
                f"{sum(1 for r in group if r.extra):>13}  "
                + ", ".join(f"{code} x{n}" for code, n in sorted(codes.items()))
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="runs per signal and connection count")
    parser.add_argument("--connections", default="1,4", help="comma-separated connection counts")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--readers", type=int, default=120)
    parser.add_argument(
        "--delay", type=float, default=0.01, help="seconds before each reply to the final '.'"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, help="write every run here")
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    runs: list[Run] = []
    for mode in opts.modes.split(","):
        for connections in (int(c) for c in opts.connections.split(",")):
            for i in range(opts.runs):
                run = one_run(mode, connections, opts.readers, opts.delay, rng)
                runs.append(run)
                print(
                    f"{mode} x{connections} #{i + 1}: stopped after {run.stopped_after}, exit {run.stop_exit}"
                    f" -> {run.rerun_exit}, lost {run.lost}, max {run.max_copies}, extra {run.extra}",
                    file=sys.stderr,
                    flush=True,
                )
    print("\n".join(summarize(runs)))
    if opts.json:
        opts.json.write_text(json.dumps([asdict(r) for r in runs], indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
