"""One writer process of the `pg_distance` benchmark (bench/run.py).

    python bench/pg_distance_writer.py jobctl|raw URL SECONDS IDS

Connects, reads its jobs, prints "ready", then waits for a start time (a Unix
time) on stdin; from it, for SECONDS, toggles its jobs (comma-separated IDS)
between running and pending, one change per transaction, and finally prints
how many changes committed before the time was up.

- jobctl: `Jobctl(URL).set_status([job], new, force=True)`, the Python API.
- raw: the same statements with psycopg2 and no global lock: BEGIN and the
  job's row (one round trip), then the job's UPDATE, its status event (the id
  from a sequence, into a copy of the events table) and the parent's counts
  UPDATE, and COMMIT (one round trip). What PostgreSQL gives a client that
  keeps no global order: the baseline jobctl's ordered writes are held against.
"""

import sys
import time

mode, url, seconds, ids = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].split(",")


def now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


if mode == "jobctl":
    from jobctl import Jobctl

    jc = Jobctl(url)
    state = {i: jc.status(i) for i in ids}

    def change(job):
        new = "pending" if state[job] == "running" else "running"
        jc.set_status([job], new, force=True)
        state[job] = new
else:
    import psycopg2

    from jobctl.store.postgres import split_url

    libpq, schema = split_url(url)
    conn = psycopg2.connect(libpq)
    conn.autocommit = True
    cur = conn.cursor()

    def change(job):
        cur.execute(f"BEGIN; SELECT status, parent_id, root_id FROM {schema}.jobs WHERE id = %s", (job,))
        old, parent, root = cur.fetchone()
        new = "pending" if old == "running" else "running"
        at = now()
        cur.execute(
            f"UPDATE {schema}.jobs SET status = %s, started_at = %s, completed_at = NULL, updated_at = %s"
            f" WHERE id = %s; INSERT INTO {schema}.raw_events (job_id, parent_id, root_id, kind, old_status,"
            " new_status, at) VALUES (%s, %s, %s, 'status', %s, %s, %s);"
            f" UPDATE {schema}.child_counts SET {old} = {old} - 1, {new} = {new} + 1 WHERE parent_id = %s; COMMIT",
            (new, at if new == "running" else None, at, job, job, parent, root, old, new, at, parent),
        )


print("ready", flush=True)
start = float(sys.stdin.readline())
end = start + seconds
time.sleep(max(0.0, start - time.time()))
done, k = 0, 0
while True:
    change(ids[k % len(ids)])
    k += 1
    if time.time() > end:
        break
    done += 1
print(done, flush=True)
