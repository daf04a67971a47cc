"""Who still takes part in a send by workers, as the record tells: process names, lease holders, a
coordinator's session."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from ..ledger import Ledger
from . import GIVEN_BACK


def my_name() -> str:
    """This process's name in the record: 'HOST pid N TOKEN', the token's first half this host's
    (namespace_token)."""
    return f"{socket.gethostname()} pid {os.getpid()} {namespace_token()}{secrets.token_hex(3)}"


@functools.cache
def namespace_token() -> str:
    """What tells this kernel boot and process namespace from any other that has the same host name (two
    containers may): where a process of that name is one whose pid can be looked up from here."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        space = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: no proof from here, the leases decide
        return secrets.token_hex(3)
    return hashlib.sha256(f"{boot} {space}".encode()).hexdigest()[:6]


def ran_here(name: str) -> bool:
    """Whether the process of this name runs (or ran) in this kernel and namespace."""
    host, _, rest = name.partition(" pid ")
    return host == socket.gethostname() and rest.partition(" ")[2].startswith(namespace_token())


def gone_from_here(name: str) -> bool:
    """Whether the process of this name ran in this kernel and namespace and has ended: provably sends
    nothing more (a pid is not reused within the few seconds this matters)."""
    pid = name.partition(" pid ")[2].partition(" ")[0]
    if not ran_here(name) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, someone else's
    return False


def alive_workers(ledger: Ledger, where: tuple[str, str], lease: float, but: str = "") -> list[str]:
    """The workers that are still at the send: their row says 'running' and is younger than a lease (each
    writes it every quarter lease), on the record's clock, and no sign says it has ended (_dead,
    gone_from_here)."""
    rows = ledger.rows(
        "SELECT worker, counts FROM send_workers WHERE issue_id = ? AND destination = ? AND state = 'running'"
        f" AND updated_at >= {ledger.stamp} AND worker != ?",
        (*where, lease + 1.0, but),
    )
    dead = _dead(ledger, rows)
    # one of this host whose process has ended (killed, or stopped with the record unwritable) is not
    return [name for name, _ in rows if name not in dead and not gone_from_here(name)]


def _dead(ledger: Ledger, workers: list[Any]) -> set[str]:
    """Those of the (name, counts) of workers that have ended, on any host, as the record's engine tells
    (PostgreSQL): each holds its lock on every session it has (Ledger.hold_worker, and its counts say so),
    and the server lets go of it once the last of them has ended, at once when the process dies (kill -9,
    a crash: the kernel closes its sockets). One whose host vanished (a power cut, a network cut) keeps its
    sessions until the server notices, and its lease decides. A worker alive whose sessions all ended (an
    administrator, the server's keepalives) commits no outcome, so sends no further "." than the one per
    connection a kill -9 leaves: taken for dead, it repeats no more than one killed would."""
    marked = [name for name, counts in workers if json.loads(counts or "{}").get("held")]
    held = ledger.held_workers(marked)
    return set() if held is None else set(marked) - held


def free_dead(ledger: Ledger, where: tuple[str, str]) -> None:
    """End the leases of workers that have ended (_dead), for the others to take their batches over at once
    rather than once the leases run out (the coordinator does so for its own, _free_batches_of). The owner
    stays: the next holder takes the batch over from it (WorkResult.takeovers)."""
    if ledger.held_workers(()) is None:  # the engine cannot tell: the leases decide
        return
    holders = ledger.rows(
        "SELECT DISTINCT w.worker, w.counts FROM send_batches AS b JOIN send_workers AS w"
        " ON w.issue_id = b.issue_id AND w.destination = b.destination AND w.worker = b.owner"
        f" WHERE b.issue_id = ? AND b.destination = ? AND b.done = 0 AND b.lease_until > {ledger.now}",
        where,
    )
    for name in sorted(_dead(ledger, holders)):
        ledger.write(
            "UPDATE send_batches SET lease_until = ? WHERE issue_id = ? AND destination = ? AND owner = ?"
            " AND done = 0",
            (GIVEN_BACK, *where, name),
            rows_only=True,
        )


def open_batches(ledger: Ledger, where: tuple[str, str]) -> int:
    (left,) = ledger.rows(
        "SELECT count(*) FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 0", where
    )[0]
    return int(left)


def live_leases(ledger: Ledger, where: tuple[str, str]) -> bool:
    rows = ledger.rows(
        "SELECT 1 FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 0"
        f" AND lease_until > {ledger.now} LIMIT 1",
        where,
    )
    return bool(rows)


def coordinator_ended(ledger: Ledger, issue_id: str) -> bool:
    """Whether the coordinator of the issue's send has ended, on any host, as the record's engine tells
    (PostgreSQL): it holds the issue's lock from before it puts the send in the record until it has ended
    it there (send.py, issue_lock), and the server lets go of the lock once its session has ended, at once
    when the process dies on a host that stays up (kill -9, the OOM killer: the kernel closes its sockets).
    One stopped (kill -STOP, a paused VM) or whose host vanished keeps its session: its lease decides. One
    whose session ended under it stops at its next look (`lost the lock`), before it says it is alive."""
    return ledger.issue_locked(issue_id) is False
