"""Bounce and complaint rates per issue in the send report and `mailer status` (text and --json), with a
warning above the levels providers enforce. The real CLI, the test's SMTP server, the real record."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from mailer.bounces import COMPLAINT, HARD, SOFT, Bounce
from mailer.cli import cli
from mailer.config import Settings
from mailer.ledger import Ledger
from mailer.policy import record_bounces
from tests.publisher import env_for
from tests.smtpd import SMTPServer

READERS = [f"reader{n}@example.org" for n in range(10)]
AT = datetime(2026, 2, 9, 8, tzinfo=UTC)


def _invoke(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_the_send_report_and_status_show_rates_and_warn_above_the_providers_levels(
    smtp_server: SMTPServer, tmp_path: Path, post: Path
) -> None:
    smtp_server.fail("reader3@example.org", 550, text="5.1.1 no such user")  # 1 of 10: a 10% bounce rate
    env = env_for(smtp_server, tmp_path)
    to = tmp_path / "list.csv"
    to.write_text("email\n" + "\n".join(READERS) + "\n", encoding="utf-8")

    code, out, err = _invoke(env, "send", str(post), "--to", str(to), "--yes", "--force", "--json")
    assert code == 3, err
    sent = json.loads(out)
    assert sent["bounces"]["hard_bounces"] == 1 and sent["bounces"]["mailed"] == 10
    assert sent["bounces"]["bounce_rate"] == 10.0 and sent["bounces"]["complaint_rate"] == 0.0
    assert any("bounce rate 10.00% is above bounce_rate_warn (2%)" in w for w in sent["warnings"]), sent
    assert "bounces: 1 hard (10.00%)" in err

    # later, reports arrive: a complaint (read twice), a soft bounce, the refused reader's own DSN
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        reports = [
            Bounce("reader5@example.org", COMPLAINT, "", "abuse", "2026-02-09", "arf", "arf-1", AT),
            Bounce("reader5@example.org", COMPLAINT, "", "abuse", "2026-02-09", "arf", "arf-1", AT),
            Bounce("reader6@example.org", SOFT, "4.2.2", "full", "2026-02-09", "dsn", "dsn-1", AT),
            Bounce("reader3@example.org", HARD, "5.1.1", "no such user", "2026-02-09", "dsn", "dsn-2", AT),
        ]
        record_bounces(ledger, reports, Settings())

    code, out, err = _invoke(env, "status", str(post))
    assert code == 0, err
    assert "bounces: 1 hard (10.00%), 1 soft; complaints: 1 (10.00%) of 10 mailed" in out
    assert "complaint rate 10.00% is above complaint_rate_warn (0.1%)" in err
    assert "0.3%" in err  # the level Gmail and Yahoo enforce, named

    code, out, err = _invoke(env, "status", "--json")
    assert code == 0, err
    (issue,) = json.loads(out)["issues"]
    assert issue["bounces"] == {
        "mailed": 10, "hard_bounces": 1, "soft_bounces": 1, "complaints": 1,
        "bounce_rate": 10.0, "complaint_rate": 10.0,
    }  # fmt: skip

    code, out, err = _invoke(env, "status")
    assert code == 0
    row = next(line for line in out.splitlines() if "2026-02-09" in line and "smtp" in line)
    assert "1 10.00%" in row  # bounced and complaints, each with its rate

    quiet = {**env, "MAILER_BOUNCE_RATE_WARN": "20", "MAILER_COMPLAINT_RATE_WARN": "0"}
    code, out, err = _invoke(quiet, "status", str(post))
    assert code == 0 and "Warning" not in err  # 10% is under 20%; 0 never warns
