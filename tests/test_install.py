"""Installs anywhere: the wheel, installed into a fresh venv (not -e), works from an empty folder elsewhere.

CI only ever ran mailer from its own repository with an editable install, so a wheel without its templates
went unnoticed. This builds the wheel from a copy of the source tree, installs it into a new virtualenv and
drives every command as a publisher would, from an empty temporary folder: `mailer init` and on from there.
"""

from __future__ import annotations

import email
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.clock import DAYTIME
from tests.conftest import ROOT
from tests.pg import Cluster, database_env, rows

pytestmark = pytest.mark.slow

BUILD_OUTPUT = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".mailer", ".*_cache", "out"
)
TITLE = "Welcome to my newsletter"  # the sample post of `mailer init`
READERS = ["ann@example.com", "bob@example.org", "cai@example.net"]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]  # this test run's pip


@dataclass
class Site:
    """A fresh install of the wheel and an empty folder outside the repository to run it in."""

    wheel: Path
    venv: Path
    folder: Path
    env: dict[str, str]

    def mailer(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.venv / "bin" / "mailer"), *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == code, f"mailer {' '.join(args)}: {result.returncode}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def start(self, *args: str) -> tuple[subprocess.Popen[str], str]:
        """Start a long-running command; return it and its first line of output (printed once it listens)."""
        proc = subprocess.Popen(
            [str(self.venv / "bin" / "mailer"), *args],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            return proc, lines.get(timeout=60)
        except queue.Empty:
            proc.kill()
            raise AssertionError(
                f"mailer {' '.join(args)} printed nothing: {proc.communicate()[1]}"
            ) from None


def _stop(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C, as a person would; the command must stop cleanly."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err, err
    return out


def _request(url: str, method: str = "GET", body: str = "") -> tuple[int, str]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port
    conn = HTTPConnection("127.0.0.1", parts.port, timeout=30)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        conn.request(method, target, body=body.encode() or None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=BUILD_OUTPUT)
    subprocess.run([*PIP, "wheel", "--no-deps", "-w", str(work / "dist"), str(source)], check=True)
    [wheel] = (work / "dist").glob("*.whl")
    venv = work / "venv"
    # without a pip of its own (ensurepip's install of pip was a third of this set-up): this run's pip
    # installs into it (--python), as the venv's own would
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([*PIP, "--python", str(venv / "bin" / "python"), "install", str(wheel)], check=True)
    folder = work / "site"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILER_", "PYTHON", "VIRTUAL_ENV"))}
    # `mailer init` dates its sample post today in the machine's zone and `send posts/` looks for today's
    # post: in DAYTIME (tests/clock.py) midnight cannot fall between the two
    env["TZ"] = DAYTIME
    yield Site(wheel, venv, folder, env)


def test_the_wheel_is_mailer_newsletter_with_the_templates_inside(site: Site) -> None:
    where = subprocess.run(
        [
            str(site.venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, importlib.resources as r, mailer;"
            "print(m.version('mailer-newsletter'), mailer.__file__,"
            " sorted(p.name for p in r.files('mailer.templates').iterdir() if '.' in p.name))",
        ],
        cwd=site.folder,
        env=site.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split(" ", 2)
    assert where[1].startswith(str(site.venv)), where  # the installed copy, not the repository
    assert where[2].strip() == str(["__init__.py", "email-media.css", "email.css", "email.html", "email.txt"])
    assert site.mailer("--version").stdout == f"mailer, version {where[0]}\n"


def test_every_file_of_the_package_and_the_templates_is_in_the_wheel(site: Site) -> None:
    """A page, style or skeleton file added under mailer/ without package-data fails here, not for a user."""
    package = [p for p in (ROOT / "mailer").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    wanted = {f"mailer/{p.relative_to(ROOT / 'mailer')}" for p in package}
    wanted |= {f"mailer/templates/{p.name}" for p in (ROOT / "templates").iterdir() if p.is_file()}
    with zipfile.ZipFile(site.wheel) as wheel:
        missing = wanted - set(wheel.namelist())
    assert not missing, sorted(missing)


def test_every_command_works_from_an_empty_folder(site: Site) -> None:
    made = site.mailer("init", "news").stdout
    assert "Next steps:" in made
    site.folder = site.folder / "news"
    [post] = [f"posts/{p.name}" for p in (site.folder / "posts").iterdir()]  # the sample, dated today
    with open(site.folder / "subscribers.csv", "a", encoding="utf-8") as out:
        out.writelines(f"{a},\n" for a in READERS)

    site.mailer("render", post, "-o", "issue.html")
    html = (site.folder / "issue.html").read_text(encoding="utf-8")
    assert TITLE in html and 'role="presentation"' in html  # the shipped email.html, inlined
    assert "This is a sample post" in site.mailer("render", post, "--text").stdout
    site.mailer("check", post)

    site.mailer("send", "posts/", "--dry-run")
    assert not (site.folder / ".mailer" / "outbox" / "new").exists()
    site.mailer("send", "posts/", "--yes")  # today's post, to the list that mailer.toml names
    messages = [
        email.message_from_bytes(p.read_bytes()) for p in (site.folder / ".mailer/outbox/new").iterdir()
    ]
    assert sorted(str(m["To"]) for m in messages) == sorted(READERS)
    assert re.search(r"\b3 sent\b", site.mailer("status", post).stdout)

    # a user's own templates_dir still wins over the shipped templates
    own = site.folder / "my-templates"
    shutil.copytree(ROOT / "templates", own)
    (own / "email.txt").write_text("OWN TEMPLATE {{ title }}\n{{ unsubscribe_url }}\n", encoding="utf-8")
    site.env["MAILER_TEMPLATES_DIR"] = str(own)
    try:
        assert site.mailer("render", post, "--text").stdout.startswith(f"OWN TEMPLATE {TITLE}")
    finally:
        del site.env["MAILER_TEMPLATES_DIR"]

    # serve: the one-click unsubscribe link from a delivered message, over 127.0.0.1
    serve, first = site.start("serve", "--host", "127.0.0.1", "--port", "0")
    try:
        match = re.match(r"Serving on (http://127\.0\.0\.1:\d+)/", first)
        assert match, first
        reader = messages[0]
        link = re.search(r"<(https?://[^>]+/unsubscribe\?t=[^>]+)>", str(reader["List-Unsubscribe"]))
        assert link, reader["List-Unsubscribe"]
        query = link[1].split("/unsubscribe?", 1)[1]  # web_url's /mailer prefix is the proxy's to strip
        status, _ = _request(f"{match[1]}/unsubscribe?{query}", "POST", "List-Unsubscribe=One-Click")
        assert status == 200
        assert _request(f"{match[1]}/healthz")[0] == 200
    finally:
        _stop(serve)
    assert str(reader["To"]) in site.mailer("suppressions", "list").stdout

    # preview: starts, prints its address and serves the post's page
    preview, first = site.start("preview", "--no-open", post)
    try:
        match = re.match(rf"Previewing {post} at (http://127\.0\.0\.1:\d+/)", first)
        assert match, first
        status, page = _request(f"{match[1]}p/{post.removeprefix('posts/')}/")
        assert status == 200 and TITLE in page
    finally:
        _stop(preview)


def test_the_record_on_postgresql_from_the_installed_wheel(site: Site, pg_cluster: Cluster) -> None:
    """Without the extra, a PostgreSQL URL is one line; with `mailer-newsletter[postgresql]`, a send's record
    goes into the database (here the test cluster's: tests/pg.py)."""
    folder = site.folder.parent / "pg-site"
    folder.mkdir()
    site.folder = folder
    server = pg_cluster.database()
    site.env.update(database_env(server))
    try:
        missing = site.mailer("db", "migrate", code=1)
        assert "pip install 'mailer-newsletter[postgresql]'" in missing.stderr
        subprocess.run(
            [*PIP, "--python", str(site.venv / "bin" / "python"), "install", f"{site.wheel}[postgresql]"],
            check=True,
        )
        created = site.mailer("db", "migrate").stdout
        assert created.startswith(f"{server}: created the mailer schema")
        site.mailer("init", "news")
        site.folder = folder / "news"
        with open(site.folder / "subscribers.csv", "a", encoding="utf-8") as out:
            out.writelines(f"{a},\n" for a in READERS)
        site.mailer("send", "posts/", "--yes")  # to the outbox, the record in PostgreSQL
        assert rows(server, "SELECT count(*) FROM deliveries WHERE state = 'sent'") == [(len(READERS),)]
        assert not (site.folder / ".mailer" / "mailer.db").exists()
    finally:
        for name in database_env(server):
            del site.env[name]
