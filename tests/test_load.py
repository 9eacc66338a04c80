"""Concurrent writers lose nothing; long readers block no writer; the WAL stays bounded.

Sizes: a small default; JOBCTL_FULL=1 runs the issue's full sizes (8 writers x 250
CLI calls, and 8 x 10,000 API mutations).
"""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import FULL, JOBCTL, run
from jobctl import Jobctl

pytestmark = pytest.mark.slow  # subprocesses throughout: `dev.py test --fast` skips them

WRITERS = 8
CHILDREN = 200
CLI_CALLS = 250 if FULL else 40
API_CALLS = 10_000 if FULL else 1000

# Each writer owns CHILDREN / WRITERS children and walks them through this cycle,
# one call per step; it records what it did so the test can compare the events.
WRITER = r"""
import json, subprocess, sys
mode, db, jobctl, out, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
kids = sys.argv[6].split(",")
CYCLE = [("status", "running", False), ("log", "working", False), ("status", "failed", False),
         ("log", "will retry", False), ("status", "pending", True), ("status", "running", False),
         ("status", "completed", False), ("status", "pending", True)]
state = {k: "pending" for k in kids}
step = {k: 0 for k in kids}
done, failures = [], []
if mode == "api":
    from jobctl import Jobctl
    jc = Jobctl(db)
for i in range(n):
    kid = kids[i % len(kids)]
    kind, arg, force = CYCLE[step[kid] % len(CYCLE)]
    step[kid] += 1
    if mode == "cli":
        cmd = [jobctl, "--db", db] + (["status", "set", kid, arg] + (["--force"] if force else [])
                                      if kind == "status" else ["log", kid, arg])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            failures.append([cmd, r.returncode, r.stderr])
    else:
        try:
            if kind == "status":
                jc.set_status([kid], arg, force=force)
            else:
                jc.log(kid, arg)
        except Exception as exc:
            failures.append([kid, kind, arg, repr(exc)])
    if kind == "status":
        done.append([kid, state[kid], arg])
        state[kid] = arg
    else:
        done.append([kid, "log", arg])
json.dump({"done": done, "failures": failures}, open(out, "w"))
"""


def load(db_path, tmp_path, mode, calls):
    with Jobctl(db_path) as jc:
        parent = jc.create("load")
        kids = jc.spawn(parent, count=CHILDREN)
    outs = [tmp_path / f"w{i}.json" for i in range(WRITERS)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                mode,
                str(db_path),
                JOBCTL,
                str(outs[i]),
                str(calls),
                ",".join(kids[i::WRITERS]),
            ]
        )
        for i in range(WRITERS)
    ]
    for p in procs:
        assert p.wait(timeout=1800) == 0
    records = [json.loads(o.read_text()) for o in outs]
    return parent, kids, records


def check_histories(db_path, parent, kids, records):
    assert [f for r in records for f in r["failures"]] == [], "a call failed"
    with Jobctl(db_path) as jc:
        events = jc.events(job=parent)
        history = {k: [] for k in kids}
        for e in events:
            if e["job_id"] in history and e["kind"] == "status":
                history[e["job_id"]].append([e["job_id"], e["old_status"], e["new_status"]])
            elif e["job_id"] in history and e["kind"] == "log":
                history[e["job_id"]].append([e["job_id"], "log", e["message"]])
        expected = {k: [] for k in kids}
        for r in records:
            for d in r["done"]:
                expected[d[0]].append(d)
        assert history == expected, "an event was lost, duplicated or invented"
        ids = [e["id"] for e in jc.events()]
        assert ids == list(range(1, len(ids) + 1))  # gap-free cursor
        assert jc.verify() == []
        fresh = jc.store.count_children(parent)[parent]
        p = jc.progress(parent)
        assert {s: p[f"{s}_children"] for s in fresh} == fresh


def test_eight_cli_writers_lose_nothing(db, tmp_path):
    parent, kids, records = load(db, tmp_path, "cli", CLI_CALLS)
    assert sum(len(r["done"]) for r in records) == WRITERS * CLI_CALLS
    check_histories(db, parent, kids, records)
    assert run("verify", db=db).returncode == 0


def test_eight_api_writers_lose_nothing(db, tmp_path):
    parent, kids, records = load(db, tmp_path, "api", API_CALLS)
    assert sum(len(r["done"]) for r in records) == WRITERS * API_CALLS
    check_histories(db, parent, kids, records)


def test_writes_wait_out_a_lock_with_retries(db_path):
    """A lock held for a while is waited out (busy timeout and jittered retries)."""
    import sqlite3
    import threading

    with Jobctl(db_path) as jc:
        job = jc.create("x")
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, lambda: holder.execute("ROLLBACK")).start()
    started = time.monotonic()
    result = run("status", "set", job, "running", db=db_path, env={"JOBCTL_BUSY_TIMEOUT": "3"})
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 0.5
    holder.close()
    with Jobctl(db_path) as jc:
        assert jc.status(job) == "running"


def wait_until_blocked_on_a_full_pipe(proc, timeout=30):
    """Return once `proc` sleeps in the kernel writing to a pipe nobody reads (Linux: its
    wchan is pipe_write, or anon_pipe_write on newer kernels). Where /proc/PID/wchan is
    missing or hidden, the first line read by the caller is all the synchronisation there is:
    the reader is then inside its query, which is what the test needs."""
    path = f"/proc/{proc.pid}/wchan"
    try:
        wchan = open(path).read()
    except OSError:
        return
    if wchan in ("", "0"):  # hidden from us
        return
    deadline = time.monotonic() + timeout
    while "pipe_write" not in wchan:
        assert proc.poll() is None, "the reader ended before filling the pipe"
        assert time.monotonic() < deadline, f"the reader never blocked on the pipe (wchan {wchan!r})"
        time.sleep(0.005)  # polling its state, not waiting for it
        wchan = open(path).read()


def test_a_slow_reader_blocks_no_writer(db):
    """`jobctl list --all` stuck on a full pipe (in the middle of its read); writers go on."""
    db_path = db
    with Jobctl(db_path) as jc:
        parent = jc.create("many")
        kids = jc.spawn(parent, count=5000)
    # unbuffered: readline() below takes exactly one line, communicate() gets all the rest
    reader = subprocess.Popen([JOBCTL, "--db", str(db_path), "list", "--all"], stdout=subprocess.PIPE, bufsize=0)
    try:
        first = reader.stdout.readline()  # it is reading the jobs and printing them
        assert first.split(b"\t")[0] == parent.encode(), first
        wait_until_blocked_on_a_full_pipe(reader)  # 5,000 lines > 64 KiB: it waits for us
        assert reader.poll() is None
        started = time.monotonic()
        for kid in kids[:5]:
            result = run("status", "set", kid, "running", db=db_path, env={"JOBCTL_BUSY_TIMEOUT": "2"})
            assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 10
    finally:
        out = reader.communicate(timeout=30)[0]  # the rest, after the first line read above
    assert len(out.splitlines()) == 5000
    with Jobctl(db_path) as jc:
        assert jc.progress(parent)["running_children"] == 5
        assert jc.verify() == []


def test_wal_stays_bounded_while_a_watch_is_open(db_path):
    with Jobctl(db_path) as jc:
        parent = jc.create("p")
        kids = jc.spawn(parent, count=2000)
    watch = subprocess.Popen(
        [JOBCTL, "--db", str(db_path), "watch", parent, "--json"], stdout=subprocess.PIPE, text=True
    )
    wal = f"{db_path}-wal"
    sizes = []
    try:
        assert watch.stdout.readline()
        with Jobctl(db_path) as jc:
            for i, kid in enumerate(kids):
                jc.set_status([kid], "running")
                jc.log(kid, "x" * 200)
                if i % 500 == 499:
                    sizes.append(os.path.getsize(wal))
            # without checkpoints these 4,000 commits would write far more than this
            assert max(sizes) < 8 * 1024 * 1024, sizes
            assert sizes[-1] <= sizes[1] * 1.5, sizes  # stopped growing
    finally:
        watch.terminate()
        watch.communicate(timeout=10)
