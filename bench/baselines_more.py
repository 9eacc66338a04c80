"""Baselines for bench/more.py: what each worker command costs as a bare Python
script using only sqlite3, doing the same query or write (the same rows, events
and kept child counts, so jobctl and the baseline can share one database).

    python bench/baselines_more.py claim DB PARENT          take the oldest pending child, set it running
    python bench/baselines_more.py status-get DB JOB        print the job's status
    python bench/baselines_more.py progress DB JOB          print the kept counts as progress text
    python bench/baselines_more.py create DB NAME           a new root job with a random id + its event
    python bench/baselines_more.py spawn DB PARENT N        N numbered children + events + counts
    python bench/baselines_more.py heartbeat DB JOB         UPDATE last_heartbeat
    python bench/baselines_more.py log DB JOB MESSAGE       a logs row + its `log` event
    python bench/baselines_more.py events DB SINCE          print the events after SINCE, one line each
    python bench/baselines_more.py cancel DB PARENT         cancel PARENT and its (one level of) children:
                                                            INSERT INTO events ... SELECT, UPDATE, in one transaction
"""

import os
import sqlite3
import sys
import time

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
EVENT_SELECT = (
    "SELECT e.id, e.job_id, e.parent_id, e.root_id, e.kind, e.old_status, e.new_status, e.at,"
    " coalesce(l.message, e.message) AS message, l.level AS level"
    " FROM events e LEFT JOIN logs l ON l.id = e.log_id"
)


def now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def connect(db):
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def progress_text(c):
    text = f"{c[0]} pending, {c[1]} running, {c[2]} completed, {c[3]} failed"
    return text + (f", {c[4]} cancelled" if c[4] else "")


def main():
    what, db = sys.argv[1], sys.argv[2]
    conn = connect(db)
    out = sys.stdout
    if what == "claim":
        parent = sys.argv[3]
        at = now()
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT status FROM jobs WHERE id = ?", (parent,)).fetchone() is None:
            sys.exit(3)
        row = conn.execute(
            "SELECT id, root_id FROM jobs WHERE parent_id = ? AND status = 'pending' ORDER BY rowid LIMIT 1", (parent,)
        ).fetchone()
        if row is None:
            sys.exit(3)
        job, root = row
        conn.execute(
            "UPDATE jobs SET status = 'running', started_at = ?, completed_at = NULL, updated_at = ? WHERE id = ?",
            (at, at, job),
        )
        conn.execute(
            "INSERT INTO events (job_id, parent_id, root_id, kind, old_status, new_status, at)"
            " VALUES (?, ?, ?, 'status', 'pending', 'running', ?)",
            (job, parent, root, at),
        )
        conn.execute(
            "UPDATE child_counts SET pending = pending - 1, running = running + 1 WHERE parent_id = ?", (parent,)
        )
        conn.execute("COMMIT")
        print(job)
    elif what == "status-get":
        row = conn.execute("SELECT status FROM jobs WHERE id = ?", (sys.argv[3],)).fetchone()
        if row is None:
            sys.exit(3)
        print(row[0])
    elif what == "progress":
        job = sys.argv[3]
        conn.execute("BEGIN")
        if conn.execute("SELECT status FROM jobs WHERE id = ?", (job,)).fetchone() is None:
            sys.exit(3)
        row = conn.execute(f"SELECT {', '.join(STATUSES)} FROM child_counts WHERE parent_id = ?", (job,)).fetchone()
        conn.execute("COMMIT")
        print(progress_text(row or (0,) * 5))
    elif what == "create":
        name = sys.argv[3]
        at = now()
        conn.execute("BEGIN IMMEDIATE")
        while True:
            job = os.urandom(4).hex()
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job,)).fetchone() is None:
                break
        conn.execute(
            "INSERT INTO jobs (id, parent_id, root_id, name, status, created_at, updated_at)"
            " VALUES (?, NULL, ?, ?, 'pending', ?, ?)",
            (job, job, name, at, at),
        )
        conn.execute(
            "INSERT INTO events (job_id, parent_id, root_id, kind, new_status, at)"
            " VALUES (?, NULL, ?, 'create', 'pending', ?)",
            (job, job, at),
        )
        conn.execute("COMMIT")
        print(job)
    elif what == "spawn":
        parent, n = sys.argv[3], int(sys.argv[4])
        at = now()
        conn.execute("BEGIN IMMEDIATE")
        root = conn.execute("SELECT root_id FROM jobs WHERE id = ?", (parent,)).fetchone()[0]
        counts = conn.execute(
            f"SELECT {', '.join(STATUSES)} FROM child_counts WHERE parent_id = ?", (parent,)
        ).fetchone()
        start = sum(counts or ()) + 1
        ids = [f"{parent}.{i}" for i in range(start, start + n)]
        conn.executemany(
            "INSERT INTO jobs (id, parent_id, root_id, name, status, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'pending', ?, ?)",
            ((i, parent, root, f"child {i}", at, at) for i in ids),
        )
        conn.executemany(
            "INSERT INTO events (job_id, parent_id, root_id, kind, new_status, at)"
            " VALUES (?, ?, ?, 'create', 'pending', ?)",
            ((i, parent, root, at) for i in ids),
        )
        conn.execute(
            "INSERT INTO child_counts (parent_id, pending) VALUES (?, ?)"
            " ON CONFLICT (parent_id) DO UPDATE SET pending = pending + excluded.pending",
            (parent, n),
        )
        conn.execute("COMMIT")
        out.write("\n".join(ids) + "\n")
    elif what == "heartbeat":
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("UPDATE jobs SET last_heartbeat = ? WHERE id = ?", (now(), sys.argv[3])).rowcount != 1:
            sys.exit(3)
        conn.execute("COMMIT")
    elif what == "log":
        job, message = sys.argv[3], sys.argv[4]
        at = now()
        conn.execute("BEGIN IMMEDIATE")
        parent, root = conn.execute("SELECT parent_id, root_id FROM jobs WHERE id = ?", (job,)).fetchone()
        log_id = conn.execute(
            "INSERT INTO logs (job_id, level, message, at) VALUES (?, 'info', ?, ?)", (job, message, at)
        ).lastrowid
        conn.execute(
            "INSERT INTO events (job_id, parent_id, root_id, kind, at, log_id) VALUES (?, ?, ?, 'log', ?, ?)",
            (job, parent, root, at, log_id),
        )
        conn.execute("COMMIT")
    elif what == "events":
        for i, job, _p, _r, kind, old, new, at, message, level in conn.execute(
            EVENT_SELECT + " WHERE e.id > ? ORDER BY e.id", (int(sys.argv[3]),)
        ):
            if kind == "log":
                out.write(f"{i} {at} {job} [{level}] {message}\n")
            else:
                out.write(f"{i} {at} {job} {old or 'new'} → {new}" + (f": {message}" if message else "") + "\n")
    elif what == "cancel":
        parent = sys.argv[3]
        at = now()
        conn.execute("BEGIN IMMEDIATE")
        old, grand, root = conn.execute(
            "SELECT status, parent_id, root_id FROM jobs WHERE id = ?", (parent,)
        ).fetchone()
        # deepest first, as jobctl writes them: the children (newest first), then the parent
        conn.execute(
            "INSERT INTO events (job_id, parent_id, root_id, kind, old_status, new_status, at, message)"
            " SELECT id, parent_id, root_id, 'status', status, 'cancelled', ?, 'cancelled' FROM jobs"
            " WHERE parent_id = ? AND status IN ('pending', 'running') ORDER BY rowid DESC",
            (at, parent),
        )
        conn.execute(
            "UPDATE jobs SET status = 'cancelled', completed_at = ?, updated_at = ?"
            " WHERE parent_id = ? AND status IN ('pending', 'running')",
            (at, at, parent),
        )
        conn.execute(
            "UPDATE child_counts SET cancelled = cancelled + pending + running, pending = 0, running = 0"
            " WHERE parent_id = ?",
            (parent,),
        )
        conn.execute(
            "INSERT INTO events (job_id, parent_id, root_id, kind, old_status, new_status, at, message)"
            " VALUES (?, ?, ?, 'status', ?, 'cancelled', ?, 'cancelled')",
            (parent, grand, root, old, at),
        )
        conn.execute(
            "UPDATE jobs SET status = 'cancelled', completed_at = ?, updated_at = ? WHERE id = ?", (at, at, parent)
        )
        conn.execute("COMMIT")
    else:
        sys.exit(f"unknown baseline {what}")
    conn.close()


if __name__ == "__main__":
    main()
