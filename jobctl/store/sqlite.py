"""The SQLite store: one file, the default backend (see `jobctl.store.base`
for the contract it keeps).

Connection settings (WAL, busy timeout, foreign keys, `BEGIN IMMEDIATE`),
schema and numbered migrations, the queries the core needs, and the file
waker behind `watch`. Rules about statuses live in `jobctl.model`, not here.

sqlite-utils is imported only when a migration has to run: a database whose
`PRAGMA user_version` is current is used through plain sqlite3, which keeps
one-shot commands such as `jobctl status set` fast.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from operator import itemgetter

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

from jobctl.backoff import Backoff
from jobctl.console import info
from jobctl.model import STATUSES, DatabaseUnusable, IdTaken
from jobctl.store.base import (
    ACTIVE_SQL,
    CANCELLED_SQL,
    CHANGE_COLUMNS,
    CHUNK,
    DEFAULT_BUSY_TIMEOUT,
    EVENT_COLUMNS,
    JOB_COLUMNS,
    STATUS_KIND_SQL,
    SqlQueries,
    cancel_assignments,
    cancel_count_deltas,
    seconds_from_env,
    upsert_counts,
)

APPLICATION_ID = 0x6A6F6263  # "jobc": marks a file as a jobctl database
SCHEMA_VERSION = 11  # the number of migrations below; stored in PRAGMA user_version
BEGIN_RETRIES = 3  # extra tries of BEGIN IMMEDIATE, with jitter; the busy timeout is split among all tries
WAIT_NOTICE = 1.0  # seconds of waiting for the write lock before saying so on stderr
KNOWN_LIMIT = 1024  # jobs a connection keeps between its write transactions (see SqliteStore.known)
KNOWN_BATCH = 64  # ... from reads of at most this many jobs

_UPSERT_COUNTS = upsert_counts("(?, ?, ?, ?, ?, ?)")
_counts_row = itemgetter(*STATUSES)  # a deltas dict has every status (api._Change)
_UPDATE_STATUS = (
    "UPDATE jobs SET status = ?, started_at = ?, completed_at = ?, updated_at = ?, attempt = ?, not_before = ?"
    " WHERE id = ?"
)


def _many(cur: sqlite3.Cursor, sql: str, rows: list) -> None:
    """executemany, or execute for one row (a status change writes one of each, and
    execute costs less per call)."""
    if len(rows) == 1:
        cur.execute(sql, rows[0])
    elif rows:
        cur.executemany(sql, rows)


_INSERT_EVENT = f"INSERT INTO events ({','.join(EVENT_COLUMNS)}) VALUES ({','.join('?' * len(EVENT_COLUMNS))})"
_JOBS_WITH_COUNTS = (  # CHANGE_COLUMNS, then the job's kept counts
    "SELECT "
    + ", ".join(f"jobs.{c}" for c in CHANGE_COLUMNS)
    + ", "
    + ", ".join(f"coalesce(c.{s}, 0)" for s in STATUSES)
    + " FROM jobs LEFT JOIN child_counts c ON c.parent_id = jobs.id"
)
# A job and its parent (none for a root), without the temporary table that
# `IN (subquery)` builds: the write path's read of every status change.
_JOB_AND_PARENT = (
    f"{_JOBS_WITH_COUNTS} WHERE jobs.id = ?1 UNION ALL"
    f" {_JOBS_WITH_COUNTS} WHERE jobs.id = (SELECT parent_id FROM jobs WHERE id = ?1)"
)
_N_JOB = len(CHANGE_COLUMNS)
_job_row = itemgetter(*JOB_COLUMNS)  # dict -> tuple in C: spawn writes 100,000s of rows
_event_row = itemgetter(*EVENT_COLUMNS)
_status_row = itemgetter("status", "started_at", "completed_at", "updated_at", "attempt", "not_before", "id")


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> dict:
    return {d[0]: v for d, v in zip(cursor.description, row)}


def _unusable(path: str, exc: BaseException) -> DatabaseUnusable:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return DatabaseUnusable(
            f"database {path} is still locked after the busy timeout (set JOBCTL_BUSY_TIMEOUT to wait longer)"
        )
    if "readonly" in text or "read-only" in text:
        return DatabaseUnusable(f"database {path} is read-only")
    if "disk is full" in text or "full" in text:
        return DatabaseUnusable(f"database {path}: disk is full; nothing was written")
    if "not a database" in text:
        return DatabaseUnusable(f"{path} is not a jobctl database (not an SQLite file)")
    return DatabaseUnusable(f"database {path}: {text}")


class _Errors:
    """`with store.errors:` turns sqlite3's errors into DatabaseUnusable (one line,
    exit 5): the one error wrapper of this store (a class, not a generator: it is
    on the write path)."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, sqlite3.Error):
            raise _unusable(self.path, exc) from None


class SqliteStore(SqlQueries):
    """One connection to a jobctl SQLite database."""

    def __init__(self, conn: sqlite3.Connection, path: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.conn = conn
        self.path = self.name = path
        self.errors = _Errors(path)
        self.busy_timeout = busy_timeout
        # The write path's own cursor (tuple rows), kept: a status change runs six
        # statements, and a cursor made for each (conn.execute) costs ~1 µs.
        self.cur = conn.cursor()
        self.cur.row_factory = None
        # What this connection knows of jobs between its write transactions: the
        # rows (CHANGE_COLUMNS) and kept counts it read for a change, kept up to
        # date by its own writes. They are right as long as no other connection
        # has committed, which SQLite's data_version says; it is read inside the
        # write lock, where no one else can commit. A worker that changes its jobs
        # again and again (the API in a loop, `jobctl run`) then skips the read.
        # A rollback, or a write this module does not follow row by row
        # (cancel_subtree), forgets them all.
        self.known: dict[str, tuple[dict, dict[str, int]]] = {}
        self.known_at: int | None = None  # data_version when `known` was last checked
        self.writing = False  # inside write(): the lock is ours
        self.known_checked = False  # ... and `known` was checked since it was taken

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str, *, busy_timeout: float | None = None, create: bool = True) -> "SqliteStore":
        """Open (creating and migrating as needed) the jobctl database at `path`.

        Anything that is not a jobctl database, or is one from a newer jobctl,
        is refused with DatabaseUnusable and left byte-identical. With
        `create=False` (read-only commands) a missing file is refused too,
        and nothing is created.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise DatabaseUnusable(f"{path} is a directory, not a database file")
        if not create and not os.path.exists(path):
            raise DatabaseUnusable(f"no jobctl database at {path} (create one with `jobctl init`)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise DatabaseUnusable(
                f"cannot create database {path}: directory {parent} does not exist or cannot be reached"
            )
        if not os.path.exists(path) and not os.access(parent, os.W_OK):
            raise DatabaseUnusable(f"cannot create database {path}: directory {parent} is read-only")
        timeout = (
            seconds_from_env("JOBCTL_BUSY_TIMEOUT", DEFAULT_BUSY_TIMEOUT) if busy_timeout is None else busy_timeout
        )
        with _Errors(path):
            # SQLite waits for a lock up to its busy timeout per try. The first try
            # of BEGIN IMMEDIATE waits up to WAIT_NOTICE; the retries share what is
            # left of JOBCTL_BUSY_TIMEOUT, so that is the whole wait.
            conn = sqlite3.connect(
                path, timeout=min(WAIT_NOTICE, timeout), isolation_level=None, check_same_thread=False
            )
        store = cls(conn, path, timeout)
        try:
            store._check_and_migrate()
        except BaseException:
            conn.close()
            raise
        conn.row_factory = _dict_row
        return store

    def _check_and_migrate(self) -> None:
        with self.errors:
            app_id, version = self._header()
            if app_id == APPLICATION_ID and version == SCHEMA_VERSION:
                self._settings()
                return
            self._refuse_foreign(app_id, version)
            # Fresh file, or an older jobctl schema: migrate under the write
            # lock, re-checking once we hold it (another process may have won).
            if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.conn.execute("PRAGMA journal_mode=WAL")
            self._settings()
            with self.write():
                app_id, version = self._header()
                self._refuse_foreign(app_id, version)
                if version < SCHEMA_VERSION:
                    _migrate(self.conn)

    def _header(self) -> tuple[int, int]:
        return self.conn.execute("SELECT * FROM pragma_application_id, pragma_user_version").fetchone()

    def _refuse_foreign(self, app_id: int, version: int) -> None:
        if app_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise DatabaseUnusable(
                    f"database {self.path} has schema version {version}, newer than this jobctl"
                    f" understands ({SCHEMA_VERSION}): upgrade jobctl"
                )
            return
        has_tables = self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != 0 or has_tables:
            raise DatabaseUnusable(f"{self.path} is not a jobctl database (it belongs to another program)")

    def _settings(self) -> None:
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # Up to 32 MiB of page cache (allocated only as used): a 100,000-child
        # spawn then writes its index pages once instead of spilling them early.
        self.conn.execute("PRAGMA cache_size=-32768")

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ transactions
    def hold_write_lock(self) -> None:
        """Held from BEGIN IMMEDIATE on (see write())."""

    def write(self) -> "_Write":
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error.

        BEGIN IMMEDIATE takes the write lock up front, so a transaction never
        fails half-way with "database is locked"; the busy timeout waits for
        the lock. After WAIT_NOTICE seconds of waiting it says so on stderr
        (another writer holds the lock: a big spawn, say), and a few jittered
        retries share the rest of the busy timeout.
        """
        return _Write(self)

    def _wait_for_lock(self, exc: sqlite3.OperationalError) -> None:
        left = self.busy_timeout - min(WAIT_NOTICE, self.busy_timeout)
        if "locked" not in str(exc) and "busy" not in str(exc) or left <= 0:
            raise _unusable(self.path, exc) from None
        info(f"waiting for another writer to finish (up to {left:g} s more; JOBCTL_BUSY_TIMEOUT)")
        conn = self.conn
        conn.execute(f"PRAGMA busy_timeout = {int(left / BEGIN_RETRIES * 1000)}")
        backoff = Backoff(0.025, 0.1)
        try:
            for attempt in range(BEGIN_RETRIES):
                backoff.sleep()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as again:
                    if "locked" not in str(again) and "busy" not in str(again) or attempt == BEGIN_RETRIES - 1:
                        raise _unusable(self.path, again) from None
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(min(WAIT_NOTICE, self.busy_timeout) * 1000)}")

    @contextmanager
    def read(self) -> Iterator["SqliteStore"]:
        """A read transaction: every query inside sees the same snapshot."""
        with self.errors:
            self.conn.execute("BEGIN")
        try:
            yield self
        except BaseException:
            if self.conn.in_transaction:
                try:  # what went wrong inside is the error to report, not the end of the snapshot
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        if self.conn.in_transaction:
            with self.errors:
                self.conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence = ()) -> list[dict]:
        with self.errors:
            return self.conn.execute(sql, params).fetchall()

    def _query_light(self, sql: str, params: Sequence = ()) -> list:
        """sqlite3.Row rows (made in C): `events --json` reads 100,000s of them."""
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        with self.errors:
            return cur.execute(sql, params).fetchall()

    def _execute(self, sql: str, params: Sequence = ()) -> None:
        with self.errors:
            self.conn.execute(sql, params)

    def prune_jobs(self, root_id: str, jobs: Sequence[dict]) -> None:
        self.forget()  # it may know rows this removes
        super().prune_jobs(root_id, jobs)

    def _query_tuples(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Plain tuples: the write path reads a job or two per change."""
        with self.errors:
            return self.cur.execute(sql, params).fetchall()

    # -------------------------------------------------------------------- jobs
    def get_job(self, job_id: str) -> dict | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def jobs_and_counts(
        self, ids: Sequence[str], parents: bool = False
    ) -> tuple[dict[str, dict], dict[str, dict[str, int]]]:
        """The jobs (missing ones left out) and their kept child counts, in one query
        (with `parents`, their parents' too); inside a write transaction, what this
        connection knows already (`known`) is not read again."""
        if not self.writing:
            return self._read_jobs_and_counts(ids, parents)
        if not self.known_checked:
            version = self.cur.execute("PRAGMA data_version").fetchone()[0]
            if version != self.known_at:  # another connection wrote meanwhile
                self.known.clear()
                self.known_at = version
            self.known_checked = True
        jobs: dict[str, dict] = {}
        counts: dict[str, dict[str, int]] = {}
        missing = []
        known = self.known
        for i in ids:
            entry = known.get(i)
            parent = entry[0]["parent_id"] if entry is not None else None
            if entry is None or parents and parent is not None and parent not in known:
                missing.append(i)
                continue
            jobs[i], counts[i] = dict(entry[0]), dict(entry[1])
            if parents and parent is not None:
                jobs[parent], counts[parent] = dict(known[parent][0]), dict(known[parent][1])
        if missing:
            read, read_counts = self._read_jobs_and_counts(missing, parents)
            if len(read) <= KNOWN_BATCH:  # (a batch of thousands is read once: not worth keeping)
                if len(known) + len(read) > KNOWN_LIMIT:
                    known.clear()
                for i, job in read.items():
                    known[i] = (dict(job), dict(read_counts[i]))
            jobs.update(read)
            counts.update(read_counts)
        return jobs, counts

    def forget(self) -> None:
        """Drop what this connection knows of jobs (see `known`)."""
        self.known.clear()
        self.known_at = None

    def _read_jobs_and_counts(
        self, ids: Sequence[str], parents: bool
    ) -> tuple[dict[str, dict], dict[str, dict[str, int]]]:
        if parents and len(ids) == 1:  # a status change's read, in two index lookups
            rows = self._query_tuples(_JOB_AND_PARENT, ids)
        else:
            rows = []
            size = CHUNK // 2 if parents else CHUNK  # (each id is bound twice then: 999 variables at most)
            for i in range(0, len(ids), size):
                chunk = ids[i : i + size]
                marks = ",".join("?" * len(chunk))
                sql = f"{_JOBS_WITH_COUNTS} WHERE jobs.id IN ({marks})"
                if parents:
                    sql += f" OR jobs.id IN (SELECT parent_id FROM jobs WHERE id IN ({marks}))"
                    chunk = [*chunk, *chunk]
                rows += self._query_tuples(sql, chunk)
        jobs, counts = {}, {}
        for row in rows:
            jobs[row[0]] = dict(zip(CHANGE_COLUMNS, row))
            counts[row[0]] = dict(zip(STATUSES, row[_N_JOB:]))
        return jobs, counts

    def insert_jobs(self, jobs: Iterable[dict]) -> None:
        """Insert job dicts (every key of JOB_COLUMNS present), all or none:
        IdTaken if one of the ids exists already."""
        cols = ",".join(JOB_COLUMNS)
        marks = ",".join("?" * len(JOB_COLUMNS))
        self.conn.execute("SAVEPOINT insert_jobs")
        try:
            self.conn.executemany(f"INSERT INTO jobs ({cols}) VALUES ({marks})", map(_job_row, jobs))
        except sqlite3.IntegrityError as exc:
            self.conn.execute("ROLLBACK TO insert_jobs")
            self.conn.execute("RELEASE insert_jobs")
            if "jobs.id" in str(exc):
                raise IdTaken(f"a job id is taken ({exc})") from None
            raise
        self.conn.execute("RELEASE insert_jobs")

    def insert_dependencies(self, rows: Sequence[tuple[str, str, int]]) -> None:
        self.conn.executemany("INSERT INTO dependencies (job_id, after_id, any_outcome) VALUES (?, ?, ?)", rows)
        after = sorted({r[1] for r in rows})
        for a in after:
            self.known.pop(a, None)
        for i in range(0, len(after), CHUNK):
            chunk = after[i : i + CHUNK]
            self.conn.execute(f"UPDATE jobs SET waited_on = 1 WHERE id IN ({','.join('?' * len(chunk))})", chunk)

    def insert_children(self, jobs: Sequence[dict], message: str | None, fields: str | None = None) -> None:
        """The rows by executemany, their events by one INSERT ... SELECT of the rows
        just inserted (rowids after the last one: the write lock is ours), which
        costs a quarter of binding each event's values from Python."""
        last = self.conn.execute("SELECT coalesce(max(rowid), 0) AS n FROM jobs").fetchone()["n"]
        self.insert_jobs(jobs)
        self.conn.execute(
            "INSERT INTO events (job_id, parent_id, root_id, kind, new_status, at, message, attempt, max_attempts,"
            " fields) SELECT id, parent_id, root_id, 'create', status, created_at, ?, attempt, max_attempts, ?"
            " FROM jobs WHERE rowid > ? ORDER BY rowid",
            (message, fields, last),
        )

    def update_statuses(self, jobs: Iterable[dict]) -> None:
        """Write status and status timestamps of each job dict back."""
        rows = list(map(_status_row, jobs))
        _many(self.cur, _UPDATE_STATUS, rows)
        known = self.known
        for status, started_at, _, _, attempt, not_before, job_id in rows:
            if job_id in known:
                known[job_id][0].update(status=status, started_at=started_at, attempt=attempt, not_before=not_before)

    def set_outcome(self, job_id: str, exit_code: int | None, duration: float | None) -> None:
        self.conn.execute("UPDATE jobs SET exit_code = ?, duration = ? WHERE id = ?", (exit_code, duration, job_id))

    def set_policy(self, job_id: str, fail_fast: int, allow_failures: str | None, max_attempts: int | None) -> None:
        self.known.pop(job_id, None)
        self.conn.execute(
            "UPDATE jobs SET fail_fast = ?, allow_failures = ?, max_attempts = ? WHERE id = ?",
            (fail_fast, allow_failures, max_attempts, job_id),
        )

    def set_fanout(self, job_id: str, is_open: int, max_running: int | None) -> None:
        self.known.pop(job_id, None)
        self.conn.execute("UPDATE jobs SET is_open = ?, max_running = ? WHERE id = ?", (is_open, max_running, job_id))

    def cancel_subtree(self, job_id: str, message: str, at: str, *, below: bool = False) -> list[str] | None:
        self.forget()
        c = self.conn
        # A scratch table of this connection's, made once and emptied after each use:
        # dropping a table fails while another statement of the connection is open
        # (a caller iterating a list, say).
        c.execute(
            "CREATE TEMP TABLE IF NOT EXISTS cancel_tree"
            " (id, parent_id, root_id, status, attempt, max_attempts, depth, ord)"
        )
        c.execute(
            "INSERT INTO temp.cancel_tree WITH RECURSIVE t(id, depth) AS (SELECT ?, 0 UNION ALL"
            " SELECT j.id, t.depth + 1 FROM jobs j JOIN t ON j.parent_id = t.id)"
            " SELECT jobs.id, jobs.parent_id, jobs.root_id, jobs.status, jobs.attempt, jobs.max_attempts,"
            f" t.depth, jobs.rowid FROM t JOIN jobs ON jobs.id = t.id WHERE jobs.status IN {ACTIVE_SQL}"
            + (" AND t.depth > 0" if below else "")
            + " ORDER BY t.depth DESC, jobs.rowid DESC",  # stored in event order: read back by rowid, no sort
            (job_id,),
        )
        try:
            mixed = c.execute(
                "SELECT 1 FROM cancel_tree k JOIN jobs p ON p.id = k.parent_id"
                f" WHERE k.id != ? AND p.status NOT IN {ACTIVE_SQL} LIMIT 1",
                (job_id,),
            ).fetchone()
            if mixed:
                return None
            c.execute(
                "INSERT INTO events (job_id, parent_id, root_id, kind, old_status, new_status, at, message,"
                f" attempt, max_attempts) SELECT id, parent_id, root_id, {STATUS_KIND_SQL}, status,"
                f" {CANCELLED_SQL}, ?, ?, attempt, max_attempts FROM cancel_tree ORDER BY rowid",
                (at, message),
            )
            assignments, times = cancel_assignments("?")
            c.execute(
                f"UPDATE jobs SET {assignments}"
                " WHERE rowid IN (SELECT ord FROM cancel_tree)",  # (by rowid: an integer lookup each)
                (at,) * times,
            )
            c.execute(
                f"INSERT INTO child_counts (parent_id, {', '.join(STATUSES)})"
                f" SELECT * FROM (SELECT parent_id, {cancel_count_deltas(lambda w: f'sum(status = {w!r})')}"
                " FROM cancel_tree WHERE id != ? GROUP BY parent_id) WHERE true"
                " ON CONFLICT (parent_id) DO UPDATE SET " + ", ".join(f"{s} = {s} + excluded.{s}" for s in STATUSES),
                (job_id,),
            )
            cur = c.cursor()
            cur.row_factory = None
            return [r[0] for r in cur.execute("SELECT id FROM cancel_tree ORDER BY rowid")]
        finally:
            c.execute("DELETE FROM temp.cancel_tree")

    def set_heartbeat(self, job_id: str, at: str) -> bool:
        cur = self.conn.execute("UPDATE jobs SET last_heartbeat = ? WHERE id = ?", (at, job_id))
        return cur.rowcount == 1

    def walk(self, job_id: str, *, max_depth: int | None = None, limit: int | None = None) -> Iterator[dict]:
        """The job and its descendants depth-first (each child right after its
        parent, siblings oldest first), each with `depth`, streamed: the
        recursive query's queue is ordered deepest first, which SQLite
        documents as a depth-first walk."""
        cols = ", ".join(f"j.{c}" for c in JOB_COLUMNS)
        deeper = "" if max_depth is None else f" WHERE t.depth < {int(max_depth)}"
        sql = (
            f"WITH RECURSIVE t({', '.join(JOB_COLUMNS)}, depth, rid) AS ("
            f" SELECT {cols}, 0, j.rowid FROM jobs j WHERE j.id = ?"
            f" UNION ALL SELECT {cols}, t.depth + 1, j.rowid FROM t JOIN jobs j ON j.parent_id = t.id{deeper}"
            f" ORDER BY {len(JOB_COLUMNS) + 1} DESC, {len(JOB_COLUMNS) + 2})"  # depth, then rowid
            f" SELECT {', '.join(JOB_COLUMNS)}, depth FROM t"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.errors:
            for row in self.conn.execute(sql, (job_id,)):
                yield row

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
        """Jobs matching every filter (SqlQueries.list_jobs_query), streamed; see base.Store.list_jobs."""
        select, where, params = self.list_jobs_query(
            parent_id=parent_id, statuses=statuses, type=type, alive_before=alive_before, top_level=top_level
        )
        sql = f"SELECT {select} FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY rowid DESC" if newest_first else " ORDER BY rowid"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.errors:
            # a for loop, not `yield from`: closing this generator after the
            # connection (a reader that left early) must not close the cursor
            for row in self.conn.execute(sql, params):
                yield row

    # ------------------------------------------------------------------ counts
    def apply_count_deltas(self, deltas: dict[str, dict[str, int]]) -> None:
        """Add each parent's deltas to its kept child counts (a row is made on first use)."""
        _many(self.cur, _UPSERT_COUNTS, [(p, *_counts_row(d)) for p, d in deltas.items()])
        known = self.known
        for p, delta in deltas.items():
            if p in known:
                counts = known[p][1]
                for s in STATUSES:
                    counts[s] += delta[s]

    # ------------------------------------------------------------ events, logs
    def insert_events(self, events: Iterable[dict]) -> None:
        """Insert event dicts (every key of EVENT_COLUMNS present), in order."""
        _many(self.cur, _INSERT_EVENT, list(map(_event_row, events)))

    def insert_logs(self, job_id: str, lines: Sequence[tuple[str, str]], at: str) -> list[int]:
        ids = []
        for level, message in lines:
            cur = self.conn.execute(
                "INSERT INTO logs (job_id, level, message, at) VALUES (?, ?, ?, ?)", (job_id, level, message, at)
            )
            ids.append(cur.lastrowid or 0)  # always set after an INSERT
        return ids

    def application_id(self) -> int:
        cur = self.conn.cursor()
        cur.row_factory = None
        return cur.execute("PRAGMA application_id").fetchone()[0]

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap: no disk read)."""
        return self.conn.execute("PRAGMA data_version").fetchone()["data_version"]

    def waker(self, poll_interval: float, *, cancels_only: bool = False) -> "FileWaker":
        return FileWaker(self, poll_interval)  # (a file change says nothing of what changed)

    # ------------------------------------------------------------------ verify
    def all_jobs(self) -> list[dict]:
        return self._query("SELECT * FROM jobs ORDER BY rowid")

    def all_events(self) -> Iterator[dict]:
        return iter(self._query("SELECT * FROM events ORDER BY id"))

    def jobs_by_id(self) -> Iterator[dict]:
        return self._iterate("SELECT * FROM jobs ORDER BY id")

    def events_by_job(self) -> Iterator[dict]:
        return self._iterate("SELECT * FROM events ORDER BY job_id, id")

    def _iterate(self, sql: str, params: Sequence = ()) -> Iterator[dict]:
        with self.errors:
            for row in self.conn.execute(sql, params):
                yield row

    def integrity_check(self) -> list[str]:
        rows = self._query("PRAGMA integrity_check")
        problems = [next(iter(r.values())) for r in rows]
        return [] if problems == ["ok"] else problems


# -------------------------------------------------------------------- waker
STEP_MS = 5  # once a change came, how long to wait for more (bench: 10 ms gave p50 16 ms; 2 ms cost 2% CPU idle)
DEBOUNCE_MS = 20  # the most it groups changes for, under a constant stream of commits
TICK_MS = 50  # how often the watcher hands control back to check timeouts (and signals)


class FileWaker:
    """Wake-ups for a SQLite file: watchfiles on the database's directory,
    filtered to the file and its -wal (watching the .db alone sees no WAL
    commits; watching the -wal itself goes deaf once SQLite deletes it), plus
    `PRAGMA data_version` checked at every tick (TICK_MS), so a missed
    notification costs at most a tick. JOBCTL_WATCH_POLL=1, or a
    directory watchfiles cannot watch, means polling only.

    It also notices when the file it follows is deleted or replaced (another
    inode, or no longer a jobctl database) and raises DatabaseUnusable: a
    watcher must not wait forever on a file nobody will write again."""

    def __init__(self, store: SqliteStore, poll_interval: float, force_poll: bool | None = None):
        self.store = store
        self.poll_interval = poll_interval
        self.version = store.data_version()
        self.identity = self._identity()
        base = os.path.basename(store.path)
        names = {base, base + "-wal"}
        self.changes = None
        if force_poll is None:
            force_poll = os.environ.get("JOBCTL_WATCH_POLL", "") not in ("", "0")
        if not force_poll:
            try:
                import watchfiles

                self.changes = watchfiles.watch(
                    os.path.dirname(os.path.abspath(store.path)),
                    watch_filter=lambda change, path: os.path.basename(path) in names,
                    debounce=DEBOUNCE_MS,
                    step=STEP_MS,
                    rust_timeout=TICK_MS,
                    yield_on_timeout=True,
                    recursive=False,
                    force_polling=False,
                )
            except Exception:  # no inotify (limits, odd filesystems): poll instead
                self.changes = None
        self.mode = "watchfiles" if self.changes is not None else "polling"

    def wait(self, timeout: float) -> bool:
        limit = max(0.0, min(timeout, self.poll_interval))
        deadline = time.monotonic() + limit
        while True:
            if self.changes is None:  # polling: one look per poll interval
                time.sleep(max(0.0, deadline - time.monotonic()))
                return self._changed()
            else:
                try:
                    event = next(self.changes)  # a file event, or an empty set after TICK_MS
                except (KeyboardInterrupt, StopIteration):
                    raise
                except Exception:  # watchfiles could not watch after all (inotify limits): poll
                    self.changes, self.mode = None, "polling"
                    continue
            # data_version is checked at every tick too (it costs no disk read): a
            # commit made before watching started, or not seen by inotify, still wakes us.
            if self._changed() or event:
                return True
            if time.monotonic() >= deadline:
                return False

    def _identity(self) -> tuple[int, int]:
        try:
            st = os.stat(self.store.path)
        except FileNotFoundError:
            raise DatabaseUnusable(f"database {self.store.path} was deleted while being watched") from None
        return st.st_dev, st.st_ino

    def _changed(self) -> bool:
        if self._identity() != self.identity:
            raise DatabaseUnusable(f"database {self.store.path} was replaced while being watched")
        version = self.store.data_version()
        changed, self.version = version != self.version, version
        if changed and self.store.application_id() != APPLICATION_ID:
            raise DatabaseUnusable(f"database {self.store.path} was replaced while being watched")
        return changed

    def close(self) -> None:
        if self.changes is not None:
            self.changes.close()


class _Write:
    """SqliteStore.write()'s context manager: a class, not a generator, because
    every status change goes through it while holding the write lock."""

    __slots__ = ("store",)

    def __init__(self, store: SqliteStore):
        self.store = store

    def __enter__(self) -> SqliteStore:
        try:
            self.store.cur.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self.store._wait_for_lock(exc)
        self.store.writing, self.store.known_checked = True, False
        return self.store

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        self.store.writing = False
        if kind is None:
            try:
                self.store.cur.execute("COMMIT")
            except BaseException as failed:  # (Ctrl-C too: rolled back, then raised)
                self._undo(failed)
                raise
        else:
            self._undo(exc)  # and the body's exception goes on

    def _undo(self, exc: BaseException | None) -> None:
        """Roll back what is left of the transaction; a database error becomes DatabaseUnusable."""
        self.store.forget()  # it knew what this transaction wrote
        if self.store.conn.in_transaction:
            self.store.cur.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise _unusable(self.store.path, exc) from None


# --------------------------------------------------------------- migrations
def _migrations():
    """The numbered migrations, in order. Never edit one that has shipped: add the next."""
    from sqlite_utils.migrations import Migrations

    migrations = Migrations("jobctl")

    @migrations(name="0001_initial")
    def initial(db) -> None:
        db["jobs"].create(
            {
                "id": str,
                "parent_id": str,
                "root_id": str,
                "name": str,
                "type": str,
                "status": str,
                "created_at": str,
                "started_at": str,
                "completed_at": str,
                "updated_at": str,
                "last_heartbeat": str,
                "metadata": str,
            },
            pk="id",
            not_null={"root_id", "name", "status", "created_at", "updated_at"},
            foreign_keys=[("parent_id", "jobs", "id")],
        )
        # Lists a parent's children by status, and finds stale running jobs.
        db["jobs"].create_index(["parent_id", "status"])
        db["jobs"].create_index(["status", "last_heartbeat"])
        db["logs"].create(
            {"id": int, "job_id": str, "level": str, "message": str, "at": str},
            pk="id",
            not_null={"job_id", "level", "message", "at"},
            foreign_keys=[("job_id", "jobs", "id")],
        )
        db["logs"].create_index(["job_id", "id"])
        # AUTOINCREMENT: an event id is never reused; it is every consumer's cursor.
        db.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " job_id TEXT NOT NULL REFERENCES jobs(id), parent_id TEXT, root_id TEXT NOT NULL,"
            " kind TEXT NOT NULL, old_status TEXT, new_status TEXT, at TEXT NOT NULL,"
            " message TEXT, log_id INTEGER REFERENCES logs(id))"
        )
        db["events"].create_index(["root_id", "id"])
        db["events"].create_index(["job_id", "id"])
        db["events"].create_index(["parent_id", "id"])
        for action in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER events_append_only_{action.lower()} BEFORE {action} ON events"
                " BEGIN SELECT RAISE(ABORT, 'the events table is append-only'); END"
            )

    @migrations(name="0002_child_counts")
    def child_counts(db) -> None:
        # Progress in O(1) whatever the fan-out: each parent's child counts are
        # kept up to date in the transaction that changes a child.
        db["child_counts"].create(
            {"parent_id": str, **{s: int for s in STATUSES}},
            pk="parent_id",
            not_null=set(STATUSES),
            defaults=dict.fromkeys(STATUSES, 0),
            foreign_keys=[("parent_id", "jobs", "id")],
        )
        sums = ", ".join(f"sum(status = '{s}')" for s in STATUSES)
        db.execute(
            f"INSERT INTO child_counts (parent_id, {', '.join(STATUSES)})"
            f" SELECT parent_id, {sums} FROM jobs WHERE parent_id IS NOT NULL GROUP BY parent_id"
        )

    @migrations(name="0003_run_outcome")
    def run_outcome(db) -> None:
        # What `jobctl run` records when the command ends: its exit status
        # (128 + N for a signal) and how long it ran, in seconds.
        db["jobs"].add_column("exit_code", int)
        db["jobs"].add_column("duration", float)

    @migrations(name="0004_event_outcome")
    def event_outcome(db) -> None:
        # The same on the final status event of a run, for events --json and watch.
        db.execute("ALTER TABLE events ADD COLUMN exit_code INTEGER")
        db.execute("ALTER TABLE events ADD COLUMN duration REAL")

    @migrations(name="0005_failure_policy")
    def failure_policy(db) -> None:
        # A parent's failure policy, a job's attempts and a retry's backoff; the
        # attempt on create and status events (model.replay checks them).
        db.execute("ALTER TABLE jobs ADD COLUMN fail_fast INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE jobs ADD COLUMN allow_failures TEXT")
        db.execute("ALTER TABLE jobs ADD COLUMN max_attempts INTEGER")
        db.execute("ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1")
        db.execute("ALTER TABLE jobs ADD COLUMN not_before TEXT")
        db.execute("ALTER TABLE events ADD COLUMN attempt INTEGER")
        db.execute("ALTER TABLE events ADD COLUMN max_attempts INTEGER")

    @migrations(name="0006_event_fields")
    def event_fields(db) -> None:
        # An event's fields, a JSON object: where `run` ran (its running event:
        # host, pid, CI job), the token of run's final write (so it is never replayed).
        db.execute("ALTER TABLE events ADD COLUMN fields TEXT")

    @migrations(name="0007_open_parents")
    def open_parents(db) -> None:
        # A parent more children may come to (create --open): not derived final until closed.
        db.execute("ALTER TABLE jobs ADD COLUMN is_open INTEGER NOT NULL DEFAULT 0")

    @migrations(name="0008_max_running")
    def max_running(db) -> None:
        # A parent's concurrency limit (create/policy set --max-running).
        db.execute("ALTER TABLE jobs ADD COLUMN max_running INTEGER")

    @migrations(name="0009_outputs")
    def outputs(db) -> None:
        # Outputs are `output` events: `jobctl outputs P` reads its children's.
        db.execute("CREATE INDEX events_outputs ON events (parent_id, id) WHERE kind = 'output'")

    @migrations(name="0010_dependencies")
    def dependencies(db) -> None:
        # What a job waits on (create --after/--after-any): claim skips it until then;
        # on the jobs, how many it waits on and whether any waits on it.
        db.execute("ALTER TABLE jobs ADD COLUMN waits INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE jobs ADD COLUMN waited_on INTEGER NOT NULL DEFAULT 0")
        db.execute(
            "CREATE TABLE dependencies (job_id TEXT NOT NULL REFERENCES jobs(id),"
            " after_id TEXT NOT NULL REFERENCES jobs(id), any_outcome INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (job_id, after_id))"
        )
        db.execute("CREATE INDEX dependencies_after_id ON dependencies (after_id)")

    @migrations(name="0011_prune")
    def prune(db) -> None:
        # `jobctl prune`: the low-water mark of removed events, and the flag that
        # lets prune's own transaction (only) delete from the append-only events.
        db.execute(
            "CREATE TABLE pruned (id INTEGER PRIMARY KEY CHECK (id = 1), events_before INTEGER NOT NULL,"
            " deleting INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute("INSERT INTO pruned (id, events_before, deleting) VALUES (1, 0, 0)")
        db.execute("DROP TRIGGER events_append_only_delete")
        db.execute(
            "CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events"
            " WHEN NOT (SELECT deleting FROM pruned WHERE id = 1)"
            " BEGIN SELECT RAISE(ABORT, 'the events table is append-only'); END"
        )

    return migrations


def _migrate(conn: sqlite3.Connection, stop_before: str | None = None) -> None:
    """Apply pending migrations inside the caller's transaction, and mark the
    file as a jobctl database of the resulting schema version."""
    from sqlite_utils import Database

    migrations = _migrations()
    db = Database(conn, execute_plugins=False)
    migrations.apply(db, stop_before=stop_before)
    version = len(migrations.applied(db))
    assert stop_before is not None or version == SCHEMA_VERSION, "SCHEMA_VERSION is out of date"
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {version}")
