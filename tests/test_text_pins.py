"""The plain-text part of every fixture post, pinned byte for byte (tests/text_pins/*.txt).

A regression guard, not a specification: the pinned files were written by the code of the day, so this test
only says "the text part did not change". The behaviour itself is specified by the tests that can fail on
their own (test_markdown.py, test_render.py, test_plaintext.py). When a change to the text part is meant,
look at the diff and write the pins again:

    .venv/bin/python -m tests.test_text_pins
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE
from tests.test_render import BASE, POSTS, make_settings, render

PINS = Path(__file__).resolve().parent / "text_pins"
FIXTURES = sorted([*POSTS.glob("*.md"), EXAMPLE])


def text_part(path: Path, data_dir: Path) -> str:
    return render(path, make_settings(data_dir, base_url=BASE)).text


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_text_part_is_unchanged(path: Path, tmp_path: Path) -> None:
    pinned = (PINS / f"{path.stem}.txt").read_text(encoding="utf-8")
    assert text_part(path, tmp_path) == pinned


def write_pins() -> None:
    """Write the pins from the current code (run on purpose, after reading the diff)."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in FIXTURES:
            (PINS / f"{path.stem}.txt").write_text(text_part(path, Path(tmp)), encoding="utf-8", newline="")


if __name__ == "__main__":
    write_pins()
