"""Baselines: what the same writes cost in a bare Python script using only sqlite3.

python bench/baselines.py status-set DB JOB          one status change, as `jobctl status set`
python bench/baselines.py batch DB < ids             many in one transaction, as `status set --stdin`
python bench/baselines.py spawn DB PARENT N          N children + events by executemany, as `spawn`
python bench/baselines.py writer DB START N IDS      N status-change transactions (concurrency)
"""

import sqlite3
import sys
import time


def now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def connect(db):
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def change(conn, job, new, at):
    old, parent, root = conn.execute("SELECT status, parent_id, root_id FROM jobs WHERE id = ?", (job,)).fetchone()
    conn.execute("UPDATE jobs SET status = ?, started_at = ?, updated_at = ? WHERE id = ?", (new, at, at, job))
    conn.execute(
        "INSERT INTO events (job_id, parent_id, root_id, kind, old_status, new_status, at)"
        " VALUES (?, ?, ?, 'status', ?, ?, ?)",
        (job, parent, root, old, new, at),
    )
    return old, parent


def main():
    what, db = sys.argv[1], sys.argv[2]
    conn = connect(db)
    if what == "status-set":
        conn.execute("BEGIN IMMEDIATE")
        change(conn, sys.argv[3], "running", now())
        conn.execute("COMMIT")
    elif what == "batch":
        ids = sys.stdin.read().split()
        conn.execute("BEGIN IMMEDIATE")
        at = now()
        for job in ids:
            change(conn, job, "running", at)
        conn.execute("COMMIT")
    elif what == "spawn":
        parent, n = sys.argv[3], int(sys.argv[4])
        at = now()
        root = conn.execute("SELECT root_id FROM jobs WHERE id = ?", (parent,)).fetchone()[0]
        ids = [f"{parent}.{i}" for i in range(1, n + 1)]
        conn.execute("BEGIN IMMEDIATE")
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
        conn.execute("COMMIT")
    elif what == "writer":
        start, n, ids = float(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split(",")
        time.sleep(max(0.0, start - time.time()))
        for k in range(n):
            job = ids[k % len(ids)]
            conn.execute("BEGIN IMMEDIATE")
            status = conn.execute("SELECT status FROM jobs WHERE id = ?", (job,)).fetchone()[0]
            new = "pending" if status == "running" else "running"
            old, parent = change(conn, job, new, now())
            conn.execute(f"UPDATE child_counts SET {old} = {old} - 1, {new} = {new} + 1 WHERE parent_id = ?", (parent,))
            conn.execute("COMMIT")
        print(time.time())
    conn.close()


if __name__ == "__main__":
    main()
