"""The one voice of a command: lines for a person, one JSON object for a script, or nothing but errors.

The core never prints: it is handed a Console and says what happened through it. Whether that becomes a
line on stderr, a timestamped log line, nothing (`-q`) or a field of the final JSON object (`--json`) is
decided here, once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from datetime import datetime
from typing import Any, Protocol, TextIO

import click

from .errors import MailerError


class Voice(Protocol):
    """What the core says through: a Console, the log of a server under another WSGI server, or nothing."""

    def note(self, line: str) -> None:
        """What is happening."""

    def warn(self, line: str) -> None:
        """Something worth a look that does not stop the work."""

    def error(self, line: str) -> None:
        """What went wrong (and was dealt with: the work goes on)."""


class Silent:
    """The voice of a caller that wants no lines (the benchmark, a library user): says nothing."""

    def note(self, line: str) -> None:
        """Nothing."""

    def warn(self, line: str) -> None:
        """Nothing."""

    def error(self, line: str) -> None:
        """Nothing."""


SILENT = Silent()


class Console:
    """Where a command's words go.

    stdout carries the command's result (a list of addresses, check lines, a status table) or, with
    `json`, exactly one JSON object; stderr carries notes, warnings and errors. `quiet` keeps only errors.
    `stamped` puts the time in front of notes and warnings that go to a log file rather than a terminal (the
    commands cron runs); the interactive ones (render, preview, serve, ...) print their lines as they are.
    """

    def __init__(self, *, json_mode: bool = False, quiet: bool = False, stamped: bool = True) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.stamped = stamped
        self.out: TextIO = sys.stdout  # looked up now: click's test runner swaps them per command
        self.err: TextIO = sys.stderr
        self.warnings: list[str] = []  # kept for the JSON object

    @property
    def tty(self) -> bool:
        """Whether a person watches stderr (progress is then redrawn in place, without timestamps)."""
        return _isatty(self.err)

    def note(self, line: str) -> None:
        """What is happening; a timestamped log line when stderr is not a terminal."""
        self.say(self.stamp(line))

    def say(self, line: str) -> None:
        """A line for the person on stderr, as it is (the rows of a report under its timestamped heading)."""
        if not self.quiet:
            self._err(line)

    def warn(self, line: str) -> None:
        """Something worth a look that does not stop the command."""
        self.warnings.append(line)
        self.say(self.stamp(f"Warning: {line}"))

    def error(self, line: str) -> None:
        """What went wrong; printed even when quiet."""
        self._err(line)

    def ask(self, question: str) -> bool:
        """A yes/no question on the terminal (default no); refused when no one is there to answer."""
        if not _isatty(sys.stdin):
            raise MailerError("not on a terminal: pass --yes to send without asking")
        return click.confirm(question, default=False, err=True)

    def result(self, line: str, end: str = "\n") -> None:
        """A line of the command's own output on stdout (not in JSON mode, where `emit` carries it)."""
        if not self.json_mode:
            _write(self.out, line + end)

    def emit(self, obj: dict[str, Any]) -> None:
        """The one JSON object a --json run prints on stdout."""
        if self.json_mode:
            _write(self.out, json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")

    def stamp(self, line: str) -> str:
        """The line with the local time in front when it goes to a log file rather than a terminal."""
        if self.tty or not self.stamped:
            return line
        return f"{datetime.now().astimezone().isoformat(timespec='seconds')} {line}"

    def draw(self, text: str) -> None:
        """Text on stderr as it is (a progress bar redrawn in place)."""
        _write(self.err, text)

    def _err(self, line: str) -> None:
        _write(self.err, line + "\n")


def _write(stream: TextIO, text: str) -> None:
    """Write and flush; a terminal that hung up (EIO) or a reader that went away (EPIPE) gets nothing more,
    and the command goes on unheard: a send stopping after a SIGHUP must still record what it sent."""
    try:
        stream.write(text)
        stream.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):  # the file descriptor now goes nowhere
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, stream.fileno())
            os.close(null)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
