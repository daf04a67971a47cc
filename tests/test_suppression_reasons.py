"""`mailer suppressions list` says why each address is suppressed; `suppressions remove` (and `unsubscribe
--undo`, the same call) reverses one. The real CLI on a real record that a bounce was recorded into."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from mailer.bounces import COMPLAINT, HARD, Bounce
from mailer.cli import cli
from mailer.config import Settings
from mailer.engine import Location
from mailer.ledger import Ledger
from mailer.policy import record_bounces
from tests.pg import database_env

AT = datetime(2026, 2, 9, 7, tzinfo=UTC)


def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_the_list_shows_reason_issue_status_and_diagnostic_and_remove_reverses_one(
    tmp_path: Path, record_at: Location
) -> None:
    env = {"MAILER_DATA_DIR": str(tmp_path / "state"), **database_env(record_at)}
    with Ledger(record_at) as ledger:
        dead = Bounce(
            "dead@example.org", HARD, "5.1.1", "550 5.1.1 no such user", "2026-02-09", "dsn", "d1", AT
        )
        spam = Bounce("spam@example.org", COMPLAINT, "", "abuse report", "2026-02-10", "arf", "a1", AT)
        record_bounces(ledger, [dead, spam], Settings())
        ledger.suppress("asked@example.org", source="web", reason="unsubscribed via web")

    code, out, err = _run(env, "suppressions", "list")
    assert code == 0 and "3 suppressed address(es)" in err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"asked@example.org", "dead@example.org", "spam@example.org"}
    for word in ("dsn", "hard bounce", "2026-02-09", "5.1.1", "550 5.1.1 no such user"):
        assert word in lines["dead@example.org"], lines["dead@example.org"]
    for word in ("arf", "complaint", "2026-02-10", "abuse report"):
        assert word in lines["spam@example.org"]
    assert "unsubscribed via web" in lines["asked@example.org"]

    code, out, _ = _run(env, "suppressions", "remove", "Dead@Example.org", "never@example.org")
    assert code == 0
    assert "resubscribed dead@example.org" in out and "hard bounce, 2026-02-09, 5.1.1" in out
    assert "never@example.org was not suppressed" in out
    code, out, _ = _run(env, "unsubscribe", "--undo", "spam@example.org")
    assert code == 0 and "resubscribed spam@example.org" in out and "complaint" in out
    with Ledger(record_at) as ledger:
        assert [s.email for s in ledger.suppressions()] == ["asked@example.org"]

    code, _, err = _run(env, "suppressions", "remove", "not an address")
    assert code == 1 and "'not an address'" in err
