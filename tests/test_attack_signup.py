"""An adversarial pass over the signup of `mailer serve`: what a hostile visitor or an unlucky reader does
that the signup's own tests did not try, each against a running server."""

from __future__ import annotations

import email
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import Settings
from mailer.engine import Location, Server
from mailer.ledger import Ledger
from mailer.signup import Mailroom, SignupError, Signups, read_link, read_request
from mailer.signupmail import Letters
from mailer.tokens import Keyring
from mailer.transport import OutboxTransport
from tests import publisher
from tests.pg import rows as pg_rows
from tests.served import serving
from tests.test_signup import Site, _env, _link, _members, _token

_FROM = {"from_email": "news@aidaily.news", "from_name": "AI Daily", "postal_address": "1 Main St"}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """`mailer serve` with its outbox as the transport, no per-client limit."""
    env = _env(tmp_path, MAILER_SIGNUP_IP_LIMIT="0")
    with serving(tmp_path, {}, **env) as served:
        yield Site(tmp_path, served.port, env)


def test_a_link_asked_for_before_the_reader_unsubscribed_does_not_bring_them_back(site: Site) -> None:
    # docs/signup.md: "an old link never brings back someone who unsubscribed later". A member (imported)
    # gets a confirmation link (anyone can ask for one for any address), then unsubscribes from an issue;
    # the unused link, pressed afterwards, must not lift that newer unsubscribe.
    (site.root / "list.csv").write_text("email,name\nlea@example.org,Lea\n", encoding="utf-8")
    site.cli("subscribers", "import", str(site.root / "list.csv"))
    site.sign_up("lea@example.org")
    (confirmation,) = site.wait_for_mail(1)
    site.cli("unsubscribe", "lea@example.org")

    status, _, page = site.http("POST", "/subscribe/confirm", {"t": _token(_link(confirmation))})
    assert status == 200 and "no longer valid" in page
    assert site.rows("SELECT email FROM suppressions") == [("lea@example.org",)]
    assert site.rows("SELECT confirmed_at FROM signups") == [(None,)]
    assert [member[1] for member in _members(site)] == ["lea@example.org"]  # imported; not renewed


def test_a_welcome_still_queued_when_the_reader_unsubscribes_is_not_mailed(tmp_path: Path) -> None:
    # a welcome waits in the record while the SMTP server is down, or while serve is stopped after the
    # click; the reader unsubscribes meanwhile (from the confirmation's list, another host, the CLI). An
    # unsubscribe is honoured at once: the queued welcome must not go out afterwards.
    welcome = tmp_path / "welcome.md"
    welcome.write_text("---\ntitle: Welcome\n---\n\nHello {{ name }}!\n", encoding="utf-8")
    settings = Settings(
        data_dir=tmp_path / "state", web_url=publisher.WEB_URL, signup_welcome=str(welcome), **_FROM
    )
    Ledger(settings.db_path).close()
    keyring = Keyring("k" * 32)
    outbox = tmp_path / "outbox"
    room = Mailroom(
        settings, lambda: keyring, Letters(settings, lambda: keyring, lambda: "en"), OutboxTransport(outbox)
    )
    signups = Signups(settings, lambda: None)
    signups.request(read_request({"email": "una@example.org", "name": "Una"}, settings), "192.0.2.1")
    assert room.mail_all() == 1
    (confirmation,) = [email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in _new(outbox)]
    link = read_link(keyring, _token(_link(confirmation)), settings.signup_confirm_hours)  # type: ignore[arg-type]
    assert signups.confirm(link, "192.0.2.9") == "confirmed"
    result = CliRunner().invoke(
        cli, ["unsubscribe", "una@example.org"], env={"MAILER_DATA_DIR": str(tmp_path / "state")}
    )
    assert result.exit_code == 0, result.output

    assert room.mail_all() == 0
    assert len(_new(outbox)) == 1  # the confirmation only
    (reply,) = pg_rows(settings.db_path, "SELECT welcome_reply FROM signups WHERE welcome_due = 0")
    assert "not sent: the address is suppressed" in str(reply[0])


def _new(outbox: Path) -> list[Path]:
    return sorted((outbox / "new").iterdir())


def test_a_signup_for_a_member_does_not_change_the_name_they_have(site: Site) -> None:
    # docs/signup.md: "A reader already on the list keeps their fields; their consent is renewed". Anyone can
    # sign up any address with any name; a member who presses the link (it only asks to confirm getting the
    # newsletter, and does not show the name) would otherwise be greeted with a stranger's words in every
    # issue's {{ name }}.
    (site.root / "list.csv").write_text("email,name\nmia@example.org,Mia\n", encoding="utf-8")
    site.cli("subscribers", "import", str(site.root / "list.csv"))
    site.sign_up("mia@example.org", name="your account is locked, call +1 555 0100")
    (confirmation,) = site.wait_for_mail(1)
    assert "+1 555" not in confirmation.as_string()
    status, _, page = site.http("POST", "/subscribe/confirm", {"t": _token(_link(confirmation))})
    assert status == 200 and "You are subscribed" in page
    assert [(member[1], member[2], member[3]) for member in _members(site)] == [
        ("mia@example.org", "Mia", "web signup")
    ]


def test_a_link_to_a_list_closed_to_signups_since_does_not_join_it(tmp_path: Path) -> None:
    # the publisher takes a list out of signup_lists (a closed beta, a paid list); a link mailed before
    # must not put anyone on it afterwards
    open_to_both = Settings(
        data_dir=tmp_path / "state", web_url=publisher.WEB_URL, signup_lists="beta", **_FROM
    )
    Ledger(open_to_both.db_path).close()
    keyring = Keyring("k" * 32)
    outbox = tmp_path / "outbox"
    room = Mailroom(
        open_to_both,
        lambda: keyring,
        Letters(open_to_both, lambda: keyring, lambda: "en"),
        OutboxTransport(outbox),
    )
    Signups(open_to_both, lambda: None).request(
        read_request({"email": "bea@example.org", "list": "beta"}, open_to_both), "192.0.2.1"
    )
    assert room.mail_all() == 1
    (confirmation,) = [email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in _new(outbox)]
    link = read_link(keyring, _token(_link(confirmation)), open_to_both.signup_confirm_hours)  # type: ignore[arg-type]
    assert link is not None and link.list_name == "beta"
    closed = open_to_both.replace(signup_lists="")
    assert Signups(closed, lambda: None).confirm(link, "192.0.2.9") == "stale"
    assert pg_rows(closed.db_path, "SELECT list, email FROM members") == []
    assert Signups(open_to_both, lambda: None).confirm(link, "192.0.2.9") == "confirmed"  # the same link


def test_requests_never_confirmed_are_forgotten_once_their_link_expires(
    record_at: Location, tmp_path: Path
) -> None:
    # anyone may type any address, name and get their client address stored; a request nobody confirmed
    # is kept only while its link can be used. A confirmed one stays: it is the evidence of consent.
    password = {"database_password": record_at.password or ""} if isinstance(record_at, Server) else {}
    settings = Settings(
        data_dir=tmp_path / "state", database=record_at, web_url=publisher.WEB_URL, **_FROM, **password
    )
    Ledger(settings.db_path).close()
    keyring = Keyring("k" * 32)
    outbox = tmp_path / "outbox"

    def room() -> Mailroom:
        return Mailroom(
            settings,
            lambda: keyring,
            Letters(settings, lambda: keyring, lambda: "en"),
            OutboxTransport(outbox),
        )

    signups = Signups(settings, lambda: None)
    for address in ("old@example.org", "kept@example.org", "new@example.org"):
        signups.request(read_request({"email": address, "name": "X"}, settings), "192.0.2.1")
    assert room().mail_all() == 3
    links = {
        m["To"]: read_link(keyring, _token(_link(m)), settings.signup_confirm_hours)  # type: ignore[arg-type]
        for m in (email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in _new(outbox))
    }
    assert signups.confirm(links["kept@example.org"], "192.0.2.9") == "confirmed"  # type: ignore[arg-type]
    hours = settings.signup_confirm_hours
    then = (datetime.now(UTC) - timedelta(hours=hours, minutes=1)).isoformat(timespec="microseconds")
    just = (datetime.now(UTC) - timedelta(hours=hours, minutes=-1)).isoformat(timespec="microseconds")
    with Ledger(settings.db_path) as ledger:
        ledger.write("UPDATE signups SET requested_at = ? WHERE email <> ?", (then, "new@example.org"))
        ledger.write("UPDATE signups SET requested_at = ? WHERE email = ?", (just, "new@example.org"))
    room().mail_all()
    left = pg_rows(settings.db_path, "SELECT email, request_ip FROM signups ORDER BY email")
    assert [tuple(row) for row in left] == [
        ("kept@example.org", "192.0.2.1"),
        ("new@example.org", "192.0.2.1"),
    ]


def test_the_per_client_limit_counts_an_ipv6_client_by_its_64(tmp_path: Path) -> None:
    # one host (or one home's router) is given a whole /64: counted per address, it took a new address for
    # every request and never met signup_ip_limit
    settings = Settings(data_dir=tmp_path / "state", web_url=publisher.WEB_URL, signup_ip_limit=2, **_FROM)
    Ledger(settings.db_path).close()
    signups = Signups(settings, lambda: None)

    def ask(n: int, ip: str) -> None:
        signups.request(read_request({"email": f"r{n}@example.org"}, settings), ip)

    ask(1, "2001:db8:1:2::1")
    ask(2, "2001:db8:1:2:ffff::9")
    with pytest.raises(SignupError, match="signup.limit"):
        ask(3, "2001:db8:1:2:abcd::3")  # the same /64
    ask(4, "2001:db8:1:3::1")  # the next /64 is another client
    ask(5, "::ffff:192.0.2.7")
    ask(6, "192.0.2.7")
    with pytest.raises(SignupError, match="signup.limit"):
        ask(7, "192.0.2.7")  # the mapped form and the plain one are one client
