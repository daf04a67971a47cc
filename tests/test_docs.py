"""The README and the CLI's help stay true to the code: every command helped, every setting documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(cli), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    usage_at = next(i for i, line in enumerate(lines) if line.startswith("Usage:"))
    assert any(line.strip() for line in lines[usage_at + 1 :] if not line.strip().startswith("-"))


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Settings)])
def test_every_setting_is_in_the_readme_with_its_variable(name: str) -> None:
    assert f"`{name}`" in README or re.search(rf"`[^`]*\b{name}\b[^`]*`", README), name


def test_readme_commands_exist() -> None:
    blocks = "\n".join(re.findall(r"```(?:sh|console|bash)\n(.*?)```", README, re.DOTALL))
    used = set(re.findall(r"^(?:\.venv/bin/)?mailer ([a-z-]+)", blocks, re.MULTILINE))
    assert used, "the README shows no mailer command"
    assert used <= set(cli.commands), used - set(cli.commands)


def test_readme_set_up_commands_are_the_scripts_ci_runs() -> None:
    assert "bash scripts/demo" in README and "bash scripts/test" in README
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
