"""The store contract (jobctl.store.base), against both backends through the
`db` fixture: a reader resuming from a cursor misses and repeats nothing while
8 writer processes commit at full speed; concurrent claimers never share a
child; writers on separate "hosts" (their own directory and environment,
sharing only the database) lose no update; every refused write changes nothing.
"""

import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import FULL, JOBCTL, WAIT, snapshot, wait_for
from jobctl import Jobctl

pytestmark = pytest.mark.slow  # real subprocesses throughout

WRITERS = 8
TRANSACTIONS = 2000 if FULL else 150  # per writer

# A writer: its own job tree, walked through statuses, one transaction per call;
# every few calls a write that is refused (and must leave nothing behind).
WRITER = r"""
import sys
from jobctl import Jobctl, Conflict
db, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jc = Jobctl(db)
parent = jc.create(f"writer {tag}")
jc.spawn(parent, count=1)  # stays pending: the parent stays open for more children
for i in range(n):
    kid = jc.spawn(parent, count=1)[0] if i % 3 == 0 else kid
    step = i % 3
    if step == 1:
        jc.set_status([kid], "running")
    elif step == 2:
        jc.set_status([kid], "completed", message=f"{tag}:{i}")
        try:
            jc.set_status([kid], "running")  # completed -> running: refused
        except Conflict:
            pass
print(parent)
"""


def host_env(tmp_path, name, db):
    """A simulated host: its own HOME, temporary directory and working directory;
    it shares nothing with the others but the database."""
    home = tmp_path / name
    (home / "tmp").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "XDG_"))}
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"), JOBCTL_DB=db)
    return env, home


def test_a_reader_following_the_cursor_misses_and_repeats_nothing(db, tmp_path):
    with Jobctl(db) as jc:
        jc.create("start")  # the database exists before the writers race to open it
    procs = []
    for i in range(WRITERS):
        env, home = host_env(tmp_path, f"host{i}", db)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WRITER, db, str(TRANSACTIONS), str(i)],
                env=env,
                cwd=home,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    seen: list[int] = []
    with Jobctl(db) as reader:

        def caught_up() -> bool:
            """Read the next page from the cursor; true once the writers had ended before it and it was empty."""
            running = any(p.poll() is None for p in procs)
            page = reader.events(since=seen[-1] if seen else 0)
            seen.extend(e["id"] for e in page)
            return not running and not page

        wait_for(caught_up, "the writers to end and the reader to catch up", timeout=WAIT * (10 if FULL else 1))
        for p in procs:
            out, err = p.communicate()
            assert p.returncode == 0, err
        everything = [e["id"] for e in reader.events()]
        problems = reader.verify()
    assert seen == everything  # nothing skipped, nothing twice, in order
    assert everything == list(range(1, len(everything) + 1))  # and no gaps
    # 1 create + per writer: its parent, and per child 1 create + 2 status changes, plus the
    # parent's derived changes (pending -> running, then running <-> completed per child)
    assert len(everything) > WRITERS * TRANSACTIONS
    assert problems == []


CLAIMERS = 200


def test_concurrent_claimers_never_get_the_same_child(db):
    with Jobctl(db) as jc:
        parent = jc.create("claims")
        kids = jc.spawn(parent, count=CLAIMERS // 2)
    script = r"""
import sys, threading, json
from jobctl import Jobctl
db, parent, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
got, errors = [], []
conns = [Jobctl(db) for _ in range(n)]
start = threading.Barrier(n)
def claim(jc):
    start.wait()
    try:
        got.append(jc.claim(parent))
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=claim, args=(c,)) for c in conns]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"got": got, "errors": errors}))
"""
    per = CLAIMERS // WRITERS
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db, parent, str(per)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WRITERS)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert [e for r in results for e in r["errors"]] == []
    got = [g for r in results for g in r["got"]]
    claimed = [g for g in got if g is not None]
    assert len(got) == CLAIMERS
    assert sorted(claimed) == sorted(kids)  # each child exactly once; the other 100 found none
    with Jobctl(db) as jc:
        assert jc.progress(parent)["running_children"] == len(kids)
        assert jc.verify() == []


def test_refused_writes_change_nothing(db):
    with Jobctl(db) as jc:
        parent = jc.create("p")
        a, b = jc.spawn(parent, count=2)
        jc.set_status([b], "completed")
    before = snapshot(db)
    for argv in (
        ["status", "set", a, b, "running"],  # b is completed: the whole batch is refused
        ["spawn", "nope", "--count", "3"],
        ["create", "x", "--parent", b + "x"],
        ["status", "set", parent, "completed"],
        ["log", a, ""],
        ["claim", b],
    ):
        result = subprocess.run([JOBCTL, "--db", db, *argv], capture_output=True, text=True)
        assert result.returncode in (2, 3, 4), (argv, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("jobctl: error: ")
        assert snapshot(db) == before, argv


def test_a_watcher_on_another_host_sees_every_change(db, tmp_path):
    with Jobctl(db) as jc:
        parent = jc.create("fan-out")
        kids = jc.spawn(parent, count=20)
    env, home = host_env(tmp_path, "watcher", db)
    watcher = subprocess.Popen(
        [JOBCTL, "watch", parent, "--json", "--exit-status", "--timeout", "120"],
        env=env,
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = json.loads(watcher.stdout.readline())  # it is following from here on
    assert start["type"] == "start" and start["pending_children"] == 20

    def work(i):
        env_i, home_i = host_env(tmp_path, f"worker{i}", db)
        for kid in kids[i::4]:
            for status in ("running", "completed"):
                subprocess.run([JOBCTL, "status", "set", kid, status], env=env_i, cwd=home_i, check=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out, err = watcher.communicate(timeout=120)
    lines = [json.loads(x) for x in out.splitlines()]
    changes = [x["event"] for x in lines if x["type"] == "event" and x["event"]["parent_id"] == parent]
    assert watcher.returncode == 0, err
    assert len(changes) == 40 and len({c["id"] for c in changes}) == 40
    assert lines[-1]["type"] == "end" and lines[-1]["progress_text"] == "0 pending, 0 running, 20 completed, 0 failed"


def test_a_writer_that_waits_for_the_lock_says_so_once(db):
    """A big write holds the write lock for its whole transaction: a writer kept
    waiting more than a second says so on stderr (one line, not an error), then
    goes through when the lock is released."""
    with Jobctl(db) as jc:
        job = jc.create("x")
    holder = Jobctl(db)
    lock = holder._store.write()
    lock.__enter__()  # another writer, in the middle of a long transaction that holds the lock
    holder._store.hold_write_lock()
    try:
        proc = subprocess.Popen(
            [JOBCTL, "--db", db, "status", "set", job, "running"],
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, JOBCTL_BUSY_TIMEOUT="30"),
        )
        notice = proc.stderr.readline()  # printed while it still waits: the lock is ours until below
        assert notice == "jobctl: waiting for another writer to finish (up to 29 s more; JOBCTL_BUSY_TIMEOUT)\n"
        assert proc.poll() is None
    finally:
        lock.__exit__(None, None, None)
        holder.close()
    assert proc.wait(timeout=60) == 0 and proc.stderr.read() == ""
    with Jobctl(db) as jc:
        assert jc.status(job) == "running"


def test_jobctl_takes_an_open_store(db):
    """Jobctl(store) over open_store(url_or_path): the write path is the same whatever the backend."""
    from jobctl.store import open_store

    store = open_store(db)
    with Jobctl(store) as jc:
        parent = jc.create("p")
        jc.set_status(jc.spawn(parent, count=2), "completed")
        assert jc.status(parent) == "completed" and jc.verify() == []
        assert jc.name == store.name


def test_a_writer_refused_after_the_busy_timeout_can_write_again(db, monkeypatch):
    """Still locked after JOBCTL_BUSY_TIMEOUT: exit 5 with nothing written, and the
    connection is fine afterwards (no transaction left half-open behind it)."""
    from jobctl import DatabaseUnusable

    monkeypatch.setenv("JOBCTL_BUSY_TIMEOUT", "0.3")
    with Jobctl(db) as jc:
        job = jc.create("x")
        holder = Jobctl(db)
        lock = holder._store.write()
        lock.__enter__()
        holder._store.hold_write_lock()
        try:
            with pytest.raises(DatabaseUnusable, match="still locked"):
                jc.set_status([job], "running")
        finally:
            lock.__exit__(None, None, None)
            holder.close()
        assert jc.status(job) == "pending"
        jc.set_status([job], "running")
        assert jc.status(job) == "running" and jc.verify() == []


def test_a_change_reads_what_the_rules_need_of_a_job_and_its_parent(jc):
    """The write path's read: the job and its parent in one query, each with its kept
    counts, as CHANGE_COLUMNS (names and metadata are not read)."""
    from jobctl.store.base import CHANGE_COLUMNS

    p = jc.create("P", allow_failures="1")
    kid = jc.spawn(p, count=2)[0]
    jc.set_status([kid], "failed")
    jobs, counts = jc._store.jobs_and_counts([kid], parents=True)
    assert set(jobs) == {kid, p} and all(set(j) == set(CHANGE_COLUMNS) for j in jobs.values())
    for job in (kid, p):  # each column as the job is (in whatever order the query gives them)
        assert dict(jobs[job]) == {c: jc._store.get_job(job)[c] for c in CHANGE_COLUMNS}
    assert jobs[p]["allow_failures"] == "1" and jobs[kid]["status"] == "failed"
    assert counts[p] == {"pending": 1, "running": 0, "completed": 0, "failed": 1, "cancelled": 0}
    assert counts[kid] == dict.fromkeys(counts[p], 0)
    jobs, counts = jc._store.jobs_and_counts([p], parents=True)  # a root: no parent row
    assert set(jobs) == {p}


def test_a_batch_of_log_lines_keeps_their_order_and_text(db):
    """`run`'s output goes in as one batch per flush (one statement a chunk on
    PostgreSQL, not one a line): over a chunk's size, with quotes, percent signs
    and backslashes, every line is stored once, in order, with its level."""
    lines = [("error" if i % 7 == 0 else "info", f"line {i}: 100% of '%s' \"q\" \\ {i}") for i in range(2500)]
    with Jobctl(db) as jc:
        job = jc.create("chatty")
        jc.log_lines(job, lines[:3])
        jc.log_lines(job, lines[3:])
        logged = [(x["level"], x["text"]) for x in jc.logs(job)]
        assert logged[-len(lines) :] == lines
        assert jc.verify() == []
