"""The real `mailer` command, run in this process through click's CliRunner as a shell would run it: what
the CLI tests share instead of a copy each."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner, Result

from mailer.cli import cli


def run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of `mailer ARGS` (an exception that escapes it fails the test)."""
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def invoke(args: list[str], env: dict[str, str]) -> Result:
    """The whole result of `mailer ARGS`, which may print no traceback."""
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`mailer ARGS` in a process of its own (to be signalled or killed), env on top of this one's, its
    output in pipes."""
    full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", *args], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
