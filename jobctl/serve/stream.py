"""The live feed behind `/api/stream`: database events turned into stream
messages, exactly and resumably. No web framework here (see `jobctl.serve.web`).

Messages
--------
Every event of kind `create` or `status` (a status change; `new → pending` for
a created job) gives:

- a job without a parent: one `parent_job_progress` message for the job;
- a job with a parent: a `child_status_change` message keyed by the parent
  (`child_id`, `old_status`, `new_status`, and the change's `message`), then
  a `parent_job_progress` message for the parent (its status and child
  counts after the change).

A `log` event gives one `log` message. Every message carries `event_id` (the
event's id), `root_id` and `timestamp` (the event's time).

Texts
-----
The page only places what it shows: every text is rendered here, by the
same functions the CLI uses (`jobctl.progress`, `jobctl.model`), so no text
rule lives in JavaScript. `text` is the line the event adds to its own job's
log (`logs JOB`: `status changed: running → failed (attempt 1/3): exit code 1`),
`parent_text` the line it adds to its parent's (`logs PARENT --children`;
None without a parent, or for a creation); a `parent_job_progress` message
has a `text` only for the job's own change (else the `child_status_change`
before it has it). The job a message is about (the child, for a change)
comes with its `started_at` and `completed_at` as they were just after the
event and `duration_text` once it ended (a running job's clock the page
ticks itself); a progress message with `percent_done` and `done_text` of its
children too. All are functions of the event and the folded state only, so
the hub and a replay still make the same bytes.

The messages of an event are a pure function of the database at that event:
the hub (live) and a replay (a client resuming from an old cursor) compute
the same bytes for the same event. That is what makes resuming exact.

Cursors
-------
The SSE id of a message is `N` for the last (or only) message of event N and
`N.k` for message k before it, so a client that lost its connection half-way
through an event's messages (`Last-Event-ID: N.0`) resumes with message 1 of
event N: no gap, no duplicate. `N` alone means "everything of event N".

Progress at a cursor
--------------------
`state_at(jc, at, ids)` gives jobs' status and child counts as they were
just after event `at`: in one read snapshot, the kept counts and statuses
(as of the snapshot's last event S) with the events (at, S] unfolded. It
costs what lies between `at` and now, not a job's whole history, so a job
with a million children is as cheap as one with three.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from jobctl import model
from jobctl.backoff import Backoff
from jobctl.model import CREATE, LOG, STATUS, STATUSES, duration_text, job_seconds
from jobctl.progress import (
    after_text,
    counts_of,
    done_text,
    empty_counts,
    fold,
    held_text,
    log_text,
    percent_done,
    progress_dict,
)

if TYPE_CHECKING:
    from jobctl.api import Jobctl

PROGRESS = "parent_job_progress"
CHILD = "child_status_change"
LOG_MESSAGE = "log"
PAGE = 2000  # events read at a time
MAX_TRACKED = 50_000  # jobs whose progress the hub keeps; past it, it forgets them all and reloads as needed
STOP_CHECK = 0.25  # the longest the hub waits between looks at its stop flag (and the events)

Cursor = tuple[int, int | None]  # (event id, index of the last message sent of it; None: all of them)
Event = tuple[int, list[bytes]]  # an event id and its encoded messages (possibly none)


# ---------------------------------------------------------------- cursors
def parse_cursor(text: str) -> Cursor:
    """`N` or `N.k` (an SSE id) -> (N, None) or (N, k). Raises ValueError."""
    head, dot, tail = text.strip().partition(".")
    if not (head.isascii() and head.isdigit()) or (dot and not (tail.isascii() and tail.isdigit())) or len(head) > 19:
        raise ValueError(text)
    n = int(head)
    return (n, int(tail) if dot else None)


def after(cursor: Cursor, event_id: int, index: int) -> bool:
    """Whether message `index` of event `event_id` comes after `cursor`."""
    n, k = cursor
    return event_id > n or (event_id == n and k is not None and index > k)


def replay_from(cursor: Cursor) -> int:
    """The event id to read after to resume from `cursor`."""
    n, k = cursor
    return n if k is None else n - 1


# --------------------------------------------------------------- the fold
def needs(e: Mapping) -> str | None:
    """The job whose progress event `e`'s messages carry: its parent's, or its own for a job without one."""
    if e["kind"] not in (CREATE, STATUS):
        return None
    return e["parent_id"] if e["parent_id"] is not None else e["job_id"]


def times(job: Mapping) -> dict:
    """A job's status timestamps, and how long it ran once it ended (None before:
    the page ticks a running job's clock from started_at itself)."""
    seconds = job_seconds(job) if job["completed_at"] else None
    return {
        "started_at": job["started_at"],
        "completed_at": job["completed_at"],
        "duration_text": duration_text(seconds) if seconds is not None else None,
    }


def done(counts: Mapping[str, int] | None) -> dict:
    """How many of a job's children finished, as the page shows it (None without children)."""
    if not counts or not any(counts.values()):
        return {"percent_done": None, "done_text": None}
    return {"percent_done": percent_done(counts), "done_text": done_text(counts)}


def job_texts(job: Mapping) -> dict:
    """What the page shows of a job row (the API's) beyond its fields: times(), done(),
    and what it waits on: `after_text` (every job, with its status) and `waiting_text`
    (while pending: `waiting on P.2`), None for neither."""
    return {
        **times(job),
        **done(counts_of(job["progress"]) if job.get("progress") else None),
        "after_text": after_text(job.get("after") or ()) or None,
        "waiting_text": held_text(job.get("waiting_on") or ()) or None,
    }


class Folder:
    """The status, child counts and parent of the jobs the messages speak of,
    and the status timestamps of every job an event speaks of, folded event by
    event. Loaded (exactly, for a cursor) with state_at() and load_times()."""

    def __init__(self) -> None:
        self.jobs: dict[str, list] = {}  # id -> [status, counts, parent_id]
        self.times: dict[str, dict] = {}  # id -> {"started_at", "completed_at", ...} (model.enter_status)

    def missing(self, events: Iterable[Mapping]) -> set[str]:
        return {n for e in events if (n := needs(e)) is not None and n not in self.jobs}

    def load(self, state: Mapping[str, list]) -> None:
        self.jobs.update(state)

    def clear(self) -> None:
        self.jobs.clear()
        self.times.clear()

    def load_times(self, jc: Jobctl, rows: Sequence[Mapping]) -> None:
        """Before the messages of `rows` (a page of consecutive events): the status
        timestamps, as of the event before the page, of the jobs they speak of
        that are not folded yet (Jobctl.times_at). Past MAX_TRACKED it forgets
        them all first: what is reloaded is the same, the events before the
        page never change."""
        if len(self.times) > MAX_TRACKED:
            self.times.clear()
        wanted = {n for e in rows if (n := needs(e)) is not None}
        wanted |= {e["job_id"] for e in rows if e["kind"] in (CREATE, STATUS)}
        wanted -= self.times.keys()
        if wanted:
            found = jc.times_at(sorted(wanted), rows[0]["id"] - 1)
            for job_id in wanted:
                self.times[job_id] = found.get(job_id) or {"status": None, "started_at": None, "completed_at": None}

    def messages(self, e: Mapping) -> list[dict]:
        kind = e["kind"]
        if kind == LOG:
            return [
                {
                    "type": LOG_MESSAGE,
                    "job_id": e["job_id"],
                    "parent_id": e["parent_id"],
                    "level": e["level"] or "info",
                    "message": e["message"],
                    "text": log_text(e, True, {}),
                    "parent_text": log_text(e, False, {}) if e["parent_id"] is not None else None,
                    "timestamp": e["at"],
                    "root_id": e["root_id"],
                    "event_id": e["id"],
                }
            ]
        if kind not in (CREATE, STATUS):
            return []
        job_id, parent_id = e["job_id"], e["parent_id"]
        own = self.jobs.get(job_id)
        if own is not None:
            own[0] = e["new_status"]
        model.enter_status(self.times[job_id], e["new_status"], e["at"])
        if parent_id is None:
            return [self._progress(job_id, e)]
        counts = self.jobs[parent_id][1]
        fold(counts, e["old_status"], e["new_status"])
        change = {
            "type": CHILD,
            "job_id": parent_id,
            "child_id": job_id,
            "old_status": e["old_status"],
            "new_status": e["new_status"],
            "message": e["message"],
            "text": log_text(e, True, counts),
            "parent_text": log_text(e, False, counts),
            **times(self.times[job_id]),
            "timestamp": e["at"],
            "root_id": e["root_id"],
            "event_id": e["id"],
        }
        return [change, self._progress(parent_id, e)]

    def _progress(self, job_id: str, e: Mapping) -> dict:
        status, counts, parent_id = self.jobs[job_id]
        return {
            "type": PROGRESS,
            **progress_dict(job_id, status, counts),
            "text": log_text(e, True, counts) if e["job_id"] == job_id else None,
            **times(self.times[job_id]),
            **done(counts),
            "timestamp": e["at"],
            "parent_id": parent_id,
            "root_id": e["root_id"],
            "event_id": e["id"],
        }


def encode(event_id: int, messages: Sequence[dict]) -> list[bytes]:
    """The SSE form of one event's messages: ids `N.0`, `N.1`, ..., and `N` for the last."""
    out = []
    last = len(messages) - 1
    for i, m in enumerate(messages):
        mid = str(event_id) if i == last else f"{event_id}.{i}"
        data = json.dumps(m, ensure_ascii=False, separators=(",", ":"))
        out.append(f"id: {mid}\ndata: {data}\n\n".encode())
    return out


# ------------------------------------------------------- reading the past
def scan(jc: Jobctl, since: int, until: int | None = None, page: int = PAGE) -> Iterator[list[dict]]:
    """Pages of the events after `since` (up to `until`), in id order: the one event feed's."""
    return jc.feed(since, page=page).pages(until)


def discover(jc: Jobctl, since: int, until: int) -> set[str]:
    """The jobs whose progress the messages of events (since, until] carry."""
    out: set[str] = set()
    for rows in scan(jc, since, until):
        out.update(n for e in rows if (n := needs(e)) is not None)
    return out


def state_at(jc: Jobctl, at: int, ids: Iterable[str]) -> dict[str, list]:
    """{id: [status, child counts, parent id]} of the jobs `ids` just after event `at`
    (status None: the job did not exist yet). One read snapshot: the kept
    counts and statuses now, with the events since `at` unfolded."""
    wanted = set(ids)
    if not wanted:
        return {}
    net: dict[str, dict[str, int]] = {}  # what the events after `at` did to each job's counts
    first_old: dict[str, str | None] = {}  # each job's status before its first change after `at`
    with jc.snapshot():
        for rows in scan(jc, at):
            for e in rows:
                if e["kind"] not in (CREATE, STATUS):
                    continue
                parent, job = e["parent_id"], e["job_id"]
                if parent in wanted:
                    fold(net.setdefault(parent, empty_counts()), e["old_status"], e["new_status"])
                if job in wanted and job not in first_old:
                    first_old[job] = e["old_status"]
        jobs, counts = jc.jobs_and_counts(sorted(wanted))
    state = {}
    for job_id, row in jobs.items():
        delta = net.get(job_id)
        c = counts[job_id]
        if delta is not None:
            c = {s: c[s] - delta[s] for s in STATUSES}
        status = first_old[job_id] if job_id in first_old else row["status"]
        state[job_id] = [status, c, row["parent_id"]]
    return state


def replay(jc: Jobctl, since: int, until: int, page: int = PAGE) -> Generator[list[Event], None, None]:
    """The encoded messages of events (since, until], a page at a time: what the
    hub sent live for them, computed from the database."""
    if until <= since:
        return
    folder = Folder()
    folder.load(state_at(jc, since, discover(jc, since, until)))
    for rows in scan(jc, since, until, page):
        folder.load_times(jc, rows)
        yield [(e["id"], encode(e["id"], folder.messages(e))) for e in rows]


# -------------------------------------------------------------------- hub
class Hub:
    """The one database watcher of a server: a thread that follows the events
    table with the store's waker, turns each new event into its messages once,
    and hands every batch to `deliver(batch, cursor)` (which fans it out to the
    clients). `cursor` is the id of the last event handed over."""

    def __init__(self, jc: Jobctl, deliver: Callable[[list[Event], int], None], poll_interval: float = 1.0):
        self.jc = jc  # the hub's own connection: used by its thread only
        self.deliver = deliver
        self.poll_interval = poll_interval
        self.feed = jc.feed(jc.last_event_id(), page=PAGE, poll_interval=poll_interval)
        self.folder = Folder()
        self.mode = "?"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobctl-serve-hub", daemon=True)

    def start(self) -> None:
        """Start watching: the waker is made here, so once this returns every commit wakes the hub."""
        self.feed.listen()
        self.mode = self.feed.mode
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def step(self) -> bool:
        """Read and hand over the next page of events; True if there may be more."""
        before = self.feed.cursor
        rows = self.feed.read()
        if not rows:
            return False
        try:
            missing = self.folder.missing(rows)
            if missing and len(self.folder.jobs) + len(missing) > MAX_TRACKED:
                self.folder.jobs.clear()  # forget; what is needed is reloaded exactly below
                missing = self.folder.missing(rows)
            if missing:
                self.folder.load(state_at(self.jc, before, missing))
            self.folder.load_times(self.jc, rows)
            batch = [(e["id"], encode(e["id"], self.folder.messages(e))) for e in rows]
        except BaseException:
            self.feed.cursor = before  # nothing of this page was handed over: read it again
            raise
        self.deliver(batch, self.feed.cursor)
        return self.feed.more

    @property
    def cursor(self) -> int:
        """The id of the last event handed over."""
        return self.feed.cursor

    def _run(self) -> None:
        backoff = Backoff(0.5, 5.0)
        try:
            while not self._stop.is_set():
                try:
                    while self.step() and not self._stop.is_set():
                        pass
                    backoff.reset()
                    self.feed.wait(min(self.poll_interval, STOP_CHECK))
                except Exception as exc:  # a database hiccup must not end the feed: say so, retry
                    sys.stderr.write(f"jobctl: serve: reading events failed ({exc}); retrying\n")
                    self.folder.clear()  # whatever a half-done step folded is reloaded exactly
                    backoff.sleep(self._stop.wait)
        finally:
            self.feed.close()
            self.jc.close()
