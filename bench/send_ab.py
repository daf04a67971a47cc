"""Send CPU of two mailer code trees, alternated on one machine, with smtp-source as the yardstick.

    .venv/bin/python bench/send_ab.py --before /tmp/old --after . --count 5000 --rounds 4 --connections 1,4,8

Each round sends `--count` messages of the example post to one smtp-sink with `smtp-source -s N`, then with
each tree's `mailer send --connections N` (the tree put first on PYTHONPATH, this interpreter and its
packages), in turn first (A B, B A, ...). The figures are process CPU time per 1,000 messages, start-up and
render included, and msg/s over the whole process: the median over the rounds. Needs Debian's postfix
(smtp-sink, smtp-source), as bench/run.py does.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab  # noqa: E402  (bench/ab.py: the two trees, taking turns)
import run as bench  # noqa: E402  (bench/run.py: the sink, smtp-source and the send it times)


def main() -> None:
    args, trees, counts = ab.send_args(__doc__, count=5000, rounds=4, connections="1,4,8")
    cpu: dict[tuple[str, int], list[float]] = {}
    rate: dict[tuple[str, int], list[float]] = {}
    with ab.scratch("send-ab-") as tmp:
        csv = tmp / "subs.csv"
        bench.write_subscribers(csv, args.count)
        message = tmp / "message.txt"
        message.write_bytes(bench.one_message(tmp).replace(b"\r\n", b"\n"))
        with bench.smtp_sink() as port:
            for r in range(args.rounds):
                for n in counts:
                    done = bench.smtp_source(port, message, args.count, n)
                    cpu.setdefault(("smtp-source", n), []).append(done.cpu / args.count * 1000)
                    rate.setdefault(("smtp-source", n), []).append(args.count / done.wall)
                    for name, root in ab.turn(trees, r):
                        state = tmp / f"{name}-{n}-{r}" / "state"
                        state.parent.mkdir()
                        os.environ["PYTHONPATH"] = str(root)
                        try:
                            sent, _ = bench.mailer_send(port, csv, state, n)
                        finally:
                            del os.environ["PYTHONPATH"]
                        if sent.sent != args.count:
                            raise SystemExit(f"{name}: {sent.sent} of {args.count} sent")
                        cpu.setdefault((name, n), []).append(sent.cpu / args.count * 1000)
                        rate.setdefault((name, n), []).append(args.count / sent.wall)
                        shutil.rmtree(state.parent)
    ab.table(
        ["connections", "who", "CPU s per 1,000 (median)", "each round", "msg/s (median)"],
        "|---:|---|---:|---|---:|",
        [
            [str(n), name, f"{statistics.median(cpu[(name, n)]):.3f}",
             ", ".join(f"{x:.3f}" for x in cpu[(name, n)]), f"{statistics.median(rate[(name, n)]):.0f}"]
            for n in counts
            for name in ("smtp-source", "before", "after")
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
