"""Every command that makes links signs them as the record says, not only send, worker and serve: a test copy
(`send --test`) is refused where a send would be, and a copy for the publisher's eyes (`render`, `preview`, a
try-out in the outbox) never makes a key for a record that has signed links and says when its links would be
refused elsewhere (keymarks.py).

Each "host" is a data folder of its own on one record (SQLite file or PostgreSQL database); real CLI runs and
the test's SMTP server.
"""

from __future__ import annotations

import html
import re
from email import message_from_bytes, policy
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from click.testing import CliRunner, Result

from mailer.cli import cli
from mailer.config import load_config
from mailer.engine import Location
from mailer.preview import make_server
from mailer.tokens import Keyring
from tests.conftest import Heard
from tests.pg import Server, database_env
from tests.ports import free_port
from tests.publisher import env_for
from tests.smtpd import SMTPServer
from tests.test_key_marks import FIRST_KEY, READERS, ROTATED, SECOND_KEY, _host, _post, _refused, _send
from tests.webthread import ServerThread

TESTER = "editor@example.org"


def _env(
    tmp_path: Path, state: Path, record: Location, smtp: SMTPServer | None, **more: str
) -> dict[str, str]:
    """The settings of the host whose data folder is `state`; without `smtp`, it sends into the outbox."""
    env = {**env_for(smtp or _Nowhere(), tmp_path, **database_env(record), **more)}
    env["MAILER_DATA_DIR"] = str(state)
    if smtp is None:
        del env["MAILER_SMTP_HOST"]
    return env


class _Nowhere:
    """No SMTP server: the settings send into the local outbox."""

    host = ""
    port = 0


def _run(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, args, env=env)


def _token(message: bytes) -> str:
    """The token of a message's one-click unsubscribe link."""
    header = str(message_from_bytes(message, policy=policy.default)["List-Unsubscribe"])
    return parse_qs(urlsplit(re.findall(r"<(https://[^>]+)>", header)[0]).query)["t"][0]


def _verifies(key: str, token: str) -> bool:
    """Whether a `mailer serve` holding `key` (and no list_id set) would take the token."""
    return Keyring(key).verify(token, "") is not None


def test_a_test_copy_from_a_host_without_the_records_key_is_refused_and_makes_no_key(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    first = _host(tmp_path, "first", key=FIRST_KEY)
    assert _send(tmp_path, first, record_at, smtp_server, 9).exit_code == 0
    post = str(_post(tmp_path / "posts", 10))
    keyless = _host(tmp_path, "keyless")
    result = _run(["send", post, "--test", TESTER], _env(tmp_path, keyless, record_at, smtp_server))
    _refused(result, f"{keyless / 'secret.key'}: no signing key here", "copy the key file", "nothing sent")
    assert not (keyless / "secret.key").exists()
    other = _host(tmp_path, "other", key=SECOND_KEY)
    result = _run(["send", post, "--test", TESTER], _env(tmp_path, other, record_at, smtp_server))
    _refused(result, f"{other / 'secret.key'}: this host's signing key", "issue 2026-02-09", "nothing sent")
    assert len(smtp_server.messages) == len(READERS)
    # with the record's key the test copy goes, and its link is one the other hosts take
    result = _run(
        ["send", post, "--test", TESTER],
        _env(tmp_path, keyless, record_at, smtp_server, MAILER_SECRET_KEY=FIRST_KEY),
    )
    assert result.exit_code == 0, result.output
    [copy] = [m for m in smtp_server.messages if m.rcpt_tos == (TESTER,)]
    assert _verifies(FIRST_KEY, _token(copy.data)) and not _verifies(SECOND_KEY, _token(copy.data))
    assert not (keyless / "secret.key").exists()


def test_a_test_copy_during_a_rotation_signs_with_the_new_key(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    post = str(_post(tmp_path / "posts", 10))
    host = _host(tmp_path, "host")
    assert _send(tmp_path, host, record_at, smtp_server, 9, MAILER_SECRET_KEY=FIRST_KEY).exit_code == 0
    result = _run(["send", post, "--test", TESTER], _env(tmp_path, host, record_at, smtp_server, **ROTATED))
    assert result.exit_code == 0, result.output
    [copy] = [m for m in smtp_server.messages if m.rcpt_tos == (TESTER,)]
    assert _verifies(SECOND_KEY, _token(copy.data)) and not _verifies(FIRST_KEY, _token(copy.data))


def test_render_and_an_outbox_try_out_on_a_host_without_the_key_make_none_and_say_so(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    first = _host(tmp_path, "first", key=FIRST_KEY)
    assert _send(tmp_path, first, record_at, smtp_server, 9).exit_code == 0
    post = _post(tmp_path / "posts", 10)
    keyless = _host(tmp_path, "keyless")
    env = _env(tmp_path, keyless, record_at, None)
    rendered = _run(["render", str(post), "--eml", "-o", str(tmp_path / "copy.eml")], env)
    assert rendered.exit_code == 0, rendered.output
    warning = f"Warning: {keyless / 'secret.key'}: no signing key here"
    assert warning in rendered.output and "signed with a throwaway key" in rendered.output
    assert not _verifies(FIRST_KEY, _token((tmp_path / "copy.eml").read_bytes()))
    subscribers = tmp_path / "outbox-readers.csv"
    subscribers.write_text("email\ncat@example.org\n", encoding="utf-8")
    tried = _run(["send", str(post), "--to", str(subscribers), "--yes", "--force"], env)
    assert tried.exit_code == 0, tried.output
    assert warning in tried.output and "signed with a throwaway key" in tried.output
    assert not (keyless / "secret.key").exists()
    # a key of its own: the copy is signed with it, and the warning says the links would be refused
    other = _host(tmp_path, "other", key=SECOND_KEY)
    rendered = _run(["render", str(post), "--eml"], _env(tmp_path, other, record_at, None))
    assert rendered.exit_code == 0, rendered.output
    assert f"Warning: {other / 'secret.key'}: this host's signing key" in rendered.output
    assert "the links in this copy would be refused elsewhere" in rendered.output
    # the record's key: no warning, and the links are the ones the readers get
    env = _env(tmp_path, keyless, record_at, None, MAILER_SECRET_KEY=FIRST_KEY)
    rendered = _run(["render", str(post), "--eml", "-o", str(tmp_path / "good.eml")], env)
    assert rendered.exit_code == 0 and "secret" not in rendered.output, rendered.output
    assert _verifies(FIRST_KEY, _token((tmp_path / "good.eml").read_bytes()))


def test_the_preview_on_a_host_without_the_key_makes_none_and_says_so(
    in_tmp: Path, tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    first = _host(tmp_path, "first", key=FIRST_KEY)
    assert _send(tmp_path, first, record_at, smtp_server, 9).exit_code == 0
    post = _post(tmp_path / "posts", 10)
    keyless = _host(tmp_path, "keyless")
    settings = load_config(env=_env(tmp_path, keyless, record_at, None)).settings
    heard = Heard()
    running = ServerThread(make_server(post, settings, console=heard))
    try:
        page = _get(running.server.effective_port, f"/p/{post.name}/").decode()
        eml = _get(running.server.effective_port, f"/p/{post.name}/message.eml")
    finally:
        running.stop()
    assert not _verifies(FIRST_KEY, _token(eml))
    [line] = heard
    assert line.startswith(f"{keyless / 'secret.key'}: no signing key here"), line
    assert "signed with a throwaway key and would be refused" in line, line
    # the page says it too, among the checks, as the terminal does
    [shown] = re.findall(r'<li class="check warning" data-code="signing-key">(.*?)</li>', page)
    assert html.escape(line, quote=False) in shown, shown
    assert not (keyless / "secret.key").exists()


def _get(port: int, path: str) -> bytes:
    conn = HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        assert answer.status == 200, answer.status
        return answer.read()
    finally:
        conn.close()


def test_a_copy_makes_no_record_and_one_out_of_reach_does_not_stop_it(tmp_path: Path) -> None:
    # `render` and `preview` ask the record for its key only when there is one: they made a SQLite file
    # in a folder that had none, and stopped with the error of a PostgreSQL record they could not reach
    state = _host(tmp_path, "fresh")
    missing = tmp_path / "no-record" / "mailer.db"
    post = _post(tmp_path / "posts", 10)
    rendered = _run(["render", str(post), "--eml"], _env(tmp_path, state, missing, None))
    assert rendered.exit_code == 0, rendered.output
    assert not missing.parent.exists()
    assert "the record" not in rendered.output and "throwaway" not in rendered.output, rendered.output
    nowhere = Server(f"postgresql://mailer@127.0.0.1:{free_port()}/mailer", password="pw-not-shown")
    keyless = _host(tmp_path, "keyless")
    copy = tmp_path / "copy.eml"
    rendered = _run(["render", str(post), "--eml", "-o", str(copy)], _env(tmp_path, keyless, nowhere, None))
    assert rendered.exit_code == 0, rendered.output
    assert "not checked against the record's key" in rendered.output, rendered.output
    assert "signed with a throwaway one" in rendered.output and "pw-not-shown" not in rendered.output
    assert not (keyless / "secret.key").exists() and not _verifies(FIRST_KEY, _token(copy.read_bytes()))
    env = _env(tmp_path, keyless, nowhere, None, MAILER_SECRET_KEY=FIRST_KEY)
    rendered = _run(["render", str(post), "--eml", "-o", str(copy)], env)
    assert rendered.exit_code == 0, rendered.output
    assert "not checked against the record's key" in rendered.output and "throwaway" not in rendered.output
    assert _verifies(FIRST_KEY, _token(copy.read_bytes()))
