"""The PostgreSQL store: for CI runners on many machines sharing one server
(see `jobctl.store.base` for the contract it keeps).

- **Selecting it:** `--db postgresql://user@host:port/dbname` (or `postgres://`,
  or the same in JOBCTL_DB). libpq's own variables (PGHOST, PGPASSWORD,
  ~/.pgpass, PGSSLMODE, ...) work as they do for psql. `?schema=NAME` picks
  the schema jobctl's tables live in (default `jobctl`).
- **Driver:** psycopg2, imported only here (an extra: `jobctl-db[postgres]`). Its
  import costs about 25 ms against 120 ms for psycopg 3, which matters for a
  one-shot `status set` (docs/database.md, "Across machines").
- **The event order, held only for the server's own work:** a write locks the
  jobs it reads (FOR NO KEY UPDATE: a foreign key check of a child's row, which
  locks its parent's key, need not wait) and reads the parents it rolls up to
  without a lock; its COMMIT batch takes a transaction-scoped advisory lock, checks those
  parents (_parent_checks), writes, assigns event ids as max(id) + 1 on the
  server, NOTIFYs and commits, in one round trip. So ids are gap-free and in
  commit order (a reader polling `id > cursor` never skips an event that
  commits later with a smaller id, which a plain sequence would allow), and no
  writer waits for another's round trips. See write().
- **Connections:** one process, two connections to a database whatever its
  threads (_Shared): one for statements and transactions, one for LISTEN.
  Schema and lock timeout are set per transaction, so PgBouncer in
  transaction-pooling mode can be between (LISTEN then needs a session).
- **Wake-ups:** LISTEN/NOTIFY, one NOTIFY per committing transaction that
  added events (its payload `cancels` when it cancelled a job: what a running
  job's supervisor waits for), with the poll interval as a timer fallback.
- **Connection loss:** a refused connection (too many clients, a role's limit,
  a restart) is asked again with backoff within JOBCTL_CONNECT_TIMEOUT; a read
  outside a transaction reconnects and runs again, so `watch` survives a
  server restart; a write is never replayed blindly: it fails with exit 5.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
import zlib
from contextlib import contextmanager
from operator import itemgetter

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from typing import Any

from jobctl.backoff import Backoff
from jobctl.console import info
from jobctl.model import ACTIVE, ACTIVE_PARENT, CANCELLED, STATUSES, DatabaseUnusable, IdTaken, UsageError
from jobctl.store.base import (
    ACTIVE_SQL,
    CANCELLED_SQL,
    CHANGE_COLUMNS,
    DEFAULT_BUSY_TIMEOUT,
    EVENT_COLUMNS,
    JOB_COLUMNS,
    STATUS_KIND_SQL,
    Lost,
    Retryable,
    SqlQueries,
    cancel_assignments,
    cancel_count_deltas,
    seconds_from_env,
    upsert_counts,
)
from jobctl.store.urls import join_url, masked, masked_in, url_parts

DEFAULT_SCHEMA = "jobctl"
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds; JOBCTL_CONNECT_TIMEOUT overrides
CANCEL_PAYLOAD = "cancels"  # the NOTIFY payload of a commit that cancelled a job (see ListenWaker)
WAIT_NOTICE = 1.0  # seconds of waiting for the write lock before saying so on stderr
PREPARE_AT = 2  # the use of a statement, in one session, at which it is prepared (see _statement)
PREPARE_PARAMS = 64  # a statement with more values than this (a big multi-row one) is never prepared
COPY_FROM = 200  # rows from which an insert goes through COPY instead of one INSERT ... VALUES
PAGE = 5000  # rows per page of a streamed listing
CHUNK = 1000  # rows per multi-row statement

_JOBS = ", ".join(JOB_COLUMNS)
_JOB_SELECT = SqlQueries.job_select
# Fan-in without queueing on the parent's row: a change reads the parent unlocked and
# its COMMIT batch checks it (_parent_checks). (It was off for a while: a retry after a
# failed check used to lock the parent's row instead and skip the check, but the
# changes that read it unlocked move its counts without that row lock, so two racing
# starts under --max-running 2 could both pass. A retry now holds the write lock.)
UNLOCKED_PARENTS = True

_JOBS_WITH_COUNTS = (
    "SELECT "
    + ", ".join(f"j.{c}" for c in CHANGE_COLUMNS)
    + ", "
    + ", ".join(f"c.{s} AS c_{s}" for s in STATUSES)
    + " FROM jobs j LEFT JOIN child_counts c ON c.parent_id = j.id"
)
_job_row = itemgetter(*JOB_COLUMNS)

_event_row = itemgetter(*EVENT_COLUMNS)
# one row of events to insert, numbered (k): typed, as VALUES would guess text for a NULL
# The types of an event's values in a VALUES list (text where not named here), after
# its number in the batch: built from EVENT_COLUMNS, so a column added there is here too.
_EVENT_TYPES = {
    "log_id": "bigint",
    "exit_code": "integer",
    "duration": "double precision",
    "attempt": "integer",
    "max_attempts": "integer",
}
_EVENT_VALUES = "(%s::bigint, " + ", ".join(f"%s::{_EVENT_TYPES.get(c, 'text')}" for c in EVENT_COLUMNS) + ")"
_status_row = itemgetter("id", "status", "started_at", "completed_at", "updated_at", "attempt", "not_before")


def _rows(template: str, rows: Sequence[tuple]) -> tuple[str, list]:
    """A multi-row VALUES list of `template` (%s marks) for `rows`, and its values in order."""
    return ", ".join([template] * len(rows)), [v for row in rows for v in row]


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
    # 5: an event's fields (SQLite's migration 6).
    """
    ALTER TABLE events ADD COLUMN fields text;
    """,
    # 6: open parents (SQLite's migration 7).
    """
    ALTER TABLE jobs ADD COLUMN is_open integer NOT NULL DEFAULT 0;
    """,
    # 7: a parent's concurrency limit (SQLite's migration 8).
    """
    ALTER TABLE jobs ADD COLUMN max_running integer;
    """,
    # 8: outputs are `output` events, read by parent (SQLite's migration 9).
    """
    CREATE INDEX events_outputs ON events (parent_id, id) WHERE kind = 'output';
    """,
    # 9: what a job waits on (SQLite's migration 10).
    """
    ALTER TABLE jobs ADD COLUMN waits integer NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN waited_on integer NOT NULL DEFAULT 0;
    CREATE TABLE dependencies (
        job_id text COLLATE "C" NOT NULL REFERENCES jobs(id),
        after_id text COLLATE "C" NOT NULL REFERENCES jobs(id),
        any_outcome integer NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, after_id));
    CREATE INDEX dependencies_after_id ON dependencies (after_id);
    """,
    # 10: `jobctl prune` (SQLite's migration 11): the low-water mark of removed events,
    # and the flag that lets prune's own transaction (only) delete events.
    """
    CREATE TABLE pruned (
        id integer PRIMARY KEY CHECK (id = 1), events_before bigint NOT NULL, deleting integer NOT NULL DEFAULT 0);
    INSERT INTO pruned (id, events_before, deleting) VALUES (1, 0, 0);
    CREATE OR REPLACE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS
        $$ BEGIN
            IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM pruned WHERE deleting = 1) THEN RETURN NULL; END IF;
            RAISE EXCEPTION 'the events table is append-only';
        END $$;
    """,
    # 11 (PostgreSQL only): plans that stay index lookups however big the kept trees.
    # - claim's order, the oldest pending child of a parent, by an index only it can
    #   serve (`seq + 0`: see next_child). Ordered by plain `seq`, the planner walked
    #   jobs_seq_key from the oldest job of the whole table, taking a parent's children
    #   to be spread evenly through it: 14-45 ms a claim at 200,000 jobs, growing with
    #   every tree kept. (jobs_parent_id_status stays, for the listings by seq.)
    # - a parent's children are few for the planner (n_distinct: one parent per 20
    #   jobs): a few huge fan-outs made it take every parent for one of them, so a walk
    #   down a subtree (cancel, tree) scanned the whole table at each level: a leaf's
    #   cancel took 60-180 ms under the write lock at 300,000 jobs, 1 ms now.
    """
    CREATE INDEX jobs_claim_order ON jobs (parent_id, status, (seq + 0));
    ALTER TABLE jobs ALTER COLUMN parent_id SET (n_distinct = -0.05);
    ANALYZE jobs;
    """,
    # 12 (PostgreSQL only): the check of a write's parents (see _parent_checks) as a
    # statement that can be prepared (it was a DO block, compiled at every change):
    # raises what a serialization failure raises, so the write runs again.
    """
    CREATE FUNCTION parents_unchanged(ok boolean) RETURNS void LANGUAGE plpgsql AS
        $$ BEGIN
            IF NOT ok THEN
                RAISE EXCEPTION 'a parent changed while this write read it' USING ERRCODE = '40001';
            END IF;
        END $$;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _driver():
    try:
        import psycopg2
    except ImportError:
        from jobctl import DISTRIBUTION

        raise DatabaseUnusable(
            f"a postgresql:// database needs the PostgreSQL driver: pip install '{DISTRIBUTION}[postgres]'"
        ) from None
    return psycopg2


def split_url(url: str) -> tuple[str, str]:
    """(the URL for libpq, the schema): `schema` is jobctl's own query parameter,
    taken out; the rest goes to libpq as written, so every form libpq accepts
    works (`postgres://`, `postgresql:///db` with PGHOST, host lists, `?host=/dir`, `?service=`)."""
    from urllib.parse import unquote

    scheme, userinfo, body, query = url_parts(url)
    schema = DEFAULT_SCHEMA
    rest = []
    for pair in query.split("&") if query is not None else []:
        key, _, value = pair.partition("=")
        if unquote(key) == "schema":
            schema = unquote(value)
        else:
            rest.append(pair)
    if (
        not schema
        or not schema.replace("_", "a").isalnum()
        or not schema.isascii()
        or schema[0].isdigit()
        or schema != schema.lower()
        or len(schema) > 63
    ):
        raise DatabaseUnusable(f"bad schema name {schema!r} in the database URL: use lower-case letters, digits and _")
    return join_url(scheme, userinfo, body, "&".join(rest) if rest else None), schema


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


class _Shared:
    """A process's connections to one database, shared by every store it opens
    on it (`run --claim --jobs N` opens one per thread): one connection for
    statements and transactions, used by one store at a time (`lock`, held for
    a whole transaction), and one LISTEN connection for every waker. So a
    process needs two connections, whatever its threads."""

    def __init__(self, key: tuple):
        self.key = key
        self.lock = threading.RLock()
        self.conn: Any = None
        self.tx: PostgresStore | None = None  # the store whose transaction is open
        self.refs = 0
        self.pid: int | None = None  # the server process of `conn` (PQbackendPID), for _end_lost
        self.listener: _Listener | None = None
        self.listeners = 0
        # statements prepared on `conn` (see PostgresStore._statement): their names,
        # how often each unprepared one was sent, and whether to prepare at all
        self.prepared: set[str] = set()
        self.uses: dict[str, int] = {}
        self.names: dict[str, str] = {}
        self.prepares = True

    def listener_for(self, store: PostgresStore) -> _Listener:
        with _SHARED_LOCK:
            if self.listener is None:
                listener = _Listener(store)
                listener.listen()
                self.listener = listener
            self.listeners += 1
            return self.listener

    def listener_done(self) -> None:
        with _SHARED_LOCK:
            self.listeners -= 1
            if self.listeners == 0 and self.listener is not None:
                self.listener.close()
                self.listener = None


_SHARED: dict[tuple, _Shared] = {}
_SHARED_LOCK = threading.Lock()


class _Errors:
    """`with store.errors:` turns psycopg2's errors into DatabaseUnusable (PostgresStore._error),
    but for a unique violation, which goes through as it is (insert_jobs makes it IdTaken).
    A statement's own loop (_run_held) also re-makes a lost connection first."""

    __slots__ = ("store",)

    def __init__(self, store: PostgresStore):
        self.store = store

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, self.store.pg.Error) and getattr(exc, "pgcode", None) != "23505":
            raise self.store._error(exc) from exc


class PostgresStore(SqlQueries):
    """A jobctl schema in a PostgreSQL database, through its process's shared connection."""

    # the dialect (see SqlQueries)
    mark = "%s"
    text_param = '%s::text COLLATE "C"'
    json_object = "(SELECT row_to_json(r)::text FROM (SELECT {columns}) r)"  # keys in order, compact
    order_column = "seq"
    # next_child's order: `seq + 0`, which only jobs_claim_order (migration 11) serves, so
    # the planner cannot walk jobs_seq_key from the oldest job of the table instead
    claim_order = "seq + 0"
    greatest = "greatest"
    lock_rows = " FOR NO KEY UPDATE SKIP LOCKED"

    def _in(self, column: str, values: Sequence) -> tuple[str, list]:
        return f"{column} = ANY(%s)", [list(values)]

    def __init__(self, url: str, schema: str, connect_timeout: float, lock_timeout: float):
        self.url, self.schema = url, schema
        self.name = masked(url) + ("" if schema == DEFAULT_SCHEMA else f" (schema {schema})")
        self.connect_timeout, self.lock_timeout = connect_timeout, lock_timeout
        self.channel = f"jobctl_{schema}"
        self.lock_key = zlib.crc32(f"jobctl:{schema}".encode())
        self.pg = _driver()
        key = (os.getpid(), url, schema, connect_timeout, lock_timeout)
        with _SHARED_LOCK:
            shared = _SHARED.get(key) or _SHARED.setdefault(key, _Shared(key))
            shared.refs += 1
        self.shared = shared
        self.closed = False
        try:
            with shared.lock:
                if shared.conn is None:
                    self.conn = self._connect()
        except BaseException:
            self.close()
            raise
        self.in_transaction = False
        self.writing = False  # inside write()
        self.begun = False  # write(): its BEGIN has been sent (with its first statement)
        self.locked = False  # write(): the write lock is ours (see write())
        self.next_event_id: int | None = None  # the next event id, once locked
        self.notify = False
        self.cancelling = False  # write(): this change cancels a job (its NOTIFY says so: ListenWaker)
        self.deferred: list[str] = []  # statements sent with the COMMIT
        # write(): parents read without a row lock, as read (see _parent_checks), the
        # jobs this change updated, and its count deltas
        self.watched: dict[str, tuple[dict, dict]] = {}
        self.updated: set[str] = set()
        self.count_deltas: dict[str, dict[str, int]] = {}
        self.lock_parents = not UNLOCKED_PARENTS
        self.preparing: set[str] = set()  # write(): statements it prepares (see _statement)
        self.serial = False  # the next write holds the write lock from its start (this one's check failed)
        self.ready = False  # the schema is current: write() may read the next event id

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, url: str, *, create: bool = True) -> PostgresStore:
        libpq_url, schema = split_url(url)
        store = cls(
            libpq_url,
            schema,
            seconds_from_env("JOBCTL_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT),
            seconds_from_env("JOBCTL_BUSY_TIMEOUT", DEFAULT_BUSY_TIMEOUT),
        )
        try:
            store._check_and_migrate(create)
        except BaseException:
            store.close()
            raise
        return store

    def _connect(self):
        """A new connection. A server that refuses or drops it for a passing reason
        (too many clients, a role's connection limit, starting up, not listening
        yet) is asked again with backoff until the connect timeout, then the
        last reason is given (exit 5); a wrong password or database is at once."""
        backoff = Backoff(0.05, 1.0, self.connect_timeout)
        while True:
            try:
                return self._connect_once()
            except DatabaseUnusable as exc:
                reason = str(exc.__cause__ or exc).lower()
                final = any(w in reason for w in ("password", "authentication", "does not exist", "pg_hba"))
                if final or not backoff.sleep():
                    if not final and "JOBCTL_CONNECT_TIMEOUT" not in str(exc):
                        raise DatabaseUnusable(
                            f"{exc} (still refused after {self.connect_timeout:g} s; JOBCTL_CONNECT_TIMEOUT)"
                        ) from None
                    raise

    def _connect_once(self):
        pg = self.pg
        try:
            conn = pg.connect(
                self.url,
                connect_timeout=max(2, int(self.connect_timeout + 0.999)),
                application_name="jobctl",
                # (no `options`: search_path and lock_timeout go with each transaction, see
                # _begin_statements, so that a pooler in transaction mode can be between)
                keepalives=1,  # a silent network cut is noticed within ~30 s, not the kernel's 15 min
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        except pg.Error as exc:
            raise self._connect_error(exc) from exc
        conn.autocommit = True  # transactions are explicit: write() and read()
        return conn

    def _connect_error(self, exc: BaseException) -> DatabaseUnusable | UsageError:
        reason = masked_in(_first_line(exc), self.url)
        low = reason.lower()
        where = f"PostgreSQL at {masked(self.url)}"
        if low.startswith("invalid "):  # libpq could not read the URL, or a value in it ("invalid port number")
            return UsageError(f"bad PostgreSQL URL {masked(self.url)}: {reason.removeprefix('invalid dsn: ')}")
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
            self.hold_write_lock()
            found = self._meta()
            if found is None and not create:
                raise DatabaseUnusable(f"no jobctl database at {self.name} (create one with `jobctl init`)")
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
        self._check_rights(need_create="meta" not in tables)
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

    def _check_rights(self, need_create: bool) -> None:
        """Without USAGE on the schema PostgreSQL skips it on the search path (and says
        `relation "meta" does not exist`); without CREATE, jobctl cannot make its tables:
        name the schema and the grant instead."""
        (row,) = self._query(
            "SELECT current_user AS who, has_schema_privilege(%s, 'USAGE') AS may_use,"
            " has_schema_privilege(%s, 'CREATE') AS may_create",
            (self.schema, self.schema),
        )
        rights = [("USAGE", row["may_use"]), ("CREATE", row["may_create"] or not need_create)]
        lacking = [right for right, ok in rights if not ok]
        if lacking:
            raise DatabaseUnusable(
                f"permission denied for schema {self.schema} in {masked(self.url)}: ask its owner for"
                f" GRANT {', '.join(lacking)} ON SCHEMA {self.schema} TO {row['who']}"
            )

    @property
    def conn(self) -> Any:
        """The connection of this process's stores on this database (see _Shared)."""
        return self.shared.conn

    @conn.setter
    def conn(self, value: Any) -> None:
        self.shared.conn = value
        self.shared.prepared.clear()  # (a new session has none)
        self.shared.pid = value.get_backend_pid()  # (no round trip; unreadable once the connection is lost)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        shared = self.shared
        with _SHARED_LOCK:
            shared.refs -= 1
            last = shared.refs == 0
            if last and _SHARED.get(shared.key) is shared:
                del _SHARED[shared.key]
        if last and shared.conn is not None:
            try:
                shared.conn.close()
            except Exception:
                pass
            shared.conn = None

    def _hold(self) -> None:
        """Take the shared connection for this store (see _Shared). A thread already
        inside another store's transaction on it (nested use) gets one of its own."""
        shared = self.shared
        shared.lock.acquire()
        if shared.tx is None or shared.tx is self:
            return
        shared.lock.release()  # (this very thread holds it: the other store's transaction)
        self.close()
        self.closed = False
        self.shared = _Shared(shared.key)
        self.shared.refs = 1
        self.shared.lock.acquire()
        try:
            self.conn = self._connect()
        except BaseException:
            self.shared.lock.release()
            raise

    def _begin_statements(self) -> str:
        """Sent with every BEGIN: the schema and the busy timeout belong to the
        transaction, not to the session (a pooler hands sessions around)."""
        return (
            f"SET LOCAL search_path = {self.schema}; SET LOCAL lock_timeout = {max(1, int(self.lock_timeout * 1000))}"
        )

    # ------------------------------------------------------------ transactions
    @contextmanager
    def write(self) -> Iterator[PostgresStore]:
        """One write transaction. The write lock (a transaction-scoped advisory
        lock, which orders event ids) is held only for the server's own work,
        never across a client round trip:

        - BEGIN goes with the first statement; the jobs a change reads are
          row-locked as they are read (SELECT ... FOR NO KEY UPDATE: a read-then-write
          loses no update, and writers of other trees do not wait), except the
          parents it rolls up to, which are checked at the commit instead
          (_parent_checks: fan-in does not queue on the parent's row);
        - the COMMIT batch takes the write lock, then runs the writes (event
          ids are max(id) + 1, read on the server under the lock), the NOTIFY
          and the COMMIT: one round trip, the lock released at its end;
        - a change that needs more (a read that locks no row, COPY, a subtree
          cancelled in one statement) takes the lock first (hold_write_lock)
          and keeps it to its end, as every write did before; so does the next
          try of a change that failed for a transient reason (a parent changed
          under it: Retryable), which then cannot fail so again. (Not a row lock
          on the parent: the changes that read it unlocked move its counts
          without one.)

        After WAIT_NOTICE seconds of waiting for the lock it says so on stderr,
        then waits the rest of the busy timeout."""
        self._hold()
        self.shared.tx = self
        self.writing, self.begun, self.locked = True, False, False
        self.in_transaction, self.notify, self.deferred, self.next_event_id = True, False, [], None
        self.watched, self.updated, self.count_deltas, self.cancelling = {}, set(), {}, False
        self.preparing = set()
        try:
            if self.serial:
                self.hold_write_lock()
            yield self
            notify = f"NOTIFY {self.channel}" + (f", '{CANCEL_PAYLOAD}'" if self.cancelling else "")
            end = [*self.deferred, notify if self.notify else ""]
            end = [x for x in end if x]
            if end and not self.locked:
                self._locked("; ".join([*self._parent_checks(), *end, "COMMIT"]), fetch=False)
            elif self.begun or end:
                self._run("; ".join([*end, "COMMIT"]), None, fetch=False, safe=False)
            self.serial = False
            self.shared.prepared |= self.preparing
        except Retryable:
            self.serial = True  # a parent changed meanwhile (say): the next try holds the write lock
            self._rollback()
            raise
        except BaseException:
            self.serial = False
            self._rollback()
            raise
        finally:
            if self.preparing - self.shared.prepared:
                self._settle_prepared()
            self.preparing = set()
            self.in_transaction = self.writing = self.begun = self.locked = False
            self.deferred = []
            self.shared.tx = None
            self.shared.lock.release()

    def hold_write_lock(self) -> None:
        """Inside write(): take the write lock now and keep it to the end (what
        this change queued so far runs under it first)."""
        if self.locked:
            return
        tail = [*self._parent_checks(), *self.deferred]
        tail.append("SELECT coalesce(max(id), 0) + 1 FROM events" if self.ready else "SELECT NULL")
        self.deferred = []
        rows = self._locked("; ".join(tail), fetch=True)
        self.locked = True
        self.next_event_id = rows[0][0] if rows else None

    def _parent_checks(self) -> list[str]:
        """What a parent read without a row lock must still be, checked under the
        write lock before this change's writes (raising 40001, Retryable, if not).

        Fan-in: many children of one running parent change at once. Each change
        reads the parent to roll up to it; locking its row would queue them all
        behind one another's round trips. So a parent that was running without a
        failure policy is read unlocked (jobs_and_counts), and its check is that
        it still is, with a child pending or running once this change's deltas
        are added: then its status is still the one this change derived
        (model.derive_status: any child active -> model.ACTIVE_PARENT) and it
        needed no write. Any other parent read unlocked, or one this change
        updated, must be exactly as read. Every change of a job's status or of
        the kept counts commits under the write lock, so what the check sees
        holds until this change commits."""
        checks: list[str] = []
        params: list = []
        for pid, (row, counts) in self.watched.items():
            delta = self.count_deltas.get(pid, {})
            if (
                pid not in self.updated
                and row["status"] == ACTIVE_PARENT
                and not row["fail_fast"]
                and not row["allow_failures"]
                and row.get("max_running") is None  # a limit reads the running count: checked exactly
            ):
                active = " + ".join(f"c.{s}" for s in STATUSES if s in ACTIVE)
                checks.append(
                    "EXISTS (SELECT 1 FROM jobs j JOIN child_counts c ON c.parent_id = j.id WHERE j.id = %s"
                    f" AND j.status = %s AND j.fail_fast = 0 AND j.allow_failures IS NULL AND {active} + %s > 0)"
                )
                params += (pid, ACTIVE_PARENT, sum(delta.get(s, 0) for s in ACTIVE))
            else:
                same = " AND ".join(f"coalesce(c.{s}, 0) = %s" for s in STATUSES)
                checks.append(
                    "EXISTS (SELECT 1 FROM jobs j LEFT JOIN child_counts c ON c.parent_id = j.id WHERE j.id = %s"
                    " AND j.status = %s AND j.fail_fast = %s AND j.allow_failures IS NOT DISTINCT FROM %s::text"
                    f" AND j.waited_on = %s AND {same})",  # (waited on since: ending it must look for them)
                )
                params += (pid, row["status"], row["fail_fast"], row["allow_failures"], row.get("waited_on", 0))
                params += (int(counts[s]) for s in STATUSES)
        self.watched = {}
        if not checks:
            return []
        return [self._mogrify(*self._statement(f"SELECT parents_unchanged({' AND '.join(checks)})", params))]

    def _mogrify(self, sql: str, params: Sequence | None) -> str:
        with self.errors:  # (a lost connection: Lost, one line)
            return self.conn.cursor().mogrify(sql, params).decode()

    def _statement(self, sql: str, params: Sequence) -> tuple[str, Sequence]:
        """`sql` (with %s marks) and its values, as the statement to send and its values.
        Inside write(), a statement sent again in the same session is prepared there
        (PREPARE, sent in front of its first EXECUTE) and then only EXECUTEd: parsing
        and planning the statements of a change were most of the server's work for
        it (a status change: 0.75 ms of server CPU, 0.4 ms prepared), the ceiling of
        many writers on few cores. A one-shot command sends each statement once,
        and so prepares nothing.

        A statement's name is a hash of its schema and text, so a name means the
        same statement in any session. Behind a pooler in transaction mode (PgBouncer)
        the next transaction may run on another server session, where the name is
        missing (26000) or was prepared by another client (42P05): _error then
        turns preparing off for this connection and the write runs again (Retryable),
        sending its statements in full."""
        shared = self.shared
        if not (self.writing and shared.prepares and params) or len(params) > PREPARE_PARAMS:
            return sql, params
        name = shared.names.get(sql)
        if name is None:
            uses = shared.uses.get(sql, 0) + 1
            if uses < PREPARE_AT:
                shared.uses[sql] = uses
                return sql, params
            import hashlib

            shared.uses.pop(sql, None)
            digest = hashlib.blake2b(f"{self.schema}\0{sql}".encode(), digest_size=12).hexdigest()
            name = shared.names[sql] = f"jobctl_{digest}"
        execute = f"EXECUTE {name}({', '.join(['%s'] * len(params))})"
        if name in shared.prepared or name in self.preparing:
            return execute, params
        self.preparing.add(name)
        marks = iter(range(1, len(params) + 1))
        numbered = re.sub(r"%[s%]", lambda m: f"${next(marks)}" if m.group() == "%s" else "%%", sql)
        return f"PREPARE {name} AS {numbered}; {execute}", params

    def _settle_prepared(self) -> None:
        """After a write that failed: which of the statements it prepared this session
        now has (a PREPARE runs or not with the rest of its batch, and outlives the
        rollback), so that the next use neither PREPAREs one again nor EXECUTEs a
        missing one. One round trip, only after such a failure."""
        names = sorted(self.preparing - self.shared.prepared)
        if self.conn.closed:
            return  # (a new connection starts with none)
        try:
            cur = self.conn.cursor()
            cur.execute("SELECT name FROM pg_prepared_statements WHERE name = ANY(%s)", (names,))
            self.shared.prepared.update(r[0] for r in cur.fetchall())
        except self.pg.Error:
            pass  # (lost: the same)

    def _locked(self, tail: str, fetch: bool) -> list[tuple] | None:
        """The write lock then `tail`, one round trip: waiting at most WAIT_NOTICE
        for the lock, then (said on stderr) the rest of the busy timeout. The
        lock is taken in a savepoint, so a wait that timed out costs nothing
        this transaction did so far."""
        notice = min(WAIT_NOTICE, self.lock_timeout)
        full = f"SET LOCAL lock_timeout = {max(1, int(self.lock_timeout * 1000))}"

        def batch(wait: float) -> str:
            return (
                f"SAVEPOINT jobctl_lock; SET LOCAL lock_timeout = {max(1, int(wait * 1000))};"
                f" SELECT pg_advisory_xact_lock({self.lock_key}); {full}; RELEASE SAVEPOINT jobctl_lock; {tail}"
            )

        try:
            return self._run(batch(notice), None, fetch, safe=False)
        except DatabaseUnusable as exc:
            left = self.lock_timeout - notice
            if getattr(exc.__cause__, "pgcode", None) != "55P03" or left <= 0:
                raise
            self._run("ROLLBACK TO SAVEPOINT jobctl_lock", None, fetch=False, safe=False)
            info(f"waiting for another writer to finish (up to {left:g} s more; JOBCTL_BUSY_TIMEOUT)")
            return self._run(batch(left), None, fetch, safe=False)

    @contextmanager
    def read(self) -> Iterator[PostgresStore]:
        """A read transaction: every query inside sees the same snapshot."""
        self._hold()
        try:
            self._execute(f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {self._begin_statements()}")
            self.shared.tx = self
            self.in_transaction = True
            yield self
            self._execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        finally:
            self.in_transaction = False
            self.shared.tx = None
            self.shared.lock.release()

    def _rollback(self) -> None:
        if not self.conn.closed:
            try:
                self.conn.cursor().execute("ROLLBACK")
            except self.pg.Error:
                pass

    @property
    def errors(self) -> _Errors:
        """`with self.errors:` around a driver call: the one error wrapper (see _Errors)."""
        return _Errors(self)

    def _error(self, exc: BaseException) -> DatabaseUnusable:
        """A driver's error as the one line it means (exit 5): Retryable when nothing was
        written and the whole write may run again."""
        code = getattr(exc, "pgcode", None)
        reason = _first_line(exc)
        if code in ("40001", "40P01"):  # serialization failure, deadlock: nothing was written
            return Retryable(f"database {self.name}: {reason}")
        if code in ("26000", "42P05") and self.writing and self.shared.prepares:  # a pooler between: see _statement
            self.shared.prepares = False
            return Retryable(f"database {self.name}: {reason} (a pooler? statements are now sent in full)")
        if code == "25006":
            return DatabaseUnusable(f"database {self.name} is read-only ({reason})")
        if code == "55P03":
            return DatabaseUnusable(
                f"database {self.name} is still locked after the busy timeout (set JOBCTL_BUSY_TIMEOUT to wait longer)"
            )
        if code in ("53100", "53200"):
            return DatabaseUnusable(f"database {self.name}: the server is out of space or memory; nothing was written")
        if self.conn.closed or code is None and isinstance(exc, self.pg.OperationalError):
            return Lost(f"lost the connection to {self.name}: {reason}")
        return DatabaseUnusable(f"database {self.name}: {reason}")

    def _run(self, sql: str, params: Sequence | None, fetch: bool, safe: bool | None = None) -> list[tuple] | None:
        """Run one statement; outside a transaction, a lost connection is
        re-made (with backoff, within the connect timeout) and the statement
        run again: reads are safe to repeat, and so are autocommit statements here.
        Inside write(), the first statement carries the BEGIN (and may be run
        again so: nothing of the transaction was done yet)."""
        if self.writing and not self.begun:
            sql, self.begun = f"BEGIN; {self._begin_statements()}; {sql}", True
            safe = safe is not False
        elif safe is None:
            safe = not self.in_transaction and sql.lstrip().upper().startswith(("SELECT", "WITH", "BEGIN"))
        if not self.in_transaction and not sql.startswith("BEGIN"):
            sql = f"SET LOCAL search_path = {self.schema}; {sql}"  # one implicit transaction with it
        self._hold()
        try:
            return self._run_held(sql, params, fetch, safe)
        finally:
            self.shared.lock.release()

    def _run_held(self, sql: str, params: Sequence | None, fetch: bool, safe: bool) -> list[tuple] | None:
        pg = self.pg
        reconnected = False
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
                if not safe or not lost:
                    raise self._error(exc) from exc
                if reconnected:
                    raise self._error(exc) from exc
                self._reconnect(exc)
                reconnected = True
            except pg.Error as exc:
                raise self._error(exc) from exc

    def _reconnect(self, cause: BaseException) -> None:
        """A new connection in place of the lost one (_connect retries with backoff)."""
        try:
            self.conn.close()
        except Exception:
            pass
        lost = self.shared.pid
        try:
            self.conn = self._connect()
        except DatabaseUnusable as exc:
            raise DatabaseUnusable(f"lost the connection to {self.name}: {_first_line(cause)} ({exc})") from None
        self._end_lost(lost)

    def _end_lost(self, pid: int | None) -> None:
        """Before anything runs on a new connection: the server session of the lost
        one ended (terminated if still there, within the busy timeout). A write whose
        COMMIT was on its way as the connection dropped (Lost) has then committed or
        rolled back for good, so a read now sees which (Jobctl.claim looks for its
        token so), and no orphaned transaction keeps the rows it locked. Only a
        jobctl session of this role is touched: through a pooler the pid is the
        pooler's own, found nowhere, and this does nothing."""
        if pid is None:
            return
        cur = self.conn.cursor()
        mine = "pid = %s AND usename = current_user AND application_name = 'jobctl'"
        deadline = time.monotonic() + self.lock_timeout
        try:
            cur.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {mine}", (pid,))
            while cur.fetchall() and time.monotonic() < deadline:
                time.sleep(0.005)  # (the server has no wait for another session's end but this poll)
                cur.execute(f"SELECT 1 FROM pg_stat_activity WHERE {mine}", (pid,))
        except self.pg.Error:  # (not allowed to end it, say: the lost session ends with its transaction)
            pass

    def _execute(self, sql: str, params: Sequence | None = None) -> None:
        self._run(sql, params, fetch=False)

    def _query_locked(self, sql: str, params: Sequence = ()) -> list[dict]:
        return self._query(sql, params, rows_locked=True)

    def _query(self, sql: str, params: Sequence | None = None, *, rows_locked: bool = False) -> list[dict]:
        """Rows as dicts. Inside write(), a read that does not lock the rows it
        reads (`rows_locked`) takes the write lock first: what it read stays true
        until the commit."""
        if self.writing and not self.locked and not rows_locked:
            self.hold_write_lock()
        rows = self._run(sql, params, fetch=True) or []
        cols = self._columns
        return [dict(zip(cols, row)) for row in rows]

    def _later(self, sql: str, params: Sequence | None = None) -> None:
        """A write inside write() whose result nobody reads: sent with the COMMIT
        (one round trip for all of them), unless it is big. With `params`, it
        is one that may be prepared (_statement)."""
        if params is not None:
            sql = self._mogrify(*self._statement(sql, params))
        if len(sql) > 100_000:
            self._execute(sql)
        else:
            self.deferred.append(sql)

    def _values(self, template: str, rows: Sequence[tuple]) -> str:
        """`(a, b), (c, d), ...` with every value escaped by the driver."""
        return self._mogrify(*_rows(template, rows))

    def _copy(self, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
        """Bulk insert through COPY (CSV: an unquoted empty field is NULL)."""
        import io

        buf = io.StringIO("".join(",".join(map(_csv_field, row)) + "\n" for row in rows))
        with self.errors:
            self.conn.cursor().copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buf)

    def _insert(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        if len(rows) >= COPY_FROM:
            self._copy(table, columns, rows)
            return
        marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
        with self.errors:
            self.conn.cursor().execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {self._values(marks, rows)}")

    # -------------------------------------------------------------------- jobs
    def get_job(self, job_id: str) -> dict | None:
        if self.writing:
            rows = self._query(
                *self._statement(_JOB_SELECT + " WHERE id = %s FOR NO KEY UPDATE", (job_id,)), rows_locked=True
            )
        else:
            rows = self._query(_JOB_SELECT + " WHERE id = %s", (job_id,))
        return rows[0] if rows else None

    def jobs_and_counts(
        self, ids: Sequence[str], parents: bool = False
    ) -> tuple[dict[str, dict], dict[str, dict[str, int]]]:
        jobs: dict[str, dict] = {}
        counts: dict[str, dict[str, int]] = {}
        where = " WHERE j.id = ANY(%s)"
        requested = set(ids)
        if parents:
            # (one array of ids, the parents' found by an InitPlan: an index scan; with
            # `OR j.id IN (SELECT ...)` the planner scanned the whole jobs table, 27 ms a
            # change at 200,000 jobs)
            where = " WHERE j.id = ANY(%s::text[] || ARRAY(SELECT parent_id FROM jobs WHERE id = ANY(%s)"
            where += " AND parent_id IS NOT NULL))"
        for i in range(0, len(ids), CHUNK):
            chunk = list(ids[i : i + CHUNK])
            params: Sequence = [chunk, chunk] if parents else [chunk]
            sql = _JOBS_WITH_COUNTS + where
            if self.writing:
                # Lock the rows (in id order: writers queue alike), then read them in a
                # second statement of the same round trip: its snapshot is taken once
                # the locks are ours, so it sees the counts their last writer committed
                # (one statement with FOR NO KEY UPDATE would re-read the locked jobs rows but
                # join the counts rows of its older snapshot). See write(). Parents
                # are read without a lock and checked at the commit (_parent_checks),
                # unless a check failed the last time.
                locked = where if self.lock_parents else " WHERE j.id = ANY(%s)"
                lock, lock_params = self._statement(
                    f"SELECT 1 FROM jobs j{locked} ORDER BY j.id FOR NO KEY UPDATE",
                    params if self.lock_parents else [chunk],
                )
                sql, params = self._statement(sql, params)
                sql, params = f"{lock}; {sql}", [*lock_params, *params]
            got = []
            for row in self._query(sql, params, rows_locked=True):
                counts[row["id"]] = {s: row.pop(f"c_{s}") or 0 for s in STATUSES}
                jobs[row["id"]] = row
                got.append(row["id"])
            if self.writing and not self.lock_parents:
                # only the parents this chunk read unlocked: not the jobs asked for (locked),
                # in this chunk or another (a whole earlier chunk's were once taken for parents)
                for pid in set(got) - requested:
                    self.watched.setdefault(pid, (dict(jobs[pid]), dict(counts[pid])))
        return jobs, counts

    def insert_jobs(self, jobs: Sequence[dict]) -> None:
        self._execute("SAVEPOINT insert_jobs")
        try:
            self._insert("jobs", JOB_COLUMNS, [_job_row(j) for j in jobs])
        except self.pg.IntegrityError as exc:
            self._execute("ROLLBACK TO SAVEPOINT insert_jobs")
            raise IdTaken(f"a job id is taken ({_first_line(exc)})") from None
        self._execute("RELEASE SAVEPOINT insert_jobs")

    def insert_dependencies(self, rows: Sequence[tuple[str, str, int]]) -> None:
        self._insert("dependencies", ("job_id", "after_id", "any_outcome"), list(rows))
        after = sorted({r[1] for r in rows})
        self._later(self._mogrify("UPDATE jobs SET waited_on = 1 WHERE id = ANY(%s) AND waited_on = 0", (after,)))

    def _query_unlocked(self, sql: str, params: Sequence = ()) -> list[dict]:
        return self._query(sql, params, rows_locked=True)

    def insert_children(self, jobs: Sequence[dict], message: str | None, fields: str | None = None) -> None:
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
                    "fields": fields,
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
        self.updated.update(r[0] for r in rows)
        self.cancelling = self.cancelling or any(r[1] == CANCELLED for r in rows)
        for i in range(0, len(rows), CHUNK):
            values, params = _rows("(%s, %s, %s, %s, %s, %s::integer, %s)", rows[i : i + CHUNK])
            self._later(
                "UPDATE jobs SET status = v.status, started_at = v.started_at,"
                " completed_at = v.completed_at, updated_at = v.updated_at,"
                " attempt = v.attempt, not_before = v.not_before"
                f" FROM (VALUES {values}) AS v(id, status, started_at, completed_at, updated_at, attempt, not_before)"
                " WHERE jobs.id = v.id",
                params,
            )

    def set_outcome(self, job_id: str, exit_code: int | None, duration: float | None) -> None:
        self._later("UPDATE jobs SET exit_code = %s, duration = %s WHERE id = %s", (exit_code, duration, job_id))

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
        self.hold_write_lock()
        if self.deferred:  # what this transaction wrote so far comes first
            self._execute("; ".join(self.deferred))
            self.deferred = []
        # (the walk carries the columns it needs: joined back to jobs by id, the
        # planner, unable to size a recursive result, scanned the whole table)
        cols = "j.id, j.parent_id, j.root_id, j.status, j.attempt, j.max_attempts"
        walk = (
            f"WITH RECURSIVE t(id, parent_id, root_id, status, attempt, max_attempts, depth, seq) AS ("
            f" SELECT {cols}, 0, j.seq FROM jobs j WHERE j.id = %s"
            f" UNION ALL SELECT {cols}, t.depth + 1, j.seq FROM t JOIN jobs j ON j.parent_id = t.id),"
            f" targets AS (SELECT * FROM t WHERE status IN {ACTIVE_SQL}" + (" AND depth > 0)" if below else ")")
        )
        mixed = self._query(
            # (each target's parent by its key: OFFSET 0 keeps the planner from scanning
            # the jobs table for final ones, few as it may take them to be)
            walk + " SELECT 1 FROM targets k, LATERAL (SELECT 1 FROM jobs p WHERE p.id = k.parent_id"
            f" AND p.status NOT IN {ACTIVE_SQL} OFFSET 0) p WHERE k.id <> %s LIMIT 1",
            (job_id, job_id),
        )
        if mixed:
            return None
        counts = ", ".join(STATUSES)
        assignments, times = cancel_assignments("%s")
        deltas = cancel_count_deltas(lambda w: f"count(*) FILTER (WHERE status = '{w}')")
        rows = self._run(
            walk + ", ordered AS (SELECT *, row_number() OVER (ORDER BY depth DESC, seq DESC) AS n FROM targets),"
            " ev AS (INSERT INTO events (id, job_id, parent_id, root_id, kind, old_status, new_status, at, message,"
            f" attempt, max_attempts) SELECT %s + n - 1, id, parent_id, root_id, {STATUS_KIND_SQL}, status,"
            f" {CANCELLED_SQL}, %s, %s, attempt, max_attempts FROM ordered),"
            f" up AS (UPDATE jobs SET {assignments}"
            " FROM targets WHERE jobs.id = targets.id),"
            f" kept AS (INSERT INTO child_counts (parent_id, {counts})"
            f" SELECT parent_id, {deltas} FROM targets WHERE id <> %s"
            " GROUP BY parent_id ON CONFLICT (parent_id) DO UPDATE SET "
            + ", ".join(f"{s} = child_counts.{s} + excluded.{s}" for s in STATUSES)
            + ") SELECT id FROM ordered ORDER BY n",
            (job_id, self.next_event_id, at, message, *(at,) * times, job_id),
            fetch=True,
        )
        ids = [r[0] for r in rows or ()]
        assert self.next_event_id is not None  # read with the lock
        self.next_event_id += len(ids)
        self.notify = self.notify or bool(ids)
        self.cancelling = self.cancelling or bool(ids)
        return ids

    def set_heartbeat(self, job_id: str, at: str) -> bool:
        return bool(
            self._query(
                *self._statement("UPDATE jobs SET last_heartbeat = %s WHERE id = %s RETURNING 1", (at, job_id)),
                rows_locked=True,
            )
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
        if self.writing:
            self.hold_write_lock()
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
        select, where, params = self.list_jobs_query(
            parent_id=parent_id, statuses=statuses, type=type, alive_before=alive_before, top_level=top_level
        )
        select = f"SELECT seq, {select}"
        where.insert(0, "seq < %s" if newest_first else "seq > %s")
        params.insert(0, 2**63 - 1 if newest_first else 0)  # params[0]: the keyset cursor
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

    # ------------------------------------------------------------------ counts
    def apply_count_deltas(self, deltas: dict[str, dict[str, int]]) -> None:
        for p, d in deltas.items():
            mine = self.count_deltas.setdefault(p, dict.fromkeys(STATUSES, 0))
            for s in STATUSES:
                mine[s] += d.get(s, 0)
        rows = [(p, *(d.get(s, 0) for s in STATUSES)) for p, d in deltas.items()]
        for i in range(0, len(rows), CHUNK):
            values, params = _rows("(%s, %s, %s, %s, %s, %s)", rows[i : i + CHUNK])
            self._later(upsert_counts(values), params)

    # ------------------------------------------------------------ events, logs
    def insert_events(self, events: Sequence[dict]) -> None:
        """Insert events in order, with ids assigned under the write lock: by the
        server in the COMMIT batch (see write()), or here once the lock is held."""
        if not events:
            return
        self.notify = True
        if not self.locked and len(events) < COPY_FROM:
            values, params = _rows(_EVENT_VALUES, [(k, *_event_row(e)) for k, e in enumerate(events, 1)])
            self.deferred.append(
                self._mogrify(
                    *self._statement(
                        f"INSERT INTO events (id, {', '.join(EVENT_COLUMNS)})"
                        f" SELECT m.n + v.k, {', '.join('v.' + c for c in EVENT_COLUMNS)}"
                        " FROM (SELECT coalesce(max(id), 0) AS n FROM events) m,"
                        f" (VALUES {values}) AS v(k, {', '.join(EVENT_COLUMNS)})",
                        params,
                    )
                )
            )
            return
        self.hold_write_lock()
        assert self.next_event_id is not None
        first = self.next_event_id
        rows = [(first + k, *_event_row(e)) for k, e in enumerate(events)]
        self.next_event_id = first + len(rows)
        if len(rows) >= COPY_FROM:
            self._copy("events", ("id", *EVENT_COLUMNS), rows)
        else:
            marks = "(" + ", ".join(["%s"] * (1 + len(EVENT_COLUMNS))) + ")"
            self._later(f"INSERT INTO events (id, {', '.join(EVENT_COLUMNS)}) VALUES {self._values(marks, rows)}")

    def insert_logs(self, job_id: str, lines: Sequence[tuple[str, str]], at: str) -> list[int]:
        """One statement a chunk (at RTT 10 ms, a run's half-second batch of 20 lines
        took 20 round trips). The ids come from the logs sequence, drawn in the
        rows' order (ORDER BY k), so sorted they are the lines' ids in order."""
        ids: list[int] = []
        for i in range(0, len(lines), CHUNK):
            rows = [(k, job_id, level, text, at) for k, (level, text) in enumerate(lines[i : i + CHUNK])]
            values, params = _rows("(%s::integer, %s, %s, %s, %s)", rows)
            got = self._query(
                *self._statement(
                    "INSERT INTO logs (job_id, level, message, at) SELECT v.j, v.l, v.m, v.a"
                    f" FROM (VALUES {values}) AS v(k, j, l, m, a) ORDER BY v.k RETURNING id",
                    params,
                ),
                rows_locked=True,  # new rows: nothing read
            )
            ids += sorted(r["id"] for r in got)
        return ids

    def waker(self, poll_interval: float, *, cancels_only: bool = False) -> ListenWaker:
        return ListenWaker(self, poll_interval, cancels_only=cancels_only)

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


class _Listener:
    """A process's one LISTEN connection to a database, shared by its wakers:
    whichever waker waits first watches the socket for all of them; each
    notification (and each reconnect, after which one may have been missed)
    moves `generation` on, which every waker sees once; one from a commit that
    cancelled a job (its payload CANCEL_PAYLOAD), or a reconnect, also moves `cancel_wakes`
    on, for the wakers that only wait for those (a running job's: `run`)."""

    def __init__(self, store: PostgresStore):
        self.connect, self.channel, self.pg = store._connect, store.channel, store.pg
        self.cond = threading.Condition()
        self.generation = 0
        self.cancel_wakes = 0
        self.polling = False
        self.refs = 0
        self.conn: Any = None
        self.backoff = Backoff(0.05, 1.0)  # between tries to LISTEN again

    def listen(self) -> None:
        conn = self.connect()
        try:
            conn.cursor().execute(f"LISTEN {self.channel}")
        except self.pg.Error as exc:
            conn.close()
            raise DatabaseUnusable(f"cannot LISTEN: {_first_line(exc)}") from None
        self.conn = conn
        self.backoff.reset()

    def wait(self, seen: int, timeout: float, counter: str = "generation") -> int:
        """The `counter` (generation, or cancel_wakes) once it is past `seen`, or `seen`
        after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                while getattr(self, counter) == seen:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return seen
                    if not self.polling:
                        self.polling = True
                        break
                    self.cond.wait(left)
                else:
                    return getattr(self, counter)
            moved = cancelled = False
            try:
                moved, cancelled = self._poll(max(0.0, deadline - time.monotonic()))
            finally:
                with self.cond:
                    self.polling = False
                    self.generation += moved
                    self.cancel_wakes += cancelled
                    self.cond.notify_all()

    def _poll(self, timeout: float) -> tuple[bool, bool]:
        """Watch the socket up to `timeout`: (True, True) after a reconnect; on
        notifications, (True, whether one says a job was cancelled)."""
        pg = self.pg
        if self.conn is None:
            time.sleep(min(timeout, self.backoff.next()))
            try:
                self.listen()
            except (DatabaseUnusable, pg.Error):
                return False, False
            return True, True  # notifications may have been missed while away
        try:
            if not self.conn.notifies:
                ready, _, _ = select.select([self.conn], [], [], timeout)
                if not ready:
                    return False, False
                self.conn.poll()
            if not self.conn.notifies:
                return False, False
            cancelled = any(n.payload == CANCEL_PAYLOAD for n in self.conn.notifies)
            self.conn.notifies.clear()
            return True, cancelled
        except (pg.OperationalError, pg.InterfaceError, OSError, ValueError):
            try:
                self.conn.close()
            finally:
                self.conn = None
            return True, True

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class ListenWaker:
    """Wake-ups from LISTEN on the store's channel, through the process's one
    listening connection (`_Listener`). A lost connection is re-made with
    backoff; after it, and after every poll interval without a notification
    (connected or not: a reader that looks then meets a dead server itself),
    wait() says "may have changed", so the reader looks again (a cheap indexed
    query). With `cancels_only`, only a commit that cancelled a job wakes it
    (besides the timer and a reconnect): a running job's waker (`run`), which
    would otherwise wake, and look, at every commit of every runner."""

    mode = "listen"

    def __init__(self, store: PostgresStore, poll_interval: float, *, cancels_only: bool = False):
        self.poll_interval = poll_interval
        self.shared = store.shared
        self.listener: _Listener | None = self.shared.listener_for(store)
        self.counter = "cancel_wakes" if cancels_only else "generation"
        self.seen = getattr(self.listener, self.counter)
        self.last_look = time.monotonic()

    def wait(self, timeout: float) -> bool:
        """Up to `timeout` seconds: True on a notification, after a reconnect,
        and once per poll interval without one (the timer fallback)."""
        limit = max(0.0, min(timeout, self.poll_interval))
        if self.listener is None:
            raise DatabaseUnusable("this waker is closed")
        count = self.listener.wait(self.seen, limit, self.counter)  # (generation, or cancel_wakes)
        if count != self.seen:
            self.seen = count
            return self._looked()
        if time.monotonic() - self.last_look >= self.poll_interval:
            return self._looked()
        return False

    def _looked(self) -> bool:
        self.last_look = time.monotonic()
        return True

    def close(self) -> None:
        if self.listener is not None:
            self.shared.listener_done()
            self.listener = None
