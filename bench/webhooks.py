"""How long `mailer serve` takes to check an ESP webhook: SNS signature checks, and requests through serve.

    .venv/bin/python bench/webhooks.py            # about half a minute
    .venv/bin/python bench/webhooks.py --quick    # seconds (the smoke test)

Everything runs on 127.0.0.1: a throwaway CA and SNS signing certificate (tests/aws.py), a local HTTPS server
for it, a temporary state folder whose record says the readers were mailed, and a real `mailer serve` that
trusts the CA through SSL_CERT_FILE. Figures are medians (or totals over many requests) on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailer import sns  # noqa: E402
from mailer.config import Settings  # noqa: E402
from mailer.ledger import Ledger  # noqa: E402
from tests import aws  # noqa: E402

HOST = "127.0.0.1"


def per_call(fn: Callable[[], object], count: int) -> float:
    """Median microseconds of fn over `count` calls, in 5 batches."""
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(max(1, count // 5)):
            fn()
        batches.append((time.perf_counter() - start) / max(1, count // 5))
    return statistics.median(batches) * 1e6


def prefill(data_dir: Path, readers: list[str]) -> None:
    """A record saying one issue went to every reader (what a send would have written)."""
    with Ledger(Settings(data_dir=data_dir).db_path) as ledger:
        ledger.start_issue("2026-02-09", "bench", "Bench")
        ledger.record_outcomes("2026-02-09", [(r, "sent", 250, "ok") for r in readers])


def post_all(port: int, bodies: list[bytes], threads: int) -> tuple[float, list[int]]:
    def post(body: bytes) -> int:
        conn = HTTPConnection(HOST, port, timeout=60)
        try:
            conn.request("POST", "/webhooks/ses", body=body, headers={"Content-Type": "text/plain"})
            answer = conn.getresponse()
            answer.read()
            return answer.status
        finally:
            conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(post, bodies))
    return time.perf_counter() - start, statuses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, seconds in all")
    args = parser.parse_args(argv)
    verifies, requests = (200, 40) if args.quick else (5000, 1000)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="mailer-bench-webhooks-") as tmp:
        root = Path(tmp)
        signer = aws.Signer.make()
        with aws.fake_sns(root / "tls", {aws.GOOD: signer.pem}) as fake:
            os.environ["SSL_CERT_FILE"] = str(fake.tls.ca)
            payload = aws.ses_bounce([{"emailAddress": "a@example.net", "status": "5.1.1"}])
            for version in ("1", "2"):
                message = signer.sign(aws.notification(payload, fake.url(aws.GOOD)), version)
                verifier = sns.Verifier(frozenset({aws.TOPIC}), fake.host)
                start = time.perf_counter()
                verifier.verify(message)
                cold = (time.perf_counter() - start) * 1e3
                warm = per_call(lambda v=verifier, m=message: v.verify(m), verifies)  # type: ignore[misc]
                rows.append((f"SNS verify, SignatureVersion {version}, certificate cached", f"{warm:.0f} µs"))
                rows.append(
                    (
                        f"SNS verify, SignatureVersion {version}, first (fetches the certificate)",
                        f"{cold:.1f} ms",
                    )
                )

            readers = [f"reader{i}@example.net" for i in range(requests)]
            prefill(root / "state", readers)
            env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
            env.update(
                MAILER_DATA_DIR=str(root / "state"),
                MAILER_SES_TOPIC_ARNS=aws.TOPIC,
                MAILER_SNS_HOSTS=fake.host,
                MAILER_SECRET_KEY=secrets.token_urlsafe(32),  # the record holds sent issues: no key made
                PYTHONUNBUFFERED="1",
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "mailer", "serve", "--host", HOST, "--port", "0"],
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            try:
                assert proc.stdout is not None
                port = int(re.search(rb":(\d+)/", proc.stdout.readline())[1])  # type: ignore[index]
                forger = aws.Signer.make()
                genuine = [
                    aws.as_body(
                        signer.sign(
                            aws.notification(aws.ses_bounce([{"emailAddress": r}]), fake.url(aws.GOOD))
                        )
                    )
                    for r in readers
                ]
                forged = [
                    aws.as_body(
                        forger.sign(
                            aws.notification(aws.ses_bounce([{"emailAddress": r}]), fake.url(aws.GOOD))
                        )
                    )
                    for r in readers
                ]
                for name, bodies, want in (
                    ("genuine (recorded)", genuine, 200),
                    ("forged (refused)", forged, 403),
                ):
                    elapsed, statuses = post_all(port, bodies, threads=8)
                    assert statuses == [want] * len(bodies), set(statuses)
                    rows.append(
                        (
                            f"{len(bodies)} {name} SES notifications, 8 clients",
                            f"{len(bodies) / elapsed:.0f} req/s, {elapsed / len(bodies) * 1e3:.1f} ms each",
                        )
                    )
            finally:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=30)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
