"""The inlined page kept in the data folder (mailer/inlined.py): a second process renders without it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lxml import etree

from mailer.config import SHIPPED_TEMPLATES, Settings
from mailer.inlined import FOLDER, KEEP, inline_cached
from mailer.post import load_post
from mailer.render import render_issue
from tests.conftest import EXAMPLE, ROOT

# a fresh process, as a worker of `send --workers N` is: what it renders, and whether it loaded premailer
RENDER = """
import json, sys
from pathlib import Path
from mailer.config import Settings
from mailer.post import load_post
from mailer.render import render_issue
settings = Settings(
    from_email="news@example.com", postal_address="1 Example Street", data_dir=Path(sys.argv[1]),
    templates_dir=Path(sys.argv[2]),
)
issue = render_issue(load_post(Path(sys.argv[3])), settings)
html, text = [c.decode() for c in issue.html.chunks], [c.decode() for c in issue.text.chunks]
from lxml import etree
loaded = {"premailer": "premailer" in sys.modules, "lxml": etree.__file__}
print(json.dumps({"html": html, "text": text, **loaded}))
"""


def render_apart(
    data_dir: Path,
    templates: Path = SHIPPED_TEMPLATES,
    post: Path = EXAMPLE,
    env: dict[str, str] | None = None,
) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", RENDER, str(data_dir), str(templates), str(post)],
        capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip
    return dict(json.loads(done.stdout))


def test_a_second_process_renders_the_same_issue_without_inlining_again(tmp_path: Path) -> None:
    first = render_apart(tmp_path)
    second = render_apart(tmp_path)
    assert first["premailer"] is True
    assert second["premailer"] is False  # the page came from the data folder
    assert second["html"] == first["html"] and second["text"] == first["text"]
    assert len(list((tmp_path / FOLDER).glob("*.html"))) == 1


def test_a_changed_style_sheet_is_inlined_anew(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(SHIPPED_TEMPLATES, templates)
    before = render_apart(tmp_path / "state-not-made-yet")  # no data folder: nothing kept, none made
    assert not (tmp_path / "state-not-made-yet").exists()
    data = tmp_path / "state"
    data.mkdir()
    render_apart(data, templates)
    css = templates / "email.css"
    css.write_text(css.read_text(encoding="utf-8") + "\nh2 { letter-spacing: 7px; }\n", encoding="utf-8")
    after = render_apart(data, templates)
    assert after["premailer"] is True
    assert "letter-spacing:7px" in "".join(str(c) for c in after["html"]).replace(" ", "")  # type: ignore[union-attr]
    assert after["html"] != before["html"]
    assert len(list((data / FOLDER).glob("*.html"))) == 2


def test_the_same_page_in_process_matches_what_a_miss_made(tmp_path: Path) -> None:
    settings = Settings(from_email="news@example.com", postal_address="1 Example Street", data_dir=tmp_path)
    made = render_issue(load_post(EXAMPLE), settings)
    read = render_issue(load_post(EXAMPLE), settings)
    assert read.html.chunks == made.html.chunks and read.text.chunks == made.text.chunks


def test_only_the_newest_pages_are_kept(tmp_path: Path) -> None:
    made = []
    for n in range(KEEP + 3):
        page = f"<html><body><p>page {n}</p></body></html>"
        root, _ = inline_cached(tmp_path, page, [], lambda p=page: etree.fromstring(p, etree.HTMLParser()))
        made.append(etree.tostring(root, encoding="unicode"))
    assert [f"page {n}" in one for n, one in enumerate(made)] == [True] * (KEEP + 3)
    assert len(list(tmp_path.glob("*.html"))) == KEEP
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_another_lxml_never_reads_what_this_one_made(tmp_path: Path) -> None:
    """lxml parses and writes the inlined page, with its libxml2 inside (its binary modules, not .py files):
    another build or version of it must inline anew. Here a copy of the installed lxml, first on the path,
    as another installation of it would be; before, the key covered only mailer's, premailer's and
    cssutils' .py files, and the copy read the page the installed lxml had made."""
    first = render_apart(tmp_path / "state-made")  # no data folder yet: nothing kept
    data = tmp_path / "state"
    data.mkdir()
    render_apart(data)
    other = tmp_path / "other-lxml"
    shutil.copytree(Path(etree.__file__).parent, other / "lxml")
    again = render_apart(data, env={"PYTHONPATH": str(other)})
    assert again["lxml"] == str(other / "lxml" / Path(etree.__file__).name)  # the copy did the work
    assert again["premailer"] is True  # a miss: inlined anew
    assert again["html"] == first["html"]
    assert len(list((data / FOLDER).glob("*.html"))) == 2
