"""How a send stops on a signal: SIGTERM (systemd, docker, kill) and SIGHUP (the terminal closed, an ssh
session dropped) are handled like Ctrl-C's SIGINT; by default SIGHUP would end the process at once, with a
message the server took but the record does not show, mailed again by the rerun. A SIGHUP ignored when the
command starts (nohup) stays ignored.

The first signal raises Interrupted in the main thread: the send loop queues nothing more, finishes the
messages in flight, records them and exits with a resume hint (130 after SIGINT, 143 after SIGTERM). While
the send loop runs (`polled`), the handler only notes the signal and the loop raises Interrupted itself at
its next step: raised by the handler, it could come out of a queue's `with lock:` between the acquire and
the block (an exception there leaves the lock held), and the loop's shutdown then waited on that lock for
ever (seen: a worker hung after a SIGTERM). From
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

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """The signal state of one send; install() it around the send in the main thread."""

    def __init__(self) -> None:
        self.stopping = False  # the loop is stopping (a signal, an error, or its end): signals only hurry
        self.signum = 0  # the first signal that came
        self.hurry = threading.Event()  # a second signal: call off what has not reached its final "."
        self.polled = False  # the send loop looks at `signum` at each step: the handler must not raise

    def raise_if_signalled(self) -> None:
        """The polling loop's safe point: Interrupted if a signal came."""
        if self.signum and self.polled:
            raise Interrupted(self.signum)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The handler of SIGINT, SIGTERM and SIGHUP (run by Python in the main thread)."""
        if not self.stopping:
            self.stopping = True
            self.signum = signum
            if not self.polled:
                raise Interrupted(signum)
            return
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
        previous = {
            sig: signal.signal(sig, self.handle)
            for sig in SIGNALS
            # nohup: the publisher asked the command to outlive its terminal
            if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN)
        }
        try:
            # a worker forked by its coordinator starts with them blocked (workers/local.py): taken from now,
            # one sent since the fork among them (elsewhere nothing was blocked, and this changes nothing)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
