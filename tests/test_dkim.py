"""DKIM: messages sent to a real SMTP server verify, and h= covers what RFC 8058 needs signed."""

from __future__ import annotations

import base64
import email
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dkim
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import example, given
from hypothesis import strategies as st

from mailer.cli import cli
from mailer.dkimsign import DkimSigner
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


def _send(
    smtp_server: SMTPServer, tmp_path: Path, key_file: Path, readers: str
) -> tuple[Result, dict[str, str], Path]:
    """`mailer send` of the example post to these CSV rows, signed with this key: its result, env and post."""
    post = tmp_path / "2026-02-09.md"
    shutil.copy(EXAMPLE, post)
    csv = tmp_path / "subs.csv"
    csv.write_text("email,name\n" + readers, encoding="utf-8")
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
    return result, env, post


def test_signed_messages_verify_and_cover_the_unsubscribe_headers(
    smtp_server: SMTPServer, tmp_path: Path, key_pair: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    key_file, record = key_pair
    result, _, _ = _send(smtp_server, tmp_path, key_file, "alice@example.com,Alice\nwang@example.cn,王芳\n")
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


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # one for the layouts below
RECORD = b"v=DKIM1; k=rsa; p=" + base64.b64encode(
    KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
)
SIGNER = DkimSigner(
    "dkim.pem",
    KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ),
    b"mail",
    b"example.org",
)


def _dns(name: bytes, timeout: int = 5) -> bytes:
    assert name == b"mail._domainkey.example.org."
    return RECORD


# one From only: dkimpy refuses a message with two (a From added on the way would fool readers)
_NAMES = [
    "to",
    "SUBJECT",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "Content-Type",
    "X-Mailer",
    "Received",
]
_VALUE = st.text(st.sampled_from("ab =:;<>@.\t"), min_size=1, max_size=30).filter(lambda v: v.strip(" \t"))


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    """A head of signed and unsigned headers, some repeated, with runs of spaces and tabs and folded lines,
    and a body with or without trailing empty lines: what the relaxed/simple forms must be right about."""
    fields = []
    for name in draw(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=8)):
        lines = draw(st.lists(_VALUE, min_size=1, max_size=3))
        space = draw(st.sampled_from(["", " ", "  ", "\t"]))
        tail = draw(st.sampled_from(["", " ", "\t "]))
        fields.append(f"{name}:{space}{lines[0]}" + "".join(f"\r\n {line}" for line in lines[1:]) + tail)
    body = draw(st.sampled_from(["", "text", "text\r\n", "a  b \r\n\r\n\r\n", "\r\n", "x\r\n \r\n"]))
    return ("From: a@example.org\r\n" + "\r\n".join(fields) + "\r\n\r\n" + body).encode()


@given(_messages())
@example(b"From: a@example.org\r\nSubject:\t  hi \r\n  there\t \r\n\r\n")
def test_dkimpy_verifies_every_layout_and_refuses_it_changed(message: bytes) -> None:
    signed = SIGNER(message)
    assert signed.endswith(message)
    assert max(len(line) for line in signed[: -len(message)].split(b"\r\n")) <= 78
    assert dkim.verify(signed, dnsfunc=_dns)
    # a change to the From, or to the body's text, breaks the signature
    assert not dkim.verify(signed.replace(b"From: a@", b"From: b@", 1), dnsfunc=_dns)
    assert not dkim.verify(signed + b"more text\r\n", dnsfunc=_dns)


def _key_file(path: Path, kind: str) -> None:
    if kind == "text":
        path.write_text("not a key\n")
        return
    if kind == "small":  # too small for `cryptography` to make
        run = [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:512",
            "-out",
            str(path),
        ]
        subprocess.run(run, check=True, capture_output=True)
        return
    key: Any = {
        "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
        "encrypted": lambda: KEY,
    }[kind]()
    crypt = serialization.BestAvailableEncryption(b"secret") if kind == "encrypted" else None
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            crypt or serialization.NoEncryption(),
        )
    )


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("text", "not a PEM private key"),
        ("ec", "not an RSA key"),
        ("small", "a 512-bit RSA key; DKIM needs 1024 bits or more"),
        ("encrypted", "the DKIM key is encrypted"),
    ],
)
def test_a_key_that_cannot_sign_stops_the_send_before_anyone_is_mailed(
    smtp_server: SMTPServer, tmp_path: Path, kind: str, said: str
) -> None:
    key_file = tmp_path / "dkim.pem"
    _key_file(key_file, kind)
    result, env, post = _send(smtp_server, tmp_path, key_file, "alice@example.com,Alice\n")
    assert result.exit_code != 0
    assert f"{key_file}: {said}" in result.output, result.output
    assert "Traceback" not in result.output and not smtp_server.messages
    assert "--skip-check dkim" not in result.output  # no skip can make such a key sign
    checked = CliRunner().invoke(cli, ["check", str(post)], env=env)
    assert checked.exit_code == 1
    assert f"{post}: error: dkim: {key_file}: {said}" in checked.output, checked.output
