"""The record's tag of each message is the one its Message-ID carries, made once per reader (issue 16): a
send hands the tag its message factory made to the recorder, which writes it as it is."""

from __future__ import annotations

import email
import re
from pathlib import Path

import pytest

from mailer.envelope import Recipient
from mailer.ledger import Ledger
from tests.command import invoke
from tests.publisher import env_for
from tests.smtpd import SMTPServer

READERS = [f"Reader.{i}@Example.org" for i in range(12)]


def test_a_send_records_each_reader_under_the_tag_in_their_message_id(
    post: Path, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    csv = tmp_path / "subs.csv"
    csv.write_text("email,name\n" + "".join(f"{a},R{i}\n" for i, a in enumerate(READERS)), encoding="utf-8")
    args = ["send", str(post), "--to", str(csv), "--yes", "--force", "--connections", "2"]
    result = invoke(args, env_for(smtp_server, tmp_path))
    assert result.exit_code == 0, result.output
    smtp_server.wait_for(len(READERS))
    found: dict[str, Recipient | None] = {}
    with Ledger(tmp_path / "state" / "mailer.db") as ledger:
        for received in smtp_server.messages:
            (to,) = received.rcpt_tos
            message_id = email.message_from_bytes(received.data)["Message-ID"]
            tag = re.fullmatch(r"<2026-02-09\.([0-9a-f]+)@[^>]+>", message_id)
            assert tag is not None, message_id
            found[to.lower()] = ledger.tagged(bytes.fromhex(tag.group(1)))
    # each message's tag finds its own reader in the record, whatever the case the list spells them in
    assert found == {a.lower(): Recipient("2026-02-09", a.lower()) for a in READERS}


def test_tags_that_are_not_one_per_outcome_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    outcomes = [("a@example.org", "sent", 250, "ok"), ("b@example.org", "sent", 250, "ok")]
    with Ledger(tmp_path / "mailer.db") as ledger:
        ledger.start_issue("i1", "0" * 64, "A post")
        for tags in ([b"\1" * 10], [b"\1" * 10, b"\2" * 3]):
            with pytest.raises(ValueError, match="not a message tag for each of the 2 outcomes"):
                ledger.record_outcomes("i1", outcomes, tags=tags)
        assert ledger.tagged(b"\1" * 10) is None
        assert ledger.states("i1", ["a@example.org", "b@example.org"]) == (set(), {})
