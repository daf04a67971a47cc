"""Render CPU of two mailer installs, alternated on one machine: issue 12's before and after tables.

    .venv/bin/python bench/render_ab.py --before /tmp/old/.venv/bin/python      # after: this interpreter
    .venv/bin/python bench/render_ab.py --before OLD_PY --after NEW_PY --rounds 7 --runs 7 --json out.json

Each round starts a fresh process of each interpreter, in turn first (A B, B A, ...), that renders the
example post and bench/run.py's ~100 KB post `--runs` times after a warm-up, each time
`render_issue(load_post(path))` as bench/run.py times it, with premailer's inlining
(`mailer.render.inline_css`) timed apart. The figures are process CPU time, not wall time (the machine is
shared): the median over the rounds of each process's median. Both installs render the same two files,
written here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "2026-02-09.md"
SETTINGS: dict[str, Any] = {  # bench/run.py's; a field an older mailer lacks is left out
    "offline": True,
    "secret_key": "bench-secret-key-0123456789",
    "from_name": "AI 日报",
    "from_email": "news@aidaily.news",
    "web_url": "https://aidaily.news/mailer",
    "postal_address": "AI Daily, 9 Harbour Road, Hong Kong",
}


def child(runs: int, paths: list[Path]) -> dict[str, dict[str, list[float]]]:
    """In the measured interpreter: CPU ms per render of each post, total and inlining."""
    import mailer.render as render
    from mailer.config import Settings
    from mailer.post import load_post

    known = {f.name for f in dataclasses.fields(Settings)}
    fields = {k: v for k, v in SETTINGS.items() if k in known}
    # a data folder that is not made: no inlined page is kept there (mailer/inlined.py), each render inlines
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="render-ab-")) / "not-made", **fields)
    spent: list[float] = []
    original = render.inline_css

    def timed_inline(page: str, **options: Any) -> Any:
        t = time.process_time()
        try:
            return original(page, **options)
        finally:
            spent.append(time.process_time() - t)

    render.inline_css = timed_inline
    out: dict[str, dict[str, list[float]]] = {}
    for path in paths:
        render.render_issue(load_post(path), settings)  # warm-up: imports, templates, caches
        total, inline = [], []
        for _ in range(runs):
            spent.clear()
            t = time.process_time()
            render.render_issue(load_post(path), settings)
            total.append((time.process_time() - t) * 1000)
            inline.append(sum(spent) * 1000)
        out[path.name] = {"total": total, "inlining": inline}
    return out


def compare(pythons: dict[str, str], rounds: int, runs: int, tmp: Path) -> dict[str, Any]:
    """Alternate the interpreters; per label and post, the medians of total, inlining and the rest."""
    sys.path.insert(0, str(ROOT / "bench"))
    from run import long_post

    long_path = tmp / "2026-02-10-long.md"
    long_path.write_text(long_post(), encoding="utf-8")
    paths = [EXAMPLE, long_path]
    seen: dict[str, list[dict[str, dict[str, list[float]]]]] = {label: [] for label in pythons}
    order = list(pythons.items())
    for i in range(rounds):
        for label, python in order if i % 2 == 0 else order[::-1]:
            done = subprocess.run(
                [python, __file__, "--child", str(runs), *map(str, paths)],
                capture_output=True, text=True, check=True, cwd=tmp,
            )  # fmt: skip
            seen[label].append(json.loads(done.stdout))
    table: dict[str, Any] = {}
    for label, processes in seen.items():
        for path in paths:
            per = [p[path.name] for p in processes]

            def med(pick: Any, per: Any = per) -> float:
                return statistics.median(statistics.median(pick(p)) for p in per)

            def rest(p: dict[str, list[float]]) -> list[float]:
                return [t - i for t, i in zip(p["total"], p["inlining"], strict=True)]

            table[f"{label} {path.name}"] = {
                "total": med(lambda p: p["total"]),
                "inlining": med(lambda p: p["inlining"]),
                "all but inlining": med(
                    lambda p: [t - i for t, i in zip(p["total"], p["inlining"], strict=True)]
                ),
            }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=False, help="the older mailer's interpreter")
    parser.add_argument("--after", default=sys.executable, help="the newer one (default: this one)")
    parser.add_argument("--rounds", type=int, default=7, help="processes of each (default 7)")
    parser.add_argument("--runs", type=int, default=7, help="renders of each post per process (default 7)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), [Path(p) for p in args.child[1:]])))
        return 0
    if not args.before:
        parser.error("--before is required: the interpreter of the mailer to compare with")
    with tempfile.TemporaryDirectory(prefix="render-ab-") as tmp:
        table = compare({"before": args.before, "after": args.after}, args.rounds, args.runs, Path(tmp))
    print(f"render CPU ms, median of {args.rounds} processes x {args.runs} renders, alternated")
    print(f"{'':36} {'total':>8} {'inlining':>9} {'all but inlining':>17}")
    for key, row in table.items():
        print(f"{key:36} {row['total']:8.1f} {row['inlining']:9.1f} {row['all but inlining']:17.1f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
