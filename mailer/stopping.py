"""How a send stops on a signal: SIGTERM (systemd, docker, kill) is handled like Ctrl-C's SIGINT.

The first signal raises Interrupted in the main thread: the send loop queues nothing more, finishes the
messages in flight, records them and exits with a resume hint (130 after SIGINT, 143 after SIGTERM). From
the moment the loop is stopping, a signal no longer raises (an exception there would abandon messages the
record has not committed); a second signal hurries the stop instead: every message not yet past its final
"." is called off, replies still out are not waited for, and what the record was handed is committed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The signal state of one send; install() it around the send in the main thread."""

    def __init__(self) -> None:
        self.stopping = False  # the loop is stopping (a signal, an error, or its end): signals only hurry
        self.signum = 0  # the first signal that came
        self.hurry = threading.Event()  # a second signal: call off what has not reached its final "."

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The handler of SIGINT and SIGTERM (run by Python in the main thread)."""
        if not self.stopping:
            self.stopping = True
            self.signum = signum
            raise Interrupted(signum)
        if self.signum:
            self.hurry.set()
        else:  # the first signal, while the loop was ending by itself: let it end
            self.signum = signum

    @contextmanager
    def install(self) -> Iterator[StopSignals]:
        """Handle the signals for the duration of the block (only the main thread can; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
