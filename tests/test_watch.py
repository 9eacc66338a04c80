"""watch and wait, through real subprocesses; the live view; the demo."""

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FULL, JOBCTL, on_a_terminal, run, tamper
from jobctl import Jobctl
from jobctl.watch import Tail

WRITERS = 4
CHILDREN = 504  # x2 changes each: over 1,000 status changes


def start_watch(db, job, *args, env=None):
    """Start `jobctl watch JOB ARGS...` and return once it has printed its start line.

    The start line comes after the watch has read the job's state and set up its
    wake-ups, so every commit from then on is one it follows live."""
    proc = subprocess.Popen(
        [JOBCTL, "--db", str(db), "watch", str(job), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
    )
    first = proc.stdout.readline()
    assert first, proc.stderr.read()
    if "--json" in map(str, args):
        start = json.loads(first)
        assert start["type"] == "start" and start["job_id"] == job and isinstance(start["cursor"], int), first
    else:
        assert f"({job}) " in first, first  # `HH:MM:SS name (id) status ...`
    return proc, first


WRITER = """
import sys
from jobctl import Jobctl
db, ids, final = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
with Jobctl(db) as jc:
    for i, job in enumerate(ids):
        last = i == len(ids) - 1
        if last and final == "cancelled":
            break  # left pending: the test cancels the parent
        jc.set_status([job], "running")
        if i % 10 == 0:
            jc.log(job, f"working on {job}")
        jc.set_status([job], "failed" if last and final == "failed" else "completed")
"""


def writers(db, kids, final):
    chunks = [kids[i::WRITERS] for i in range(WRITERS)]
    return [subprocess.Popen([sys.executable, "-c", WRITER, str(db), ",".join(c), final]) for c in chunks]


@pytest.mark.slow
@pytest.mark.parametrize("final,code", [("completed", 0), ("failed", 1), ("cancelled", 6)])
def test_watch_sees_every_event_once_in_order_under_concurrent_writers(db, final, code):
    with Jobctl(db) as jc:
        parent = jc.create("News Crawler")
        kids = jc.spawn(parent, count=CHILDREN)
    proc, first = start_watch(db, parent, "--json", "--exit-status", "--timeout", 120)
    start = json.loads(first)
    assert start["type"] == "start"
    assert start["progress_text"] == f"{CHILDREN} pending, 0 running, 0 completed, 0 failed"
    procs = writers(db, kids, final)
    for p in procs:
        assert p.wait(timeout=120) == 0
    if final == "cancelled":  # each writer left its last child pending
        run("cancel", parent, db=db, check=True)
    out, err = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == code, err
    events = [line["event"] for line in lines if line["type"] == "event"]
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), "events out of order or duplicated"
    # exactly the tree's events from the start cursor up to the one that ended the parent
    expected = [
        json.loads(x)
        for x in run("events", "--job", parent, "--since", start["cursor"], "--json", db=db).stdout.splitlines()
    ]
    end_id = next(
        e["id"] for e in expected if e["job_id"] == parent and e["new_status"] in ("completed", "failed", "cancelled")
    )
    assert events == [e for e in expected if e["id"] <= end_id]
    assert sum(e["kind"] == "status" for e in events) >= 1000
    end = lines[-1]
    assert end["type"] == "end" and end["exit_code"] == proc.returncode
    fresh = json.loads(run("progress", parent, "--json", db=db).stdout)
    assert {k: v for k, v in end.items() if k in fresh} == fresh
    # every event line carries the progress after it, and it only ever moves by one child
    for line in lines:
        assert (
            sum(line[f"{s}_children"] for s in ("pending", "running", "completed", "failed", "cancelled"))
            == line["total_children"]
            == CHILDREN
        )
    assert run("verify", db=db).returncode == 0


@pytest.mark.slow
def test_since_replays_like_events_then_goes_live(db):
    with Jobctl(db) as jc:
        parent = jc.create("p")
        kids = jc.spawn(parent, count=4)
        jc.set_status(kids[:2], "running")
        cursor = jc.events()[-1]["id"]
        jc.set_status(kids[:2], "completed")
        jc.log(kids[2], "hello")
    replay = [
        json.loads(x) for x in run("events", "--job", parent, "--since", cursor, "--json", db=db).stdout.splitlines()
    ]
    proc, first = start_watch(db, parent, "--since", cursor, "--json", "--timeout", 60)
    assert json.loads(first)["progress_text"] == "2 pending, 2 running, 0 completed, 0 failed"
    got = [json.loads(proc.stdout.readline()) for _ in replay]
    assert [g["event"] for g in got] == replay
    assert got[-1]["progress_text"] == "2 pending, 0 running, 2 completed, 0 failed"
    with Jobctl(db) as jc:  # now the live tail
        jc.set_status(kids[2:], "completed")
    out, _ = proc.communicate(timeout=30)
    live = [json.loads(x) for x in out.splitlines()]
    assert [x["event"]["job_id"] for x in live if x["type"] == "event"] == [kids[2], kids[3], parent]
    assert live[-1]["type"] == "end" and live[-1]["status"] == "completed"
    assert proc.returncode == 0


@pytest.mark.slow
def test_from_start_replays_all_of_a_finished_job_and_exits(db):
    with Jobctl(db) as jc:
        parent = jc.create("p")
        kid = jc.spawn(parent, count=1)[0]
        jc.set_status([kid], "failed")
    result = run("watch", parent, "--from-start", "--exit-status", db=db)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "p (" in lines[0] and "pending" in lines[0]
    assert any(f"{kid} pending → failed | 0 pending, 0 running, 0 completed, 1 failed" in x for x in lines)
    assert lines[-2] == f"{parent} failed | 0 pending, 0 running, 0 completed, 1 failed"
    assert lines[-1] == f"  failed: {kid} child 1"  # the summary names what failed


@pytest.mark.slow
def test_already_terminal_exits_at_once_with_its_code(db):
    with Jobctl(db) as jc:
        done, cancelled = jc.create("a"), jc.create("b")
        jc.set_status([done], "completed")
        jc.cancel(cancelled)
    assert run("watch", done, "--exit-status", db=db).returncode == 0
    result = run("watch", cancelled, "--exit-status", db=db)
    assert result.returncode == 6 and result.stdout.splitlines()[-1] == f"{cancelled} cancelled"
    assert run("watch", cancelled, db=db).returncode == 0  # without --exit-status


@pytest.mark.slow
def test_timeout_unknown_job_and_bad_options(db):
    with Jobctl(db) as jc:
        job = jc.create("slow")
    result = run("watch", job, "--timeout", "0.3", db=db)
    assert result.returncode == 124 and result.stdout.splitlines()[-1] == f"{job} pending (timeout)"
    assert run("watch", "nope", db=db).returncode == 3
    assert run("watch", job, "--since", 1, "--from-start", db=db).returncode == 2
    assert run("watch", job, "--poll-interval", 0, db=db).returncode == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum,code,reason",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"), (signal.SIGHUP, 129, "hung up")],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_ctrl_c_and_ci_cancels_end_with_a_summary_line(db, signum, code, reason):
    """Ctrl-C, and what CI sends a cancelled pipeline's step (SIGTERM, SIGHUP): a summary, 128 + signal."""
    with Jobctl(db) as jc:
        job = jc.create("forever")
    proc, _ = start_watch(db, job)
    with Jobctl(db) as jc:  # one live event, seen and printed: the watch is in its loop now
        jc.log(job, "still here")
    assert "still here" in proc.stdout.readline()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == code
    assert "Traceback" not in err
    assert out.splitlines()[-1] == f"{job} pending ({reason})"


@pytest.mark.slow
@pytest.mark.parametrize("env,interval", [({"JOBCTL_WATCH_POLL": "1"}, 0.3), ({}, 60)])
def test_change_seen_by_polling_and_by_notification(db, env, interval):
    """Forced polling (no file notifications: test_waker_modes) sees a change; with
    notifications (watchfiles on SQLite, LISTEN/NOTIFY on PostgreSQL) the change ends the
    watch with exit 0 before its own --timeout of 30 s (exit 124), half the 60 s poll
    interval: no poll can have shown it. How soon a change is seen is a speed goal,
    measured by bench/run.py's watch latency against a bare polling loop."""
    if env and db.startswith("postgresql://"):
        pytest.skip("JOBCTL_WATCH_POLL is SQLite's: PostgreSQL always LISTENs")
    with Jobctl(db) as jc:
        job = jc.create("j")
    proc, _ = start_watch(db, job, "--poll-interval", interval, "--timeout", 30, env=env)
    with Jobctl(db) as jc:
        # committed after the start line: the watch may still be reading what came before,
        # so this first change may be picked up by that read rather than by a wake-up
        jc.set_status([job], "running")
        line = proc.stdout.readline()
        assert f"{job} pending → running" in line
        # the watch printed that line from rows it had already read, so this commit comes
        # after its last read: only a wake-up (a poll, or a file notification) can show it
        jc.set_status([job], "completed")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)  # not 124: seen before the watch's own --timeout
    assert f"{job} running → completed" in out and out.splitlines()[-1] == f"{job} completed", out


def test_waker_modes(db_path, monkeypatch):
    with Jobctl(db_path) as jc, Jobctl(db_path) as writer:
        job = writer.create("j")
        first = jc.waker(0.05)
        assert first.mode == "watchfiles"
        assert first.wait(1) is False  # nothing committed since it started
        writer.set_status([job], "running")
        assert first.wait(1) is True
        first.close()
        monkeypatch.setenv("JOBCTL_WATCH_POLL", "1")
        waker = jc.waker(0.05)
        assert waker.mode == "polling"
        assert waker.wait(1) is False  # nothing committed since it started
        writer.set_status([job], "completed")
        assert waker.wait(1) is True


def test_tail_fold_matches_a_fresh_count(db):
    """The O(1) fold of events into counts agrees with counting the children again."""
    import random

    rng = random.Random(7)
    with Jobctl(db) as jc, Jobctl(db) as writer:
        parent = writer.create("p")
        kids = writer.spawn(parent, count=40)
        tail = Tail.start(jc, parent)
        for step in range(300):
            kid = rng.choice(kids)
            status = writer.status(kid)
            choices = {"pending": ["running", "failed"], "running": ["completed", "failed", "cancelled"]}
            if status in choices:
                writer.set_status([kid], rng.choice(choices[status]))
            elif status in ("failed", "cancelled") and rng.random() < 0.5:
                writer.retry(kid)
            if step % 7 == 0:
                tail.read()
                assert tail.counts == writer._store.count_children(parent)[parent]
        tail.read()
        assert tail.counts == writer._store.count_children(parent)[parent]
        assert tail.status == writer.status(parent)


@pytest.mark.slow
def test_wait_returns_the_worst_outcome(db):
    with Jobctl(db) as jc:
        a, b, c = jc.create("a"), jc.create("b"), jc.create("c")
        jc.set_status([a], "completed")
        jc.set_status([b], "failed")
        jc.cancel(c)
    assert run("wait", a, db=db).returncode == 0
    assert run("wait", a, c, db=db).returncode == 6
    result = run("wait", a, b, c, db=db)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{a} completed", f"{b} failed", f"{c} cancelled"]
    assert run("wait", a, "nope", db=db).returncode == 3


@pytest.mark.slow
def test_wait_follows_jobs_live_and_times_out(db):
    with Jobctl(db) as jc:
        a, b = jc.create("a"), jc.create("b")
    proc = subprocess.Popen(
        [JOBCTL, "--db", str(db), "wait", a, b, "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with Jobctl(db) as jc:
        jc.set_status([a], "completed")  # live or already at its start: wait prints a either way
        first = proc.stdout.readline()
        assert first == f"{a} completed\n", proc.stderr.read() if not first else first
        # wait has read b's state and found it pending (it printed a but not b), so b's
        # changes, made only now, can reach it only by following the database live
        assert proc.poll() is None
        jc.set_status([b], "running")
        jc.set_status([b], "completed")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == f"{b} completed\n"
    assert sorted([first, *out.splitlines(keepends=True)]) == sorted([f"{a} completed\n", f"{b} completed\n"])
    with Jobctl(db) as jc:
        c = jc.create("c")
    result = run("wait", a, c, "--timeout", "0.3", db=db)
    assert result.returncode == 124
    assert result.stdout.splitlines() == [f"{a} completed", f"{c} pending (timeout)"]


def test_live_view_renders_on_a_terminal(db, monkeypatch):
    from rich.console import Console

    from jobctl.render import LiveWatch
    from jobctl.watch import run_watch

    with Jobctl(db) as jc:
        parent = jc.create("News Crawler")
        kids = jc.spawn(parent, count=3)
        jc.set_status(kids, "running")
        cursor = jc.events()[0]["id"]
        jc.log(kids[0], "fetching https://example.com/")
        jc.set_status(kids, "completed")
        buf = io.StringIO()
        sink = LiveWatch(Console(file=buf, force_terminal=True, width=100, color_system="truecolor"))
        assert run_watch(jc, parent, sink, since=cursor) == 0
    screen = buf.getvalue()
    assert "News Crawler" in screen and parent in screen and "COMPLETED" in screen
    assert "0 pending, 0 running, 3 completed, 0 failed" in screen
    assert "3/3" in screen and "100.0%" in screen
    assert "fetching https://example.com/" in screen
    assert "\x1b[" in screen  # coloured
    assert f"{parent} completed" in screen  # the summary stays in the last frame
    monkeypatch.setenv("NO_COLOR", "1")
    buf = io.StringIO()
    with Jobctl(db) as jc:
        run_watch(jc, parent, LiveWatch(Console(file=buf, force_terminal=True, width=100)))
    assert "\x1b[3" not in buf.getvalue() and "\x1b[4" not in buf.getvalue()  # no colour codes


def frame_lines(sink) -> list[str]:
    """The lines of the live view's current frame, as the console would draw them."""
    console = sink.console
    return ["".join(seg.text for seg in line) for line in console.render_lines(sink.render(), console.options)]


def test_live_view_fits_the_window_and_uses_its_height(db_path):
    from rich.console import Console

    from jobctl.render import LiveWatch
    from jobctl.watch import run_watch

    with Jobctl(db_path) as jc:
        parent = jc.create("a name long enough to wrap in a narrow window")
        kids = jc.spawn(parent, count=40)
        for kid in kids:
            jc.log(kid, "a log line that is much longer than thirty columns, to be cut, not wrapped")
        jc.set_status(kids, "completed")
        tall = LiveWatch(Console(file=io.StringIO(), force_terminal=True, width=100, height=35))
        run_watch(jc, parent, tall, since=0)
        narrow = LiveWatch(Console(file=io.StringIO(), force_terminal=True, width=30, height=12))
        run_watch(jc, parent, narrow, since=0)
    lines = frame_lines(tall)
    assert len(lines) == 34  # the tail fills the window but its last row (the cursor): not the old 12 rows
    assert lines[-1].startswith(f"{parent} completed")  # the summary is in the last frame
    small = frame_lines(narrow)
    assert len(small) <= 12 and all(len(x) <= 30 for x in small)  # never taller than the window
    assert small[0].startswith("a name long")  # the header is still on screen


def test_live_view_rate_decays_and_stale_and_failures_are_right_at_the_end(db_path):
    from rich.console import Console

    from jobctl.render import LiveWatch
    from jobctl.watch import Failures, Update

    sink = LiveWatch(Console(file=io.StringIO(), force_terminal=True, width=120, height=40))
    job = {"id": "p", "name": "p", "updated_at": "2026-01-01T00:00:00.000000Z"}

    def progress(done, running, failed=0):
        return {
            "job_id": "p",
            "status": "running",
            "total_children": 10,
            "pending_children": 10 - done - running,
            "running_children": running,
            "completed_children": done - failed,
            "failed_children": failed,
            "cancelled_children": 0,
            "progress_text": "...",
        }

    def change(kid, old, new, at, p, message=None):
        e = {
            "id": 1,
            "kind": "status",
            "job_id": kid,
            "parent_id": "p",
            "old_status": old,
            "new_status": new,
            "at": at,
            "message": message,
            "level": None,
        }
        sink.update(Update(e, p, False))

    sink.start(job, progress(0, 2), 0)
    sink.live.stop()  # drawn frames are not under test: render() is
    change("p.1", "running", "completed", "2026-01-01T00:00:01.000000Z", progress(1, 1))
    change("p.3", "running", "completed", "2026-01-01T00:00:03.000000Z", progress(2, 1))
    t = 1767225603.0  # 2026-01-01T00:00:03Z
    assert sink.rate(now=t) == pytest.approx(2 / 3)
    assert sink.rate(now=t + 17) < sink.rate(now=t) / 5  # nothing finished for 17 s: the rate falls with time
    sink.stale({"p.2": 400.0}, ["p.2"], progress(2, 1))
    assert any("1 stale" in x for x in frame_lines(sink))
    change("p.2", "running", "failed", "2026-01-01T00:00:04.000000Z", progress(3, 0, failed=1), "exit code 3")
    assert not any("stale (no heartbeat)" in x for x in frame_lines(sink))  # it moved on: no longer stale
    sink.end(
        job,
        {**progress(3, 0, failed=1), "status": "failed"},
        "",
        1,
        Failures([{"id": "p.2", "name": "page 2", "message": "exit code 3"}], 1),
    )
    final = frame_lines(sink)
    assert any("p.2 running → failed: exit code 3" in x for x in final)  # the tail says why
    assert final[-2].startswith("p failed") and final[-1].startswith("  failed: p.2 page 2: exit code 3")


@pytest.mark.slow
@pytest.mark.parametrize("env", [{}, {"JOBCTL_WATCH_POLL": "1"}], ids=["watchfiles", "polling"])
def test_demo_runs_to_the_end(env):
    children = 108 if FULL else 8
    result = run("demo", "--children", children, "--workers", 2, "--speed", 20, "--seed", 3, timeout=120, env=env)
    assert result.returncode == 0, result.stderr

    # the summary, then (when a page failed) one `  failed: ...` line per failed child
    last = [line for line in result.stdout.splitlines() if not line.startswith("  failed: ")][-1]
    counts = re.search(r"\| 0 pending, 0 running, (\d+) completed, (\d+) failed$", last)
    assert counts and int(counts[1]) + int(counts[2]) == children, last
    assert last.split()[1] == ("failed" if int(counts[2]) else "completed")
    assert "earlier events" not in result.stdout  # the demo shows every change since it made the job
    assert "jobctl demo:" in result.stderr and " 0 pending, 0 running" in result.stderr


@pytest.mark.slow
def test_watch_marks_stale_children(db):
    with Jobctl(db) as jc:
        parent = jc.create("p")
        kids = jc.spawn(parent, count=3)
        jc.set_status(kids[:2], "running")
        jc.heartbeat(kids[1])
    # the first child's worker went quiet an hour ago
    tamper(db, "UPDATE jobs SET started_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?", (kids[0],))
    proc, _ = start_watch(db, parent, "--stale-after", "5m", "--json", "--poll-interval", "0.2", "--timeout", 30)
    stale = json.loads(proc.stdout.readline())
    assert stale["type"] == "stale" and stale["stale_job_ids"] == [kids[0]] and stale["all_stale"] == [kids[0]]
    assert stale["seconds_since_heartbeat"][0] > 3600
    with Jobctl(db) as jc:
        jc.reap(300)  # heartbeat lost: the stale child fails, the parent's progress follows
        jc.set_status(kids[1:], "completed")
    out, _ = proc.communicate(timeout=30)
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["event"]["message"] for x in lines if x["type"] == "event"][0] == "heartbeat lost"
    assert lines[-1]["progress_text"] == "0 pending, 0 running, 2 completed, 1 failed"
    plain = run("watch", parent, "--stale-after", "5m", db=db)  # already final: nothing running is stale
    assert "stale" not in plain.stdout


@pytest.mark.slow
def test_a_long_replay_is_read_in_pages_and_honours_the_timeout(db):
    from jobctl.watch import PAGE

    with Jobctl(db) as jc:
        parent = jc.create("big")
        jc.spawn(parent, count=3 * PAGE)
        jc.set_status([f"{parent}.1"], "running")
        jc.cancel(parent)
        total = len(jc.events())
    full = run("watch", parent, "--from-start", "--json", "--exit-status", "--timeout", "60", db=db)
    events = [json.loads(x)["event"]["id"] for x in full.stdout.splitlines() if '"type": "event"' in x]
    assert full.returncode == 6
    assert events == list(range(1, total + 1))  # every page, in order, nothing twice
    big = 100 * PAGE  # far more than watch replays in 0.2 s (about 50,000 events/s here)
    with Jobctl(db) as jc:
        jc.retry(parent)  # running again, with a long history to replay
        jc.spawn(parent, count=big)
        total = len(jc.events())
    cut = run("watch", parent, "--from-start", "--json", "--timeout", "0.2", db=db)
    printed = [json.loads(x)["event"]["id"] for x in cut.stdout.splitlines() if '"type": "event"' in x]
    assert cut.returncode == 124
    assert 0 < len(printed) < total and printed == list(range(1, len(printed) + 1))


@pytest.mark.slow
def test_wait_json(db):
    with Jobctl(db) as jc:
        a, b = jc.create("a"), jc.create("b")
        jc.set_status([a], "failed")
    result = run("wait", a, b, "--json", "--timeout", "0.2", db=db)
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert result.returncode == 124
    assert [(x["job_id"], x["status"], x["reason"]) for x in lines] == [
        (a, "failed", "finished"),
        (b, "pending", "timeout"),
    ]


@pytest.mark.slow
def test_replay_of_a_finished_job_ends_when_another_tree_wrote_last(db):
    with Jobctl(db) as jc:
        a = jc.create("a")
        jc.set_status([a], "running")
        jc.set_status([a], "completed")
        jc.create("b")  # the newest event belongs to another tree
    result = run("watch", a, "--from-start", "--exit-status", "--timeout", "30", db=db)
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == f"{a} completed"


@pytest.mark.slow
def test_reap_of_one_parent_leaves_other_jobs_alone(db):
    with Jobctl(db) as jc:
        p, other = jc.create("p"), jc.create("other")
        kid = jc.spawn(p, count=1)[0]
        jc.set_status([kid, other], "running")
    tamper(db, "UPDATE jobs SET started_at = '2000-01-01T00:00:00.000000Z'")
    assert run("reap", "--stale-after", "1m", "--parent", p, db=db).stdout.split() == [kid]
    with Jobctl(db) as jc:
        assert jc.status(other) == "running" and jc.status(p) == "failed"


# ------------------------------------------------------------ watch says why
@pytest.mark.slow
def test_watch_lines_say_why_and_the_summary_names_the_failures(db):
    with Jobctl(db) as jc:
        parent = jc.create("shards")
        kids = jc.spawn(parent, count=14)
    proc, _ = start_watch(db, parent, "--exit-status", "--timeout", 60)
    json_proc, _ = start_watch(db, parent, "--json", "--timeout", 60)
    with Jobctl(db) as jc:
        jc.set_status(kids, "running")
        jc.set_status([kids[0]], "completed")
        for i, kid in enumerate(kids[1:13]):
            jc.set_status([kid], "failed", message=f"exit code {i + 2}")
        jc.cancel(parent, message="pipeline cancelled")
    out, err = proc.communicate(timeout=60)
    lines = out.splitlines()
    assert proc.returncode == 6, err  # cancelled
    assert any(
        x.endswith(f"{kids[1]} running → failed: exit code 2 | 0 pending, 12 running, 1 completed, 1 failed")
        for x in lines
    ), lines
    assert any(f"{kids[13]} running → cancelled: pipeline cancelled |" in x for x in lines)
    summary = lines.index(f"{parent} cancelled | 0 pending, 0 running, 1 completed, 12 failed, 1 cancelled")
    assert lines[summary + 1 :] == [f"  failed: {kids[1 + i]} child {2 + i}: exit code {i + 2}" for i in range(10)] + [
        "  and 2 more"
    ]
    records = [json.loads(x) for x in json_proc.communicate(timeout=60)[0].splitlines()]
    failed = [r["event"] for r in records if r["type"] == "event" and r["event"]["new_status"] == "failed"]
    assert failed[0]["message"] == "exit code 2"
    end = records[-1]
    assert end["type"] == "end" and end["failed_children"] == 12 and end["failures_total"] == 12
    assert [f["id"] for f in end["failures"]] == kids[1:11] and end["failures"][0]["message"] == "exit code 2"


@pytest.mark.slow
def test_a_watch_that_joins_late_says_what_it_missed(db):
    """The hint counts the changes and log lines the watcher has not seen (creations
    are no history: the counts show every job), and in plain lines it comes only
    with --verbose (a CI log has no person to tell)."""
    with Jobctl(db) as jc:
        parent = jc.create("p")
        kids = jc.spawn(parent, count=3)
        fresh = run("watch", parent, "--verbose", "--timeout", "0.3", db=db)
        assert "earlier events" not in fresh.stdout  # only creations so far: nothing missed
        jc.set_status(kids[:2], "running")
        history = len([e for e in jc.events(job=parent) if e["kind"] != "create"])
    assert "earlier events" not in run("watch", parent, "--timeout", "0.3", db=db).stdout  # not in a log
    proc, first = start_watch(db, parent, "--timeout", 0.3, "--verbose")
    hint = proc.stdout.readline()  # (communicate() would skip what readline() has buffered)
    proc.communicate(timeout=30)
    assert "(last change " in first  # the start line says what its time is not
    assert history == 3 and hint == f"({history} earlier events; --from-start replays them)\n"
    replay = run("watch", parent, "--from-start", "--timeout", "0.3", db=db)
    assert "earlier events" not in replay.stdout  # it replays them instead
    start = json.loads(run("watch", parent, "--json", "--timeout", "0.3", db=db).stdout.splitlines()[0])
    assert start["earlier_events"] == history


@pytest.mark.slow
def test_strict_counts_a_cancelled_child_as_a_failure(db):
    with Jobctl(db) as jc:
        parent = jc.create("p")
        a, b = jc.spawn(parent, count=2)
        jc.set_status([a], "completed")
        jc.set_status([b], "cancelled")
        assert jc.status(parent) == "completed"  # some completed, one cancelled: completed
    assert run("watch", parent, "--exit-status", db=db).returncode == 0
    assert run("watch", parent, "--exit-status", "--strict", db=db).returncode == 1
    assert run("wait", parent, db=db).returncode == 0
    assert run("wait", parent, "--strict", db=db).returncode == 1
    bad = run("watch", parent, "--strict", db=db)
    assert bad.returncode == 2 and "--strict goes with --exit-status" in bad.stderr


@pytest.mark.slow
def test_wait_for_create_follows_a_job_created_after_the_watch_started(db):
    with Jobctl(db) as jc:
        jc.create("something else")  # the database exists; the job does not yet
    proc = subprocess.Popen(
        [JOBCTL, "--db", db, "watch", "later", "--wait-for-create", "--exit-status", "--json", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    missing = run("watch", "later", "--timeout", "0.2", db=db)
    assert missing.returncode == 3  # without the option: not found at once
    with Jobctl(db) as jc:
        jc.create("the later job", id="later")
        kid = jc.spawn("later", count=1)[0]
        jc.set_status([kid], "completed")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["progress_text"] == "0 pending, 0 running, 1 completed, 0 failed"
    never = run("watch", "never", "--wait-for-create", "--timeout", "0.3", db=db)
    assert never.returncode == 124 and never.stderr == "jobctl: job never was not created within the timeout\n"
    both = run("wait", "later", "never", "--wait-for-create", "--timeout", "0.3", db=db)
    assert both.returncode == 124


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_watcher_notices_its_database_deleted_or_replaced(db_path, tmp_path, how):
    with Jobctl(db_path) as jc:
        parent = jc.create("p")
        jc.spawn(parent, count=2)
    if how == "replaced":
        with Jobctl(tmp_path / "other.db") as jc:
            jc.create("another database")
    proc, _ = start_watch(db_path, parent, "--exit-status", "--timeout", 60)
    for suffix in ("-wal", "-shm") if how == "replaced" else ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    if how == "replaced":  # in one step: the watcher never sees the path missing
        os.rename(tmp_path / "other.db", db_path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 5
    assert err == f"jobctl: error: database {db_path} was {how} while being watched\n"
    assert out.splitlines()[-1] == f"{parent} running | 2 pending, 0 running, 0 completed, 0 failed (database unusable)"


@pytest.mark.slow
def test_the_live_view_names_each_job_once(db_path):
    """On a terminal each line of the tail is `HH:MM:SS status JOB old → new`:
    the id once, not `completed P.1 P.1 running → completed`."""
    with Jobctl(db_path) as jc:
        parent = jc.create("p")
        kid = jc.spawn(parent, count=1)[0]
        jc.set_status([kid], "running")
        jc.set_status([kid], "completed", message="done")
    text = on_a_terminal(["watch", parent, "--from-start"], db_path, 120)
    assert f"{kid} running → completed: done" in text, text
    assert f"{kid} {kid}" not in text, text
