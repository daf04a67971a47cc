"""Today for the tests that make today's post and run the daily send on it.

Such a test writes a post dated today and then runs `mailer`, which looks for today's post itself: across
midnight the two todays differ and the test fails (near midnight UTC, the zone every such test used). These
tests set MAILER_TIMEZONE to DAYTIME, a fixed-offset zone where it was between 12:00 and 13:00 when the suite
started, so "today" there stays the same for the next eleven hours, and compute today as mailer does.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo


def _noon_zone() -> str:
    """The Etc/GMT zone whose local hour is 12 now (their signs are POSIX's: Etc/GMT-8 is UTC+8)."""
    ahead = 12 - dt.datetime.now(dt.UTC).hour  # -11 ... +12 hours: every one has an Etc/GMT zone
    return "Etc/GMT" if ahead == 0 else f"Etc/GMT{-ahead:+d}"


DAYTIME = _noon_zone()


def today() -> dt.date:
    """Today in DAYTIME, as `mailer` computes it with MAILER_TIMEZONE=DAYTIME."""
    return dt.datetime.now(ZoneInfo(DAYTIME)).date()
