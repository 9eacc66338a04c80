"""`jobctl prune`: old finished trees go (jobs, events, logs, outputs) a batch a
transaction, verify stays clean, other writers keep writing, and a reader whose
cursor points into what went is told so (exit 5), on both stores."""

import json
import subprocess
import sys
import time
from unittest import mock

import pytest

from conftest import FULL, JOBCTL, ROOT, exists, run, snapshot, tamper, wait_for
from jobctl import Jobctl, write
from jobctl.model import PrunedHistory

DAY = 86400
REAL_TIME = time.time


def days_ago(days: float):
    """The clock of the jobs made inside: `days` in the past (time.time patched in-process)."""
    return mock.patch("time.time", lambda: REAL_TIME() - days * DAY)


def old_tree(jc: Jobctl, name: str, *, days: float = 40, end: str = "completed") -> str:
    """A finished tree made `days` ago: a root, three children, two grandchildren with a
    log line and an output; its children end `end` (the root follows them)."""
    with days_ago(days):
        root = jc.create(name)
        kids = jc.spawn(root, count=3)
        grand = jc.spawn(kids[0], count=2)
        jc.log(grand[0], "a line")
        jc.set_output(grand[1], "url", "https://example.com")
        jc.set_status(grand, "completed")
        if end == "cancelled":
            jc.cancel(root)
        else:
            jc.set_status(kids[1:], end)
    assert jc.status(root) == end
    return root


def tree_rows(db: str, root: str) -> int:
    """Rows of the tree left in jobs, events, logs and kept counts (read behind jobctl's back)."""
    with Jobctl(db) as jc:
        store = jc._store
        jobs = [j for j in store.all_jobs() if j["root_id"] == root]
        events = [e for e in store.all_events() if e["root_id"] == root]
        logs = [r for r in store._query("SELECT job_id FROM logs") if r["job_id"].split(".")[0] == root]
        counts = [p for p in store.all_counts() if p.split(".")[0] == root]
    return len(jobs) + len(events) + len(logs) + len(counts)


def test_prune_removes_old_finished_trees_whole_and_verify_stays_clean(db):
    with Jobctl(db) as jc:
        done = old_tree(jc, "old done")
        failed = old_tree(jc, "old failed", end="failed")
        recent = old_tree(jc, "recent", days=10)
        with days_ago(40):
            running = jc.create("old but running")
            jc.set_status([running], "running")
        kept = jc.create("new")
        jc.spawn(kept, count=2)
        events = sum(e["root_id"] in (done, failed) for e in jc._store.all_events())
    result = run("prune", "--older-than", "30d", db=db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == sorted([done, failed])
    assert result.stderr == f"jobctl: prune: removed 2 tree(s): 12 job(s), {events} event(s)\n"
    assert tree_rows(db, done) == tree_rows(db, failed) == 0
    with Jobctl(db) as jc:
        assert {j["id"] for j in jc.list(top_level=True)} == {recent, running, kept}
        assert jc.verify() == []
        assert len(list(jc.tree(recent))) == 6 and jc.outputs(f"{recent}.1") != {}
    assert run("verify", db=db).returncode == 0
    again = run("prune", "--older-than", "30d", db=db)
    assert (again.returncode, again.stdout) == (0, "")
    assert "removed 0 tree(s)" in again.stderr


def test_status_narrows_and_dry_run_changes_nothing(db):
    with Jobctl(db) as jc:
        done = old_tree(jc, "done")
        failed = old_tree(jc, "failed", end="failed")
        cancelled = old_tree(jc, "cancelled", end="cancelled")
        jc.create("new")
        events = sum(e["root_id"] in (done, failed, cancelled) for e in jc._store.all_events())
    before = snapshot(db)
    dry = run("prune", "--older-than", "30d", "--dry-run", "--json", db=db)
    assert dry.returncode == 0, dry.stderr
    import json

    assert json.loads(dry.stdout) == {
        "dry_run": True,
        "trees": 3,
        "jobs": 18,
        "events": events,
        "before": 0,
        "roots": sorted([done, failed, cancelled]),
    }
    assert snapshot(db) == before
    narrowed = run("prune", "--older-than", "30d", "--status", "failed", "--status", "cancelled", db=db)
    assert narrowed.returncode == 0, narrowed.stderr
    assert narrowed.stdout.split() == sorted([failed, cancelled])
    with Jobctl(db) as jc:
        assert jc.status(done) == "completed" and jc.verify() == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--older-than", "soon"], "bad duration 'soon' (use e.g. 90s, 5m, 1h; at most 100 years)"),
        (["--older-than", "0"], "bad duration '0' (use e.g. 90s, 5m, 1h; at most 100 years)"),
        (
            ["--older-than", "30d", "--status", "running"],
            "prune removes finished trees: --status takes completed, failed, cancelled, not 'running'",
        ),
        (
            ["--older-than", "30d", "--status", "done"],
            "prune removes finished trees: --status takes completed, failed, cancelled, not 'done'",
        ),
    ],
)
def test_bad_input_is_exit_2_in_one_line_and_changes_nothing(db, args, message):
    with Jobctl(db) as jc:
        old_tree(jc, "old")
        jc.create("new")
    before = snapshot(db)
    result = run("prune", *args, db=db)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"jobctl: error: {message}\n")
    assert snapshot(db) == before


def test_prune_needs_an_existing_database(tmp_path):
    missing = tmp_path / "none.db"
    result = run("prune", "--older-than", "30d", db=missing)
    assert result.returncode == 5 and result.stderr.count("\n") == 1
    assert not exists(str(missing))


def test_a_reader_resuming_inside_pruned_history_is_told_so(db):
    with Jobctl(db) as jc:
        old = old_tree(jc, "old")
        inside = jc.last_event_id() // 2  # a cursor among the old tree's events
        kept = jc.create("kept")  # interleaved: some of its events come after a later old tree's
        late = old_tree(jc, "old too")
        jc.set_status([kept], "running")
        newest = jc.last_event_id()
        assert tree_rows(db, old) > 0
        done = jc.prune(30 * DAY)
        assert done["trees"] == 2 and tree_rows(db, old) == tree_rows(db, late) == 0
        mark = done["before"]
        assert {j["id"] for j in jc.list()} == {kept}
        assert mark > inside + 1
        # from 0: what is kept, in order
        assert [e["job_id"] for e in jc.events()] == [kept, kept]
        # at or after the mark - 1: nothing it would read is gone
        assert [e["id"] for e in jc.events(since=mark - 1)] == [newest]
        # a tree that was not pruned: its own events, whatever the cursor
        assert [e["new_status"] for e in jc.events(job=kept, since=inside)] == ["pending", "running"]
        with pytest.raises(PrunedHistory, match=f"^events before {mark} were pruned"):
            jc.events(since=inside)
    result = run("events", "--since", inside, db=db)
    assert result.returncode == 5 and result.stdout == ""
    assert result.stderr == (
        f"jobctl: error: events before {mark} were pruned (the cursor {inside} is older; read again from 0)\n"
    )
    watch = run("watch", old, db=db)
    assert (watch.returncode, watch.stderr) == (3, f"jobctl: error: job {old} not found\n")


@pytest.mark.slow
def test_serve_refuses_to_resume_a_stream_inside_pruned_history(db, tmp_path):
    """`Last-Event-ID` older than the mark - 1: a 503 with exit code 5 and the
    message, before the stream starts; at the mark - 1 the stream resumes."""
    from test_serve import Server

    with Jobctl(db) as jc:
        old_tree(jc, "old")
        inside = jc.last_event_id() // 2
        kept = jc.create("kept")
        mark = jc.prune(30 * DAY)["before"]
    server = Server(db, tmp_path)
    try:
        status, _, body = server.request("GET", "/api/stream", headers={"Last-Event-ID": str(inside)})
        assert (status, body["exit_code"]) == (503, 5)
        assert body["error"].startswith(f"events before {mark} were pruned (the cursor {inside} is older")
        stream = server.stream(since=mark - 1)
        run("status", "set", kept, "running", db=db, check=True)
        ((sse_id, message),) = stream.take(1)
        assert int(sse_id.split(".")[0]) >= mark and kept in json.dumps(message)
        stream.close()
    finally:
        server.stop()


def test_a_reader_caught_up_before_the_last_pruned_events_is_told_so(db):
    """The events after the cursor are all gone and none came since: no gap to see
    in a page, yet the reader is told (the mark is above its cursor)."""
    with Jobctl(db) as jc:
        jc.create("first")  # kept: it is older than nothing, but ...
        old = old_tree(jc, "old")
        cursor = jc.last_event_id() - 3
        jc.create("newest")  # ... the newest event's tree is always kept
        jc.prune(30 * DAY)
        assert not exists_job(jc, old)
        with pytest.raises(PrunedHistory):
            jc.events(since=cursor)


def exists_job(jc: Jobctl, job_id: str) -> bool:
    return jc.find(job_id) is not None


def test_the_tree_with_the_newest_event_is_kept(db):
    """PostgreSQL numbers events from max(id): removing the newest event would hand
    its id out again, to a reader that saw it already. So that tree waits."""
    with Jobctl(db) as jc:
        old = old_tree(jc, "old")
        assert jc.prune(30 * DAY)["trees"] == 0
        jc.create("new")
        assert jc.prune(30 * DAY)["trees"] == 1
        assert not exists_job(jc, old)


def test_events_stay_append_only_outside_prune(db):
    """Prune's leave to delete events is its own transaction's: after a prune, as
    before, the triggers refuse a DELETE (and an UPDATE, and TRUNCATE)."""
    with Jobctl(db) as jc:
        old_tree(jc, "old")
        jc.create("new")
        assert jc.prune(30 * DAY)["trees"] == 1
    statements = ["DELETE FROM events", "UPDATE events SET message = 'x'"]
    if db.startswith("postgresql://"):
        statements.append("TRUNCATE events CASCADE")
    for statement in statements:
        with pytest.raises(Exception, match="append-only"):
            tamper(db, statement.replace("events", _events_table(db)))


def _table(db: str, name: str) -> str:
    if db.startswith("postgresql://"):
        return f"{db.rsplit('schema=', 1)[1]}.{name}"
    return name


def _events_table(db: str) -> str:
    return _table(db, "events")


def test_batches_commit_one_at_a_time_while_another_process_writes(db, tmp_path, monkeypatch):
    """A tree of 1,200 jobs goes 100 jobs a transaction; between two of them a writer
    in another process commits (it would wait for the whole tree if prune held the
    write lock throughout), and everything it wrote is there afterwards."""
    monkeypatch.setattr(write, "PRUNE_BATCH", 100)
    with Jobctl(db) as jc:
        with days_ago(40):
            root = jc.create("big")
            kids = jc.spawn(root, count=1200)
            jc.set_status(kids, "completed")
        jc.create("new")
    writer_code = (
        "import sys, pathlib\n"
        "from jobctl import Jobctl\n"
        "stop = pathlib.Path(sys.argv[2])\n"
        "with Jobctl(sys.argv[1]) as jc:\n"
        "    p = jc.create('writer')\n"
        "    n = 0\n"
        "    while not stop.exists():\n"
        "        c = jc.spawn(p, count=1)[0]\n"
        "        jc.set_status([c], 'completed')\n"
        "        n += 1\n"
        "    print(p, n)\n"
    )
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", writer_code, db, str(stop)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    steps = []
    original = write.Writes._prune_step

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        steps.append(result)
        if len(steps) == 3:  # between two batches: the writer gets the lock and commits
            seen = self.last_event_id()
            wait_for(lambda: self.last_event_id() > seen, "the writer to commit between two batches")
        return result

    monkeypatch.setattr(write.Writes, "_prune_step", step)
    try:
        with Jobctl(db) as jc:
            wait_for(lambda: any(j["name"] == "writer" for j in jc.list()), "the writer to start", jc=jc)
            assert jc.prune(30 * DAY)["trees"] == 1
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    parent, n = out.split()
    assert sum(s[0] == "gone" for s in steps) == 12  # 1,200 children, 100 a transaction
    with Jobctl(db) as jc:
        assert jc.counts(parent)["completed"] == int(n) > 0
        assert jc.find(root) is None
        assert jc.verify() == []


@pytest.mark.slow
def test_a_million_children_are_pruned_in_bounded_memory(db, tmp_path):
    """1,000,000 children (JOBCTL_FULL=1; 20,000 by default) pruned by `jobctl prune`
    within 200 MB peak RSS (/usr/bin/time's figure)."""
    size = 1_000_000 if FULL else 20_000
    with Jobctl(db) as jc:
        with days_ago(40):
            root = jc.create("huge")
            jc.spawn(root, count=size)
            jc.cancel(root)
        jc.create("new")
    rss = tmp_path / "rss"
    t0 = time.monotonic()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss), JOBCTL, "--db", db, "prune", "--older-than", "30d"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{root}\n"
    peak_mb = int(rss.read_text().split()[-1]) / 1024
    print(f"prune of {size:,} children: {time.monotonic() - t0:.1f} s, peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 200, peak_mb
    with Jobctl(db) as jc:
        assert jc.find(root) is None and jc.verify() == []


def test_dependencies_go_with_their_tree_and_a_tree_another_waits_on_stays(db):
    """A dependency inside an old tree goes with it (verify stays clean); a tree that
    a job of another tree waits on (--after) stays, whatever its age: that job's
    create event names it."""
    with Jobctl(db) as jc:
        with days_ago(40):
            inside = jc.create("inside")
            first, second = jc.spawn(inside, names=["build", "test"])
            chained = jc.create("chained", parent=inside, after=[first])
            jc.set_status([first, second, chained], "completed")
            needed = old_tree(jc, "needed")
            waiter = jc.create("waits on it", after=[f"{needed}.2"])
    result = run("prune", "--older-than", "30d", db=db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [inside]
    assert tree_rows(db, inside) == 0 and tree_rows(db, needed) > 0
    with Jobctl(db) as jc:
        assert jc._store.all_dependencies() == {waiter: [(f"{needed}.2", 0)]}
        assert jc.verify() == []
