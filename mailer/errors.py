"""The few errors mailer raises on purpose; the CLI turns each into one line and an exit code."""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitStatus(IntEnum):
    """Exit codes that mean something to a cron job."""

    OK = 0
    ERROR = 1  # refused or failed before sending: bad input, configuration, a failed pre-send check
    USAGE = 2  # click's own code for a wrong option or argument
    INCOMPLETE = 3  # the send finished but some recipients failed (rerun retries the temporary ones)
    STOPPED = 4  # the send stopped early (server down, record unwritable); rerun to resume
    HUNG_UP = 129  # SIGHUP: the terminal closed (an ssh session dropped)
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    TERMINATED = 143  # SIGTERM (systemd, docker): 128 + 15, as a shell reports it


class Interrupted(KeyboardInterrupt):
    """A signal stopped the command; `send` stops after the messages in flight and records them, and says
    how to resume (`resume`) after the stop is named."""

    def __init__(self, signum: int, *, resume: bool = False) -> None:
        super().__init__(signum)
        self.signum = signum
        self.resume = resume

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell says: 130 after Ctrl-C (SIGINT), 143 after SIGTERM, 129 SIGHUP."""
        return ExitStatus(128 + self.signum)

    @property
    def what(self) -> str:
        """How the stop is named to the user."""
        return {signal.SIGTERM: "Terminated (SIGTERM)", signal.SIGHUP: "Hung up (SIGHUP)"}.get(
            signal.Signals(self.signum), "Interrupted"
        )


class MailerError(Exception):
    """An error a user can fix; its text names the file, line or address and what is wrong."""

    exit_code: int = ExitStatus.ERROR
    resume = False  # a send stopped early (exit 4): the CLI says how to resume after the error's line

    def details(self) -> dict[str, object]:
        """What a --json run adds to its object besides the one-line message."""
        return {}


class ConfigError(MailerError):
    """The configuration file or a MAILER_* variable is wrong."""


class PostError(MailerError):
    """The post cannot be read or rendered."""


class SubscriberError(MailerError):
    """A subscriber list or suppression file as a whole cannot be read (a single bad row is not an error)."""


class SendRunning(MailerError):
    """Another process's send of the issue holds its lock (issue_lock); `holder` names it ('pid 4242')."""

    def __init__(self, issue_id: str, holder: str) -> None:
        super().__init__(f"{issue_id}: another send of this issue is running ({holder}); wait for it")
        self.issue_id = issue_id
        self.holder = holder


class FileChanged(MailerError):
    """A list changed on disk while it was being read: stopped there; rerunning reads it again and resumes."""

    exit_code = ExitStatus.STOPPED


class TransportError(MailerError):
    """The mail server cannot be reached or refuses us as a whole (not a single recipient)."""


class NotUpYet(MailerError):
    """The record's server does not answer yet (not running, starting up, not reachable): unlike a wrong
    password or a missing database, waiting may mend it (`mailer worker --wait` at boot)."""


class SendAborted(MailerError):
    """A send stopped early; rerunning the same command resumes it."""

    exit_code = ExitStatus.STOPPED
