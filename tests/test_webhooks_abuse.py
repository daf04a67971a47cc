"""The three webhook endpoints of one running `mailer serve` under abuse: sizes, bodies, types, floods.

Every refusal must be a 4xx with one `refused` line in serve's log (no traceback) and change nothing; genuine
reports sent in the middle of a flood must each be recorded exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from tests import aws
from tests.aws import GOOD, TOPIC, Signer
from tests.conftest import ROOT
from tests.served import Served, send_issue, sent_and_served, serving
from tests.smtpd import HOST

READERS = [f"flood{i}@example.net" for i in range(30)]
POSTMARK = ("postmark", "pm-" + "x7" * 12)
MAILGUN_KEY = "key-" + "f00d" * 8
JSON = "application/json"
PATHS = ("/webhooks/ses", "/webhooks/postmark", "/webhooks/mailgun")


@dataclass
class All:
    served: Served
    sns: aws.FakeSNS
    signer: Signer

    def ses_bounce(self, reader: str) -> bytes:
        sent = self.served.sent[reader]
        payload = aws.ses_bounce([{"emailAddress": reader, "status": "5.1.1"}], source=sent.return_path)
        return aws.as_body(self.signer.sign(aws.notification(payload, self.sns.url(GOOD))))

    def mailgun(self, reader: str, key: str = MAILGUN_KEY, event: str = "failed") -> bytes:
        stamp, token = str(int(time.time())), secrets.token_hex(25)
        signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
        data: dict[str, Any] = {
            "event": event,
            "severity": "permanent",
            "id": secrets.token_urlsafe(16),
            "timestamp": time.time(),
            "recipient": reader,
            "delivery-status": {"code": 550, "message": "5.1.1 no such user"},
        }
        if reader in self.served.sent:
            data["message"] = {"headers": {"message-id": self.served.sent[reader].message_id.strip("<>")}}
        body = {"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": data}
        return json.dumps(body).encode()


def auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def postmark(email: str, kind: str = "HardBounce") -> bytes:
    return json.dumps(
        {
            "RecordType": "Bounce",
            "ID": secrets.randbelow(10**15),
            "Type": kind,
            "Email": email,
            "Details": "550 5.1.1",
        }
    ).encode()


@pytest.fixture(scope="module")
def every(tmp_path_factory: pytest.TempPathFactory) -> Iterator[All]:
    root = tmp_path_factory.mktemp("webhook-abuse")
    signer = Signer.make()
    with aws.fake_sns(root / "tls", {GOOD: signer.pem}) as sns:
        env = {
            "MAILER_SES_TOPIC_ARNS": TOPIC,
            "MAILER_SNS_HOSTS": sns.host,
            "SSL_CERT_FILE": str(sns.tls.ca),
            "MAILER_POSTMARK_WEBHOOK_USER": POSTMARK[0],
            "MAILER_POSTMARK_WEBHOOK_PASSWORD": POSTMARK[1],
            "MAILER_MAILGUN_WEBHOOK_KEY": MAILGUN_KEY,
        }
        with sent_and_served(root, READERS, **env) as served:
            yield All(served, sns, signer)


def refusals(served: Served, since: int) -> list[str]:
    return [line for line in served.log_lines()[since:] if "refused" in line]


def test_bodies_over_256_kib_are_refused_on_every_endpoint(every: All) -> None:
    before, lines = every.served.state(), len(every.served.log_lines())
    for path in PATHS:
        body = b'{"padding": "' + b"x" * (256 * 1024) + b'"}'
        status, _ = every.served.post(path, body, JSON, auth(*POSTMARK))
        assert status == 413, path
    assert every.served.state() == before
    assert "Traceback" not in "\n".join(every.served.log_lines()[lines:])


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"a": 1,}',
        b"\xff\xfe{}",
        b"[" * 20_000 + b"]" * 20_000,
        b'{"x": Infinity}',
        b"null",
        b'"text"',
    ],
    ids=[
        "empty",
        "open brace",
        "trailing comma",
        "not UTF-8",
        "deep nesting",
        "Infinity",
        "null",
        "a string",
    ],
)
def test_malformed_json_is_refused_on_every_endpoint(every: All, body: bytes) -> None:
    before, lines = every.served.state(), len(every.served.log_lines())
    statuses = [every.served.post(path, body, JSON, auth(*POSTMARK))[0] for path in PATHS]
    assert all(400 <= status < 500 for status in statuses), statuses
    assert len(refusals(every.served, lines)) == 3
    assert every.served.state() == before


@pytest.mark.parametrize(
    "ctype",
    [
        "",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/html",
        "application/xml",
    ],
)
def test_other_content_types_get_415(every: All, ctype: str) -> None:
    before = every.served.state()
    bodies = [every.ses_bounce(READERS[0]), postmark(READERS[0]), every.mailgun(READERS[0])]
    for path, body in zip(PATHS, bodies, strict=True):
        assert every.served.post(path, body, ctype, auth(*POSTMARK))[0] == 415, (path, ctype)
    assert every.served.state() == before


def test_unknown_webhook_paths_are_404_and_logged_in_one_clean_line(every: All) -> None:
    paths = [
        "/webhooks/sendgrid",
        "/webhooks/",
        "/webhooks/ses/x",
        "/webhooks/SES",
        "/webhooks/ses%00",
        "/webhooks/x%0A2026-12-01%2000:00:00,000%20mailer.webhooks%20INFO%20forged%20line",
        "/webhooks/%1B[31mred",
    ]
    for path in paths:
        lines = len(every.served.log_lines())
        assert every.served.post(path, b"{}", JSON)[0] == 404, path
        new = every.served.log_lines()[lines:]
        assert len(new) == 1 and "refused (404)" in new[0], (path, new)
        assert not any(ord(c) < 32 or ord(c) == 127 for c in new[0]), new[0]


def test_a_chunked_body_is_read_whole(every: All) -> None:
    reader = READERS[1]
    body = every.mailgun(reader)
    conn = HTTPConnection(HOST, every.served.port, timeout=60)
    try:
        conn.request(
            "POST", "/webhooks/mailgun", body=iter([body[:100], body[100:]]), headers={"Content-Type": JSON}
        )
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (200, b"1 new, 0 seen before, 0 ignored\n")
    finally:
        conn.close()
    assert every.served.suppressed(reader) is not None


@pytest.mark.parametrize("esp", ["postmark", "mailgun"])
def test_reports_about_addresses_never_mailed_are_ignored(every: All, esp: str) -> None:
    stranger = f"stranger-{esp}@example.org"
    body = postmark(stranger) if esp == "postmark" else every.mailgun(stranger)
    before = every.served.state()
    status, answer = every.served.post(f"/webhooks/{esp}", body, JSON, auth(*POSTMARK))
    assert (status, answer) == (200, b"0 new, 0 seen before, 1 ignored\n")
    assert every.served.state() == before


def test_a_flood_of_forgeries_with_genuine_reports_in_it(every: All) -> None:
    """900 requests from 24 threads: genuine reports (each SES one posted three times) among forgeries."""
    genuine = READERS[10:30]
    forger = Signer.make()
    requests: list[tuple[str, bytes, dict[str, str], str]] = []  # path, body, headers, what it is
    for i, reader in enumerate(genuine):
        if i % 2:
            requests += [("/webhooks/ses", every.ses_bounce(reader), {}, "genuine")] * 3
        else:
            requests.append(("/webhooks/mailgun", every.mailgun(reader), {}, "genuine"))
    victim = READERS[2]
    sent = every.served.sent[victim]
    forged_ses = aws.ses_bounce([{"emailAddress": victim, "status": "5.1.1"}], source=sent.return_path)
    forged_ses_body = aws.as_body(forger.sign(aws.notification(forged_ses, every.sns.url(GOOD))))
    while len(requests) < 900:
        n = len(requests)
        requests += [
            ("/webhooks/ses", forged_ses_body, {}, "forged"),
            ("/webhooks/mailgun", every.mailgun(victim, key="key-guess"), {}, "forged"),
            ("/webhooks/postmark", postmark(victim), auth("postmark", f"guess{n}"), "forged"),
            ("/webhooks/ses", b'{"Type": "Notification"}', {}, "forged"),
        ]
    ctype = {"/webhooks/ses": "text/plain; charset=UTF-8"}
    lines = len(every.served.log_lines())

    def post(item: tuple[str, bytes, dict[str, str], str]) -> tuple[str, int]:
        path, body, headers, what = item
        return what, every.served.post(path, body, ctype.get(path, JSON), headers)[0]

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(post, requests))
    counts = Counter(answers)
    forged = sum(1 for _, _, _, what in requests if what == "forged")
    assert counts[("genuine", 200)] == len([r for r in requests if r[3] == "genuine"]), counts
    assert (
        sum(n for (what, status), n in counts.items() if what == "forged" and 400 <= status < 500) == forged
    )
    assert len(refusals(every.served, lines)) == forged
    for reader in genuine:
        assert len(every.served.bounces(reader)) == 1, reader
        assert every.served.suppressed(reader) is not None
    assert every.served.suppressed(victim) is None and every.served.bounces(victim) == []
    assert every.served.request("GET", "/healthz") == 200


def test_a_serve_with_no_esp_configured_has_no_webhooks(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("no-webhooks")
    settings, sent = send_issue(root, ["only@example.net"])
    with serving(root, sent, **settings) as served:
        for path in PATHS:
            assert served.post(path, b"{}", JSON)[0] == 404, path
        assert served.request("GET", "/healthz") == 200


def test_the_webhook_bench_runs_and_cleans_up(tmp_path: Path) -> None:
    """bench/webhooks.py --quick: its six rows, every request answered as expected, no folder left behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "webhooks.py"), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 6 and "genuine (recorded)" in rows[4] and "forged (refused)" in rows[5], rows
    assert list(tmp_path.iterdir()) == []
