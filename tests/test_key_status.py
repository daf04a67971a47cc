"""`mailer status` says which key the record says the readers' links were signed with (its mark) and whether
this host holds it, without making one (keymarks.key_status).

Each "host" is a data folder of its own on one record (SQLite file or PostgreSQL database); real CLI runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mailer.cli import cli
from mailer.engine import Location
from tests.pg import rows
from tests.smtpd import SMTPServer
from tests.test_key_links import _env
from tests.test_key_marks import FIRST_KEY, ROTATED, SECOND_KEY, _host, _send


def _status(env: dict[str, str]) -> tuple[str, str, dict[str, object]]:
    """What `mailer status` prints (stdout, stderr) and the signing key's fields of `status --json`."""
    said = CliRunner().invoke(cli, ["status"], env=env)
    assert said.exit_code == 0, said.output
    as_json = CliRunner().invoke(cli, ["status", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    key = json.loads(as_json.stdout)["signing_key"]
    assert isinstance(key, dict)
    return said.stdout, said.stderr, key


def test_status_shows_the_records_key_and_whether_this_host_holds_it(
    tmp_path: Path, smtp_server: SMTPServer, record_at: Location
) -> None:
    first = _host(tmp_path, "first", key=FIRST_KEY)
    out, err, key = _status(_env(tmp_path, first, record_at, smtp_server))
    assert "Signing key: none recorded yet; this host signs with" in out and err == "", err
    assert key["record_mark"] is None and key["holds_record_key"] is None and len(key["host_marks"]) == 1
    keyless = _host(tmp_path, "keyless")  # a second host on the record, set up before its first send
    out, err, key = _status(_env(tmp_path, keyless, record_at, smtp_server))
    line = f"Signing key: none recorded yet; this host has none ({keyless / 'secret.key'})"
    assert line in out and "if another host sends or serves this record, copy its key file here" in out
    assert key["host_marks"] == [] and not (keyless / "secret.key").exists()

    assert _send(tmp_path, first, record_at, smtp_server, 9).exit_code == 0
    [(mark,)] = rows(record_at, "SELECT mark FROM key_marks")
    out, err, key = _status(_env(tmp_path, first, record_at, smtp_server))
    assert f"Signing key: the record's is mark {mark} (issue 2026-02-09); this host signs with it" in out
    assert key == {"record_mark": mark, "record_issue": "2026-02-09", "host_marks": [mark],
                   "holds_record_key": True}  # fmt: skip

    out, err, key = _status(_env(tmp_path, keyless, record_at, smtp_server))
    assert "Signing key" not in out
    assert f"Warning: Signing key: the record's is mark {mark} (issue 2026-02-09); this host has none" in err
    assert "a send, worker or serve from here stops" in err
    assert key["holds_record_key"] is False and key["host_marks"] == []
    assert not (keyless / "secret.key").exists()

    other = _host(tmp_path, "other", key=SECOND_KEY)
    out, err, key = _status(_env(tmp_path, other, record_at, smtp_server))
    assert f"Signing key: the record's is mark {mark} (issue 2026-02-09); this host's is not it" in err
    assert key["holds_record_key"] is False and key["host_marks"] != [mark]

    out, err, key = _status(_env(tmp_path, keyless, record_at, smtp_server, **ROTATED))
    assert "this host holds it in old_secret_keys and signs with secret_key, mark" in out, out
    assert key["holds_record_key"] is True and key["host_marks"][1] == mark
    assert SECOND_KEY not in out + err and FIRST_KEY not in out + err
