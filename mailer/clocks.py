"""This host's clock against the PostgreSQL server's, for a send shared by hosts (workers.py).

A batch's lease is a time on its holder's clock, which a worker on another host compares with its own: one
whose clock is ahead by most of a lease takes over batches that a live worker is still sending, and the
readers of the overlap get the issue twice (seen: 19 of 300 with a lease of 8 s and a worker 7 s ahead).
So a coordinator of a --distributed send and every `mailer worker` first read the server's clock, and
refuse to start when theirs is further off it than half the lease's margin (any two hosts within that are
within the margin of each other, which the leases leave between a worker's last "." and a takeover).
The round trip is no part of the difference: only a server time outside the span the query took counts.
A SQLite record is one host's, whose processes share one clock.
"""

from __future__ import annotations

import time

from .engine import Location, Server
from .errors import MailerError
from .ledger import Ledger

_SERVER_NOW = "SELECT extract(epoch FROM clock_timestamp())"


def clock_offset(ledger: Ledger) -> float | None:
    """How far this host's clock is ahead of the record's server's (behind: below 0), beyond the time the
    query took (0.0 within it); None for a SQLite record."""
    if not isinstance(ledger.path, Server):
        return None
    before = time.time()
    server = float(ledger.rows(_SERVER_NOW)[0][0])
    after = time.time()
    return before - server if server < before else after - server if server > after else 0.0


def check_clock(off: float | None, where: Location, lease: float, margin: float, refused: str) -> None:
    """MailerError (ending with `refused`) if this host's clock is further than margin/2 of the lease off
    the record's server's (`off`, clock_offset's)."""
    limit = lease * margin / 2
    if off is None or abs(off) <= limit:
        return
    raise MailerError(
        f"this host's clock is {abs(off):.1f} s {'ahead of' if off > 0 else 'behind'} the clock of the"
        f" record's server ({where}): the workers of a send compare their batches' leases on their own"
        f" hosts' clocks, and with more than {limit:g} s between them one could take over batches another"
        f" is still sending (worker_lease {lease:g} s); set this host's time right (NTP), then start again;"
        f" {refused}"
    )
