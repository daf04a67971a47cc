"""Unsubscribe tokens: only the key holder can make one, and the key is kept safely on disk."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
from pathlib import Path

import pytest

from mailer.config import Settings, load_config
from mailer.errors import ConfigError
from mailer.tokens import Keyring, load_keyring, unsubscribe_mailto, unsubscribe_url
from tests.conftest import Heard

KEY = "k" * 32
LIST = "news.example.com"


def test_token_round_trips_and_is_url_safe() -> None:
    ring = Keyring(KEY)
    token = ring.sign("Alice@Example.COM", LIST)
    assert ring.verify(token, LIST) == "alice@example.com"
    assert ring.verify(ring.sign("alice@example.com", LIST), LIST) == "alice@example.com"
    assert all(c.isalnum() or c in "-_." for c in token)
    assert len(token) < 60


def test_unicode_address_round_trips() -> None:
    ring = Keyring(KEY)
    assert ring.verify(ring.sign("用户@例子.中国", LIST), LIST) == "用户@例子.中国"


def test_mac_is_hmac_sha256_with_the_purpose_salt() -> None:
    """An independent computation of the documented construction gives the same token."""
    derived = hmac.new(KEY.encode(), b"mailer.unsubscribe", hashlib.sha256).digest()
    mac = hmac.new(derived, f"{LIST}\0bob@example.com".encode(), hashlib.sha256).digest()[:16]
    b64 = base64.urlsafe_b64encode
    expected = b64(b"bob@example.com").rstrip(b"=") + b"." + b64(mac).rstrip(b"=")
    assert Keyring(KEY).sign("bob@example.com", LIST) == expected.decode()
    # the same key without the salt (a plain HMAC of the message) must not be what we publish
    plain = hmac.new(KEY.encode(), f"{LIST}\0bob@example.com".encode(), hashlib.sha256).digest()
    assert b64(plain[:16]).rstrip(b"=").decode() not in expected.decode()


def _flip(text: str, index: int) -> str:
    c = text[index]
    return text[:index] + ("A" if c != "A" else "B") + text[index + 1 :]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],  # truncated mac
        lambda t: t[:-8],
        lambda t: t.split(".")[0],  # no mac
        lambda t: "." + t.split(".")[1],  # no address
        lambda t: _flip(t, len(t) - 1),  # last mac character changed
        lambda t: _flip(t, 0),  # address changed
        lambda t: t + "A",
        lambda t: t + "=",
        lambda t: t.replace(".", ".."),
        lambda t: " " + t,
        lambda t: t.upper(),
        lambda t: "",
        lambda t: "garbage",
        lambda t: "%%%.%%%",
        lambda t: "a" * 5000,
        lambda t: "\x00" * 30 + "." + "A" * 22,
        lambda t: "w6k." + "A" * 22,  # valid base64 of a non-address
    ],
)
def test_tampered_tokens_do_not_verify(mangle: object) -> None:
    ring = Keyring(KEY)
    token = ring.sign("alice@example.com", LIST)
    bad = mangle(token)  # type: ignore[operator]
    assert bad != token
    assert ring.verify(bad, LIST) is None


def test_forged_address_with_someone_elses_mac_fails() -> None:
    ring = Keyring(KEY)
    alice = ring.sign("alice@example.com", LIST)
    bob = ring.sign("bob@example.com", LIST)
    forged = alice.split(".")[0] + "." + bob.split(".")[1]
    assert ring.verify(forged, LIST) is None


def test_other_list_and_other_key_fail() -> None:
    token = Keyring(KEY).sign("alice@example.com", LIST)
    assert Keyring(KEY).verify(token, "other.example.com") is None
    assert Keyring("z" * 32).verify(token, LIST) is None


def test_non_string_tokens_do_not_raise() -> None:
    ring = Keyring(KEY)
    assert ring.verify(None, LIST) is None  # type: ignore[arg-type]
    assert ring.verify(b"abc.def", LIST) is None  # type: ignore[arg-type]


def test_old_keys_still_verify_and_new_tokens_use_the_current_key() -> None:
    old_token = Keyring("old-key-0123456789").sign("alice@example.com", LIST)
    rotated = Keyring("new-key-0123456789", ["old-key-0123456789"])
    assert rotated.verify(old_token, LIST) == "alice@example.com"
    new_token = rotated.sign("alice@example.com", LIST)
    assert new_token != old_token
    assert Keyring("new-key-0123456789").verify(new_token, LIST) == "alice@example.com"


def test_short_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="too short"):
        load_keyring(Settings(secret_key="short"))
    with pytest.raises(ConfigError, match="old_secret_keys"):
        load_keyring(Settings(secret_key=KEY, old_secret_keys="x" * 20 + ",tiny"))


def test_repr_never_shows_the_key() -> None:
    assert KEY not in repr(Keyring(KEY)) and "k" * 8 not in repr(Keyring(KEY))


def test_key_file_is_made_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state" / "nested")
    said = Heard()
    first = load_keyring(settings, console=said)
    key_file = tmp_path / "state" / "nested" / "secret.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 40
    assert len(said) == 1 and str(key_file) in said[0] and key not in said[0]
    # a second load (e.g. `mailer serve` after `mailer send`) reads the same key and says nothing
    again = Heard()
    second = load_keyring(settings, console=again)
    assert again == []
    token = first.sign("alice@example.com", LIST)
    assert second.verify(token, LIST) == "alice@example.com"
    assert key_file.read_text().strip() == key
    assert [p.name for p in key_file.parent.iterdir()] == ["secret.key"]  # no temp files left


def test_two_fresh_folders_get_different_keys(tmp_path: Path) -> None:
    a = load_keyring(Settings(data_dir=tmp_path / "a"))
    b = load_keyring(Settings(data_dir=tmp_path / "b"))
    assert b.verify(a.sign("alice@example.com", LIST), LIST) is None


def test_configured_key_wins_over_the_key_file(tmp_path: Path) -> None:
    from_file = load_keyring(Settings(data_dir=tmp_path))
    configured = load_keyring(Settings(data_dir=tmp_path, secret_key=KEY))
    token = configured.sign("alice@example.com", LIST)
    assert Keyring(KEY).verify(token, LIST) == "alice@example.com"
    assert from_file.verify(token, LIST) is None


def test_key_from_the_environment(tmp_path: Path) -> None:
    env = {"MAILER_SECRET_KEY": KEY, "MAILER_DATA_DIR": str(tmp_path)}
    ring = load_keyring(load_config(None, env).settings)
    assert Keyring(KEY).verify(ring.sign("a@example.com", LIST), LIST) == "a@example.com"
    assert not (tmp_path / "secret.key").exists()


def test_no_key_and_create_false_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="copy the key file from the host that sends") as refused:
        load_keyring(Settings(data_dir=tmp_path), create=False)
    assert "set secret_key" in str(refused.value) and "mailer serve" not in str(refused.value)
    assert not (tmp_path / "secret.key").exists()


def test_empty_key_file_is_an_error_not_a_weak_key(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("\n")
    with pytest.raises(ConfigError, match="secret.key"):
        load_keyring(Settings(data_dir=tmp_path))


def test_readable_key_file_gets_a_warning(tmp_path: Path) -> None:
    key_file = tmp_path / "secret.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    said = Heard()
    ring = load_keyring(Settings(data_dir=tmp_path), console=said)
    assert Keyring(KEY).verify(ring.sign("a@example.com", LIST), LIST) == "a@example.com"
    assert len(said) == 1 and "chmod 600" in said[0] and KEY not in said[0]


def test_urls() -> None:
    settings = Settings(web_url="https://news.example.com/app/", from_email="hi@example.org")
    assert unsubscribe_url(settings, "abc.def") == "https://news.example.com/app/unsubscribe?t=abc.def"
    assert (
        unsubscribe_mailto(settings, "abc.def")
        == "mailto:unsubscribe@example.org?subject=unsubscribe%20abc.def"
    )


def test_links_stay_genuine_when_the_sender_changes() -> None:
    before = Settings(from_email="news@old.example", secret_key=KEY)
    after = before.replace(from_email="letters@new.example")
    token = Keyring(KEY).sign("alice@example.com", before.token_scope)
    assert Keyring(KEY).verify(token, *after.accepted_token_scopes) == "alice@example.com"


def test_links_bound_to_an_old_list_id_work_once_it_is_listed() -> None:
    # older mailer bound tokens to the list id derived from from_email: news.old.example
    legacy = Keyring(KEY).sign("alice@example.com", "news.old.example")
    moved = Settings(from_email="letters@new.example", secret_key=KEY)
    assert Keyring(KEY).verify(legacy, *moved.accepted_token_scopes) is None
    listed = moved.replace(old_list_ids="other.example, news.old.example")
    assert Keyring(KEY).verify(legacy, *listed.accepted_token_scopes) == "alice@example.com"
    # and while from_email has not changed, the derived id still verifies without any setting
    same = Settings(from_email="news@old.example", secret_key=KEY)
    assert Keyring(KEY).verify(legacy, *same.accepted_token_scopes) == "alice@example.com"


def test_a_token_of_another_named_list_stays_refused() -> None:
    ours = Settings(from_email="news@example.org", list_id="news.example.org", secret_key=KEY)
    theirs = Keyring(KEY).sign("alice@example.com", "other.example.org")
    assert Keyring(KEY).verify(theirs, *ours.accepted_token_scopes) is None
