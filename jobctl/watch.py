"""The tail loop behind `jobctl watch` and `jobctl wait`: a change source
from the store, the fold, and a sink.

One long-lived read connection. The store's waker (`Store.waker`: file
notifications for SQLite, LISTEN/NOTIFY for PostgreSQL, each with a timer
fallback) says when the database may have changed; every wake-up is only a
hint: the truth is the events after the cursor. Progress is counted once at
start and then folded per event in O(1). What is shown goes to a sink
(`jobctl.render`'s live, plain and JSON views follow the `Sink` protocol).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol  # watch is long-running: typing's start-up cost does not matter

if TYPE_CHECKING:
    from collections.abc import Mapping

    from jobctl.store.base import Waker

from jobctl import model
from jobctl.api import Jobctl
from jobctl.model import TERMINAL, not_found
from jobctl.progress import empty_counts, fold_event, progress_dict

DEFAULT_POLL_INTERVAL = 1.0
PAGE = 2000  # events read at a time: a long replay streams, and --timeout is checked between pages


@dataclass
class Update:
    """One event of the watched tree, with the watched job's progress after it."""

    event: dict
    progress: dict
    replay: bool  # from --since/--from-start history rather than live


class Sink(Protocol):
    """Where a watch goes: render.LiveWatch (a terminal), PlainWatch (lines)
    and JsonWatch (NDJSON) follow this. `end`'s code is None for `wait`,
    which reports each job without an exit code of its own."""

    def start(self, job: Mapping, progress: Mapping, cursor: int) -> None: ...
    def update(self, update: Update) -> None: ...
    def stale(self, new: Mapping[str, float], all_stale: list, progress: Mapping) -> None: ...
    def end(self, job: Mapping, progress: Mapping, reason: str, code: int | None) -> None: ...


@dataclass
class Tail:
    """Follows one job: its subtree's events in id order and its progress."""

    jc: Jobctl
    job_id: str
    job: dict = field(default_factory=dict)
    subtree: set | None = None  # ids of the tree below a non-root job; None: all of root_id's
    counts: dict = field(default_factory=empty_counts)
    cursor: int = 0
    live_from: int = 0
    more: bool = False  # the last read stopped at a page boundary: read again before waiting

    @classmethod
    def start(cls, jc: Jobctl, job_id: str, since: int | None = None) -> "Tail":
        """Read the job's state, its progress and the cursor in one snapshot.

        With `since`, the cursor is put back to that event id and the counts to
        what they were then, so the replayed events show the progress of their time.
        """
        if since is not None:
            model.check_since(since)
        store = jc.store
        with store.read():
            job = store.get_job(job_id)
            if job is None:
                raise not_found(job_id)
            # A root's tree is everything with its root_id: no id set to keep in memory.
            subtree = None if job["parent_id"] is None else {r["id"] for r in store.subtree(job_id)}
            tail = cls(jc, job_id, job=job, subtree=subtree)
            tail.live_from = store.last_event_id()
            if since is None:
                tail.cursor = tail.live_from
                tail.counts = store.get_counts([job_id])[job_id]
            else:
                tail.cursor = min(since, tail.live_from)
                tail.job["status"] = model.PENDING  # as created; its own events up to the cursor follow
                for e in store.child_events(job_id, until=tail.cursor):
                    tail.apply(e)
        return tail

    def apply(self, e: dict) -> None:
        """Fold one event of the job or of a direct child into its status and counts."""
        fold_event(self.counts, self.job_id, e)
        if e["job_id"] == self.job_id and e["new_status"] is not None:
            self.job["status"] = e["new_status"]

    @property
    def status(self) -> str:
        return self.job["status"]

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def finished(self) -> bool:
        """Final, with the replay (if any) read to the end: nothing more to follow."""
        return self.done and self.cursor >= self.live_from and not self.more

    def progress(self) -> dict:
        return progress_dict(self.job_id, self.status, self.counts)

    def read(self) -> list[Update]:
        """The new events of the watched tree since the cursor, folded into the progress.

        Stops after the event that makes the job final (when live), so the
        last progress is the final one.
        """
        rows, cursor, self.more = self.jc.tree_events(self.cursor, self.job["root_id"], self.subtree, PAGE)
        updates = []
        for e in rows:
            self.apply(e)
            replay = e["id"] <= self.live_from
            updates.append(Update(e, self.progress(), replay))
            if not replay and self.done:
                cursor, self.more = e["id"], False
                break
        self.cursor = cursor
        if not self.more:
            # Every event of this tree up to now has been read; the newest event at
            # start may belong to another tree, so the cursor alone would not reach it.
            self.cursor = max(self.cursor, self.live_from)
        return updates


def waker_for(jc: Jobctl, poll_interval: float) -> Waker:
    model.check_seconds(poll_interval, "--poll-interval", zero=False)
    return jc.store.waker(poll_interval)


def follow(
    tails: list[Tail], waker: Waker, poll_interval: float, timeout: float | None, on_update, on_done, on_tick=None
) -> bool:
    """Feed every tail's updates to on_update(tail, update) and call on_done(tail)
    as each one's job ends, until all have ended (True) or `timeout` runs out (False).
    on_tick(), if given, runs once per wake-up or poll interval."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(tails)
    changed = True
    while True:
        for tail in list(pending) if changed else ():
            for update in tail.read():
                on_update(tail, update)
            if tail.finished:
                pending.remove(tail)
                on_done(tail)
        if not pending:
            return True
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        if any(t.more for t in pending):
            changed = True  # a long backlog: the next page at once
            continue
        if on_tick is not None:
            on_tick()
        changed = waker.wait(poll_interval if remaining is None else remaining)


def exit_code_for(status: str) -> int:
    return model.EXIT_FOR_STATUS.get(status, model.EXIT_OK)


class StaleCheck:
    """Tells the sink which running children of the job have stopped beating
    (the later of start and last heartbeat older than `stale_after` seconds), once each."""

    def __init__(self, tail: Tail, stale_after: float, sink, on_stale=None):
        self.tail, self.stale_after, self.sink, self.on_stale = tail, stale_after, sink, on_stale
        self.marked: set[str] = set()

    def __call__(self) -> None:
        stale = self.tail.jc.stale_children(self.tail.job_id, self.stale_after)
        new = {k: v for k, v in stale.items() if k not in self.marked}
        self.marked = set(stale)
        if new:
            self.sink.stale(new, sorted(self.marked), self.tail.progress())
            if self.on_stale is not None:
                self.on_stale(list(new))


def run_watch(
    jc: Jobctl,
    job_id: str,
    sink,
    *,
    since: int | None = None,
    timeout: float | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    exit_status: bool = False,
    stale_after: float | None = None,
    on_stale=None,
) -> int:
    """`jobctl watch`: the start state, then every event of the tree, then a summary.

    Returns the exit code: 0 when the job ends (with `exit_status`: 0 completed,
    1 failed, 6 cancelled), 124 on timeout, 130 on Ctrl-C. With `stale_after`,
    running children without a recent heartbeat are reported as stale.
    """
    model.check_seconds(timeout, "--timeout")
    tail = Tail.start(jc, job_id, since=since)
    waker = waker_for(jc, poll_interval)
    on_tick = StaleCheck(tail, stale_after, sink, on_stale) if stale_after is not None else None
    try:
        sink.start(tail.job, tail.progress(), tail.cursor)
        if on_tick is not None:
            on_tick()
        finished = follow([tail], waker, poll_interval, timeout, lambda t, u: sink.update(u), lambda t: None, on_tick)
    except KeyboardInterrupt:
        sink.end(tail.job, tail.progress(), "interrupted", model.EXIT_INTERRUPTED)
        return model.EXIT_INTERRUPTED
    finally:
        waker.close()
    if not finished:
        sink.end(tail.job, tail.progress(), "timeout", model.EXIT_TIMEOUT)
        return model.EXIT_TIMEOUT
    code = exit_code_for(tail.status) if exit_status else model.EXIT_OK
    sink.end(tail.job, tail.progress(), "", code)
    return code


def run_wait(
    jc: Jobctl,
    job_ids: list[str],
    report,
    *,
    timeout: float | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
) -> int:
    """`jobctl wait`: report(job, progress, reason) once per job as it ends (or
    times out); the worst outcome is the exit code."""
    model.check_seconds(timeout, "--timeout")
    tails = [Tail.start(jc, j) for j in dict.fromkeys(job_ids)]
    codes = []

    def done(tail: Tail) -> None:
        codes.append(exit_code_for(tail.status))
        report(tail.job, tail.progress(), "")

    waker = waker_for(jc, poll_interval)
    try:
        finished = follow(tails, waker, poll_interval, timeout, lambda t, u: None, done)
    except KeyboardInterrupt:
        return model.EXIT_INTERRUPTED
    finally:
        waker.close()
    if not finished:
        for tail in tails:
            if not tail.finished:
                report(tail.job, tail.progress(), "timeout")
        codes.append(model.EXIT_TIMEOUT)
    return max(codes, key=lambda c: model.SEVERITY[c])
