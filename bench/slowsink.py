"""An SMTP sink that answers every command 20 ms late, as a relay across a network would: a round trip each.

    python bench/slowsink.py --port 2525 [--delay 0.02] [--no-chunking]

It takes every message and throws it away, offers PIPELINING, 8BITMIME, SMTPUTF8 and (unless --no-chunking)
CHUNKING, and answers each command `delay` seconds after it arrived, so replies to pipelined commands come
back together, one delay for the group. It counts the client's round trips: each time input arrives after
the sink had answered everything it was sent, the client had waited for those replies. bench/run.py starts it
in a thread of its own process (`serve`) and reads `stats`.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from dataclasses import dataclass

EHLO = [b"250-slowsink", b"250-PIPELINING", b"250-8BITMIME", b"250-SMTPUTF8"]


@dataclass
class Stats:
    """What the sink saw, over all sessions: messages taken, round trips after each session's first MAIL."""

    messages: int = 0
    round_trips: int = 0
    sessions: int = 0


class _Session(asyncio.Protocol):
    def __init__(self, sink: SlowSink) -> None:
        self.sink = sink
        self.buf = bytearray()
        self.mode = "command"  # "data": up to CRLF.CRLF; "bdat": `need` more octets of a chunk
        self.need = 0
        self.last = False
        self.owed = 0  # replies scheduled but not written yet
        self.answered = False  # a reply was written since the last input
        self.mailed = False  # round trips count from the first MAIL on
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sink.stats.sessions += 1
        self._reply(b"220 slowsink ESMTP")

    def _reply(self, line: bytes) -> None:
        self.owed += 1
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + self.sink.delay, self._write, line + b"\r\n")

    def _write(self, data: bytes) -> None:
        self.owed -= 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.answered = True

    def data_received(self, data: bytes) -> None:
        if self.answered and not self.owed and self.mailed:
            self.sink.stats.round_trips += 1
        self.answered = False
        self.buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        """Consume one command or piece of content from the buffer; False when more input is needed."""
        if self.mode == "data":
            end = self.buf.find(b"\r\n.\r\n")
            if end < 0:
                del self.buf[: max(0, len(self.buf) - 4)]
                return False
            del self.buf[: end + 5]
            self.mode = "command"
            self.sink.stats.messages += 1
            self._reply(b"250 2.0.0 Ok: queued")
            return True
        if self.mode == "bdat":
            take = min(self.need, len(self.buf))
            del self.buf[:take]
            self.need -= take
            if self.need:
                return False
            self.mode = "command"
            if self.last:
                self.sink.stats.messages += 1
                self._reply(b"250 2.0.0 Ok: queued")
            else:
                self._reply(b"250 2.0.0 Ok: chunk received")
            return True
        end = self.buf.find(b"\r\n")
        if end < 0:
            return False
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        verb = line[:4].upper()
        if verb == b"EHLO":
            offer = EHLO + ([b"250-CHUNKING"] if self.sink.chunking else [])
            self._reply(b"\r\n".join(offer) + b"\r\n250 DSN")
        elif verb == b"HELO":
            self._reply(b"250 slowsink")
        elif verb == b"MAIL":
            self.mailed = True
            self._reply(b"250 2.1.0 Ok")
        elif verb == b"RCPT":
            self._reply(b"250 2.1.5 Ok")
        elif verb == b"DATA":
            self.mode = "data"
            self.buf[:0] = b"\r\n"  # the end marker may come first: an empty message
            self._reply(b"354 End data with <CR><LF>.<CR><LF>")
        elif verb == b"BDAT":
            size, _, last = line[5:].partition(b" ")
            self.mode, self.need, self.last = "bdat", int(size), bool(last)
        elif verb in (b"RSET", b"NOOP"):
            self._reply(b"250 2.0.0 Ok")
        elif verb == b"QUIT":
            self._reply(b"221 2.0.0 Bye")
            if self.mailed:
                self.sink.stats.round_trips -= 1  # the QUIT's own wait is no message's
            asyncio.get_running_loop().call_later(self.sink.delay * 2, self._close)
        else:
            self._reply(b"502 5.5.2 Error: command not recognized")
        return True

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SlowSink:
    """The sink on 127.0.0.1:`port` (0: a free one), served by an event loop on a thread of its own."""

    def __init__(self, port: int = 0, delay: float = 0.02, *, chunking: bool = True) -> None:
        self.delay = delay
        self.chunking = chunking
        self.stats = Stats()
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowsink", daemon=True)

    def start(self) -> SlowSink:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset(self) -> Stats:
        """The counts so far, and zero from here on."""
        stats, self.stats = self.stats, Stats()
        return stats

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            self._loop.create_server(lambda: _Session(self), "127.0.0.1", self.port)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=2525)
    p.add_argument("--delay", type=float, default=0.02, help="seconds before each reply (0.02)")
    p.add_argument("--no-chunking", action="store_true", help="do not offer CHUNKING (BDAT)")
    args = p.parse_args()
    sink = SlowSink(args.port, args.delay, chunking=not args.no_chunking).start()
    print(f"slowsink on 127.0.0.1:{sink.port}, {args.delay * 1000:g} ms a reply; Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print(f"{sink.stats}")
        sink.stop()


if __name__ == "__main__":
    main()
