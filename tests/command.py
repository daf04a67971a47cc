"""The real `mailer` command, run in this process through click's CliRunner as a shell would run it: what
the CLI tests share instead of a copy each."""

from __future__ import annotations

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
