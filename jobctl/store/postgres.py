"""The PostgreSQL store: for CI runners on many machines sharing one server
(see `jobctl.store.base` for the contract it keeps).

- **Selecting it:** `--db postgresql://user@host:port/dbname` (or `postgres://`,
  or the same in JOBCTL_DB). libpq's own variables (PGHOST, PGPASSWORD,
  ~/.pgpass, PGSSLMODE, ...) work as they do for psql. `?schema=NAME` picks
  the schema jobctl's tables live in (default `jobctl`).
- **Driver:** psycopg2, imported only here (an extra: `jobctl[postgres]`). Its
  import costs about 25 ms against 120 ms for psycopg 3, which matters for a
  one-shot `status set` (README, "Across machines").
- **Writers are serialised** by a transaction-scoped advisory lock taken at
  BEGIN (PostgreSQL's analogue of SQLite's `BEGIN IMMEDIATE`). Event ids are
  assigned under it as max(id) + 1, so they are gap-free and in commit order:
  a reader polling `id > cursor` never skips an event that commits later
  with a smaller id, which a plain sequence would allow.
- **Wake-ups:** LISTEN/NOTIFY, one NOTIFY per committing transaction that
  added events, with the poll interval as a timer fallback.
- **Connection loss:** a read outside a transaction reconnects with backoff
  (within JOBCTL_CONNECT_TIMEOUT) and runs again, so `watch` survives a
  server restart; a write is never replayed blindly: it fails with exit 5.
"""

from __future__ import annotations

import os
import random
import select
import time
import zlib
from contextlib import contextmanager
from operator import itemgetter

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from typing import Any

from jobctl.console import info
from jobctl.model import STATUSES, DatabaseUnusable, IdTaken
from jobctl.store.base import CHANGE_COLUMNS, EVENT_COLUMNS, EVENT_SELECT, JOB_COLUMNS, Retryable, SqlQueries
from jobctl.store.urls import masked

DEFAULT_SCHEMA = "jobctl"
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds; JOBCTL_CONNECT_TIMEOUT overrides
WAIT_NOTICE = 1.0  # seconds of waiting for the write lock before saying so on stderr
COPY_FROM = 200  # rows from which an insert goes through COPY instead of one INSERT ... VALUES
PAGE = 5000  # rows per page of a streamed listing
CHUNK = 1000  # rows per multi-row statement

_JOBS = ", ".join(JOB_COLUMNS)
_JOB_SELECT = f"SELECT {_JOBS} FROM jobs"
_JOBS_WITH_COUNTS = (
    "SELECT "
    + ", ".join(f"j.{c}" for c in CHANGE_COLUMNS)
    + ", "
    + ", ".join(f"c.{s} AS c_{s}" for s in STATUSES)
    + " FROM jobs j LEFT JOIN child_counts c ON c.parent_id = j.id"
)
_ALIVE_AT = "greatest(coalesce(last_heartbeat, ''), coalesce(started_at, ''))"
_job_row = itemgetter(*JOB_COLUMNS)
_event_row = itemgetter(*EVENT_COLUMNS)
_status_row = itemgetter("id", "status", "started_at", "completed_at", "updated_at", "attempt", "not_before")

# The numbered migrations, in order. Never edit one that has shipped: add the next.
MIGRATIONS = [
    # 1: the schema of SQLite's migrations 1 and 2 at once. Ids compare bytewise
    # (COLLATE "C"), as in SQLite, so child numbering by id range is the same.
    """
    CREATE TABLE jobs (
        seq bigserial UNIQUE,
        id text COLLATE "C" PRIMARY KEY,
        parent_id text COLLATE "C" REFERENCES jobs(id),
        root_id text COLLATE "C" NOT NULL,
        name text NOT NULL, type text, status text NOT NULL,
        created_at text NOT NULL, started_at text, completed_at text, updated_at text NOT NULL,
        last_heartbeat text, metadata text);
    CREATE INDEX jobs_parent_id_status ON jobs (parent_id, status, seq);
    CREATE INDEX jobs_status_last_heartbeat ON jobs (status, last_heartbeat);
    CREATE TABLE logs (
        id bigserial PRIMARY KEY, job_id text COLLATE "C" NOT NULL REFERENCES jobs(id),
        level text NOT NULL, message text NOT NULL, at text NOT NULL);
    CREATE INDEX logs_job_id ON logs (job_id, id);
    CREATE TABLE events (
        id bigint PRIMARY KEY, job_id text COLLATE "C" NOT NULL REFERENCES jobs(id),
        parent_id text COLLATE "C", root_id text COLLATE "C" NOT NULL, kind text NOT NULL,
        old_status text, new_status text, at text NOT NULL, message text, log_id bigint REFERENCES logs(id));
    CREATE INDEX events_root_id ON events (root_id, id);
    CREATE INDEX events_job_id ON events (job_id, id);
    CREATE INDEX events_parent_id ON events (parent_id, id);
    CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'the events table is append-only'; END $$;
    CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
    CREATE TABLE child_counts (
        parent_id text COLLATE "C" PRIMARY KEY REFERENCES jobs(id),
        pending bigint NOT NULL DEFAULT 0, running bigint NOT NULL DEFAULT 0,
        completed bigint NOT NULL DEFAULT 0, failed bigint NOT NULL DEFAULT 0,
        cancelled bigint NOT NULL DEFAULT 0);
    """,
    # 2: what `jobctl run` records when the command ends (SQLite's migration 3).
    """
    ALTER TABLE jobs ADD COLUMN exit_code integer;
    ALTER TABLE jobs ADD COLUMN duration double precision;
    """,
    # 3: the same on the final status event of a run (SQLite's migration 4).
    """
    ALTER TABLE events ADD COLUMN exit_code integer;
    ALTER TABLE events ADD COLUMN duration double precision;
    """,
    # 4: failure policy, attempts and backoff (SQLite's migration 5).
    """
    ALTER TABLE jobs ADD COLUMN fail_fast integer NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN allow_failures text;
    ALTER TABLE jobs ADD COLUMN max_attempts integer;
    ALTER TABLE jobs ADD COLUMN attempt integer NOT NULL DEFAULT 1;
    ALTER TABLE jobs ADD COLUMN not_before text;
    ALTER TABLE events ADD COLUMN attempt integer;
    ALTER TABLE events ADD COLUMN max_attempts integer;
    """,
    # 5: open parents (SQLite's migration 6).
    """
    ALTER TABLE jobs ADD COLUMN is_open integer NOT NULL DEFAULT 0;
    """,
    # 6: a parent's concurrency limit (SQLite's migration 7).
    """
    ALTER TABLE jobs ADD COLUMN max_running integer;
    """,
    # 7: outputs are `output` events, read by parent (SQLite's migration 8).
    """
    CREATE INDEX events_outputs ON events (parent_id, id) WHERE kind = 'output';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _driver():
    try:
        import psycopg2
    except ImportError:
        raise DatabaseUnusable(
            "a postgresql:// database needs the PostgreSQL driver: pip install 'jobctl[postgres]'"
        ) from None
    return psycopg2


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400 * 365:
        raise DatabaseUnusable(f"{name} must be a number of seconds, not {raw!r}")
    return value


def split_url(url: str) -> tuple[str, str]:
    """(the URL for libpq, the schema): `schema` is jobctl's own query parameter."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    rest = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if (
        not schema
        or not schema.replace("_", "a").isalnum()
        or not schema.isascii()
        or schema[0].isdigit()
        or schema != schema.lower()
        or len(schema) > 63
    ):
        raise DatabaseUnusable(f"bad schema name {schema!r} in the database URL: use lower-case letters, digits and _")
    scheme = "postgresql" if parts.scheme == "postgres" else parts.scheme
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(rest))), schema


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # libpq repeats "connection to server at ... failed:" before the reason
    for line in lines:
        if "FATAL:" in line or "failed:" in line:
            return line.split("failed:", 1)[-1].replace("FATAL:", "").strip() or line
    return lines[0] if lines else type(exc).__name__


def _csv_field(value: object) -> str:
    """One field of COPY's CSV: NULL is an unquoted empty field, text is always quoted."""
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace('"', '""') + '"'


class PostgresStore(SqlQueries):
    """One connection to a jobctl schema in a PostgreSQL database."""

    mark = "%s"
    json_object = "(SELECT row_to_json(r)::text FROM (SELECT {columns}) r)"  # keys in order, compact

    def _in(self, column: str, values: Sequence) -> tuple[str, list]:
        return f"{column} = ANY(%s)", [list(values)]

    def __init__(self, url: str, schema: str, connect_timeout: float, lock_timeout: float):
        self.url, self.schema = url, schema
        self.name = masked(url) + ("" if schema == DEFAULT_SCHEMA else f" (schema {schema})")
        self.connect_timeout, self.lock_timeout = connect_timeout, lock_timeout
        self.channel = f"jobctl_{schema}"
        self.lock_key = zlib.crc32(f"jobctl:{schema}".encode())
        self.pg = _driver()
        self.conn = self._connect()
        self.in_transaction = False
        self.next_event_id: int | None = None
        self.notify = False
        self.deferred: list[str] = []  # statements sent with the COMMIT
        self.ready = False  # the schema is current: write() may read the next event id

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, url: str, *, create: bool = True) -> PostgresStore:
        libpq_url, schema = split_url(url)
        store = cls(
            libpq_url,
            schema,
            _seconds_from_env("JOBCTL_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT),
            _seconds_from_env("JOBCTL_BUSY_TIMEOUT", 30.0),
        )
        try:
            store._check_and_migrate(create)
        except BaseException:
            store.close()
            raise
        return store

    def _connect(self):
        pg = self.pg
        try:
            conn = pg.connect(
                self.url,
                connect_timeout=max(2, int(self.connect_timeout + 0.999)),
                application_name="jobctl",
                options=f"-c search_path={self.schema} -c lock_timeout={max(1, int(self.lock_timeout * 1000))}",
            )
        except pg.Error as exc:
            raise self._connect_error(exc) from None
        conn.autocommit = True  # transactions are explicit: write() and read()
        return conn

    def _connect_error(self, exc: BaseException) -> DatabaseUnusable:
        reason = _first_line(exc)
        low = reason.lower()
        where = f"PostgreSQL at {masked(self.url)}"
        if "password" in low or "authentication" in low or ("role" in low and "does not exist" in low):
            return DatabaseUnusable(f"{where}: authentication failed ({reason})")
        if "does not exist" in low and "database" in low:
            return DatabaseUnusable(f"{where}: {reason} (create it with createdb)")
        if "timeout" in low:
            return DatabaseUnusable(f"cannot reach {where} within {self.connect_timeout:g} s (JOBCTL_CONNECT_TIMEOUT)")
        return DatabaseUnusable(f"cannot reach {where}: {reason}")

    def _check_and_migrate(self, create: bool) -> None:
        pg = self.pg
        try:
            rows = self._query("SELECT key, value FROM meta")
            meta = {r["key"]: r["value"] for r in rows}
            if meta.get("application") == "jobctl" and meta.get("version") == str(SCHEMA_VERSION):
                self.ready = True
                return
        except DatabaseUnusable as exc:
            if not isinstance(exc.__cause__, pg.errors.UndefinedTable):
                raise
        with self.write():
            found = self._meta()
            if found is None and not create:
                raise DatabaseUnusable(
                    f"no jobctl database at {self.name} (create one with `jobctl init` or any write)"
                )
            version = int(found.get("version", "0")) if found else 0
            if version > SCHEMA_VERSION:
                raise DatabaseUnusable(
                    f"database {self.name} has schema version {version}, newer than this jobctl"
                    f" understands ({SCHEMA_VERSION}): upgrade jobctl"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                self._execute(MIGRATIONS[number - 1])
            self._execute(
                "INSERT INTO meta (key, value) VALUES ('application', 'jobctl'), ('version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        self.ready = True

    def _meta(self) -> dict | None:
        """jobctl's meta rows (None: no jobctl schema yet, which is then created).
        A schema of that name that is not jobctl's is refused, untouched."""
        exists = self._query("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
        if not exists:
            self._execute(f"CREATE SCHEMA {self.schema}")
        tables = {
            r["relname"]
            for r in self._query(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
                (self.schema,),
            )
        }
        if "meta" in tables:
            meta = {r["key"]: r["value"] for r in self._query("SELECT key, value FROM meta")}
            if meta.get("application") == "jobctl":
                return meta
        if tables:
            raise DatabaseUnusable(
                f"schema {self.schema} in {masked(self.url)} is not a jobctl database"
                " (it belongs to another program; pick another with ?schema=NAME)"
            )
        self._execute("CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
        return None

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    # ------------------------------------------------------------ transactions
    @contextmanager
    def write(self) -> Iterator[PostgresStore]:
        """One write transaction, holding the jobctl write lock (a transaction-
        scoped advisory lock) from its start: writers run one at a time, and
        event ids are assigned under the lock. After WAIT_NOTICE seconds of
        waiting for the lock it says so on stderr, then waits the rest of the
        busy timeout."""
        notice = min(WAIT_NOTICE, self.lock_timeout)
        try:
            self._begin(notice, self.lock_timeout)
        except DatabaseUnusable as exc:
            self._rollback()  # BEGIN went through: leave no aborted transaction behind
            left = self.lock_timeout - notice
            if getattr(exc.__cause__, "pgcode", None) != "55P03" or left <= 0:
                raise
            info(f"waiting for another writer to finish (up to {left:g} s more; JOBCTL_BUSY_TIMEOUT)")
            try:
                self._begin(left, self.lock_timeout)
            except BaseException:
                self._rollback()
                raise
        self.in_transaction, self.notify, self.deferred = True, False, []
        try:
            yield self
            # the writes that return nothing, the NOTIFY and the COMMIT: one round trip
            end = [*self.deferred, f"NOTIFY {self.channel}" if self.notify else "", "COMMIT"]
            self._execute("; ".join(x for x in end if x))
        except BaseException:
            self._rollback()
            raise
        finally:
            self.in_transaction = False

    def _begin(self, wait: float, timeout: float) -> None:
        """BEGIN, the write lock (waiting at most `wait` seconds for it), and the
        next event id read under it: one round trip."""
        begin = (
            f"BEGIN; SET LOCAL lock_timeout = {max(1, int(wait * 1000))};"
            f" SELECT pg_advisory_xact_lock({self.lock_key}); SET LOCAL lock_timeout = {max(1, int(timeout * 1000))}"
        )
        if self.ready:  # the next event id, in the same round trip (under the lock)
            rows = self._run(begin + "; SELECT coalesce(max(id), 0) + 1 FROM events", None, fetch=True)
            self.next_event_id = rows[0][0] if rows else None
        else:  # migrating: there may be no events table yet
            self._execute(begin)
            self.next_event_id = None

    @contextmanager
    def read(self) -> Iterator[PostgresStore]:
        """A read transaction: every query inside sees the same snapshot."""
        self._execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self.in_transaction = True
        try:
            yield self
            self._execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        finally:
            self.in_transaction = False

    def _rollback(self) -> None:
        if not self.conn.closed:
            try:
                self.conn.cursor().execute("ROLLBACK")
            except self.pg.Error:
                pass

    def _error(self, exc: BaseException) -> DatabaseUnusable:
        code = getattr(exc, "pgcode", None)
        reason = _first_line(exc)
        if code in ("40001", "40P01"):  # serialization failure, deadlock: nothing was written
            return Retryable(f"database {self.name}: {reason}")
        if code == "25006":
            return DatabaseUnusable(f"database {self.name} is read-only ({reason})")
        if code == "55P03":
            return DatabaseUnusable(
                f"database {self.name} is still locked after the busy timeout (set JOBCTL_BUSY_TIMEOUT to wait longer)"
            )
        if code in ("53100", "53200"):
            return DatabaseUnusable(f"database {self.name}: the server is out of space or memory; nothing was written")
        if self.conn.closed or code is None and isinstance(exc, self.pg.OperationalError):
            return DatabaseUnusable(f"lost the connection to {self.name}: {reason}")
        return DatabaseUnusable(f"database {self.name}: {reason}")

    def _run(self, sql: str, params: Sequence | None, fetch: bool) -> list[tuple] | None:
        """Run one statement; outside a transaction, a lost connection is
        re-made (with backoff, within the connect timeout) and the statement
        run again: reads are safe to repeat, and so are autocommit statements here."""
        pg = self.pg
        deadline = None
        while True:
            try:
                cur = self.conn.cursor()
                cur.execute(sql, params)
                if not fetch:
                    return None
                self._columns = [d[0] for d in cur.description]
                return cur.fetchall()
            except (pg.OperationalError, pg.InterfaceError) as exc:
                lost = self.conn.closed or getattr(exc, "pgcode", None) in (None, "57P01", "57P02", "57P03")
                # a read, or the BEGIN of a write, is safe to run again; a statement
                # inside a transaction is not (the transaction is gone with the connection)
                if self.in_transaction or not lost or not sql.lstrip().upper().startswith(("SELECT", "WITH", "BEGIN")):
                    raise self._error(exc) from exc
                deadline = deadline or time.monotonic() + max(self.connect_timeout, 1.0)
                self._reconnect(deadline, exc)
            except pg.Error as exc:
                raise self._error(exc) from exc

    def _reconnect(self, deadline: float, cause: BaseException) -> None:
        delay = 0.05
        while True:
            self.close()
            try:
                self.conn = self._connect()
                return
            except DatabaseUnusable:
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnusable(
                        f"lost the connection to {self.name}: {_first_line(cause)} (reconnecting failed)"
                    ) from None
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 1.0)

    def _execute(self, sql: str, params: Sequence | None = None) -> None:
        self._run(sql, params, fetch=False)

    def _query(self, sql: str, params: Sequence | None = None) -> list[dict]:
        rows = self._run(sql, params, fetch=True) or []
        cols = self._columns
        return [dict(zip(cols, row)) for row in rows]

    def _later(self, sql: str) -> None:
        """A write inside write() whose result nobody reads: sent with the COMMIT
        (one round trip for all of them), unless it is big."""
        if len(sql) > 100_000:
            self._execute(sql)
        else:
            self.deferred.append(sql)

    def _values(self, template: str, rows: Sequence[tuple]) -> str:
        """`(a, b), (c, d), ...` with every value escaped by the driver."""
        cur = self.conn.cursor()
        return ",".join(cur.mogrify(template, row).decode() for row in rows)

    def _copy(self, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
        """Bulk insert through COPY (CSV: an unquoted empty field is NULL)."""
        import io

        buf = io.StringIO("".join(",".join(map(_csv_field, row)) + "\n" for row in rows))
        try:
            self.conn.cursor().copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buf)
        except self.pg.Error as exc:
            if getattr(exc, "pgcode", None) == "23505":
                raise
            raise self._error(exc) from exc

    def _insert(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        if len(rows) >= COPY_FROM:
            self._copy(table, columns, rows)
            return
        marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
        cur = self.conn.cursor()
        try:
            cur.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {self._values(marks, rows)}")
        except self.pg.Error as exc:
            if getattr(exc, "pgcode", None) == "23505":
                raise
            raise self._error(exc) from exc

    # -------------------------------------------------------------------- jobs
    def get_job(self, job_id: str) -> dict | None:
        rows = self._query(_JOB_SELECT + " WHERE id = %s", (job_id,))
        return rows[0] if rows else None

    def jobs_and_counts(
        self, ids: Sequence[str], parents: bool = False
    ) -> tuple[dict[str, dict], dict[str, dict[str, int]]]:
        jobs: dict[str, dict] = {}
        counts: dict[str, dict[str, int]] = {}
        where = " WHERE j.id = ANY(%s)"
        if parents:
            where += " OR j.id IN (SELECT parent_id FROM jobs WHERE id = ANY(%s))"
        for i in range(0, len(ids), CHUNK):
            chunk = list(ids[i : i + CHUNK])
            for row in self._query(_JOBS_WITH_COUNTS + where, (chunk, chunk) if parents else (chunk,)):
                counts[row["id"]] = {s: row.pop(f"c_{s}") or 0 for s in STATUSES}
                jobs[row["id"]] = row
        return jobs, counts

    def insert_jobs(self, jobs: Sequence[dict]) -> None:
        self._execute("SAVEPOINT insert_jobs")
        try:
            self._insert("jobs", JOB_COLUMNS, [_job_row(j) for j in jobs])
        except self.pg.IntegrityError as exc:
            self._execute("ROLLBACK TO SAVEPOINT insert_jobs")
            raise IdTaken(f"a job id is taken ({_first_line(exc)})") from None
        self._execute("RELEASE SAVEPOINT insert_jobs")

    def insert_children(self, jobs: Sequence[dict], message: str | None) -> None:
        """The rows, then their events built here (COPY for big chunks): a round trip
        for the highest seq first would cost as much as it saves."""
        self.insert_jobs(jobs)
        self.insert_events(
            [
                {
                    "job_id": j["id"],
                    "parent_id": j["parent_id"],
                    "root_id": j["root_id"],
                    "kind": "create",
                    "old_status": None,
                    "new_status": j["status"],
                    "at": j["created_at"],
                    "message": message,
                    "log_id": None,
                    "exit_code": None,
                    "duration": None,
                    "attempt": j["attempt"],
                    "max_attempts": j["max_attempts"],
                }
                for j in jobs
            ]
        )

    def update_statuses(self, jobs: Iterable[dict]) -> None:
        rows = [_status_row(j) for j in jobs]
        for i in range(0, len(rows), CHUNK):
            values = self._values("(%s, %s, %s, %s, %s, %s::integer, %s)", rows[i : i + CHUNK])
            self._later(
                "UPDATE jobs SET status = v.status, started_at = v.started_at,"
                " completed_at = v.completed_at, updated_at = v.updated_at,"
                " attempt = v.attempt, not_before = v.not_before"
                f" FROM (VALUES {values}) AS v(id, status, started_at, completed_at, updated_at, attempt, not_before)"
                " WHERE jobs.id = v.id"
            )

    def set_outcome(self, job_id: str, exit_code: int | None, duration: float | None) -> None:
        self._later(
            self.conn.cursor()
            .mogrify("UPDATE jobs SET exit_code = %s, duration = %s WHERE id = %s", (exit_code, duration, job_id))
            .decode()
        )

    def set_policy(self, job_id: str, fail_fast: int, allow_failures: str | None, max_attempts: int | None) -> None:
        self._later(
            self.conn.cursor()
            .mogrify(
                "UPDATE jobs SET fail_fast = %s, allow_failures = %s, max_attempts = %s WHERE id = %s",
                (fail_fast, allow_failures, max_attempts, job_id),
            )
            .decode()
        )

    def set_fanout(self, job_id: str, is_open: int, max_running: int | None) -> None:
        self._later(
            self.conn.cursor()
            .mogrify("UPDATE jobs SET is_open = %s, max_running = %s WHERE id = %s", (is_open, max_running, job_id))
            .decode()
        )

    def cancel_subtree(self, job_id: str, message: str, at: str, *, below: bool = False) -> list[str] | None:
        """Two statements, no temporary table (a role may lack TEMP): the check for
        a final job with unfinished children, then one statement whose parts
        (events, rows, counts) all read the subtree as it was before it."""
        if self.deferred:  # what this transaction wrote so far comes first
            self._execute("; ".join(self.deferred))
            self.deferred = []
        walk = (
            'WITH RECURSIVE t(id, depth) AS (SELECT %s::text COLLATE "C", 0 UNION ALL'
            " SELECT j.id, t.depth + 1 FROM jobs j JOIN t ON j.parent_id = t.id),"
            " targets AS (SELECT j.id, j.parent_id, j.root_id, j.status, j.attempt, j.max_attempts, t.depth, j.seq"
            " FROM t JOIN jobs j ON j.id = t.id WHERE j.status IN ('pending', 'running')"
            + (" AND t.depth > 0)" if below else ")")
        )
        mixed = self._query(
            walk + " SELECT 1 FROM targets k JOIN jobs p ON p.id = k.parent_id"
            " WHERE k.id <> %s AND p.status NOT IN ('pending', 'running') LIMIT 1",
            (job_id, job_id),
        )
        if mixed:
            return None
        if self.next_event_id is None:
            self.next_event_id = self._query("SELECT coalesce(max(id), 0) + 1 AS n FROM events")[0]["n"]
        counts = ", ".join(STATUSES)
        rows = self._run(
            walk + ", ordered AS (SELECT *, row_number() OVER (ORDER BY depth DESC, seq DESC) AS n FROM targets),"
            " ev AS (INSERT INTO events (id, job_id, parent_id, root_id, kind, old_status, new_status, at, message,"
            " attempt, max_attempts) SELECT %s + n - 1, id, parent_id, root_id, 'status', status, 'cancelled',"
            " %s, %s, attempt, max_attempts FROM ordered),"
            " up AS (UPDATE jobs SET status = 'cancelled', completed_at = %s, updated_at = %s, not_before = NULL"
            " FROM targets WHERE jobs.id = targets.id),"
            f" kept AS (INSERT INTO child_counts (parent_id, {counts})"
            " SELECT parent_id, -count(*) FILTER (WHERE status = 'pending'),"
            " -count(*) FILTER (WHERE status = 'running'), 0, 0, count(*) FROM targets WHERE id <> %s"
            " GROUP BY parent_id ON CONFLICT (parent_id) DO UPDATE SET "
            + ", ".join(f"{s} = child_counts.{s} + excluded.{s}" for s in STATUSES)
            + ") SELECT id FROM ordered ORDER BY n",
            (job_id, self.next_event_id, at, message, at, at, job_id),
            fetch=True,
        )
        ids = [r[0] for r in rows or ()]
        self.next_event_id += len(ids)
        self.notify = self.notify or bool(ids)
        return ids

    def set_heartbeat(self, job_id: str, at: str) -> bool:
        return bool(self._query("UPDATE jobs SET last_heartbeat = %s WHERE id = %s RETURNING 1", (at, job_id)))

    def subtree(self, job_id: str) -> list[dict]:
        cols = ", ".join(f"j.{c}" for c in JOB_COLUMNS)
        return self._query(
            'WITH RECURSIVE t(id, depth) AS (SELECT %s::text COLLATE "C", 0 UNION ALL'
            " SELECT j.id, t.depth + 1 FROM jobs j JOIN t ON j.parent_id = t.id)"
            f" SELECT {cols}, t.depth AS depth FROM t JOIN jobs j ON j.id = t.id ORDER BY t.depth, j.seq",
            (job_id,),
        )

    def walk(self, job_id: str, *, max_depth: int | None = None, limit: int | None = None) -> Iterator[dict]:
        """The job and its descendants depth-first (siblings oldest first), each
        with `depth`, streamed through a server-side cursor (call it inside read())."""
        cols = ", ".join(f"j.{c}" for c in JOB_COLUMNS)
        deeper = "" if max_depth is None else f" WHERE t.depth < {int(max_depth)}"
        sql = (
            f"WITH RECURSIVE t({_JOBS}, depth, seq) AS ("
            f" SELECT {cols}, 0, j.seq FROM jobs j WHERE j.id = %s"
            f" UNION ALL SELECT {cols}, t.depth + 1, j.seq FROM t JOIN jobs j ON j.parent_id = t.id{deeper})"
            f" SEARCH DEPTH FIRST BY seq SET walk_order SELECT {_JOBS}, depth FROM t ORDER BY walk_order"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._stream(sql, (job_id,), "jobctl_walk")

    def _stream(self, sql: str, params: Sequence, name: str) -> Iterator[dict]:
        """Rows through a server-side cursor of the current read() transaction,
        fetched a page at a time (all at once outside a transaction)."""
        if not self.in_transaction:
            yield from self._query(sql, params)
            return
        self._execute(f"DECLARE {name} NO SCROLL CURSOR FOR {sql}", params)
        try:
            while rows := self._query(f"FETCH {PAGE} FROM {name}"):
                yield from rows
        finally:
            if not self.conn.closed:
                try:
                    self.conn.cursor().execute(f"CLOSE {name}")
                except self.pg.Error:
                    pass

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
        """Jobs matching every filter, streamed a page at a time (a keyset over
        `seq`); see base.Store.list_jobs."""
        where = ["seq < %s" if newest_first else "seq > %s"]
        params: list[object] = [2**63 - 1 if newest_first else 0]  # params[0]: the keyset cursor
        select = f"SELECT seq, {_JOBS}"
        if parent_id is not None:
            where.append("parent_id = %s")
            params.append(parent_id)
        if statuses is not None:
            where.append("status = ANY(%s)")
            params.append(list(statuses))
        if top_level:
            where.append("parent_id IS NULL")
        if type is not None:
            where.append("type = %s")
            params.append(type)
        if alive_before is not None:
            select += f", {_ALIVE_AT} AS alive_at"
            where.append(f"{_ALIVE_AT} < %s AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id)")
            params.append(alive_before)
        left = limit
        while left is None or left > 0:
            page = PAGE if left is None else min(PAGE, left)
            order = "seq DESC" if newest_first else "seq"
            rows = self._query(f"{select} FROM jobs WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {page}", params)
            for row in rows:
                params[0] = row.pop("seq")
                yield row
            if left is not None:
                left -= len(rows)
            if len(rows) < page:
                return

    def next_child(self, parent_id: str, status: str, ready_at: str | None = None) -> dict | None:
        sql, params = _JOB_SELECT + " WHERE parent_id = %s AND status = %s", [parent_id, status]
        if ready_at is not None:
            sql += " AND (not_before IS NULL OR not_before <= %s)"
            params.append(ready_at)
        rows = self._query(sql + " ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED", params)
        return rows[0] if rows else None

    # ------------------------------------------------------------------ counts
    def get_counts(self, parent_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        out = {p: dict.fromkeys(STATUSES, 0) for p in parent_ids}
        for i in range(0, len(parent_ids), CHUNK):
            for row in self._query(
                "SELECT * FROM child_counts WHERE parent_id = ANY(%s)", (list(parent_ids[i : i + CHUNK]),)
            ):
                out[row["parent_id"]] = {s: row[s] for s in STATUSES}
        return out

    def apply_count_deltas(self, deltas: dict[str, dict[str, int]]) -> None:
        rows = [(p, *(d.get(s, 0) for s in STATUSES)) for p, d in deltas.items()]
        cols = ", ".join(STATUSES)
        for i in range(0, len(rows), CHUNK):
            values = self._values("(%s, %s, %s, %s, %s, %s)", rows[i : i + CHUNK])
            self._later(
                f"INSERT INTO child_counts (parent_id, {cols}) VALUES {values}"
                " ON CONFLICT (parent_id) DO UPDATE SET "
                + ", ".join(f"{s} = child_counts.{s} + excluded.{s}" for s in STATUSES)
            )

    # ------------------------------------------------------------ events, logs
    def insert_events(self, events: Sequence[dict]) -> None:
        """Insert events in order, with ids assigned under the write lock."""
        if not events:
            return
        if self.next_event_id is None:
            self.next_event_id = self._query("SELECT coalesce(max(id), 0) + 1 AS n FROM events")[0]["n"]
        first = self.next_event_id
        rows = [(first + k, *_event_row(e)) for k, e in enumerate(events)]
        self.next_event_id = first + len(rows)
        if len(rows) >= COPY_FROM:
            self._copy("events", ("id", *EVENT_COLUMNS), rows)
        else:
            marks = "(" + ", ".join(["%s"] * (1 + len(EVENT_COLUMNS))) + ")"
            self._later(f"INSERT INTO events (id, {', '.join(EVENT_COLUMNS)}) VALUES {self._values(marks, rows)}")
        self.notify = True

    def insert_log(self, job_id: str, level: str, message: str, at: str) -> int:
        return self._query(
            "INSERT INTO logs (job_id, level, message, at) VALUES (%s, %s, %s, %s) RETURNING id",
            (job_id, level, message, at),
        )[0]["id"]

    def child_events(self, parent_id: str, until: int | None = None) -> Iterator[dict]:
        sql = EVENT_SELECT + " WHERE (e.job_id = %s OR e.parent_id = %s)"
        params: tuple = (parent_id, parent_id)
        if until is not None:
            sql += " AND e.id <= %s"
            params += (until,)
        return iter(self._query(sql + " ORDER BY e.id", params))

    def waker(self, poll_interval: float) -> ListenWaker:
        return ListenWaker(self, poll_interval)

    # ------------------------------------------------------------------ verify
    def all_jobs(self) -> list[dict]:
        return self._query(_JOB_SELECT + " ORDER BY seq")

    def all_events(self) -> Iterator[dict]:
        return iter(self._query("SELECT id, " + ", ".join(EVENT_COLUMNS) + " FROM events ORDER BY id"))

    def jobs_by_id(self) -> Iterator[dict]:
        return self._stream(_JOB_SELECT + " ORDER BY id", (), "jobctl_jobs")

    def events_by_job(self) -> Iterator[dict]:
        return self._stream(
            "SELECT id, " + ", ".join(EVENT_COLUMNS) + " FROM events ORDER BY job_id, id", (), "jobctl_events"
        )

    def integrity_check(self) -> list[str]:
        return []  # the server keeps its own; there is no file to check


class ListenWaker:
    """Wake-ups from LISTEN on the store's channel, on a connection of its own.
    A lost connection is re-made with backoff; after it, and after every
    poll interval without a notification, wait() says "may have changed", so
    the reader looks again (a cheap indexed query)."""

    mode = "listen"

    def __init__(self, store: PostgresStore, poll_interval: float):
        self.store, self.poll_interval = store, poll_interval
        self.conn: Any = None
        self.last_look = time.monotonic()
        self.delay = 0.05
        self._listen()

    def _listen(self) -> None:
        self.conn = self.store._connect()
        self.conn.cursor().execute(f"LISTEN {self.store.channel}")
        self.delay = 0.05

    def wait(self, timeout: float) -> bool:
        """Up to `timeout` seconds: True on a notification, after a reconnect,
        and once per poll interval without one (the timer fallback)."""
        limit = max(0.0, min(timeout, self.poll_interval))
        pg = self.store.pg
        if self.conn is None:
            time.sleep(min(limit, self.delay))
            self.delay = min(self.delay * 2, 1.0)
            try:
                self._listen()
            except (DatabaseUnusable, pg.Error):
                self.conn = None
                return False
            return self._looked()  # notifications may have been missed while away
        try:
            if not self.conn.notifies:
                ready, _, _ = select.select([self.conn], [], [], limit)
                if not ready:
                    if time.monotonic() - self.last_look >= self.poll_interval:
                        return self._looked()
                    return False
                self.conn.poll()
            self.conn.notifies.clear()
            return self._looked()
        except (pg.OperationalError, pg.InterfaceError):
            try:
                self.conn.close()
            finally:
                self.conn = None
            return self._looked()

    def _looked(self) -> bool:
        self.last_look = time.monotonic()
        return True

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
