"""The tail loop behind `jobctl watch` and `jobctl wait`.

One long-lived read connection (opening one per wake-up would touch the -wal
file and wake the watcher forever). watchfiles watches the database's
directory, filtered to the database file and its -wal (watching the .db alone
sees no WAL commits; watching the -wal itself goes deaf once SQLite deletes
it). Every wake-up is only a hint: the truth is `SELECT ... WHERE id > cursor`.
A timer checks `PRAGMA data_version` every poll interval too, so a missed
notification costs at most that interval; JOBCTL_WATCH_POLL=1 forces polling
only. Progress is counted once at start and then folded per event in O(1).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from jobctl import model
from jobctl.api import Jobctl
from jobctl.model import CREATE, STATUS, TERMINAL, NotFound, UsageError
from jobctl.progress import empty_counts, fold, progress_dict

DEFAULT_POLL_INTERVAL = 1.0
STEP_MS = 5  # once a change came, how long to wait for more (bench: 10 ms gave p50 16 ms; 2 ms cost 2% CPU idle)
DEBOUNCE_MS = 20  # the most it groups changes for, under a constant stream of commits
PAGE = 2000  # events read at a time: a long replay streams, and --timeout is checked between pages


@dataclass
class Update:
    """One event of the watched tree, with the watched job's progress after it."""

    event: dict
    progress: dict
    replay: bool  # from --since/--from-start history rather than live


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
        if since is not None and not 0 <= since <= model.MAX_INT:
            raise UsageError(f"--since takes an event id (0 or more), not {since}")
        store = jc.store
        with store.read():
            job = store.get_job(job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
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
        if e["kind"] not in (CREATE, STATUS):
            return
        if e["parent_id"] == self.job_id:
            fold(self.counts, e["old_status"], e["new_status"])
        if e["job_id"] == self.job_id:
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
        rows = self.jc.store.events(since=self.cursor, root_id=self.job["root_id"], limit=PAGE)
        self.more = len(rows) == PAGE
        updates = []
        for e in rows:
            self.cursor = e["id"]
            if not model.in_tree(self.subtree, e):
                continue
            self.apply(e)
            replay = e["id"] <= self.live_from
            updates.append(Update(e, self.progress(), replay))
            if not replay and self.done:
                self.more = False
                break
        if not self.more:
            # Every event of this tree up to now has been read; the newest event at
            # start may belong to another tree, so the cursor alone would not reach it.
            self.cursor = max(self.cursor, self.live_from)
        return updates


class Waker:
    """Blocks until the database may have changed, or a timeout."""

    def __init__(self, jc: Jobctl, poll_interval: float = DEFAULT_POLL_INTERVAL,
                 force_poll: bool | None = None):
        model.check_seconds(poll_interval, "--poll-interval", zero=False)
        self.jc = jc
        self.poll_interval = poll_interval
        self.version = jc.store.data_version()
        self.notify = None
        if force_poll is None:
            force_poll = os.environ.get("JOBCTL_WATCH_POLL", "") not in ("", "0")
        if not force_poll:
            try:
                from watchfiles._rust_notify import RustNotify

                directory = os.path.dirname(os.path.abspath(jc.path))
                self.notify = RustNotify([directory], False, False, 50, False, True)
            except Exception:  # no inotify (limits, odd filesystems): poll instead
                self.notify = None
        base = os.path.basename(jc.path)
        self.names = {base, base + "-wal"}

    @property
    def mode(self) -> str:
        return "watchfiles" if self.notify is not None else "polling"

    def wait(self, timeout: float) -> bool:
        """Wait for a commit, at most `timeout` seconds or the poll interval,
        whichever is shorter. True when the database may have changed."""
        limit = max(0.0, min(timeout, self.poll_interval))
        if self.notify is None:
            time.sleep(limit)
            return self._changed()
        raw = self.notify.watch(DEBOUNCE_MS, STEP_MS, max(1, int(limit * 1000)), None)
        if raw == "signal":
            raise KeyboardInterrupt
        changed = self._changed()
        if isinstance(raw, set):  # a file event: read even if data_version lags behind it
            return any(os.path.basename(path) in self.names for _, path in raw) or changed
        return changed

    def _changed(self) -> bool:
        version = self.jc.store.data_version()
        changed, self.version = version != self.version, version
        return changed

    def close(self) -> None:
        if self.notify is not None:
            self.notify.close()


def follow(tails: list[Tail], waker: Waker, timeout: float | None, on_update, on_done, on_tick=None) -> bool:
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
        changed = waker.wait(waker.poll_interval if remaining is None else remaining)


def exit_code_for(status: str) -> int:
    return model.EXIT_FOR_STATUS.get(status, model.EXIT_OK)


class StaleCheck:
    """Tells the sink which running children of the job have stopped beating
    (the later of start and last heartbeat older than `stale_after` seconds), once each."""

    def __init__(self, tail: Tail, stale_after: float, sink, on_stale=None):
        self.tail, self.stale_after, self.sink, self.on_stale = tail, stale_after, sink, on_stale
        self.marked: set[str] = set()

    def __call__(self) -> None:
        from datetime import datetime, timezone

        rows = self.tail.jc.store.list_jobs(parent_id=self.tail.job_id,
                                            running_since_before=model.ago(self.stale_after))
        now = datetime.now(timezone.utc)
        stale = {r["id"]: (now - datetime.fromisoformat(max(r["last_heartbeat"] or "", r["started_at"])))
                 .total_seconds() for r in rows}
        new = {k: v for k, v in stale.items() if k not in self.marked}
        self.marked = set(stale)
        if new:
            self.sink.stale(new, sorted(self.marked), self.tail.progress())
            if self.on_stale is not None:
                self.on_stale(list(new))


def run_watch(jc: Jobctl, job_id: str, sink, *, since: int | None = None, timeout: float | None = None,
              poll_interval: float = DEFAULT_POLL_INTERVAL, exit_status: bool = False,
              stale_after: float | None = None, on_stale=None) -> int:
    """`jobctl watch`: the start state, then every event of the tree, then a summary.

    Returns the exit code: 0 when the job ends (with `exit_status`: 0 completed,
    1 failed, 6 cancelled), 124 on timeout, 130 on Ctrl-C. With `stale_after`,
    running children without a recent heartbeat are reported as stale.
    """
    model.check_seconds(timeout, "--timeout")
    tail = Tail.start(jc, job_id, since=since)
    waker = Waker(jc, poll_interval)
    sink.start(tail.job, tail.progress(), tail.cursor)
    on_tick = StaleCheck(tail, stale_after, sink, on_stale) if stale_after is not None else None
    try:
        if on_tick is not None:
            on_tick()
        finished = follow([tail], waker, timeout, lambda t, u: sink.update(u), lambda t: None, on_tick)
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


def run_wait(jc: Jobctl, job_ids: list[str], report, *, timeout: float | None = None,
             poll_interval: float = DEFAULT_POLL_INTERVAL) -> int:
    """`jobctl wait`: report(job, progress, reason) once per job as it ends (or
    times out); the worst outcome is the exit code."""
    model.check_seconds(timeout, "--timeout")
    tails = [Tail.start(jc, j) for j in dict.fromkeys(job_ids)]
    codes = []

    def done(tail: Tail) -> None:
        codes.append(exit_code_for(tail.status))
        report(tail.job, tail.progress(), "")

    waker = Waker(jc, poll_interval)
    try:
        finished = follow(tails, waker, timeout, lambda t, u: None, done)
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
