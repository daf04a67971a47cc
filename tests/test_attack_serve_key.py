"""Attacks on `mailer serve`'s refusal to make a signing key for a record whose readers hold signed links."""

from __future__ import annotations

import os
from pathlib import Path

from mailer.engine import Location
from tests.pg import database_env
from tests.served import refuses_for_want_of_a_key, serving
from tests.test_signup import Site, _env


def test_a_second_web_host_without_the_key_refuses_to_start_once_confirmation_links_went_out(
    tmp_path: Path, record_at: Location
) -> None:
    # no issue sent yet, but the first host mailed a signup's confirmation link signed with its key: a second
    # host that made a key of its own would refuse that link ("expired or not ours") when the reader clicks
    record = database_env(record_at)
    env = _env(tmp_path, MAILER_SIGNUP_IP_LIMIT="0", **record)
    with serving(tmp_path, {}, **env) as served:
        first = Site(tmp_path, served.port, env)
        assert first.sign_up("ann@example.org")[0] == 200
        first.wait_for_mail(1)
    key = tmp_path / "second" / "state" / "secret.key"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    second = {**clean, **_env(tmp_path / "second", **record)}
    refuses_for_want_of_a_key(second, tmp_path, key)
