"""DKIM: messages sent to a real SMTP server verify, and h= covers what RFC 8058 needs signed."""

from __future__ import annotations

import base64
import email
import re
import shutil
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailer.cli import cli
from tests import publisher
from tests.conftest import EXAMPLE
from tests.smtpd import SMTPServer


@pytest.fixture
def key_pair(tmp_path: Path) -> tuple[Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    return path, record


def test_signed_messages_verify_and_cover_the_unsubscribe_headers(
    smtp_server: SMTPServer, tmp_path: Path, key_pair: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    key_file, record = key_pair
    post = tmp_path / "2026-02-09.md"
    shutil.copy(EXAMPLE, post)
    csv = tmp_path / "subs.csv"
    csv.write_text("email,name\nalice@example.com,Alice\nwang@example.cn,王芳\n", encoding="utf-8")
    env = {
        "MAILER_SMTP_HOST": smtp_server.host,
        "MAILER_SMTP_PORT": str(smtp_server.port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_DATA_DIR": str(tmp_path / "state"),
        **publisher.ENV,
        "MAILER_DKIM_KEY_FILE": str(key_file),
        "MAILER_DKIM_SELECTOR": "mail",
    }
    result = CliRunner().invoke(cli, ["send", str(post), "--to", str(csv), "--yes", "--force"], env=env)
    assert result.exit_code == 0, result.output
    assert len(smtp_server.messages) == 2

    def dns(name: bytes, timeout: int = 5) -> bytes:  # the one part that cannot run here: a DNS TXT lookup
        assert name == b"mail._domainkey.aidaily.news."
        return record

    for received in smtp_server.messages:
        assert dkim.verify(received.data, dnsfunc=dns)
        msg = email.message_from_bytes(received.data)
        signature = re.sub(r"\s+", "", str(msg["DKIM-Signature"]))
        signed = set(re.search(r"h=([^;]+)", signature).group(1).lower().split(":"))  # type: ignore[union-attr]
        assert {
            "from",
            "subject",
            "date",
            "message-id",
            "list-unsubscribe",
            "list-unsubscribe-post",
        } <= signed
        tampered = received.data.replace(
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x"
        )
        assert not dkim.verify(tampered, dnsfunc=dns)
