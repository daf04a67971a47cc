"""This host's clock against the coordinator's of a send shared by hosts (workers.py), through the record's
PostgreSQL server, which both can ask the time.

A batch's lease is a time on its holder's clock, which a worker on another host compares with its own: one
whose clock is ahead by most of a lease takes over batches that a live worker is still sending, and the
readers of the overlap get the issue twice (seen: 19 of 300 with a lease of 8 s and a worker 7 s ahead).
So the coordinator puts its clock's offset from the server's in the record with the send, and a `mailer
worker` of another host refuses to join when its own offset differs from that by more than half the
leases' margin (any two hosts within that of the coordinator are within the margin of each other, which
the leases leave between a worker's last "." and a takeover). The workers beside the coordinator share
its clock. An offset leaves out the time the query took: only a server time outside that span counts, so
a slow query makes no false refusal. A SQLite record is one host's, whose processes share one clock.
"""

from __future__ import annotations

import time
from typing import Any

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


def check_clock(
    off: float | None, coordinator: str, options: dict[str, Any], where: Location, margin: float
) -> None:
    """MailerError if this host's clock (`off`, clock_offset's) is further than margin/2 of the lease off
    the clock of the send's coordinator (its offset in the send's `options`; none from an older mailer: 0)."""
    lease = float(options["lease"])
    limit = lease * margin / 2
    apart = 0.0 if off is None else off - float(options.get("clock", 0.0))
    if abs(apart) <= limit:
        return
    raise MailerError(
        f"this host's clock is {abs(apart):.1f} s {'ahead of' if apart > 0 else 'behind'} the clock of the"
        f" send's coordinator ({coordinator}; both read against the record's server, {where}): the workers"
        f" of a send compare their batches' leases on their own hosts' clocks, and with more than {limit:g} s"
        " between them one could take over batches another is still sending (worker_lease"
        f" {lease:g} s); set the time of this host or of the coordinator's right (NTP); not joining"
    )
