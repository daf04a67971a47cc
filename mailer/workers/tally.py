"""What a send by workers has done, from the record: the readers' counts, the report, and the line
`mailer status` gives a send under way."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..campaign import THIS_RUN, Report
from ..ledger import Ledger
from ..subscribers import Subscriber, dedupe_key
from . import COUNTED
from .alive import alive_workers, coordinator_ended, gone_from_here, ran_here


class SendTally:
    """The live count of a send's readers, from the record: the counts of the batches done, and those so far
    of the batches claimed and not done (written by their holders with each lease renewal, and as a holder
    gives one back). Each reader is in one batch and counted there once, by whoever holds it last (the next
    holder counts the readers dealt with before it from the record's outcomes, campaign._unsent), and only
    once its outcome is in the record: the count never passes the record's and never counts a reader twice;
    it lags it by at most a quarter lease of a batch's holder, and by nothing once a batch is done.

    Cheap at every look: the batches done are added up once each (those below the first batch not done,
    `frontier`, are folded into `base`); a look reads the batches done since the last one, and the few
    claimed and not done (an index range: done = 0 and lease_until > 0), not the readers of the send."""

    def __init__(self) -> None:
        self.frontier = 0
        self.base = dict.fromkeys(READERS, 0)
        self.folded: set[int] = set()  # batches done at or above the frontier, in `base` already

    def read(self, ledger: Ledger, where: tuple[str, str]) -> dict[str, int]:
        """The readers' counts now. The batches done first, then those open: a batch done in between is in
        neither, never in both (on PostgreSQL each statement sees the record of its own moment)."""
        skip = sorted(self.folded)
        finished = ledger.rows(
            "SELECT batch_no, counts FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 1"
            " AND batch_no >= ?" + (f" AND batch_no NOT IN ({','.join('?' * len(skip))})" if skip else ""),
            (*where, self.frontier, *skip),
        )
        for number, counts in finished:
            _add(self.base, counts)
            self.folded.add(int(number))
        while self.frontier in self.folded:
            self.folded.remove(self.frontier)
            self.frontier += 1
        now = dict(self.base)
        for (counts,) in ledger.rows(
            "SELECT counts FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 0"
            " AND lease_until > 0",
            where,
        ):
            _add(now, counts)
        return now


def _add(totals: dict[str, int], counts: str | None) -> None:
    """Add a batch's counts of readers (its JSON in the record) to `totals`."""
    found = json.loads(counts or "{}")
    for name in READERS:
        totals[name] += int(found.get(name, 0))


def conclude(
    ledger: Ledger,
    where: tuple[str, str],
    run_id: int | None,
    report: Report,
    max_attempts: int,
    *,
    why: str = "",
    gone: str = "",
    ended: bool = False,
    hurried: bool = False,
) -> bool:
    """End the send in the record: 'done' when every reader was dealt with, else 'stopped'; and the run
    complete when every message went out. The report's counts of readers are the record's (_outcomes).
    With `gone` (a worker ends it in the coordinator's place), only a send still open of that coordinator,
    which has not been heard of for a lease, or, `ended`, whose session has ended (coordinator_ended).
    `hurried`: a stop that called replies off stays one, even with every reader dealt with.
    Whether this call ended it."""
    _outcomes(ledger, where, run_id, report, max_attempts)
    if not report.pending and not hurried:
        # a worker's own stop (a failure the others did not meet), or a signal that came as the last
        # replies did (see coordinate): every reader was dealt with, no reply called off
        report.stopped_because = ""
    if report.pending and not report.stopped_because:
        report.stopped_because = (
            f"{report.pending} reader(s) not sent:"
            f" {why or 'every worker stopped or died before them (their errors are above)'};"
            " run the same command again to resume"
        )
    state = "done" if report.pending == 0 and not report.stopped_because else "stopped"
    sql = "UPDATE sends SET state = ?, alive_until = 0 WHERE issue_id = ? AND destination = ?"
    params: tuple[Any, ...] = (state, *where)
    if gone:
        sql += " AND state IN ('running', 'stopping') AND coordinator = ?"
        params += (gone,)
    if gone and not ended:
        sql += f" AND alive_until < {ledger.now}"
    with ledger.transaction():
        ended = bool(ledger.rows(sql + " RETURNING state", params))
        if ended and run_id is not None:
            ledger.count_run(run_id, report.suppressed)
        if ended and report.complete and run_id is not None:
            ledger.finish_run(run_id)
    return ended


def add_up(report: Report, counts: list[dict[str, Any]]) -> None:
    """The report's counts as the sum of the workers' (what each last wrote to the record)."""
    for name in COUNTED:
        setattr(report, name, sum(int(c.get(name, 0)) for c in counts))
    report.failures = {}
    for c in counts:
        for reason, n in c.get("failures", {}).items():
            report.failures[reason] = report.failures.get(reason, 0) + n
        if c.get("stopped") and not report.stopped_because:
            report.stopped_because = c["stopped"]


def _outcomes(
    ledger: Ledger, where: tuple[str, str], run_id: int | None, report: Report, max_attempts: int
) -> None:
    """Set the report's counts of readers (sent, already sent, suppressed, failed, in doubt, not sent) as
    the record has them, which add up to the send's readers whoever dealt with them: a batch done has the
    counts of the worker that finished it (written with its done mark; readers a worker stopped or killed
    half-way through it had mailed count as this run's outcomes, see campaign._unsent); the readers of a
    batch not done count as their state in the record says, this run's outcome or one from before it, or
    as not sent (pending), but for one given up after its retries (the batch's counts say so, or the record's
    `max_attempts` attempts in this run when its holder stopped before it could write that). Not the
    workers' own counts: a killed worker's last ones die with it. So are the retries (the batches'), the
    failure reasons and the readers refused for good and suppressed (_failures)."""
    totals = dict.fromkeys(READERS, 0)
    given_up: list[str] = []
    retries = 0
    for (counts,) in ledger.rows(
        "SELECT counts FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 1", where
    ):
        _add(totals, counts)
        found = json.loads(counts or "{}")
        retries += int(found.get("retries", 0))
        given_up += found.get("given_up", {}).values()
    pending = 0
    for readers, counts in ledger.rows(
        "SELECT readers, counts FROM send_batches WHERE issue_id = ? AND destination = ? AND done = 0", where
    ):
        emails = [r[0] for r in json.loads(readers)]
        batch = Batch.taken(0, readers, counts)
        retries += batch.retries
        tried_before(ledger, where, run_id, batch, max_attempts)
        gave_up = batch.given_up
        counted, _ = counted_readers(ledger, where, run_id, emails, gave_up)
        for key, name in counted.items():
            totals[name] += 1
            if name == "failed_temporary":
                given_up.append(gave_up[key])
        pending += len({dedupe_key(e) for e in emails}) - len(counted)
    for name, n in totals.items():
        setattr(report, name, n)
    report.pending = pending
    report.retries = retries
    _failures(ledger, where, run_id, report, given_up)


def counted_readers(
    ledger: Ledger,
    where: tuple[str, str],
    run_id: int | None,
    emails: list[str],
    given_up: dict[str, str],
    retry_failed: bool = False,
) -> tuple[dict[str, str], int]:
    """How the send counts each reader of a batch the record has an answer for now (dedupe key -> a READERS
    name), as the send loop does (campaign._unsent): this run's outcome, or given up after its retries
    (`given_up`, the batch's), suppressed, or what a run before this one did; not those still to be mailed.
    And how many of those are to be tried again: refused for now in this run (by a holder before)."""
    suppressed, states, ours = ledger.looked_up(where[0], emails, run_id)
    counted = {}
    again = 0
    for key in {dedupe_key(e) for e in emails}:
        state = states.get(key)
        if key in ours and state in THIS_RUN:
            counted[key] = THIS_RUN[state]
        elif key in ours and state == "deferred" and key in given_up:
            counted[key] = "failed_temporary"
        elif key in suppressed:
            counted[key] = "suppressed"
        elif state == "sent" or (state in BEFORE and not retry_failed):
            counted[key] = BEFORE[str(state)]
        elif key in ours and state == "deferred":
            again += 1
    return counted, again


def _failures(
    ledger: Ledger, where: tuple[str, str], run_id: int | None, report: Report, given_up: list[str]
) -> None:
    """The report's failure reasons and bounces as the record has them: this run's deliveries that failed
    for good or were left in doubt, by reply (as the send loop names them: str(Outcome)), the readers given
    up (`given_up`, their batches' reasons), and of those failed, the ones suppressed (refused as readers)."""
    report.failures = {}
    for reason in given_up:
        report.failures[reason] = report.failures.get(reason, 0) + 1
    if run_id is None:
        return
    for code, reply, n in ledger.rows(
        "SELECT last_code, last_reply, count(*) FROM deliveries WHERE issue_id = ? AND destination = ?"
        " AND state IN ('failed', 'sending') AND run_id = ? GROUP BY last_code, last_reply",
        (*where, run_id),
    ):
        reason = _reason(code, reply)
        report.failures[reason] = report.failures.get(reason, 0) + int(n)
    ((bounced,),) = ledger.rows(
        "SELECT count(*) FROM deliveries AS d JOIN suppressions AS s ON s.email = d.email"
        " WHERE d.issue_id = ? AND d.destination = ? AND d.state = 'failed' AND d.run_id = ?",
        (*where, run_id),
    )
    report.bounced = int(bounced)


def _reason(code: object, reply: object) -> str:
    """A failure as the send loop names it (str(Outcome), cut as the report's keys are) from the record's
    last code and reply."""
    return (f"{code} {reply}" if code else str(reply))[:120]


# the Report fields that count readers, each reader once (with `pending`); a state recorded before this run
READERS = (
    "sent", "already_sent", "suppressed", "failed_before", "failed_temporary", "failed_permanent", "in_doubt",
    "in_doubt_before",
)  # fmt: skip
BEFORE = {"sent": "already_sent", "failed": "failed_before", "sending": "in_doubt_before"}


def under_way(ledger: Ledger, issue_id: str) -> dict[str, Any] | None:
    """A send of the issue by workers that is running or stopping (for `mailer status`), or None.

    `coordinator_heard_ago`: the seconds since its coordinator last said it is alive (it does every quarter
    `lease`, on the record's clock); `coordinator_gone`: that is more than a lease ago (killed, its host down,
    and no word since: until then it may be only slow or stopped, and may yet send), or it is a process of
    this host that has ended (it stopped on an error with the record away, so could not say so there), or
    its session with the record has ended (coordinator_ended); its workers then finish the send and the
    last of them ends it, or, with no worker left ("workers": 0), it waits for a rerun."""
    where = (issue_id, ledger.destination)
    found = ledger.rows(
        f"SELECT s.state, s.coordinator, s.started_at, s.alive_until - {ledger.now}, s.options,"
        " count(b.batch_no), coalesce(sum(b.done), 0)"
        " FROM sends AS s LEFT JOIN send_batches AS b USING (issue_id, destination)"
        " WHERE s.issue_id = ? AND s.destination = ? AND s.state IN ('running', 'stopping')"
        " GROUP BY s.issue_id, s.destination, s.state, s.coordinator, s.started_at, s.alive_until, s.options",
        where,
    )
    if not found:
        return None
    state, coordinator, started, left, options, batches, done = found[0]
    lease = float(json.loads(options)["lease"])
    workers = alive_workers(ledger, where, lease)
    heard_ago = max(0.0, lease - float(left))
    return {
        "state": state, "coordinator": coordinator, "started_at": started, "batches": int(batches),
        "batches_done": int(done), "workers": len(workers), "lease": lease,
        "coordinator_heard_ago": round(heard_ago, 1),
        "coordinator_gone": left < 0 or gone_from_here(coordinator)
        or coordinator_ended(ledger, issue_id),
    }  # fmt: skip


def under_way_line(send: dict[str, Any]) -> str:
    """under_way()'s answer for a person: with how long ago the coordinator last said it is alive, and the
    lease after which it is taken for gone, so that a silent one shows as such before its lease runs out."""
    done = f"{send['batches_done']} of {send['batches']} batches done"
    heard = f"last heard from {send['coordinator_heard_ago']:.0f} s ago"
    lease = f"{send['lease']:g} s"
    doing = "sending" if send["state"] == "running" else "stopping"
    if not send["coordinator_gone"]:
        return (
            f"  {doing} now: {send['workers']} worker(s), {done} (coordinated by {send['coordinator']}, since"
            f" {send['started_at']}; {heard}: it says so every {send['lease'] / 4:g} s, and is taken for gone"
            f" after {lease} without a word)"
        )
    late = send["coordinator_heard_ago"] > send["lease"]
    here = ran_here(send["coordinator"])
    why = (
        f"past its {lease} lease"
        if late
        else "its process here ended"
        if here
        else "it no longer holds the issue's lock"
    )
    who = f"its coordinator ({send['coordinator']}; {heard}, {why})"
    if send["workers"]:
        return (
            f"  {doing} now: {send['workers']} worker(s), {done}; {who} is gone: the workers finish the send"
            " and the last one records its end"
        )
    return (
        f"  stopped half-way: {done}; {who} and every worker are gone: run the same send command again to"
        " send the rest"
    )


def worker_counts(report: Report) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(report, name) for name in COUNTED}
    out["failures"] = dict(report.failures)
    if report.stopped_because and report.stopped_because != "interrupted":
        out["stopped"] = report.stopped_because
    return out


@dataclass
class Batch:
    """A batch claimed, and what its holders did with it so far: what the record keeps in its `counts`, as
    its holder writes them (as it claims it, with every lease renewal, as it gives a reader up or the batch
    back, with its done mark) and the next holder takes them up (the retries, the readers given up and each
    reader's attempts before this run; the readers' counts it makes again from the record's outcomes, see
    campaign._unsent)."""

    number: int
    readers: list[Subscriber]
    left: int
    counts: dict[str, int] = field(default_factory=dict)  # its readers' outcomes so far (Share.settled)
    retries: int = 0
    given_up: dict[str, str] = field(default_factory=dict)  # reader (dedupe key) -> its last failure
    # reader (dedupe key) -> the record's attempts before this run, as the batch was first claimed: a next
    # holder counts this run's from them (the record's attempts count every run's)
    before: dict[str, int] = field(default_factory=dict)
    # readers counted in `counts` as the batch was taken over (_Share._take_over): settled, not counted again
    counted: set[str] = field(default_factory=set)
    tried: dict[str, int] = field(default_factory=dict)  # reader -> this run's attempts by holders before

    @classmethod
    def taken(cls, number: int, readers: str, counts: str) -> Batch:
        subs = [Subscriber(e, n, MappingProxyType(f), 0) for e, n, f in json.loads(readers)]
        before = json.loads(counts or "{}")
        given_up = dict(before.get("given_up", {}))
        attempts = dict(before.get("attempts_before", {}))
        return cls(number, subs, len(subs), {}, int(before.get("retries", 0)), given_up, attempts)

    def record(self) -> dict[str, Any]:
        """Its counts as the record keeps them (copies: the loop's thread adds to them meanwhile)."""
        return {
            **dict(self.counts), "retries": self.retries, "given_up": dict(self.given_up),
            "attempts_before": dict(self.before),
        }  # fmt: skip


def tried_before(
    ledger: Ledger, where: tuple[str, str], run_id: int | None, batch: Batch, max_attempts: int
) -> None:
    """The attempts this run made at each reader of a batch taken over that is refused for now and not given
    up (the record's attempts since the batch was first claimed): one tried `max_attempts` times is given up
    with its last reply, as its holder would have written had it lived or had the record taken that write;
    the others are tried on from the attempt after them (Share.tried). Before, such a reader was tried
    `max_attempts` times more by each holder."""
    keys = [sub.key for sub in batch.readers if sub.key not in batch.given_up]
    if run_id is None or not keys:
        return
    marks = ", ".join("?" * len(keys))
    for key, attempts, code, reply in ledger.rows(
        "SELECT email, attempts, last_code, last_reply FROM deliveries WHERE issue_id = ? AND destination = ?"
        f" AND run_id = ? AND state = 'deferred' AND email IN ({marks})",
        (*where, run_id, *keys),
    ):
        made = int(attempts) - batch.before.get(str(key), 0)
        if made >= max_attempts:
            batch.given_up[str(key)] = _reason(code, reply)
        else:
            batch.tried[str(key)] = max(made, 1)
