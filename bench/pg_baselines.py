"""Baselines for the PostgreSQL benchmarks: what the same writes cost in a bare
Python script talking to the server through a driver directly, with none of
jobctl. The twin of bench/baselines.py (SQLite).

    python bench/pg_baselines.py status-set DRIVER URL JOB   one status change (DRIVER: psycopg2 or psycopg)
    python bench/pg_baselines.py writer URL START N IDS      N status-change transactions (concurrency)
    python bench/pg_baselines.py spawn URL PARENT N          N children + N events by COPY, one transaction
    python bench/pg_baselines.py listen URL                  the watch floor: LISTEN, print max(event id)

Event ids: jobctl assigns events.id itself as max(id) + 1 under a
transaction-scoped advisory lock (no sequence), so these scripts do the same
inside their transaction: `SELECT coalesce(max(id), 0) + 1 FROM jobctl.events`
(an index-only lookup of the primary key's last entry). The single-process
ones (status-set, spawn) run alone, so they need no lock; the concurrent
`writer` takes the same kind of advisory lock at BEGIN, since max(id) + 1
from eight writers at once would collide - it is PostgreSQL's analogue of the
SQLite baseline's BEGIN IMMEDIATE.

Tables are named with their schema (jobctl.jobs ...): no search_path option
at connect. Only the driver named is imported, and only here, so a process's
cost is the interpreter, that driver, one connection and the statements.
"""

import sys
import time

SCHEMA = "jobctl"
WRITER_LOCK = 0x6A6F62  # any key: each benchmark run has a database of its own


def now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def connect(driver, url):
    """An autocommit connection (transactions are explicit BEGIN ... COMMIT, as in jobctl)."""
    if driver == "psycopg":
        import psycopg

        return psycopg.connect(url, autocommit=True)
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def change(cur, job, new, at):
    """SELECT the job, UPDATE it, INSERT its status event (id = max + 1): as one `status set`."""
    cur.execute(f"SELECT status, parent_id, root_id FROM {SCHEMA}.jobs WHERE id = %s", (job,))
    old, parent, root = cur.fetchone()
    started = at if new == "running" else None
    cur.execute(
        f"UPDATE {SCHEMA}.jobs SET status = %s, started_at = %s, completed_at = NULL, updated_at = %s WHERE id = %s",
        (new, started, at, job),
    )
    cur.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {SCHEMA}.events")
    (eid,) = cur.fetchone()
    cur.execute(
        f"INSERT INTO {SCHEMA}.events (id, job_id, parent_id, root_id, kind, old_status, new_status, at)"
        " VALUES (%s, %s, %s, %s, 'status', %s, %s, %s)",
        (eid, job, parent, root, old, new, at),
    )
    return old, parent


def status_set(driver, url, job):
    conn = connect(driver, url)
    cur = conn.cursor()
    cur.execute("BEGIN")
    change(cur, job, "running", now())
    cur.execute("COMMIT")
    conn.close()


def writer(url, start, n, ids):
    """bench/baselines.py's `writer` on PostgreSQL: SELECT job, UPDATE job, INSERT
    event, UPDATE counts, one transaction each, writers serialised by an advisory lock."""
    conn = connect("psycopg2", url)
    cur = conn.cursor()
    time.sleep(max(0.0, start - time.time()))
    for k in range(n):
        job = ids[k % len(ids)]
        cur.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})")
        cur.execute(f"SELECT status FROM {SCHEMA}.jobs WHERE id = %s", (job,))
        new = "pending" if cur.fetchone()[0] == "running" else "running"
        old, parent = change(cur, job, new, now())
        cur.execute(
            f"UPDATE {SCHEMA}.child_counts SET {old} = {old} - 1, {new} = {new} + 1 WHERE parent_id = %s", (parent,)
        )
        cur.execute("COMMIT")
    conn.close()
    print(time.time())


def spawn(url, parent, n):
    """N pending children and their N create events by COPY (text format), and the
    parent's child counts, in one transaction."""
    import io

    conn = connect("psycopg2", url)
    cur = conn.cursor()
    at = now()
    cur.execute("BEGIN")
    cur.execute(f"SELECT root_id FROM {SCHEMA}.jobs WHERE id = %s", (parent,))
    (root,) = cur.fetchone()
    ids = [f"{parent}.{i}" for i in range(1, n + 1)]
    jobs = io.StringIO(
        "".join(f"{i}\t{parent}\t{root}\tchild {k}\tpending\t{at}\t{at}\n" for k, i in enumerate(ids, 1))
    )
    cur.copy_expert(
        f"COPY {SCHEMA}.jobs (id, parent_id, root_id, name, status, created_at, updated_at) FROM STDIN", jobs
    )
    cur.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {SCHEMA}.events")
    (first,) = cur.fetchone()
    events = io.StringIO(
        "".join(f"{first + k}\t{i}\t{parent}\t{root}\tcreate\tpending\t{at}\n" for k, i in enumerate(ids))
    )
    cur.copy_expert(f"COPY {SCHEMA}.events (id, job_id, parent_id, root_id, kind, new_status, at) FROM STDIN", events)
    cur.execute(
        f"INSERT INTO {SCHEMA}.child_counts (parent_id, pending) VALUES (%s, %s)"
        " ON CONFLICT (parent_id) DO UPDATE SET pending = child_counts.pending + excluded.pending",
        (parent, n),
    )
    cur.execute("COMMIT")
    conn.close()


def listen(url):
    """The floor for watch latency on PostgreSQL: LISTEN on jobctl's channel and,
    after each wake-up, print the newest event id (what a watcher must read)."""
    import select

    conn = connect("psycopg2", url)
    cur = conn.cursor()
    cur.execute(f"LISTEN jobctl_{SCHEMA}")
    print("ready", flush=True)
    while True:
        if not conn.notifies:
            select.select([conn], [], [])
            conn.poll()
        if conn.notifies:
            conn.notifies.clear()
            cur.execute(f"SELECT max(id) FROM {SCHEMA}.events")
            print(cur.fetchone()[0], flush=True)


def main():
    what, rest = sys.argv[1], sys.argv[2:]
    if what == "status-set":
        status_set(*rest)
    elif what == "writer":
        writer(rest[0], float(rest[1]), int(rest[2]), rest[3].split(","))
    elif what == "spawn":
        spawn(rest[0], rest[1], int(rest[2]))
    elif what == "listen":
        listen(rest[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
