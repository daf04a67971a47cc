"""The attack pass as a publisher: the commands run the way the quick start and `mailer init` suggest.

`mailer send posts/ --yes` sends today's post of the folder; the publisher then asks `mailer status posts/`
what became of it, as `check`, `render` and `preview` also take the folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clock import DAYTIME, today
from tests.command import run
from tests.conftest import EXAMPLE
from tests.publisher import env_for
from tests.smtpd import SMTPServer


def test_status_of_the_posts_folder_is_the_status_of_today_s_post_that_send_sent(
    smtp_server: SMTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "posts"
    folder.mkdir()
    post = folder / f"{today()}.md"
    post.write_text(EXAMPLE.read_text(encoding="utf-8").replace("date: 2026-02-09", f"date: {today()}", 1))
    csv = tmp_path / "subs.csv"
    csv.write_text("email\na@example.com\nb@example.com\n", encoding="utf-8")
    env = env_for(smtp_server, tmp_path, MAILER_TIMEZONE=DAYTIME)
    code, _, err = run(["send", str(folder), "--to", str(csv), "--yes", "--force"], env)
    assert code == 0 and len(smtp_server.messages) == 2, err
    code, by_name, err = run(["status", str(post)], env)
    assert code == 0 and f"{today()}" in by_name, err
    code, by_folder, err = run(["status", str(folder)], env)
    assert code == 0, err
    assert by_folder == by_name
