"""README and docs/ stay true to the code: every command helped, every setting and test they name exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import Settings
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {path.name: path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md"))}
PAGES = {"README.md": README, **{f"docs/{name}": text for name, text in DOCS.items()}}


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
def test_every_setting_is_in_the_configuration_page_with_its_variable(name: str) -> None:
    page = DOCS["configuration.md"]
    assert f"`{name}`" in page or re.search(rf"`[^`]*\b{name}\b[^`]*`", page), name
    assert f"`MAILER_{name.upper()}`" in page, f"MAILER_{name.upper()}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_commands_the_docs_show_exist(page: str) -> None:
    blocks = "\n".join(re.findall(r"```(?:sh|console|bash)\n(.*?)```", PAGES[page], re.DOTALL))
    used = set(re.findall(r"^(?:\.venv/bin/)?mailer ([a-z][a-z-]*)", blocks, re.MULTILINE))
    assert used <= set(cli.commands), used - set(cli.commands)


def test_the_docs_show_commands_at_all() -> None:
    shown = "\n".join(re.findall(r"```(?:sh|console|bash)\n(.*?)```", "".join(PAGES.values()), re.DOTALL))
    assert len(set(re.findall(r"^mailer ([a-z-]+)", shown, re.MULTILINE))) >= 6


@pytest.mark.parametrize("page", sorted(PAGES))
def test_local_links_and_images_point_at_files_that_exist(page: str) -> None:
    base = (ROOT / page).parent
    prose = re.sub(r"```.*?```|`[^`\n]*`", "", PAGES[page], flags=re.DOTALL)
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    missing = [t for t in local if not (base / t).exists()]
    assert not missing, missing


def test_the_readme_links_every_docs_page_and_screenshot() -> None:
    linked = set(re.findall(r"\]\(docs/([^)#\s]+)", README))
    assert set(DOCS) <= linked, set(DOCS) - linked
    image = re.compile(r"!\[[^\]]*\]\((?:docs/)?([\w-]+\.png)\)")
    shown = {name for text in PAGES.values() for name in image.findall(text)}
    assert shown == {p.name for p in (ROOT / "docs").glob("*.png")}


def test_readme_set_up_commands_are_the_scripts_ci_runs() -> None:
    assert "bash scripts/demo" in README and "bash scripts/test" in README
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_every_test_the_reliability_page_names_exists() -> None:
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", DOCS["reliability.md"])
    assert len(named) >= 10
    for file, test in named:
        source = (Path(__file__).parent / file).read_text(encoding="utf-8")
        assert re.search(rf"^def {test}\(", source, re.MULTILINE), f"{file}::{test}"
