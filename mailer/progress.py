"""How a send reports itself: a progress bar with rate and ETA on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import click

from .campaign import Feedback, Report
from .subscribers import Subscriber


def count_rows(path: str) -> int:
    """Data rows in a CSV file, roughly (newlines minus the header), for the bar's total; cheap even at 1M."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)


class ConsoleFeedback(Feedback):
    """Progress on stderr: redrawn in place on a tty, a line every few seconds when logging to a file."""

    def __init__(self, total: int, *, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.last = 0.0
        self.drawn = False

    def progress(self, report: Report) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        self._draw(report)

    def finish(self, report: Report) -> None:
        """Draw the final state and end the bar's line."""
        self._draw(report)
        self.close()

    def close(self) -> None:
        """End the bar's line so that what follows starts on a line of its own."""
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    def _draw(self, report: Report) -> None:
        done = report.seen
        rate = report.rate()
        left = max(self.total - done, 0)
        eta = _clock(left / rate) if rate > 0 and left else "-"
        failed = f", {report.failed} failed" if report.failed else ""
        if self.tty:
            width = 28
            frac = min(done / self.total, 1.0) if self.total else 1.0
            bar = "#" * int(frac * width) + "." * (width - int(frac * width))
            line = (
                f"\r[{bar}] {done}/{self.total} {frac:4.0%}  {report.sent} sent{failed}  "
                f"{rate:,.0f} msg/s  ETA {eta} "
            )
            self.stream.write(line)
            self.drawn = True
        else:
            self.stream.write(
                f"progress: {done}/{self.total} subscribers, {report.sent} sent{failed}, "
                f"{rate:,.0f} msg/s, ETA {eta}\n"
            )
        self.stream.flush()

    def problem(self, line: str) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.drawn = False
        click.echo(f"failed: {line}", err=True)

    def would_send(self, subscriber: Subscriber) -> None:
        click.echo(subscriber.email)

    def stopping(self, line: str) -> None:
        self.close()
        click.echo(line, err=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
