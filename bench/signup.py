"""How long a signup takes through `mailer serve`, and whether its time tells anything about the address.

    .venv/bin/python bench/signup.py            # about half a minute
    .venv/bin/python bench/signup.py --quick    # seconds (the smoke test)

A real `mailer serve` on 127.0.0.1 with its outbox as the transport and a temporary state folder whose
stored list already holds the "subscribed" and "suppressed" addresses. Requests of each kind (new address,
subscribed, suppressed, waiting for its link, honeypot) are interleaved, each round in another order, so that
load on the machine, and the mailing thread's work after a request that queued a link, fall on all of them
alike. The table gives the median and 90th percentile per kind, then the confirmation itself: the time from a
form POST until its message is in the outbox.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
KINDS = ("new", "subscribed", "suppressed", "waiting", "honeypot")


def post(port: int, path: str, fields: dict[str, str]) -> tuple[float, int]:
    """Seconds for one form POST (connection included, as a browser's), and its status."""
    body = urlencode(fields).encode()
    start = time.perf_counter()
    conn = HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        answer = conn.getresponse()
        answer.read()
        return time.perf_counter() - start, answer.status
    finally:
        conn.close()


def mailer(*args: str, env: dict[str, str], cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "mailer", *args], env=env, cwd=cwd, check=True, capture_output=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, seconds in all")
    args = parser.parse_args(argv)
    rounds = 10 if args.quick else 200
    with tempfile.TemporaryDirectory(prefix="mailer-bench-signup-") as tmp:
        root = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
        env.update(MAILER_DATA_DIR=str(root / "state"), MAILER_OFFLINE="1", MAILER_SIGNUP_IP_LIMIT="0",
                   MAILER_SIGNUP_ADDRESS_LIMIT="0", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")  # fmt: skip
        listed = [f"sub{i}@example.org" for i in range(rounds)] + [
            f"gone{i}@example.org" for i in range(rounds)
        ]
        (root / "list.csv").write_text("email\n" + "\n".join(listed) + "\n", encoding="utf-8")
        mailer("subscribers", "import", str(root / "list.csv"), env=env, cwd=root)
        (root / "gone.txt").write_text("\n".join(a for a in listed if a.startswith("gone")) + "\n")
        mailer("suppressions", "import", str(root / "gone.txt"), env=env, cwd=root)
        serve = subprocess.Popen(
            [sys.executable, "-m", "mailer", "serve", "--host", HOST, "--port", "0"],
            env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert serve.stdout is not None
            found = re.search(rb"http://127\.0\.0\.1:(\d+)/", serve.stdout.readline())
            if not found:
                print("mailer serve did not start", file=sys.stderr)
                return 1
            port = int(found[1])
            for i in range(rounds):  # the waiting ones: signed up a moment ago, within the resend window
                post(port, "/subscribe", {"email": f"wait{i}@example.org"})
            times: dict[str, list[float]] = {kind: [] for kind in KINDS}
            statuses = set()
            shuffle = random.Random(15).shuffle  # each round in its own order: no kind always follows a mail
            for i in range(rounds):
                order = list(KINDS)
                shuffle(order)
                for kind in order:
                    fields = {
                        "new": {"email": f"new{i}@example.org"},
                        "subscribed": {"email": f"sub{i}@example.org"},
                        "suppressed": {"email": f"gone{i}@example.org"},
                        "waiting": {"email": f"wait{i}@example.org"},
                        "honeypot": {"email": f"bot{i}@example.org", "website": "http://spam.example/"},
                    }[kind]
                    took, status = post(port, "/subscribe", fields)
                    times[kind].append(took)
                    statuses.add(status)
            outbox = root / "state" / "outbox" / "new"
            queued = 4 * rounds  # a link to each waiting, new, subscribed and suppressed address
            deadline = time.perf_counter() + 300
            while len(list(outbox.iterdir())) < queued and time.perf_counter() < deadline:
                time.sleep(0.01)
            expected = queued + 1
            start = time.perf_counter()
            post(port, "/subscribe", {"email": "last@example.org"})
            while len(list(outbox.iterdir())) < expected and time.perf_counter() - start < 120:
                time.sleep(0.001)
            mailed = time.perf_counter() - start
        finally:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
    print(f"signups through mailer serve, {rounds} of each kind, interleaved (statuses {sorted(statuses)})")
    print(f"{'address':<12} {'median ms':>10} {'p90 ms':>8}")
    for kind in KINDS:
        ms = sorted(t * 1000 for t in times[kind])
        print(f"{kind:<12} {statistics.median(ms):>10.2f} {ms[int(len(ms) * 0.9) - 1]:>8.2f}")
    print(f"form POST until the confirmation is in the outbox: {mailed * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
