"""The store protocol: what the write path (`jobctl.api`) and the tail loop
(`jobctl.watch`) need from a database, in domain terms. One module per backend
implements it (`jobctl.store.sqlite`, `jobctl.store.postgres`); only those
modules speak SQL, and none of them knows a status rule.

The contract both backends keep
-------------------------------
- **Atomic writes.** Everything done inside one `write()` block commits
  together or not at all, and a read-then-write inside it (a job's status,
  child counts) loses no update. SQLite serialises writers: a write holds the
  database's write lock from its start (`BEGIN IMMEDIATE`). PostgreSQL locks
  the rows a write reads as it reads them (the parents of the jobs it loads are
  checked at the commit instead, and the write runs again if one changed in a
  way that matters: `Retryable`), and takes the write lock (a
  transaction-scoped advisory lock) for its COMMIT batch only, so no writer
  waits for another's round trips; a write that reads more than rows by key
  takes it earlier (`hold_write_lock()`) and keeps it to its end.
- **Child counts change by deltas** (`apply_count_deltas`), never by writing
  back a value read earlier.
- **Event ids are the commit order.** Ids are assigned under the write lock,
  so a transaction's events all have higher ids than those of every
  transaction that committed before it. A reader that has seen event id N
  never later sees a new event with an id <= N: `events(since=cursor)` never
  misses or repeats an event, on either backend.
- **No gaps.** Event ids are consecutive. A rolled-back transaction leaves no
  hole (its ids are handed out again to the next writer, which is safe because
  no reader ever saw them). A gap in ids a reader sees therefore never means
  a lost event.
- **Retries.** A write that fails for a transient reason (serialisation
  failure, deadlock) raises `Retryable` with nothing written; the caller may
  run the whole transaction again. Everything else raises `DatabaseUnusable`
  (exit 5) or a domain error (`IdTaken`).
- **Wake-ups are hints.** `waker()` returns an object whose `wait()` returns
  when the database may have changed (or after the poll interval): the truth
  is always `events(since=cursor)`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from contextlib import AbstractContextManager
    from typing import Protocol
else:
    Protocol = object

from jobctl.model import (
    ACTIVE,
    CANCELLED,
    DEPENDENCY_DONE,
    DEPENDENCY_DONE_ANY,
    STATUS,
    STATUSES,
    DatabaseUnusable,
    entering,
)

JOB_COLUMNS = (
    "id",
    "parent_id",
    "root_id",
    "name",
    "type",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
    "last_heartbeat",
    "metadata",
    "exit_code",  # `jobctl run`: the command's exit status (128 + N for signal N)
    "duration",  # `jobctl run`: how long the command ran, in seconds
    "fail_fast",  # failure policy of a parent (0 or 1): its first failed child fails it and cancels the rest
    "allow_failures",  # failure policy of a parent: "N" or "P%" failed children still complete it (None: 0)
    "max_attempts",  # how many times the job may start (None: unlimited)
    "attempt",  # which attempt this is: 1 at first, one more each time a started job goes back to pending
    "not_before",  # a retry's backoff: `claim` does not take the job before this time
    "is_open",  # a parent more children may come to (1): not derived final until closed
    "max_running",  # a parent's limit: at most this many children running at once (None: no limit)
    "waits",  # how many jobs it waits on (--after, --after-any: the dependencies table's rows of it)
    "waited_on",  # 1 once a job waits on it: a change that ends it failed looks for them (else none is)
)
# What a write transaction reads of a job (jobs_and_counts): what the rules
# need, not names or metadata, nor what a status change always sets
# (completed_at, updated_at: model.enter_status). Each value read costs
# Python's sqlite3 about 0.1 µs: a status change reads two jobs.
CHANGE_COLUMNS = (
    "id",
    "parent_id",
    "root_id",
    "status",
    "started_at",
    "fail_fast",
    "allow_failures",
    "max_attempts",
    "attempt",
    "not_before",
    "is_open",
    "max_running",
    "waits",
    "waited_on",
)
EVENT_COLUMNS = (
    "job_id",
    "parent_id",
    "root_id",
    "kind",
    "old_status",
    "new_status",
    "at",
    "message",
    "log_id",
    "exit_code",  # `jobctl run`'s final status change: the command's exit status
    "duration",  # ... and how long it ran, in seconds
    "attempt",  # create and status events: the job's attempt after the change
    "max_attempts",  # ... and its cap (None: unlimited); a policy event: the new cap
    "fields",  # a JSON object or None: where `run` ran (its running event), the token of run's final write
)

# An event as every reader sees it: a log line's level and text come from logs.
EVENT_SELECT = (
    "SELECT e.id, e.job_id, e.parent_id, e.root_id, e.kind, e.old_status, e.new_status, e.at,"
    " coalesce(l.message, e.message) AS message, l.level AS level, e.exit_code, e.duration,"
    " e.attempt, e.max_attempts"
    " FROM events e LEFT JOIN logs l ON l.id = e.log_id"
)


# The status rules the set-based cancel applies in SQL, built from jobctl.model (said
# there once): the statuses it cancels, what entering cancelled sets, and how that
# moves the parents' kept counts.
def sql_words(words) -> str:
    """Status words as an SQL list of quoted literals, in STATUSES order."""
    return "(" + ", ".join(f"'{w}'" for w in STATUSES if w in words) + ")"


ACTIVE_SQL = sql_words(ACTIVE)
CANCELLED_SQL = f"'{CANCELLED}'"
STATUS_KIND_SQL = f"'{STATUS}'"


def cancel_assignments(mark: str) -> tuple[str, int]:
    """The SET list of cancelling a job (jobctl.model.entering), and how many times it takes
    the change's time as a parameter (`mark`: the store's placeholder)."""
    sets = entering(CANCELLED)
    parts = [f"status = {CANCELLED_SQL}"] + [f"{k} = {mark if v == 'at' else 'NULL'}" for k, v in sets.items()]
    return ", ".join(parts), sum(v == "at" for v in sets.values())


def cancel_count_deltas(count_of) -> str:
    """What cancelling a set of jobs does to each parent's kept counts, as SQL
    values in STATUSES order (`count_of(word)`: the SQL counting those in it):
    each cancelled status loses its jobs, cancelled gains them all."""
    return ", ".join(f"-{count_of(w)}" if w in ACTIVE else "count(*)" if w == CANCELLED else "0" for w in STATUSES)


CHUNK = 500  # values per `IN (...)` list, well below SQLite's variable limit


def ready_sql(job: str) -> str:
    """SQL true when the job `job` (a table alias) waits on nothing (model.releases):
    each job it waits on has completed, or (--after-any) ended."""
    return (
        f"NOT EXISTS (SELECT 1 FROM dependencies d JOIN jobs a ON a.id = d.after_id WHERE d.job_id = {job}.id"
        f" AND (a.status NOT IN {sql_words(DEPENDENCY_DONE_ANY)}"
        f" OR d.any_outcome = 0 AND a.status NOT IN {sql_words(DEPENDENCY_DONE)}))"
    )


# An event's JSON object (`events --json`), built by the database: the keys and
# their order of render.event_json, compact (no spaces), as `sqlite3 -json` prints.
EVENT_JSON_FIELDS = (
    ("id", "e.id"),
    ("job_id", "e.job_id"),
    ("parent_id", "e.parent_id"),
    ("kind", "e.kind"),
    ("old_status", "e.old_status"),
    ("new_status", "e.new_status"),
    ("at", "e.at"),
    ("message", "coalesce(l.message, e.message)"),
    ("level", "l.level"),
    ("exit_code", "e.exit_code"),
    ("duration", "e.duration"),
    ("attempt", "e.attempt"),
    ("max_attempts", "e.max_attempts"),
)


def event_json_select(json_object: str, bare: bool = False) -> str:
    """EVENT_SELECT's rows with `json`: the event as one JSON object's text, made
    by `json_object` (the backend's SQL for it, with {fields}: `'key', value, ...`
    and {columns}: `value AS key, ...`); with id, job_id, parent_id and kind
    (only id if `bare`: a read of every event filters nothing)."""
    fields = ", ".join(f"'{k}', {v}" for k, v in EVENT_JSON_FIELDS)
    columns = ", ".join(f"{v} AS {k}" for k, v in EVENT_JSON_FIELDS)
    keys = "e.id" if bare else "e.id, e.job_id, e.parent_id, e.kind"
    return (
        f"SELECT {keys}, {json_object.format(fields=fields, columns=columns)} AS json"
        " FROM events e LEFT JOIN logs l ON l.id = e.log_id"
    )


# The longest JOBCTL_BUSY_TIMEOUT / JOBCTL_CONNECT_TIMEOUT, in seconds: SQLite's busy timeout and
# PostgreSQL's lock_timeout are 32-bit counts of milliseconds (24.8 days); past that they wrap.
MAX_WAIT = 86_400
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another's lock (JOBCTL_BUSY_TIMEOUT), both stores


def seconds_from_env(name: str, default: float) -> float:
    """A number of seconds from the environment variable `name` (JOBCTL_BUSY_TIMEOUT,
    JOBCTL_CONNECT_TIMEOUT): `default` when unset or empty; from 0 to MAX_WAIT,
    else DatabaseUnusable (exit 5) saying so. The one parser of both stores."""
    import os

    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT:  # (nan and inf too)
        raise DatabaseUnusable(f"{name} must be a number of seconds from 0 to {MAX_WAIT} (a day), not {raw!r}")
    return value


class Retryable(DatabaseUnusable):
    """A write transaction failed for a transient reason and changed nothing: run it again."""


class Lost(DatabaseUnusable):
    """The connection dropped during a write: whether it committed is unknown (its
    COMMIT may have reached the server, its reply lost). The store has ended the
    lost session before its next statement runs (PostgreSQL), so a read then
    sees whether it did."""


class Waker(Protocol):
    """Blocks until the database may have changed (a hint, never the truth)."""

    mode: str  # how it learns of changes: "watchfiles", "polling", "listen"

    def wait(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds (or the poll interval, whichever is
        shorter); True when the database may have changed."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    """One connection to a jobctl database. See the module docstring for the contract."""

    name: str  # what to show a person: the SQLite path, or the URL with any password masked

    # transactions
    def write(self) -> AbstractContextManager[Store]: ...
    def hold_write_lock(self) -> None:
        """Inside write(): hold the write lock from now to the commit (SQLite: held already)."""

    def read(self) -> AbstractContextManager[Store]: ...
    def close(self) -> None: ...

    # jobs
    def get_job(self, job_id: str) -> dict | None: ...
    def jobs_and_counts(
        self, ids: Sequence[str], parents: bool = False
    ) -> tuple[dict[str, dict], dict[str, dict[str, int]]]:
        """The jobs found (by id) and their kept child counts (zeros without children), in one read;
        with `parents`, their parents (and their counts) too, in the same read. A job is
        a dict of CHANGE_COLUMNS only: what a write transaction needs. Inside write(),
        a backend may answer from rows it keeps between its own write transactions,
        as long as they are what the database holds (SQLite: SqliteStore.known)."""
        ...

    def insert_jobs(self, jobs: Sequence[dict]) -> None:
        """All or none: IdTaken if one of the ids exists, with nothing inserted."""

    def insert_children(self, jobs: Sequence[dict], message: str | None, fields: str | None = None) -> None:
        """Insert new pending jobs (every key of JOB_COLUMNS present; a spawn's
        chunk) and a `create` event for each, in their order, carrying `message`,
        `fields` and each job's attempt and cap; all or none: IdTaken if an id is taken."""

    def update_statuses(self, jobs: Iterable[dict]) -> None: ...
    def set_heartbeat(self, job_id: str, at: str) -> bool: ...
    def set_outcome(self, job_id: str, exit_code: int | None, duration: float | None) -> None:
        """Record a command's exit status and run time (`jobctl run`)."""
        ...

    def set_policy(self, job_id: str, fail_fast: int, allow_failures: str | None, max_attempts: int | None) -> None:
        """Write a job's failure policy and attempt cap."""

    def set_fanout(self, job_id: str, is_open: int, max_running: int | None) -> None:
        """Write whether a parent is open (more children may come), and its limit."""

    def cancel_subtree(self, job_id: str, message: str, at: str, *, below: bool = False) -> list[str] | None:
        """Cancel the job (not with `below`: only what is below it) and every
        unfinished descendant in a few set-based statements (a million children
        never pass through Python): a status event each, deepest first (siblings
        newest first), the job's own last; the rows; the kept counts of every
        parent inside the subtree (the job's own parent is the caller's, with the
        roll-up). Returns the ids cancelled, in event order; None, with nothing
        written, when the subtree holds a final job with an unfinished child
        (only --force makes one), whose status must be derived again job by job."""

    def last_child_number(self, parent_id: str) -> int:
        """The highest N of any job id `<parent_id>.N`."""

    def subtree(self, job_id: str) -> list[dict]:
        """The job and its descendants, parents before children, each with `depth`."""

    def walk(self, job_id: str, *, max_depth: int | None = None, limit: int | None = None) -> Iterator[dict]:
        """The job and its descendants depth-first (each child right after its parent,
        siblings oldest first), each with `depth`, streamed. Empty if there is no such job."""
        ...

    def list_jobs(
        self,
        *,
        parent_id: str | None = None,
        statuses: Sequence[str] | None = None,
        type: str | None = None,
        alive_before: str | None = None,
        limit: int | None = None,
        top_level: bool = False,
        newest_first: bool = False,
    ) -> Iterator[dict]:
        """Oldest first (or newest), any of `statuses`, only roots with `top_level`.
        alive_before is the stale rule: jobs without children whose later of
        start and last heartbeat is older; rows get `alive_at`."""

    def next_child(self, parent_id: str, status: str, ready_at: str | None = None) -> dict | None:
        """The oldest child of `parent_id` with `status` (and, with `ready_at`, no
        `not_before` later than it), locked for this write transaction;
        concurrent callers never get the same row."""

    def insert_dependencies(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """Record what new jobs wait on: (job_id, after_id, any_outcome) rows, and
        mark each job waited on (`waited_on`)."""

    def dependencies_of(self, job_ids: Sequence[str], *, locked: bool = False) -> list[dict]:
        """What the jobs wait on: {job_id, after_id, any_outcome, status} (the status
        of the job waited on), by job_id then after_id. Inside a write, `locked`
        keeps what was read true until the commit (PostgreSQL: the write lock)."""
        ...

    def dependents(self, after_ids: Sequence[str], status: str) -> list[dict]:
        """The jobs in `status` that wait on any of `after_ids`: {job_id, after_id,
        any_outcome}, by after_id then job_id. Inside a write, what it read
        stays true until the commit (PostgreSQL: it takes the write lock)."""
        ...

    def required_by(self, job_ids: Sequence[str]) -> list[str]:
        """The jobs that cannot end before one of `job_ids` does: their parents and
        the jobs waiting on them (for model.dependency_cycle)."""
        ...

    def all_dependencies(self) -> dict[str, list[tuple[str, int]]]:
        """Every job's dependencies, [(after_id, any_outcome)] sorted (for verify)."""
        ...

    def next_ready_at(self, parent_id: str, status: str) -> str | None:
        """The earliest `not_before` of the children of `parent_id` with `status`
        that have one (when a backed-off retry may be claimed)."""

    def child_marked(self, parent_id: str, status: str, mark: str) -> str | None:
        """The child of `parent_id` with `status` whose current attempt's event into
        it has fields containing the text `mark` (a claim's token), or None."""

    # child counts
    def get_counts(self, parent_ids: Sequence[str]) -> dict[str, dict[str, int]]: ...
    def apply_count_deltas(self, deltas: dict[str, dict[str, int]]) -> None: ...
    def count_children(self, parent_id: str | None = None) -> dict[str, dict[str, int]]: ...
    def all_counts(self) -> dict[str, dict[str, int]]: ...

    # events and logs
    def insert_events(self, events: Sequence[dict]) -> None: ...
    def insert_logs(self, job_id: str, lines: Sequence[tuple[str, str]], at: str) -> list[int]:
        """Insert the job's log lines (level, text), in order; their ids, in the same
        order (PostgreSQL: one statement a chunk, so one round trip, not one a line)."""
        ...

    def event_fields(self, job_id: str) -> list[dict]:
        """The job's events that have fields: id, kind and fields (JSON text), in id order.
        Inside a write, only after the job is loaded (UnitOfWork.job): what it read
        then stays true to the commit without the write lock."""
        ...

    def events(
        self,
        *,
        since: int = 0,
        root_id: str | None = None,
        job_ids: Sequence[str] | None = None,
        limit: int | None = None,
        as_json: bool = False,
    ) -> list[dict]:
        """Events with id > since, in id order, of one tree and/or of some jobs
        (with `as_json`: id, job_id, parent_id, kind and the event's JSON text)."""
        ...

    def child_events(self, parent_id: str, until: int | None = None) -> Iterator[dict]: ...
    def last_entries(
        self, job_ids: Sequence[str], until: int, kinds: Sequence[str], starts: Sequence[str]
    ) -> list[dict]:
        """SqlQueries.last_entries."""
        ...

    def output_events(self, parent_id: str) -> list[dict]: ...
    def count_events(self, root_id: str, until: int, job_ids: set[str] | None = None) -> int:
        """How many events but creations of the tree `root_id` (of `job_ids` only, when given) have id <= until."""
        ...

    def ids_starting(self, prefix: str, limit: int) -> list[str]:
        """At most `limit` job ids that start with `prefix`, in order (shell completion)."""
        ...

    def last_event_id(self) -> int: ...
    def waker(self, poll_interval: float, *, cancels_only: bool = False) -> Waker:
        """What wakes a reader when the database may have changed. `cancels_only`:
        for a running job's supervisor, which only needs to know of cancels:
        where the store can tell them apart (PostgreSQL's NOTIFY says so), no
        other commit wakes it; elsewhere (SQLite's file) every commit does."""
        ...

    # prune
    def prune_roots(
        self, before: str, statuses: Sequence[str], *, after: str = "", only: str | None = None, limit: int = 1000
    ) -> list[str]:
        """SqlQueries.prune_roots."""
        ...

    def tree_size(self, root_id: str) -> tuple[int, int]:
        """How many jobs and events the tree `root_id` holds (by its events)."""
        ...

    def prune_children(self, parent_id: str, limit: int) -> list[dict]:
        """SqlQueries.prune_children."""
        ...

    def prune_jobs(self, root_id: str, jobs: Sequence[dict]) -> None:
        """SqlQueries.prune_jobs."""
        ...

    def pruned_before(self) -> int:
        """The low-water mark: every event prune removed has an id below it (0: none removed)."""
        ...

    # verify
    def all_jobs(self) -> list[dict]: ...
    def all_events(self) -> Iterator[dict]: ...
    def jobs_by_id(self) -> Iterator[dict]:
        """Every job in id order (bytewise), streamed: for verify's merge."""
        ...

    def events_by_job(self) -> Iterator[dict]:
        """Every event in (job_id, id) order, streamed: for verify's merge."""
        ...

    def integrity_check(self) -> list[str]: ...


def upsert_counts(values: str) -> str:
    """Add rows of (parent_id, *STATUSES) deltas (`values`: the VALUES list) to the kept child
    counts, a row made on first use: the one counts upsert of both stores."""
    return (
        f"INSERT INTO child_counts (parent_id, {', '.join(STATUSES)}) VALUES {values}"
        " ON CONFLICT (parent_id) DO UPDATE SET "
        + ", ".join(f"{s} = child_counts.{s} + excluded.{s}" for s in STATUSES)
    )


class SqlQueries:
    """Each query both backends need, built once here over a small dialect: the
    class attributes below are all that differs between them (SQLite's values
    are the defaults; store.postgres overrides them). A backend provides
    `_query(sql, params) -> list[dict]`, and may stream (`_iterate`) or lock the
    rows it reads (`_query_locked`) its own way."""

    mark = "?"  # the driver's placeholder: ? for sqlite3, %s for psycopg2
    text_param = "?"  # a text parameter where its type must be said (a recursive query's seed)
    json_object = "json_object({fields})"  # see event_json_select
    order_column = "rowid"  # the column that orders jobs oldest first (PostgreSQL: seq)
    claim_order = "rowid"  # the same, for next_child's ORDER BY (PostgreSQL: an index of its own)
    greatest = "max"  # the larger of two values (PostgreSQL: greatest)
    lock_rows = ""  # after a write's SELECT of rows it takes (PostgreSQL: FOR NO KEY UPDATE SKIP LOCKED)
    job_select = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM jobs"

    def _query(self, sql: str, params: Sequence = ()) -> list[dict]:
        raise NotImplementedError

    def _query_locked(self, sql: str, params: Sequence = ()) -> list[dict]:
        """_query of a write's SELECT ... `lock_rows`: the rows it returns are this write's."""
        return self._query(sql, params)

    def _iterate(self, sql: str, params: Sequence = ()) -> Iterator[dict]:
        """_query's rows as an iterator (a backend may stream them)."""
        return iter(self._query(sql, params))

    def alive_at(self) -> str:
        """A job's last sign of life: the later of its start and its last heartbeat
        (a heartbeat from an earlier attempt, before a retry, does not count)."""
        return f"{self.greatest}(coalesce(last_heartbeat, ''), coalesce(started_at, ''))"

    def list_jobs_query(
        self,
        *,
        parent_id: str | None = None,
        statuses: Sequence[str] | None = None,
        type: str | None = None,
        alive_before: str | None = None,
        top_level: bool = False,
    ) -> tuple[str, list[str], list]:
        """list_jobs' SELECT list, WHERE conditions and their parameters (each backend
        orders and streams them: see Store.list_jobs for what the filters mean).
        alive_before is the stale rule: only jobs without children (their status is
        derived, no worker beats for them) last alive before it, with `alive_at`."""
        m = self.mark
        select, where, params = ", ".join(JOB_COLUMNS), [], []
        if parent_id is not None:
            where.append(f"parent_id = {m}")
            params.append(parent_id)
        if statuses is not None:
            sql, values = self._in("status", statuses)
            where.append(sql)
            params += values
        if top_level:
            where.append("parent_id IS NULL")
        if type is not None:
            where.append(f"type = {m}")
            params.append(type)
        if alive_before is not None:
            select += f", {self.alive_at()} AS alive_at"
            where.append(f"{self.alive_at()} < {m} AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id)")
            params.append(alive_before)
        return select, where, params

    def next_child(self, parent_id: str, status: str, ready_at: str | None = None) -> dict | None:
        """The oldest child of `parent_id` with `status` (and, with `ready_at`, no
        `not_before` later than it; none waiting on other jobs: ready_sql), taken for
        this write: SQLite's write lock keeps it ours until COMMIT, PostgreSQL locks
        the row and skips rows locked by others."""
        m = self.mark
        sql, params = f"{self.job_select} WHERE parent_id = {m} AND status = {m}", [parent_id, status]
        if ready_at is not None:
            sql += f" AND (not_before IS NULL OR not_before <= {m})"
            params.append(ready_at)
        sql += f" AND {ready_sql('jobs')}"  # (not one waiting on other jobs)
        rows = self._query_locked(f"{sql} ORDER BY {self.claim_order} LIMIT 1{self.lock_rows}", params)
        return rows[0] if rows else None

    def get_counts(self, parent_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """The kept child counts of each parent (zeros for a job with no children)."""
        out = {p: dict.fromkeys(STATUSES, 0) for p in parent_ids}
        for i in range(0, len(parent_ids), CHUNK):
            where, values = self._in("parent_id", parent_ids[i : i + CHUNK])
            for row in self._query(f"SELECT * FROM child_counts WHERE {where}", values):
                out[row["parent_id"]] = {s: row[s] for s in STATUSES}
        return out

    def child_events(self, parent_id: str, until: int | None = None) -> Iterator[dict]:
        """Events of a job and of its direct children (up to event `until`), in id
        order: consume them inside the same read transaction."""
        m = self.mark
        sql = EVENT_SELECT + f" WHERE (e.job_id = {m} OR e.parent_id = {m})"
        params: tuple = (parent_id, parent_id)
        if until is not None:
            sql += f" AND e.id <= {m}"
            params += (until,)
        return self._iterate(sql + " ORDER BY e.id", params)

    def subtree(self, job_id: str) -> list[dict]:
        """The job and all its descendants, parents before children (siblings oldest first), each with `depth`."""
        cols = ", ".join(f"j.{c}" for c in JOB_COLUMNS)
        return self._query(
            f"WITH RECURSIVE t(id, depth) AS (SELECT {self.text_param}, 0 UNION ALL"
            " SELECT j.id, t.depth + 1 FROM jobs j JOIN t ON j.parent_id = t.id)"
            f" SELECT {cols}, t.depth AS depth FROM t JOIN jobs j ON j.id = t.id"
            f" ORDER BY t.depth, j.{self.order_column}",
            (job_id,),
        )

    def _query_light(self, sql: str, params: Sequence = ()) -> list:
        """_query's rows, read-only: any mapping a reader indexes by column name
        (a backend may give something cheaper than a dict, for big reads)."""
        return self._query(sql, params)

    def _in(self, column: str, values: Sequence) -> tuple[str, list]:
        """`column` is one of `values`: the SQL and its parameters (PostgreSQL uses = ANY)."""
        return f"{column} IN ({','.join(self.mark for _ in values)})", list(values)

    def event_fields(self, job_id: str) -> list[dict]:
        # (inside a write, read once the job is loaded: its row lock keeps what this
        # finds true, as every change that gives a job an event with fields loads it)
        return self._query_unlocked(
            f"SELECT id, kind, fields FROM events WHERE job_id = {self.mark} AND fields IS NOT NULL ORDER BY id",
            (job_id,),
        )

    def events(
        self,
        *,
        since: int = 0,
        root_id: str | None = None,
        job_ids: Sequence[str] | None = None,
        limit: int | None = None,
        as_json: bool = False,
    ) -> list[dict]:
        """Events with id > since, in id order, of one tree and/or of some jobs.
        With `as_json`, each row is id, job_id, parent_id, kind (only id when
        reading every event) and `json`, the event's JSON text (as `events
        --json` prints it), made by the database."""
        bare = root_id is None and job_ids is None
        select = event_json_select(self.json_object, bare) if as_json else EVENT_SELECT
        sql = select + f" WHERE e.id > {self.mark}"
        params: list = [since]
        if root_id is not None:
            sql += f" AND e.root_id = {self.mark}"
            params.append(root_id)
        if job_ids is not None and len(job_ids) == 1:
            # one job: ordered along the (job_id, id) index, which a planner could
            # otherwise skip for the primary key under a LIMIT
            sql += f" AND e.job_id = {self.mark} ORDER BY e.job_id, e.id"
            params.append(job_ids[0])
        else:
            if job_ids is not None:
                where, values = self._in("e.job_id", job_ids)
                sql += f" AND {where}"
                params += values
            sql += " ORDER BY e.id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._query_light(sql, params) if as_json else self._query(sql, params)

    def ids_starting(self, prefix: str, limit: int) -> list[str]:
        """A range of the primary key (ids compare bytewise on both stores): bounded, indexed."""
        m = self.mark
        rows = self._query(
            f"SELECT id FROM jobs WHERE id >= {m} AND id < {m} ORDER BY id LIMIT {m}",
            (prefix, prefix + "\U0010ffff", limit),
        )
        return [r["id"] for r in rows]

    def output_events(self, parent_id: str) -> list[dict]:
        """The `output` events of the job's direct children, in id order (a partial index's read)."""
        sql = EVENT_SELECT + f" WHERE e.parent_id = {self.mark} AND e.kind = 'output' ORDER BY e.parent_id, e.id"
        return self._query(sql, (parent_id,))

    def count_events(self, root_id: str, until: int, job_ids: set[str] | None = None) -> int:
        """How many events of the tree `root_id` (of `job_ids` only, when given) have id <= until,
        creations left out (they are history only in name: the counts show every job)."""
        sql = f"SELECT count(*) AS n FROM events WHERE root_id = {self.mark} AND id <= {self.mark} AND kind <> 'create'"
        if job_ids is None:
            return self._query(sql, (root_id, until))[0]["n"]
        ids = sorted(job_ids)
        total = 0
        for i in range(0, len(ids), CHUNK):
            where, values = self._in("job_id", ids[i : i + CHUNK])
            total += self._query(f"{sql} AND {where}", [root_id, until, *values])[0]["n"]
        return total

    def last_event_id(self) -> int:
        return self._query("SELECT coalesce(max(id), 0) AS n FROM events")[0]["n"]

    def last_entries(
        self, job_ids: Sequence[str], until: int, kinds: Sequence[str], starts: Sequence[str]
    ) -> list[dict]:
        """Of each job, up to event `until`, its last event of `kinds` into one of
        the statuses `starts`, and its last into another status (id, job_id,
        new_status, at), in id order. Along the (job_id, id) index."""
        m = self.mark
        out: list[dict] = []
        ids = sorted(set(job_ids))
        for i in range(0, len(ids), CHUNK):
            where, values = self._in("job_id", ids[i : i + CHUNK])
            kind_in, kind_values = self._in("kind", kinds)
            start_in, start_values = self._in("new_status", starts)
            last = f"SELECT max(id) FROM events WHERE {where} AND id <= {m} AND {kind_in} GROUP BY job_id, {start_in}"
            sql = f"SELECT id, job_id, new_status, at FROM events WHERE id IN ({last}) ORDER BY id"
            out += self._query(sql, [*values, until, *kind_values, *start_values])
        return out

    def child_marked(self, parent_id: str, status: str, mark: str) -> str | None:
        """The child of `parent_id` with `status` whose current attempt's event into
        it has fields containing `mark` (no LIKE wildcards in it), or None: along the
        children with that status (by parent and status), then each one's events (by job)."""
        m = self.mark
        rows = self._query(
            "SELECT j.id FROM jobs j JOIN events e ON e.job_id = j.id AND e.attempt = j.attempt"
            f" WHERE j.parent_id = {m} AND j.status = {m} AND e.kind = {m} AND e.new_status = j.status"
            f" AND e.fields LIKE {m}",
            (parent_id, status, STATUS, f"%{mark}%"),
        )
        return rows[0]["id"] if rows else None

    def _query_unlocked(self, sql: str, params: Sequence = ()) -> list[dict]:
        """_query for a read inside a write that need not stay true to its commit,
        or that something else keeps true (a row lock this write holds: see
        event_fields) (PostgreSQL: without taking the write lock)."""
        return self._query(sql, params)

    def dependencies_of(self, job_ids: Sequence[str], *, locked: bool = False) -> list[dict]:
        out: list[dict] = []
        ids = sorted(set(job_ids))
        for i in range(0, len(ids), CHUNK):
            where, values = self._in("d.job_id", ids[i : i + CHUNK])
            sql = (
                "SELECT d.job_id, d.after_id, d.any_outcome, a.status FROM dependencies d"
                f" JOIN jobs a ON a.id = d.after_id WHERE {where} ORDER BY d.job_id, d.after_id"
            )
            out += self._query(sql, values) if locked else self._query_unlocked(sql, values)
        return out

    def dependents(self, after_ids: Sequence[str], status: str) -> list[dict]:
        ids = sorted(set(after_ids))
        if len(ids) > CHUNK and not self._query("SELECT 1 AS x FROM dependencies LIMIT 1"):
            return []  # (a big cancel in a database without dependencies: one read)
        out: list[dict] = []
        for i in range(0, len(ids), CHUNK):
            where, values = self._in("d.after_id", ids[i : i + CHUNK])
            out += self._query(
                "SELECT d.job_id, d.after_id, d.any_outcome FROM dependencies d JOIN jobs j ON j.id = d.job_id"
                f" WHERE {where} AND j.status = {self.mark} ORDER BY d.after_id, d.job_id",
                [*values, status],
            )
        return out

    def required_by(self, job_ids: Sequence[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(job_ids), CHUNK):
            chunk = job_ids[i : i + CHUNK]
            parents, values = self._in("id", chunk)
            waiting, more = self._in("after_id", chunk)
            rows = self._query(
                f"SELECT parent_id AS id FROM jobs WHERE {parents} AND parent_id IS NOT NULL"
                f" UNION SELECT job_id AS id FROM dependencies WHERE {waiting}",
                values + more,
            )
            out += [r["id"] for r in rows]
        return out

    def all_dependencies(self) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {}
        for r in self._query("SELECT job_id, after_id, any_outcome FROM dependencies ORDER BY job_id, after_id"):
            out.setdefault(r["job_id"], []).append((r["after_id"], r["any_outcome"]))
        return out

    def next_ready_at(self, parent_id: str, status: str) -> str | None:
        """The earliest `not_before` of the children of `parent_id` with `status`."""
        m = self.mark
        sql = f"SELECT min(not_before) AS t FROM jobs WHERE parent_id = {m} AND status = {m} AND not_before IS NOT NULL"
        return self._query(sql, (parent_id, status))[0]["t"]

    def last_child_number(self, parent_id: str) -> int:
        """The highest N of any job id `<parent_id>.N` (children are numbered so; ids compare bytewise)."""
        prefix = parent_id + "."
        rows = self._query(
            f"SELECT id FROM jobs WHERE id > {self.mark} AND id < {self.mark}", (prefix, parent_id + "/")
        )
        numbers = (r["id"][len(prefix) :] for r in rows)
        return max((int(n) for n in numbers if n.isdigit() and n.isascii()), default=0)

    def count_children(self, parent_id: str | None = None) -> dict[str, dict[str, int]]:
        """A real count of children by status, per parent (for verify)."""
        sql = "SELECT parent_id, status, count(*) AS n FROM jobs WHERE parent_id IS NOT NULL"
        params: tuple = ()
        if parent_id is not None:
            sql += f" AND parent_id = {self.mark}"
            params = (parent_id,)
        out: dict[str, dict[str, int]] = {}
        for row in self._query(sql + " GROUP BY parent_id, status", params):
            out.setdefault(row["parent_id"], dict.fromkeys(STATUSES, 0))[row["status"]] = row["n"]
        return out

    def all_counts(self) -> dict[str, dict[str, int]]:
        return {r["parent_id"]: {s: r[s] for s in STATUSES} for r in self._query("SELECT * FROM child_counts")}

    # ------------------------------------------------------------------ prune
    # `prune` removes old finished trees a batch of jobs at a time (jobctl.write).
    # The events table is append-only: its triggers let a DELETE through only while
    # the transaction has set `pruned.deleting` (prune_jobs, which sets it back
    # before it ends: no other transaction ever sees it set).

    def _execute(self, sql: str, params: Sequence = ()) -> None:
        raise NotImplementedError

    def hold_write_lock(self) -> None:
        raise NotImplementedError

    def prune_roots(
        self, before: str, statuses: Sequence[str], *, after: str = "", only: str | None = None, limit: int = 1000
    ) -> list[str]:
        """Roots (in id order, after `after`; or just `only`, if it still is one) with
        one of `statuses` whose tree changed last before `before`: the root's
        updated_at and the tree's newest event; none that a job of another tree
        waits on (--after). The tree holding the database's
        newest event is never one: PostgreSQL numbers events from max(id), which
        must not go back to an id a reader has seen."""
        m = self.mark
        status_in, status_values = self._in("j.status", statuses)
        sql = (
            f"SELECT j.id FROM jobs j WHERE j.parent_id IS NULL AND {status_in} AND j.updated_at < {m}"
            f" AND coalesce((SELECT e.at FROM events e WHERE e.root_id = j.id ORDER BY e.id DESC LIMIT 1), '') < {m}"
            " AND j.id <> coalesce((SELECT e.root_id FROM events e ORDER BY e.id DESC LIMIT 1), '')"
            # a tree another tree's job waits on (--after) is kept: that job's create event names it
            " AND NOT EXISTS (SELECT 1 FROM dependencies d JOIN jobs a ON a.id = d.after_id"
            " JOIN jobs w ON w.id = d.job_id WHERE a.root_id = j.id AND w.root_id <> j.id)"
        )
        params: list = [*status_values, before, before]
        if only is not None:
            sql += f" AND j.id = {m}"
            params.append(only)
        else:
            sql += f" AND j.id > {m} ORDER BY j.id LIMIT {int(limit)}"
            params.append(after)
        return [r["id"] for r in self._query(sql, params)]

    def tree_size(self, root_id: str) -> tuple[int, int]:
        row = self._query(
            "SELECT coalesce(sum(CASE WHEN kind = 'create' THEN 1 ELSE 0 END), 0) AS jobs, count(*) AS events"
            f" FROM events WHERE root_id = {self.mark}",
            (root_id,),
        )[0]
        return int(row["jobs"]), int(row["events"])

    def prune_children(self, parent_id: str, limit: int) -> list[dict]:
        """Up to `limit` children of the job (id, parent_id, status, and whether
        they have children themselves: `inner_node`, from their kept counts), along
        the (parent_id, status) index. Not `EXISTS (SELECT ... WHERE parent_id = j.id)`:
        under a million children of one parent, PostgreSQL's statistics say any
        parent_id matches them all, and it planned a scan of the whole table per child."""
        m = self.mark
        has_children = " + ".join(f"coalesce(c.{s}, 0)" for s in STATUSES)
        return self._query(
            f"SELECT j.id, j.parent_id, j.status, CASE WHEN {has_children} > 0 THEN 1 ELSE 0 END AS inner_node"
            f" FROM jobs j LEFT JOIN child_counts c ON c.parent_id = j.id WHERE j.parent_id = {m}"
            f" ORDER BY j.status LIMIT {int(limit)}",
            (parent_id,),
        )

    def prune_jobs(self, root_id: str, jobs: Sequence[dict]) -> None:
        """Delete jobs of the tree `root_id` that have no children left (dicts with id,
        parent_id and status) with their events, logs, outputs and kept counts, and
        take them off their parents' kept counts. First the low-water mark goes past
        the tree's newest event (by the (root_id, id) index: a max over the jobs'
        events could be planned as a walk down every event id)."""
        m = self.mark
        self.hold_write_lock()
        newest = f"coalesce((SELECT max(id) FROM events WHERE root_id = {m}), 0)"
        self._execute(
            f"UPDATE pruned SET deleting = 1, events_before = CASE WHEN events_before > {newest}"
            f" THEN events_before ELSE {newest} + 1 END",
            (root_id, root_id),
        )
        ids = [j["id"] for j in jobs]
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            where, values = self._in("job_id", chunk)
            self._execute(f"DELETE FROM events WHERE {where}", values)
            self._execute(f"DELETE FROM logs WHERE {where}", values)
            self._execute(f"DELETE FROM dependencies WHERE {where}", values)
            where, values = self._in("after_id", chunk)
            self._execute(f"DELETE FROM dependencies WHERE {where}", values)
            where, values = self._in("parent_id", chunk)
            self._execute(f"DELETE FROM child_counts WHERE {where}", values)
            where, values = self._in("id", chunk)
            self._execute(f"DELETE FROM jobs WHERE {where}", values)
        gone: dict[str, dict[str, int]] = {}
        for j in jobs:
            if j["parent_id"] is not None:
                gone.setdefault(j["parent_id"], dict.fromkeys(STATUSES, 0))[j["status"]] += 1
        for parent, counts in gone.items():
            sets = ", ".join(f"{s} = {s} - {int(n)}" for s, n in counts.items() if n)
            self._execute(f"UPDATE child_counts SET {sets} WHERE parent_id = {m}", (parent,))
        self._execute("UPDATE pruned SET deleting = 0")

    def pruned_before(self) -> int:
        return int(self._query("SELECT events_before AS n FROM pruned")[0]["n"])
