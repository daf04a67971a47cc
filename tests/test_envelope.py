"""Attribution of bounces: the signed envelope sender (VERP) and the Message-ID name the message's reader.

A real send through the CLI to the test's SMTP server, then what the server saw as MAIL FROM and
Message-ID is read back through the real record.
"""

from __future__ import annotations

import email
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import load_config
from mailer.envelope import (
    ReturnPaths,
    decode_token,
    encode_token,
    from_message_id,
    from_return_path,
    message_tag,
    return_path_tag,
)
from mailer.errors import ConfigError
from mailer.ledger import Ledger
from mailer.tokens import Keyring, load_keyring
from tests.publisher import env_for
from tests.smtpd import SMTPServer

BOUNCE = "bounce@bounces.aidaily.news"
KEY = "current-key-0123456789abcdef"
OLD_KEY = "older-key-0123456789abcdef"
VERP = re.compile(r"bounce\+([0-9a-f]{36})@bounces\.aidaily\.news")


def _send(server: SMTPServer, tmp_path: Path, post: Path, readers: list[str], **env: str) -> dict[str, str]:
    full = env_for(server, tmp_path, MAILER_SECRET_KEY=KEY, **env)
    (tmp_path / "list.csv").write_text("email\n" + "\n".join(readers) + "\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["send", str(post), "--to", str(tmp_path / "list.csv"), "--yes", "--force"], env=full
    )
    assert result.exit_code == 0, result.output
    return full


def test_each_message_has_its_own_signed_return_path_that_names_its_reader(
    smtp_servers: Callable[..., SMTPServer], tmp_path: Path, post: Path
) -> None:
    smtp_server = smtp_servers(pipelining=True)
    readers = ["ann@example.org", "Bo.Smith@Example.org", "cy@example.net"]
    env = _send(smtp_server, tmp_path, post, readers, MAILER_BOUNCE_ADDRESS=BOUNCE)
    settings = load_config(env=env).settings
    keyring = load_keyring(settings)
    received = smtp_server.wait_for(3)
    assert all(m.pipelined for m in received)  # one MAIL FROM per message, still pipelined
    with Ledger(settings.db_path) as ledger:
        for message in received:
            (rcpt,) = message.rcpt_tos
            assert VERP.fullmatch(message.mail_from), message.mail_from
            assert len(message.mail_from.partition("@")[0]) < 64
            found = from_return_path(ledger, settings, keyring, message.mail_from)
            assert found is not None and found == ("2026-02-09", rcpt.lower())
            # an MTA that lowercases (or uppercases) the local part changes nothing
            assert from_return_path(ledger, settings, keyring, message.mail_from.upper()) == found
            assert from_return_path(ledger, settings, keyring, f"<{message.mail_from}>") == found
            # and the Message-ID names the same reader
            message_id = email.message_from_bytes(message.data)["Message-ID"]
            assert from_message_id(ledger, message_id) == found
    assert len({m.mail_from for m in received}) == 3


def test_without_a_bounce_address_the_sender_is_from_email_and_the_message_id_still_names_the_reader(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    env = _send(smtp_server, tmp_path, post, ["ann@example.org"])
    settings = load_config(env=env).settings
    (message,) = smtp_server.wait_for(1)
    assert message.mail_from == settings.from_email
    with Ledger(settings.db_path) as ledger:
        message_id = email.message_from_bytes(message.data)["Message-ID"]
        assert from_message_id(ledger, message_id) == ("2026-02-09", "ann@example.org")
        # another issue's id with the same tag, or a made-up tag, names no one
        assert from_message_id(ledger, message_id.replace("2026-02-09.", "2026-02-10.")) is None
        assert from_message_id(ledger, "<2026-02-09.00000000000000000000@aidaily.news>") is None
        assert from_message_id(ledger, "<something@else.example>") is None
        # with no bounce address, no return path is taken as one
        assert from_return_path(ledger, settings, load_keyring(settings), message.mail_from) is None


def _flip(token: str, at: int) -> str:
    return token[:at] + ("a" if token[at] != "a" else "b") + token[at + 1 :]


def test_a_forged_or_altered_token_names_no_one() -> None:
    keyring = Keyring(KEY)
    tag = message_tag("2026-02-09", "ann@example.org")
    token = encode_token(tag, keyring)
    assert decode_token(token, keyring) == tag
    for at in range(len(token)):  # any one character changed: the tag or its seal no longer match
        assert decode_token(_flip(token, at), keyring) is None
    assert decode_token(encode_token(tag, Keyring("someone-elses-key-0123456789")), keyring) is None
    # a tag with a seal made for another purpose (an unsubscribe link's key) does not open
    other = (tag + keyring.seal(tag, b"mailer.unsubscribe")[:8]).hex()
    assert decode_token(other, keyring) is None
    for junk in ("", token[:-1], token + "a", "g" + token[1:], "=" * 36, "ä" * 36, " " + token[1:]):
        assert decode_token(junk, keyring) is None


def test_old_keys_still_open_tokens_and_only_the_bounce_address_is_read() -> None:
    old = Keyring(OLD_KEY)
    tag = message_tag("2026-02-09", "ann@example.org")
    address = ReturnPaths(BOUNCE, old).address(tag)
    rotated = Keyring(KEY, [OLD_KEY])
    assert return_path_tag(address, BOUNCE, rotated) == tag
    assert return_path_tag(address, BOUNCE, Keyring(KEY)) is None  # the old key forgotten
    token = VERP.fullmatch(address)[1]  # type: ignore[index]
    for other in (
        f"bounce+{token}@elsewhere.example",
        f"other+{token}@bounces.aidaily.news",
        f"bounce-{token}@bounces.aidaily.news",
        f"bounce+x+{token}@bounces.aidaily.news",
        f"{token}@bounces.aidaily.news",
    ):
        assert return_path_tag(other, BOUNCE, rotated) is None, other


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("bounce+x@bounces.example.com", r"no '\+'"),
        ("b" * 28 + "@bounces.example.com", "at most 27"),
        ("not an address", "not an email address"),
    ],
)
def test_a_bounce_address_without_room_for_the_token_is_refused(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(env={"MAILER_BOUNCE_ADDRESS": value})
    assert "bounce_address" in str(caught.value)
    ok = load_config(env={"MAILER_BOUNCE_ADDRESS": "B" * 27 + "@Bounces.Example.com"}).settings
    assert (
        len(ReturnPaths(ok.bounce_address, Keyring(KEY)).address(message_tag("i", "a@b.c")).partition("@")[0])
        == 64
    )
