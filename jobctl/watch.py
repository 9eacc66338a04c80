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

import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol  # watch is long-running: typing's start-up cost does not matter

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from jobctl.feed import EventFeed
    from jobctl.store.base import Waker

from jobctl import model
from jobctl.api import Jobctl
from jobctl.console import info
from jobctl.feed import JobFold
from jobctl.model import TERMINAL, not_found
from jobctl.progress import empty_counts

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

    def start(self, job: Mapping, progress: Mapping, cursor: int, earlier: int = 0) -> None:
        """`earlier`: how many events of the job's tree came before the watch (0 when replaying)."""

    def update(self, update: Update) -> None: ...
    def stale(self, new: Mapping[str, float], all_stale: list, progress: Mapping) -> None: ...
    def end(
        self, job: Mapping, progress: Mapping, reason: str, code: int | None, failures: Failures | None = None
    ) -> None: ...


class Tail:
    """Follows one job: its subtree's events in id order (an EventFeed kept to
    the job's tree) folded into its status and progress (a JobFold)."""

    def __init__(self, jc: Jobctl, feed: EventFeed, fold: JobFold, live_from: int):
        self.jc = jc
        self.feed = feed
        self.fold = fold
        self.job = fold.job
        self.job_id: str = fold.job["id"]
        self.counts = fold.counts
        self.live_from = live_from  # events up to here are history (replayed), after it live
        # `run --each`: the children it created, with their statuses as the events
        # say; when given, the watch ends with them (not with the job)
        self.own: dict[str, str | None] | None = None

    @classmethod
    def start(cls, jc: Jobctl, job_id: str, since: int | None = None) -> Tail:
        """Read the job's state, its progress and the cursor in one snapshot.

        With `since`, the cursor is put back to that event id and the counts to
        what they were then, so the replayed events show the progress of their time.
        """
        if since is not None:
            model.check_since(since)
        with jc.snapshot():
            job = jc.find(job_id)
            if job is None:
                raise not_found(job_id)
            # A root's tree is everything with its root_id: no id set to keep in memory.
            subtree = None if job["parent_id"] is None else jc.subtree_ids(job_id)
            live_from = jc.last_event_id()
            if since is None:
                fold = JobFold(job, jc.counts(job_id))
            else:
                job["status"] = model.PENDING  # as created; its own events up to the cursor follow
                fold = JobFold(job, empty_counts())
                for e in jc.child_events(job_id, until=min(since, live_from)):
                    fold.apply(e)
        cursor = live_from if since is None else min(since, live_from)
        feed = jc.feed(cursor, root_id=job["root_id"], ids=subtree, page=PAGE)
        return cls(jc, feed, fold, live_from)

    @property
    def cursor(self) -> int:
        return self.feed.cursor

    @property
    def more(self) -> bool:
        """The last read stopped at a page boundary: read again before waiting."""
        return self.feed.more

    @property
    def status(self) -> str:
        return self.fold.status

    @property
    def done(self) -> bool:
        if self.own is not None:
            return all(s in TERMINAL for s in self.own.values())
        return self.status in TERMINAL

    @property
    def finished(self) -> bool:
        """Final, with the replay (if any) read to the end: nothing more to follow."""
        return self.done and self.cursor >= self.live_from and not self.more

    def progress(self) -> dict:
        return self.fold.progress()

    def earlier_events(self) -> int:
        """How many events of the watched tree came before the watch started, but creations:
        changes and log lines the watcher has not seen."""
        return self.jc.count_events(self.job["root_id"], self.live_from, self.feed.ids)

    def read(self) -> list[Update]:
        """The new events of the watched tree since the cursor, folded into the progress.

        Stops after the event that makes the job final (when live), so the
        last progress is the final one; with `own`, reads all there is.
        """
        updates = []
        for e in self.feed.read():
            self.fold.apply(e)
            if self.own is not None and e["new_status"] is not None and e["job_id"] in self.own:
                self.own[e["job_id"]] = e["new_status"]
            replay = e["id"] <= self.live_from
            updates.append(Update(e, self.progress(), replay))
            if not replay and self.done and self.own is None:
                self.feed.cursor, self.feed.more = e["id"], False
                break
            # (with `own`, the rest of what was committed is read too: the parent's
            # change comes after its children's in a transaction, fail-fast's say)
        if not self.feed.more:
            # Every event of this tree up to now has been read; the newest event at
            # start may belong to another tree, so the cursor alone would not reach it.
            self.feed.cursor = max(self.feed.cursor, self.live_from)
        return updates


def waker_for(jc: Jobctl, poll_interval: float) -> Waker:
    model.check_seconds(poll_interval, "--poll-interval", zero=False)
    return jc.waker(poll_interval)


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


@dataclass
class Failures:
    """A job's failed children for the summary: the first few, and how many in all."""

    children: list[dict]  # {id, name, message}
    total: int


def failures_of(tail: Tail) -> Failures | None:
    """What failed below a job that ended failed or cancelled (None otherwise)."""
    if tail.status not in (model.FAILED, model.CANCELLED) or not tail.counts.get(model.FAILED):
        return None
    children, total = tail.jc.failed_children(tail.job_id, limit=SUMMARY_FAILURES)
    return Failures(children, total)


SUMMARY_FAILURES = 10  # failed children named in a summary ("and N more" after them)


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP (what CI sends a cancelled pipeline's steps): handled like Ctrl-C."""


@contextmanager
def signals_as_interrupts() -> Iterator[dict]:
    """While following, SIGTERM and SIGHUP interrupt like Ctrl-C; the dict says
    which signal came (`signum`), so the exit status can be 128 + it."""
    got: dict = {}

    def handler(signum, frame):
        got["signum"] = signum
        raise Signalled()

    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    try:
        old = {sig: signal.signal(sig, handler) for sig in wanted}
    except ValueError:  # not the main thread: leave the signals alone
        old = {}
    try:
        yield got
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def interrupted(got: dict) -> tuple[str, int]:
    """The reason and exit status for an interruption: Ctrl-C 130, SIGTERM 143, SIGHUP 129."""
    signum = got.get("signum")
    if signum is None:
        return "interrupted", model.EXIT_INTERRUPTED
    name = {getattr(signal, "SIGTERM", -1): "terminated", getattr(signal, "SIGHUP", -1): "hung up"}.get(
        signum, "signal"
    )
    return name, 128 + signum


def wait_for_jobs(jc: Jobctl, job_ids: list[str], waker: Waker, poll_interval: float, deadline: float | None) -> bool:
    """Block until every job exists (--wait-for-create); False if `deadline` passes first."""
    while True:
        missing = [j for j in job_ids if jc.find(j) is None]
        if not missing:
            return True
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            info(f"job {', '.join(missing)} was not created within the timeout")
            return False
        waker.wait(poll_interval if remaining is None else remaining)


def run_watch(
    jc: Jobctl,
    job_id: str,
    sink: Sink,
    *,
    since: int | None = None,
    timeout: float | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    exit_status: bool = False,
    strict: bool = False,
    stale_after: float | None = None,
    wait_for_create: bool = False,
    on_stale=None,
    on_interrupt=None,
    own: list[str] | None = None,
) -> int:
    """`jobctl watch`: the start state, then every event of the tree, then a summary.

    Returns the exit code: 0 when the job ends (with `exit_status`: 0 completed,
    1 failed, 6 cancelled; with `strict` also 1 for a cancelled job or child),
    124 on timeout, 130 on Ctrl-C, 143 on SIGTERM, 129 on SIGHUP. With
    `stale_after`, running children without a recent heartbeat are reported as
    stale; with `wait_for_create`, a job that does not exist yet is waited for.
    `on_interrupt()` (run --each: stop the commands, cancel the parent) runs
    before the summary of an interrupted watch, which then shows its end.
    With `own` (`run --each`: the children it created, whose create events
    come after `since`), the watch ends when they have ended, and the exit code
    is theirs (model.exit_code_of).
    """
    model.check_seconds(timeout, "--timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    waker = waker_for(jc, poll_interval)
    tail = None
    with signals_as_interrupts() as got:
        try:
            if wait_for_create and not wait_for_jobs(jc, [job_id], waker, poll_interval, deadline):
                return model.EXIT_TIMEOUT
            tail = Tail.start(jc, job_id, since=since)
            if own is not None:
                tail.own = dict.fromkeys(own)
            on_tick = StaleCheck(tail, stale_after, sink, on_stale) if stale_after is not None else None
            earlier = tail.earlier_events() if since is None else 0
            sink.start(tail.job, tail.progress(), tail.cursor, earlier)
            if on_tick is not None:
                on_tick()
            remaining = None if deadline is None else deadline - time.monotonic()
            finished = follow(
                [tail], waker, poll_interval, remaining, lambda t, u: sink.update(u), lambda t: None, on_tick
            )
        except KeyboardInterrupt:
            reason, code = interrupted(got)
            if tail is not None:
                if on_interrupt is not None:
                    on_interrupt()
                    while True:  # what it did (a cancel) is the end: shown, then summed up
                        for update in tail.read():
                            sink.update(update)
                        if not tail.more:
                            break
                sink.end(tail.job, tail.progress(), reason, code)
            return code
        except model.DatabaseUnusable:  # deleted, replaced, or the server gone for good
            if tail is not None:
                sink.end(tail.job, tail.progress(), "database unusable", model.EXIT_DATABASE)
            raise
        finally:
            waker.close()
    if not finished:
        sink.end(tail.job, tail.progress(), "timeout", model.EXIT_TIMEOUT)
        return model.EXIT_TIMEOUT
    code = model.exit_code_for(tail.status, tail.counts, strict=strict) if exit_status else model.EXIT_OK
    if tail.own is not None and exit_status:
        code = model.exit_code_of(tail.own.values())
    sink.end(tail.job, tail.progress(), "", code, failures_of(tail))
    return code


def run_wait(
    jc: Jobctl,
    job_ids: list[str],
    report,
    *,
    timeout: float | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    strict: bool = False,
    wait_for_create: bool = False,
) -> int:
    """`jobctl wait`: report(job, progress, reason, failures) once per job as it
    ends (or times out); the worst outcome is the exit code."""
    model.check_seconds(timeout, "--timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    ids = list(dict.fromkeys(job_ids))
    codes = []

    def done(tail: Tail) -> None:
        codes.append(model.exit_code_for(tail.status, tail.counts, strict=strict))
        report(tail.job, tail.progress(), "", failures_of(tail))

    waker = waker_for(jc, poll_interval)
    with signals_as_interrupts() as got:
        try:
            if wait_for_create and not wait_for_jobs(jc, ids, waker, poll_interval, deadline):
                return model.EXIT_TIMEOUT
            tails = [Tail.start(jc, j) for j in ids]
            remaining = None if deadline is None else deadline - time.monotonic()
            finished = follow(tails, waker, poll_interval, remaining, lambda t, u: None, done)
        except KeyboardInterrupt:
            return interrupted(got)[1]
        finally:
            waker.close()
    if not finished:
        for tail in tails:
            if not tail.finished:
                report(tail.job, tail.progress(), "timeout", None)
        codes.append(model.EXIT_TIMEOUT)
    return max(codes, key=lambda c: model.SEVERITY[c])
