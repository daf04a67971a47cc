"""An adversarial pass over the signup of `mailer serve`: what a hostile visitor or an unlucky reader does
that the signup's own tests did not try, each against a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.served import serving
from tests.test_signup import Site, _env, _link, _members, _token


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
