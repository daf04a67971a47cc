"""What a `mailer send` process imports: only what its path needs, so that it reaches its first message soon.

The real command in a process of its own under `python -X importtime`, whose stderr names every module the
process imported: inlining (premailer, cssutils, requests) only when the inlined page is not in the data
folder yet (mailer/inlined.py), the workers' and stored lists' modules only with --workers or a stored list,
psycopg only with a postgresql:// database, tomllib only with a mailer.toml or a post's TOML front matter;
requests, which premailer imports, not at all. And what its exit skips: the collector's last pass.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from tests.conftest import EXAMPLE, ROOT
from tests.publisher import env_for
from tests.smtpd import SMTPServer

# what inlining imports (dark.py lxml.cssselect, cssutils urllib.request and with it http.client), and what
# else a rendering whose image sizes are all cached does not need
INLINING = {"premailer", "cssutils", "lxml.cssselect", "http.client"}
# premailer imports requests for what inlining never does (render.py puts a stand-in in its place)
NOT_EVEN_TO_INLINE = {"requests", "urllib3", "charset_normalizer"}
NOT_FOR_A_LONE_SEND = {"mailer.workers", "mailer.stored", "mailer.engine_postgresql", "psycopg"}
# settings from MAILER_* variables alone (no mailer.toml) and a post with YAML front matter: no TOML to parse
NOT_WITHOUT_TOML = {"tomllib"}


def imported_by_send(args: list[str], env: dict[str, str], cwd: Path) -> set[str]:
    """The modules `mailer send ARGS` imported (it must succeed)."""
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}, **env}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mailer", "send", *args],
        env=full, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return set(re.findall(r"^import time: +\d+ \| +\d+ \| +(\S+)$", done.stderr, re.M))


def test_a_send_that_finds_its_page_inlined_imports_no_inliner(
    smtp_server: SMTPServer, post: Path, tmp_path: Path
) -> None:
    env = env_for(smtp_server, tmp_path, MAILER_OFFLINE="1")
    (tmp_path / "state").mkdir()  # the data folder, where the first send keeps the inlined page
    for name, readers in (("a.csv", 2), ("b.csv", 3)):
        rows = [f"{name[0]}{i}@readers.example.org" for i in range(readers)]
        (tmp_path / name).write_text("email\n" + "\n".join(rows) + "\n", encoding="utf-8")
    first = imported_by_send([str(post), "--to", "a.csv", "--yes", "--force"], env, tmp_path)
    assert INLINING <= first  # it inlined: the check sees these imports when they happen
    assert (NOT_EVEN_TO_INLINE | NOT_FOR_A_LONE_SEND | NOT_WITHOUT_TOML) & first == set()
    second = imported_by_send([str(post), "--to", "b.csv", "--yes", "--force"], env, tmp_path)
    assert (INLINING | NOT_FOR_A_LONE_SEND | NOT_WITHOUT_TOML) & second == set()
    assert {"mailer.campaign", "mailer.transport", "mailer.engine_sqlite"} <= second  # and it did send
    assert len(smtp_server.wait_for(5)) == 5


def test_requests_serves_a_later_use_in_the_process_that_inlined(tmp_path: Path) -> None:
    # the stand-in render.py puts in sys.modules["requests"] imports the real one at its first use
    code = "\n".join([
        "import sys",
        "from pathlib import Path",
        "from mailer.config import Settings",
        "from mailer.post import load_post",
        "from mailer.render import render_issue",
        f"settings = Settings(data_dir=Path({str(tmp_path)!r}), offline=True)",
        f"render_issue(load_post(Path({str(EXAMPLE)!r})), settings)",
        "stood_in = 'urllib3' not in sys.modules and 'premailer' in sys.modules",
        "import requests",
        "print(stood_in, requests.codes.ok, requests.Session.__module__, 'urllib3' in sys.modules)",
    ])  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "200", "requests.sessions", "True"]


# in the coordinator (its forked workers inherit it): each process that renders the page writes its pid to
# RENDERERS, and to INLINERS if it inlines it (a miss in the data folder) instead of reading it there
COUNT_INLINERS = """\
import os, sys
if sys.argv[1:2] == ["send"]:
    import mailer.inlined as inlined
    cached = inlined.inline_cached
    def counted(folder, page, extra, inline):
        def inlining():
            with open(os.environ["INLINERS"], "a") as out:
                out.write(f"{os.getpid()}\\n")
            return inline()
        with open(os.environ["RENDERERS"], "a") as out:
            out.write(f"{os.getpid()}\\n")
        return cached(folder, page, extra, inlining)
    inlined.inline_cached = counted
"""


def test_a_first_send_into_a_new_data_folder_keeps_the_page_for_its_workers(
    smtp_server: SMTPServer, post: Path, tmp_path: Path
) -> None:
    # The data folder does not exist yet when the coordinator renders (a first send makes it later, with
    # the record); the page it inlined must still be kept there, so that each worker, started after, reads
    # it instead of inlining again: three processes render the page, one inlines it, the coordinator.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(COUNT_INLINERS, encoding="utf-8")
    renderers, inliners = tmp_path / "renderers", tmp_path / "inliners"
    env = env_for(smtp_server, tmp_path, MAILER_OFFLINE="1")
    rows = [f"r{i}@readers.example.org" for i in range(6)]
    (tmp_path / "subs.csv").write_text("email\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert not (tmp_path / "state").exists()
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}, **env}
    full |= {"PYTHONPATH": str(hook), "RENDERERS": str(renderers), "INLINERS": str(inliners)}
    done = subprocess.run(
        [sys.executable, "-m", "mailer", "send", str(post), "--to", "subs.csv", "--yes", "--force",
         "--workers", "2"],
        env=full, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(smtp_server.wait_for(6)) == 6
    rendered = renderers.read_text(encoding="utf-8").split()
    assert len(set(rendered)) == 3  # the coordinator and its two workers, each heard from
    assert inliners.read_text(encoding="utf-8").split() == rendered[:1]  # the coordinator's, once
    assert len(list((tmp_path / "state" / "inlined").glob("*.html"))) == 1


# a reference cycle whose finalizer leaves a mark, made unreachable by an atexit handler: only the collector's
# pass at the interpreter's exit (after the atexit handlers) could free it; in `mailer send` and `python -c`
CYCLE_AT_EXIT = """\
import atexit, os, sys
if sys.argv[1:2] == ["send"] or sys.argv == ["-c"]:
    class Cycle:
        def __del__(self):
            with open(os.environ["COLLECTED"], "a") as out:
                out.write("collected\\n")
    held = [Cycle()]
    held[0].me = held[0]
    atexit.register(held.clear)
"""


def test_a_send_ends_without_the_collectors_last_pass(
    smtp_server: SMTPServer, post: Path, tmp_path: Path
) -> None:
    # The last full collection at the exit only frees what the exit gives back (a sixth of a small send's
    # CPU); the send must still end complete: the report said, every reader recorded, the record closed.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CYCLE_AT_EXIT, encoding="utf-8")
    collected = tmp_path / "collected"
    env = env_for(smtp_server, tmp_path, MAILER_OFFLINE="1")
    rows = [f"r{i}@readers.example.org" for i in range(3)]
    (tmp_path / "subs.csv").write_text("email\n" + "\n".join(rows) + "\n", encoding="utf-8")
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}, **env}
    full |= {"PYTHONPATH": str(hook), "COLLECTED": str(collected)}
    command = [sys.executable, "-m", "mailer", "send", str(post), "--to", "subs.csv", "--yes", "--force"]
    done = subprocess.run(command, env=full, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not collected.exists()  # the collector did not run at the exit
    assert len(smtp_server.wait_for(3)) == 3
    assert re.search(r"^ +sent +3$", done.stderr, re.M), done.stderr
    state = tmp_path / "state"
    assert not (state / "mailer.db-wal").exists()  # the record was closed before the exit, not left to it
    with closing(sqlite3.connect(state / "mailer.db")) as db:
        assert db.execute("SELECT count(*) FROM deliveries WHERE state = 'sent'").fetchone() == (3,)
    # the same hook in a process that exits the ordinary way does see its cycle collected
    plain = subprocess.run([sys.executable, "-c", "pass"], env=full, timeout=60)
    assert plain.returncode == 0
    assert collected.read_text(encoding="utf-8") == "collected\n"
