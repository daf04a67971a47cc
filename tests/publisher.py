"""A publisher's settings that pass the pre-send checks, for tests that send to a server on 127.0.0.1.

`send` refuses the placeholders (example.com sender, 127.0.0.1 unsubscribe links, the sample postal address)
before the first message to a real SMTP server; tests that are about something else start from these.
No mail leaves the machine: the SMTP server is always the test's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

FROM_EMAIL = "news@aidaily.news"
WEB_URL = "https://aidaily.news/mailer"
POSTAL_ADDRESS = "AI Daily, 9 Harbour Road, Hong Kong"

ENV = {
    "MAILER_FROM_EMAIL": FROM_EMAIL,
    "MAILER_WEB_URL": WEB_URL,
    "MAILER_POSTAL_ADDRESS": POSTAL_ADDRESS,
}


class _Server(Protocol):
    host: str
    port: int


def env_for(server: _Server, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `mailer send` to the test's plain-text server, state under tmp_path."""
    return {
        **ENV,
        "MAILER_SMTP_HOST": server.host,
        "MAILER_SMTP_PORT": str(server.port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_SMTP_TIMEOUT": "5",
        "MAILER_DATA_DIR": str(tmp_path / "state"),
        "MAILER_RETRY_DELAY": "0.05",
        **extra,
    }
