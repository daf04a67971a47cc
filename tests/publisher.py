"""A publisher's settings that pass the pre-send checks, for tests that send to a server on 127.0.0.1.

`send` refuses the placeholders (example.com sender, 127.0.0.1 unsubscribe links, the sample postal address)
before the first message to a real SMTP server; tests that are about something else start from these.
No mail leaves the machine: the SMTP server is always the test's own.
"""

from __future__ import annotations

FROM_EMAIL = "news@aidaily.news"
WEB_URL = "https://aidaily.news/mailer"
POSTAL_ADDRESS = "AI Daily, 9 Harbour Road, Hong Kong"

ENV = {
    "MAILER_FROM_EMAIL": FROM_EMAIL,
    "MAILER_WEB_URL": WEB_URL,
    "MAILER_POSTAL_ADDRESS": POSTAL_ADDRESS,
}
