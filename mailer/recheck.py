"""Readers suppressed after the send looked them up: found again at most once a second, never mailed while so.

The send loop asks the record about a batch of readers just before mailing them (campaign._unsent), then
builds their messages and hands them to the connections some way ahead. An unsubscribe (on any host), a
bounce or a complaint recorded after that look-up would not be seen by the look-up alone: under a held
reply or a rate limit the gap lasts minutes. So the loop asks again, once a second at most, about the
readers looked up and not started yet (one indexed query on the suppressions' key, a few hundred
addresses), and a connection checks each message against what it found just before its MAIL FROM goes
out. No clock of another host is read: the question is which of these readers are suppressed now.

A reader found so may come back (`unsubscribe --undo`, the page's Resubscribe, a confirmed signup) before
the send ends: found again before their turn, they are mailed in it; their turn past, the loop asks once
more about them at its end (campaign._Loop._unpark) and mails those subscribed again, once, since no
message of theirs went in this send.
"""

from __future__ import annotations

from collections.abc import Callable

from .ledger import Ledger

EVERY = 1.0  # seconds between two looks at the suppressions, at most


class Recheck:
    """What the loop (one thread) and the connections (their own threads) share about late suppressions.

    The connections only add to and read sets of strings, which the GIL keeps whole (`late` is replaced
    whole by the loop, never changed in place); the record is read by the loop's thread alone, through its
    own ledger.
    """

    def __init__(self, ledger: Ledger, now: Callable[[], float]) -> None:
        self.ledger = ledger
        self.now = now
        self.due = now() + EVERY
        self.batch: list[str] = []  # the keys of the batch looked up last: some are not handed out yet
        self.started: set[str] = set()  # keys of that batch whose turn came: not asked about again
        self.waiting: set[str] = set()  # keys of messages handed out, not started
        self.late: frozenset[str] = frozenset()  # keys found suppressed since their look-up, and still so

    def looked_up(self, keys: list[str]) -> None:
        """A batch was just looked up: its readers are asked about again until they start."""
        self.batch = keys
        self.started = set()

    def starts(self, key: str) -> bool:
        """A connection is about to start this reader's message: False if it must not (suppressed)."""
        self.waiting.discard(key)
        self.started.add(key)
        return key not in self.late

    def refresh(self) -> tuple[list[str], list[str]]:
        """Once EVERY seconds: the readers not started yet newly found suppressed since their look-up (their
        messages are then held back where they start), and those found so before who are not any more
        (their messages start after all); the loop says so of each. One mailed already (who may unsubscribe
        from that very message), or refused, is not asked about: a retry waits again, and is asked about
        until it starts."""
        now = self.now()
        if now < self.due:
            return [], []
        self.due = now + EVERY
        asked = set(self.batch) - self.started | self.waiting
        if not asked:
            return [], []
        found = self.ledger.suppressed_among(asked)
        gone, back = found - self.late, (self.late & asked) - found
        self.late = (self.late - back) | found
        return sorted(gone), sorted(back)

    def back(self, keys: set[str]) -> None:
        """These readers, found suppressed before, are not any more: their messages may start."""
        self.late -= keys
