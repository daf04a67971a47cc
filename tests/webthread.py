"""A waitress server (as `mailer preview` and `mailer serve` make it) run by a thread of the test.

The thread runs the server's loop itself and closes every socket when told to stop, so nothing of the server
is touched from another thread: the test never pulls the loop's trigger (a pull from the test's thread was
seen failing EBADF at teardown, twice in many loaded full runs, with the trigger already closed).
"""

from __future__ import annotations

import threading
from typing import Any

POLL = 0.05  # seconds the loop waits for a socket before it looks at the stop flag again


class ServerThread:
    """Serve until stop(): the worker threads first (one may still be answering), then the loop, sockets."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from waitress import wasyncore

        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=POLL, map=self.server._map, use_poll=True, count=1)
        finally:
            wasyncore.close_all(self.server._map)

    def stop(self) -> None:
        self.server.task_dispatcher.shutdown(timeout=60)
        self._stopping.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the server's loop did not stop"
