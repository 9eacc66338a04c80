"""`jobctl run`, through real subprocesses: one command as one job, fan-out over
inputs, and workers that claim children; exit codes, signals, timeouts,
cancels from elsewhere, output and its cap, and bad input."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import JOBCTL, run, snapshot, wait_for
from jobctl import Jobctl

pytestmark = pytest.mark.slow  # real processes throughout


def start(db, *args, env=None):
    """`jobctl run ...` in the background, its output read line by line."""
    return subprocess.Popen(
        [JOBCTL, "--db", str(db), "run", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
    )


def logs(db, job):
    with Jobctl(db) as jc:
        return [(x["level"], x["text"]) for x in jc.logs(job)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended: only its parent's wait is missing
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


# ------------------------------------------------------------------ one job
def test_the_exit_code_passes_through_and_the_outcome_is_recorded(db):
    with Jobctl(db) as jc:
        ok, bad = jc.create("ok"), jc.create("bad")
    result = run("run", ok, "--", "sh", "-c", 'echo "to stdout"; echo "to stderr" >&2', db=db)
    assert result.returncode == 0
    assert result.stdout == "to stdout\n" and result.stderr == "to stderr\n"  # the CI log looks as without jobctl
    result = run("run", bad, "--", "sh", "-c", "echo working; exit 3", db=db)
    assert result.returncode == 3 and result.stdout == "working\n"
    with Jobctl(db) as jc:
        good, failed = jc.get(ok), jc.get(bad)
        assert jc.verify() == []
    assert good["status"] == "completed" and good["exit_code"] == 0 and good["duration"] >= 0
    assert failed["status"] == "failed" and failed["exit_code"] == 3
    assert logs(db, bad) == [
        ("info", "created (pending)"),
        ("info", "status changed: pending → running: run: sh -c 'echo working; exit 3'"),
        ("info", "working"),
        ("info", "status changed: running → failed: exit code 3"),
    ]
    assert ("warning", "to stderr") in logs(db, ok)
    events = [json.loads(x) for x in run("events", "--job", bad, "--json", db=db).stdout.splitlines()]
    final = [e for e in events if e["kind"] == "status"][-1]
    assert (final["new_status"], final["exit_code"]) == ("failed", 3) and final["duration"] >= 0
    assert all(e["exit_code"] is None for e in events[:-1])  # only the run's end carries an outcome


def test_run_under_a_parent_creates_the_child_and_passes_its_identity(db_path):
    with Jobctl(db_path) as jc:
        parent = jc.create("p")
        first = jc.spawn(parent, count=1)[0]  # still pending: the parent stays open
    result = run(
        "run", "--parent", parent, "--", "sh", "-c", 'echo "$JOBCTL_JOB_ID $JOBCTL_PARENT_ID $JOBCTL_DB"', db=db_path
    )
    assert result.returncode == 0
    assert result.stdout == f"{parent}.2 {parent} {db_path}\n"
    result = run("run", "--parent", parent, "--name", "third", "--id", "three", "--", "true", db=db_path)
    assert result.returncode == 0
    with Jobctl(db_path) as jc:
        assert [(j["id"], j["name"], j["status"]) for j in jc.list(parent=parent)] == [
            (first, "child 1", "pending"),
            (f"{parent}.2", "sh -c 'echo \"$JOBCTL_JOB_ID $JOBCTL_PARENT_ID $JOBCTL_DB\"'", "completed"),
            ("three", "third", "completed"),
        ]


def test_a_missing_command_fails_the_job_like_a_shell(db_path):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    result = run("run", job, "--", "no-such-command-here", db=db_path)
    assert result.returncode == 127
    with Jobctl(db_path) as jc:
        j = jc.get(job)
    assert (j["status"], j["exit_code"]) == ("failed", 127)
    assert logs(db_path, job)[-1] == (
        "info",
        "status changed: running → failed: command not found: no-such-command-here",
    )


def test_a_command_killed_by_a_signal(db_path):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    result = run("run", job, "--", "sh", "-c", "kill -KILL $$", db=db_path)
    assert result.returncode == 137
    assert logs(db_path, job)[-1][1].endswith("running → failed: killed by SIGKILL")


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_jobctl_run_is_passed_on_and_the_job_cancelled(db_path, tmp_path, signum, code):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    seen = tmp_path / "seen"
    proc = start(
        db_path,
        job,
        "--",
        "sh",
        "-c",
        f'trap "echo got >{seen}; exit 9" TERM INT; echo ready; while true; do sleep 0.05; done',
    )
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert seen.read_text() == "got\n"  # the command got the signal
    with Jobctl(db_path) as jc:
        j = jc.get(job)
    assert j["status"] == "cancelled"
    assert logs(db_path, job)[-1][1] == "status changed: running → cancelled: interrupted"


def test_a_timeout_stops_a_command_that_ignores_sigterm_and_its_children(db_path):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    proc = start(
        db_path,
        job,
        "--timeout",
        "1s",
        "--kill-after",
        "0.5s",
        "--",
        "sh",
        "-c",
        'trap "" TERM; sleep 60 & echo $!; wait',
    )
    child = int(proc.stdout.readline())
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 124, err
    assert not alive(child)  # the whole process group was killed
    with Jobctl(db_path) as jc:
        assert jc.get(job)["status"] == "failed"
    assert logs(db_path, job)[-1][1] == "status changed: running → failed: timed out after 1s"


def test_a_cancel_from_elsewhere_stops_the_command(db):
    with Jobctl(db) as jc:
        parent = jc.create("p")
    proc = start(db, "--parent", parent, "--", "sh", "-c", "sleep 60 & echo $!; wait")
    child = int(proc.stdout.readline())
    assert run("cancel", parent, "-m", "stop the pipeline", db=db).returncode == 0
    out, err = proc.communicate(timeout=30)  # noticed through the store's wake-ups, within a second
    assert proc.returncode == 143, err
    assert not alive(child)
    with Jobctl(db) as jc:
        kid = jc.get(f"{parent}.1")
        assert kid["status"] == "cancelled" and kid["exit_code"] == 128 + signal.SIGTERM  # stopped as for a timeout
        assert jc.verify() == []


def test_output_is_capped_and_binary_output_is_stored_escaped(db_path):
    with Jobctl(db_path) as jc:
        job, binary = jc.create("chatty"), jc.create("binary")
    result = run(
        "run", job, "--log-lines", "10", "--", "sh", "-c", "for i in $(seq 0 49); do echo line $i; done", db=db_path
    )
    assert result.returncode == 0
    assert result.stdout.splitlines() == [f"line {i}" for i in range(50)]  # every line still reaches the CI log
    stored = [text for _, text in logs(db_path, job)[2:-1]]
    # the first 10 as they came, a line for the dropped ones, and the last 10
    assert stored == [f"line {i}" for i in range(10)] + ["[jobctl] 30 lines of output dropped (--log-lines 10)"] + [
        f"line {i}" for i in range(40, 50)
    ]
    raw = subprocess.run(
        [JOBCTL, "--db", str(db_path), "run", binary, "--", "printf", r"ok\377\376\000end\n"], capture_output=True
    )
    assert raw.returncode == 0 and raw.stdout == b"ok\xff\xfe\x00end\n"  # passed through untouched
    assert logs(db_path, binary)[2][1] == "ok\\xff\\xfe\\x00end"


def test_heartbeats_are_sent_while_the_command_runs(db_path, tmp_path):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    gate = tmp_path / "gate"
    proc = start(
        db_path, job, "--heartbeat", "0.1", "--", "sh", "-c", f"echo ready; while [ ! -e {gate} ]; do sleep 0.02; done"
    )
    assert proc.stdout.readline() == "ready\n"
    try:
        with Jobctl(db_path) as jc:  # the first heartbeat is due 0.1 s after the start
            waker = jc.waker(0.1)
            deadline = time.monotonic() + 30
            while jc.get(job)["last_heartbeat"] is None:
                assert time.monotonic() < deadline, "no heartbeat while the command ran"
                waker.wait(1)
            waker.close()
            assert jc.status(job) == "running"
    finally:
        gate.touch()
    assert proc.wait(timeout=30) == 0


def test_bad_input_runs_nothing_and_writes_nothing(db, tmp_path):
    with Jobctl(db) as jc:
        parent = jc.create("p")
        kid = jc.spawn(parent, count=1)[0]
        done = jc.create("done")
        jc.set_status([done], "completed")
    marker = tmp_path / "ran"
    touch = ["--", "touch", str(marker)]
    cases = [
        (["run", done, *touch], 2, "only a pending job can be run"),
        (["run", parent, *touch], 2, "has children"),
        (["run", kid], 2, "no command given"),
        (["run", kid, "--timeout", "soon", *touch], 2, "bad duration"),
        (["run", "--each", *touch], 2, "--each goes with --parent"),
        (["run", "nope", *touch], 3, "job nope not found"),
        (["run", kid, "--on-term", "nope", *touch], 2, "--on-term takes requeue or cancel"),
        (["run", kid, "--on-term", "cancel", *touch], 2, "--on-term goes with --claim"),
    ]
    before = snapshot(db)
    for argv, code, text in cases:
        result = run(*argv, db=db)
        assert result.returncode == code, (argv, result.stderr)
        assert result.stderr.count("\n") == 1 and text in result.stderr, (argv, result.stderr)
        assert not marker.exists(), argv
        assert snapshot(db) == before, argv


def test_an_unusable_database_at_the_start_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "dir.db").mkdir()
    result = run("run", "j", "--", "touch", marker, db=tmp_path / "dir.db")
    assert result.returncode == 5 and "is a directory" in result.stderr
    assert not marker.exists()


# ------------------------------------------------------------------ fan-out
def test_each_runs_every_input_once_with_jobs_8(db):
    with Jobctl(db) as jc:
        parent = jc.create("fan-out")
    inputs = "".join(f"item-{i}\n" for i in range(200)) + "\n  \n"  # blank lines are skipped
    result = run(
        "run",
        "--parent",
        parent,
        "--each",
        "--jobs",
        "8",
        "--json",
        "--",
        "sh",
        "-c",
        'test "{}" != item-13',
        db=db,
        input=inputs,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr  # item-13 failed: the parent failed
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert lines[-1]["type"] == "end" and lines[-1]["progress_text"] == "0 pending, 0 running, 199 completed, 1 failed"
    with Jobctl(db) as jc:
        kids = list(jc.list(parent=parent))
        assert [k["name"] for k in kids] == [f"item-{i}" for i in range(200)]
        runs = [e for e in jc.events(job=parent) if e["new_status"] == "running" and e["job_id"] != parent]
        assert sorted(e["job_id"] for e in runs) == sorted(k["id"] for k in kids)  # each exactly once
        assert {k["name"]: k["exit_code"] for k in kids if k["exit_code"]} == {"item-13": 1}
        assert jc.verify() == []


def test_each_prints_child_output_prefixed_and_in_input_order(db_path):
    with Jobctl(db_path) as jc:
        parent = jc.create("p")
    result = run(
        "run",
        "--parent",
        parent,
        "--each",
        "--jobs",
        "3",
        "--output",
        "lines",
        "--keep-order",
        "--",
        "sh",
        "-c",
        "sleep 0.0{}; echo out {}",
        db=db_path,
        input="3\n1\n2\n",
    )
    assert result.returncode == 0, result.stderr
    printed = [x for x in result.stdout.splitlines() if x.startswith(f"{parent}.")]  # not the watch lines
    assert printed == [f"{parent}.1: out 3", f"{parent}.2: out 1", f"{parent}.3: out 2"]


# ------------------------------------------------------------------ workers
def test_workers_racing_on_claim_run_each_child_once(db):
    with Jobctl(db) as jc:
        parent = jc.create("shards")
        jc.spawn(parent, count=30)
    workers = [
        start(db, "--claim", parent, "--jobs", "2", "--", "sh", "-c", 'echo "$JOBCTL_JOB_NAME"') for _ in range(3)
    ]
    outs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [o[1] for o in outs]
    names = sorted(line.split(": ", 1)[1] for out, _ in outs for line in out.splitlines())
    assert names == sorted(f"child {i}" for i in range(1, 31))  # each child's command ran exactly once
    with Jobctl(db) as jc:
        assert jc.progress(parent)["completed_children"] == 30 and jc.verify() == []


def test_a_killed_worker_s_children_are_reaped_and_finished_by_the_others(db, tmp_path):
    with Jobctl(db) as jc:
        parent = jc.create("shards")
        kids = jc.spawn(parent, count=12)
    gate = tmp_path / "gate"
    gate.mkdir()
    # each command waits until its file appears in the gate directory, so the test decides when they end
    cmd = ["--", "sh", "-c", f'echo "$JOBCTL_JOB_ID"; while [ ! -e {gate}/"$JOBCTL_JOB_ID" ]; do sleep 0.02; done']
    victim = start(db, "--claim", parent, "--jobs", "1", "--heartbeat", "0.2", *cmd)
    claimed = victim.stdout.readline().strip()  # the victim is running this child now
    others = [start(db, "--claim", parent, "--jobs", "1", "--heartbeat", "0.2", *cmd) for _ in range(2)]
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    for kid in kids:
        if kid != claimed:
            (gate / kid).touch()
    with Jobctl(db) as jc:  # the killed worker's child stops heartbeating: reap puts it back
        wait_for(lambda: jc.reap(1.0, to="pending", parent=parent), "the killed worker's child to be reaped", jc=jc)
    (gate / claimed).touch()
    outs = [w.communicate(timeout=120) for w in others]
    assert [w.returncode for w in others] == [0, 0], [o[1] for o in outs]
    with Jobctl(db) as jc:
        assert jc.progress(parent)["completed_children"] == 12
        finals = {}
        for e in jc.events(job=parent):
            if e["job_id"] != parent and e["kind"] == "status":
                finals.setdefault(e["job_id"], []).append(e["new_status"])
        assert all(h.count("completed") == 1 and h[-1] == "completed" for h in finals.values())
        assert finals[claimed].count("running") == 2  # claimed twice: the dead worker's, then another's
        assert jc.verify() == []


def test_ctrl_c_on_each_cancels_what_had_not_finished(db_path, tmp_path):
    with Jobctl(db_path) as jc:
        parent = jc.create("p")
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen(
        [
            JOBCTL,
            "--db",
            str(db_path),
            "run",
            "--parent",
            parent,
            "--each",
            "--jobs",
            "2",
            "--json",
            "--",
            "sh",
            "-c",
            f"sleep 60 & echo $! > {pids}/{{}}; wait",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdin.write("a\nb\nc\nd\n")
    proc.stdin.close()
    proc.stdin = None  # (communicate() below would flush it)
    running = set()
    while len(running) < 2:  # both slots busy: two children running, two pending
        e = json.loads(proc.stdout.readline()).get("event") or {}
        if e.get("new_status") == "running" and e["job_id"] != parent:
            running.add(e["job_id"])
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    end = json.loads(out.splitlines()[-1])  # the summary says the real end: cancelled, not still running
    assert end["type"] == "end" and end["status"] == "cancelled" and end["cancelled_children"] == 4, end
    with Jobctl(db_path) as jc:
        kids = list(jc.list(parent=parent))
        assert [k["status"] for k in kids] == ["cancelled"] * 4
        assert jc.status(parent) == "cancelled" and jc.verify() == []
    started = [int(p.read_text()) for p in pids.iterdir()]
    assert len(started) == 2 and not any(alive(pid) for pid in started)  # the running commands were stopped


def test_a_worker_waits_for_children_spawned_after_it_started(db):
    with Jobctl(db) as jc:
        parent = jc.create("spawned later")
    quick = run("run", "--claim", parent, "--", "true", db=db)
    assert quick.returncode == 0  # nothing pending, nothing running: a plain worker stops at once
    worker = start(db, "--claim", parent, "--wait-for-more", "--jobs", "1", "--", "sh", "-c", 'echo "$JOBCTL_JOB_NAME"')
    with Jobctl(db) as jc:
        jc.spawn(parent, names=["one", "two", "three"])
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert sorted(out.split()) == ["one", "three", "two"]
    with Jobctl(db) as jc:
        assert jc.status(parent) == "completed"


def test_a_database_unusable_at_the_end_is_said_in_one_line_exit_5(db_path, tmp_path):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    gate = tmp_path / "gate"
    proc = start(
        db_path,
        job,
        "--",
        "sh",
        "-c",
        f"echo ready; while [ ! -e {gate} ]; do sleep 0.02; done; exit 3",
        env={"JOBCTL_BUSY_TIMEOUT": "1"},
    )
    assert proc.stdout.readline() == "ready\n"
    holder = Jobctl(db_path)
    lock = holder._store.write()
    lock.__enter__()  # another writer holds the lock past the busy timeout
    try:
        gate.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        lock.__exit__(None, None, None)
        holder.close()
    assert proc.returncode == 5
    assert err.splitlines()[-1].startswith(f"jobctl: the outcome of job {job} (exit code 3) could not be recorded:")
    with Jobctl(db_path) as jc:
        assert jc.status(job) == "running"  # left for reap: its heartbeats have stopped


def test_a_command_that_leaves_a_process_behind_does_not_hang_run(db_path):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    result = run("run", job, "--", "sh", "-c", "sleep 60 & echo $!; exit 0", db=db_path, timeout=60)
    assert result.returncode == 0
    assert not alive(int(result.stdout.split()[0]))  # what it left in its process group went with it
    with Jobctl(db_path) as jc:
        assert jc.status(job) == "completed"


def test_run_into_a_pipe_that_closes_early_still_ends_the_job(db_path):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    result = subprocess.run(
        [
            "bash",
            "-c",
            f"{JOBCTL} --db {db_path} run {job} -- sh -c 'for i in $(seq 1 20000); do echo line $i; done' | head -1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout == "line 1\n"
    with Jobctl(db_path) as jc:
        j = jc.get(job)
    assert j["status"] == "completed" and j["exit_code"] == 0  # it kept reading the command's output to the end


# ------------------------------------------------------- retries and fail-fast
COUNTING = 'n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo "try $n"; test $n -ge {}'


def test_retries_re_run_a_failed_command_with_a_doubling_delay(db, tmp_path):
    with Jobctl(db) as jc:
        job = jc.create("flaky")
    result = subprocess.run(
        [
            JOBCTL,
            "--db",
            db,
            "run",
            job,
            "--retries",
            "3",
            "--retry-delay",
            "0.2s",
            "--",
            "sh",
            "-c",
            COUNTING.format(3),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "try 1\ntry 2\ntry 3\n"
    with Jobctl(db) as jc:
        got = jc.get(job)
        events = [e for e in jc.events(job=job) if e["kind"] == "status"]
        assert jc.verify() == []
    assert (got["status"], got["attempt"], got["exit_code"]) == ("completed", 3, 0)
    assert [(e["new_status"], e["attempt"], e["message"].split(": ")[0]) for e in events] == [
        ("running", 1, "run"),
        ("pending", 2, "exit code 1; retrying in 0.2s"),
        ("running", 2, "run"),
        ("pending", 3, "exit code 1; retrying in 0.4s"),
        ("running", 3, "run"),
        ("completed", 3, "exit code 0"),
    ]
    assert [e["exit_code"] for e in events if e["new_status"] != "running"] == [1, 1, 0]
    from datetime import datetime

    waits = [
        (datetime.fromisoformat(b["at"]) - datetime.fromisoformat(a["at"])).total_seconds()
        for a, b in zip(events, events[1:])
        if a["new_status"] == "pending"
    ]
    assert waits[0] >= 0.2 and waits[1] >= 0.4  # the backoff was kept, and doubled


def test_a_job_s_max_attempts_caps_run_s_retries(db, tmp_path):
    with Jobctl(db) as jc:
        job, other = jc.spawn(jc.create("p"), count=2, max_attempts=2)
    result = subprocess.run(
        [JOBCTL, "--db", db, "run", job, "--", "sh", "-c", COUNTING.format(9)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == "try 1\ntry 2\n"  # 2 attempts, no --retries needed
    again = run("retry", job, db=db)
    assert again.returncode == 4 and "--max-attempts 2" in again.stderr
    with Jobctl(db) as jc:
        assert (jc.status(job), jc.get(job)["attempt"]) == ("failed", 2)
    # --retries 0 runs once, whatever the cap
    (tmp_path / "count").unlink()
    result = subprocess.run(
        [JOBCTL, "--db", db, "run", other, "--retries", "0", "--", "sh", "-c", COUNTING.format(9)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == "try 1\n"


def test_fail_fast_stops_the_running_commands_of_the_other_children(db, tmp_path):
    with Jobctl(db) as jc:
        parent = jc.create("shards", fail_fast=True)
    # `bad` fails once both slow ones are running; they would sleep for a minute
    script = (
        "if [ {} = bad ]; then while [ ! -e slow1.pid ] || [ ! -e slow2.pid ]; do sleep 0.05; done; exit 7; fi;"
        " sleep 60 & echo $! > {}.pid; wait"
    )
    proc = subprocess.Popen(
        [JOBCTL, "--db", db, "run", "--parent", parent, "--each", "--jobs", "3", "--", "sh", "-c", script],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate("slow1\nslow2\nbad\n", timeout=45)  # well before the sleeps would end
    assert proc.returncode == 1, err
    pids = [int((tmp_path / f"slow{i}.pid").read_text()) for i in (1, 2)]
    assert not any(alive(pid) for pid in pids)  # their commands were stopped
    with Jobctl(db) as jc:
        kids = {k["name"]: k for k in jc.list(parent=parent)}
        assert {n: k["status"] for n, k in kids.items()} == {
            "slow1": "cancelled",
            "slow2": "cancelled",
            "bad": "failed",
        }
        why = {e["job_id"]: e["message"] for e in jc.events(job=parent) if e["new_status"] == "cancelled"}
        assert set(why.values()) == {f"fail-fast: {kids['bad']['id']} failed"}
        assert jc.status(parent) == "failed" and jc.verify() == []
    assert f"failed: {kids['bad']['id']} bad: exit code 7" in out  # the summary names the failure
    said = sorted(line.split(" after ")[0] for line in err.splitlines())  # one line per child not completed
    assert said == sorted(
        f"jobctl: {kids[n]['id']} {s}"
        for n, s in (("bad", "failed: exit code 7"), ("slow1", "cancelled"), ("slow2", "cancelled"))
    ), err


def test_a_timed_out_command_is_retried_with_a_timeout_of_its_own(db, tmp_path):
    with Jobctl(db) as jc:
        job = jc.create("slow once")
    # the first attempt hangs (and is stopped at the timeout), the second is quick
    script = "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; if [ $n = 0 ]; then sleep 60; fi"
    result = subprocess.run(
        [JOBCTL, "--db", db, "run", job, "--retries", "1", "--timeout", "1s", "--", "sh", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    with Jobctl(db) as jc:
        events = [(e["new_status"], e["message"]) for e in jc.events(job=job) if e["kind"] == "status"]
        assert (jc.status(job), jc.get(job)["attempt"]) == ("completed", 2)
    assert events[1] == ("pending", "timed out after 1s; retrying")


def started_and_backing_off(db):
    """`run JOB --retries 2 --retry-delay 1h -- false`, once it failed and backs off."""
    with Jobctl(db) as jc:
        job = jc.create("flaky")
    proc = start(db, job, "--retries", "2", "--retry-delay", "1h", "--", "false")
    with Jobctl(db) as jc:
        wait_for(
            lambda: jc.status(job) == "pending" and jc.get(job)["attempt"] == 2,
            "the failed attempt 1 to back off into attempt 2",
            jc=jc,
        )
    return job, proc


def test_ctrl_c_during_the_backoff_cancels_the_job(db):
    job, proc = started_and_backing_off(db)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err
    with Jobctl(db) as jc:
        assert jc.status(job) == "cancelled"
        assert [e["message"] for e in jc.events(job=job)][-1] == "interrupted"


def test_retries_count_the_job_s_attempts_whoever_ran_them(db, tmp_path):
    with Jobctl(db) as jc:
        job = jc.create("j")
        jc.set_status([job], "running")
        jc.set_status([job], "failed")
        jc.retry(job)  # attempt 2 now
    result = subprocess.run(
        [JOBCTL, "--db", db, "run", job, "--retries", "2", "--", "sh", "-c", COUNTING.format(9)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == "try 1\ntry 2\n"  # attempts 2 and 3: 3 in all


def test_fail_fast_with_inputs_still_queued_skips_them_cleanly(db_path):
    with Jobctl(db_path) as jc:
        parent = jc.create("p", fail_fast=True)
    result = run(
        "run", "--parent", parent, "--each", "--jobs", "1", "--", "sh", "-c", "exit 1", db=db_path, input="a\nb\nc\nd\n"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Exception" not in result.stderr
    with Jobctl(db_path) as jc:
        assert [k["status"] for k in jc.list(parent=parent)] == ["failed", "cancelled", "cancelled", "cancelled"]
        assert jc.verify() == []


def test_a_retry_started_elsewhere_is_no_failure_of_this_run(db):
    job, proc = started_and_backing_off(db)
    with Jobctl(db) as jc:
        jc.set_status([job], "running", message="another worker")  # (as a peer's claim would, at not_before)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err.splitlines()[-1] == f"jobctl: job {job}: its next attempt was started elsewhere"


def test_a_claimed_job_stopped_before_its_command_started_ends_cancelled(db_path):
    from jobctl.run import Execution, Options, Pool, StopReason

    with Jobctl(db_path) as jc:
        p = jc.create("p")
        (kid,) = jc.spawn(p, count=1)
        assert jc.claim(p) == kid
    pool = Pool(1)
    pool.stop(StopReason.SIGINT)  # Ctrl-C came between the claim and the start
    pool.run(Execution(str(db_path), kid, ["true"], Options(), claimed=True))
    with Jobctl(db_path) as jc:
        assert jc.status(kid) == "cancelled" and jc.events(job=kid)[-1]["message"] == "interrupted"
        assert jc.verify() == []


def test_each_skips_a_child_run_by_someone_else_before_its_turn(db, tmp_path):
    with Jobctl(db) as jc:
        parent = jc.create("p")
    gate, inputs = tmp_path / "go", tmp_path / "inputs"
    inputs.write_text("a\nb\nc\n")
    with open(inputs) as stdin:
        proc = subprocess.Popen(
            [
                JOBCTL,
                "--db",
                db,
                "run",
                "--parent",
                parent,
                "--each",
                "--jobs",
                "1",
                "--",
                "sh",
                "-c",
                f"if [ {{}} = a ]; then while [ ! -e {gate} ]; do sleep 0.05; done; fi",
            ],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    with Jobctl(db) as jc:
        # a runs (and waits); b, c wait their turn
        wait_for(lambda: jc.progress(parent)["running_children"] == 1, "one child running", jc=jc)
        jc.set_status([f"{parent}.2"], "completed", message="done by hand")
    gate.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    with Jobctl(db) as jc:
        assert [k["status"] for k in jc.list(parent=parent)] == ["completed"] * 3
        assert [e["message"] for e in jc.events(job=f"{parent}.2") if e["kind"] == "status"] == ["done by hand"]
        assert jc.verify() == []


def test_a_claimed_child_s_running_event_shows_its_command_as_run(db_path):
    """`run --claim`'s running event has the command with `{}` replaced by the
    child's name, as for `run JOB` and `--each` (it showed `{}` on the first attempt)."""
    with Jobctl(db_path) as jc:
        parent = jc.create("shards")
        kids = jc.spawn(parent, names=["a", "b"])
    worker = start(db_path, "--claim", parent, "--", "echo", "shard {}")
    out = worker.communicate(timeout=120)[0]
    assert sorted(line.split(": ", 1)[1] for line in out.splitlines()) == ["shard a", "shard b"]
    with Jobctl(db_path) as jc:
        running = [e["message"] for kid in kids for e in jc.events(job=kid) if e["new_status"] == "running"]
        assert running == ["run: echo 'shard a'", "run: echo 'shard b'"]


def test_a_worker_that_comes_back_after_its_job_was_reaped_and_rerun_changes_nothing(db_path, tmp_path):
    """Worker A stalls (SIGSTOP: no heartbeats), its child is reaped and run to the
    end by worker B; then A wakes and its command fails. That outcome is of an
    attempt that was taken back: the job stays completed, with B's exit code."""
    with Jobctl(db_path) as jc:
        parent = jc.create("shards")
        (kid,) = jc.spawn(parent, count=1)
    gate = tmp_path / "gate"
    cmd = [
        "--",
        "sh",
        "-c",
        f'echo started; if [ "$WORKER" = A ]; then while [ ! -e {gate} ]; do sleep 0.02; done; exit 1; fi',
    ]
    a = start(db_path, "--claim", parent, "--heartbeat", "0.2", *cmd, env={"WORKER": "A"})
    assert a.stdout.readline().strip() == f"{kid}: started"
    a.send_signal(signal.SIGSTOP)
    try:
        with Jobctl(db_path) as jc:
            reaped = lambda: jc.reap(1.0, to="pending", parent=parent)  # noqa: E731
            wait_for(reaped, "the stopped worker's child to be reaped", jc=jc)
        b = start(db_path, "--claim", parent, *cmd, env={"WORKER": "B"})
        assert b.communicate(timeout=120)[0].strip() == f"{kid}: started" and b.returncode == 0
        gate.touch()
    finally:
        a.send_signal(signal.SIGCONT)
    _, err = a.communicate(timeout=120)
    assert a.returncode == 1  # A's own command failed, and A says so
    assert f"job {kid}: attempt 1 was taken back meanwhile (reaped; now attempt 2)" in err
    with Jobctl(db_path) as jc:
        job = jc.get(kid)
        assert (job["status"], job["exit_code"], job["attempt"]) == ("completed", 0, 2)
        changes = [e["new_status"] for e in jc.events(job=kid) if e["kind"] == "status"]
        assert changes == ["running", "pending", "running", "completed"]
        assert jc.verify() == []


# ------------------------------------------------------- issue 20: under faults
def test_run_under_a_parent_creates_its_child_running_in_one_transaction(db):
    """`run --parent P` creates its child and sets it running in one transaction:
    a claim worker racing on P (here: claiming in a tight loop) never takes it,
    and the child's create and running events share their transaction's time."""
    import threading

    with Jobctl(db) as jc:
        parent = jc.create("p")
        (busy,) = jc.spawn(parent, count=1)
        jc.set_status([busy], "running")  # keeps the parent open, and is nothing to claim
    stop, claimed = threading.Event(), []

    def claimer():
        with Jobctl(db) as jc:
            while not stop.is_set():
                got = jc.claim(parent)
                if got is not None:
                    claimed.append(got)

    thread = threading.Thread(target=claimer)
    thread.start()
    try:
        results = [run("run", "--parent", parent, "--", "true", db=db) for _ in range(5)]
    finally:
        stop.set()
        thread.join()
    assert claimed == [] and [r.returncode for r in results] == [0] * 5, [r.stderr for r in results]
    with Jobctl(db) as jc:
        for kid in (f"{parent}.{i}" for i in range(2, 7)):
            created, running = [e for e in jc.events(job=kid) if e["kind"] in ("create", "status")][:2]
            assert (created["new_status"], running["new_status"]) == ("pending", "running")
            assert created["at"] == running["at"]  # one transaction
        assert jc.verify() == []


def test_an_outcome_not_completed_is_said_in_one_line_on_stderr(db_path):
    """A CI log that says what happened: a failure, a retry, a missing command and
    a timeout each get one line on stderr; --quiet silences them."""
    import re

    with Jobctl(db_path) as jc:
        flaky, missing, slow, quiet = (jc.create(n) for n in ("flaky", "missing", "slow", "quiet"))
    result = run("run", flaky, "--retries", "1", "--retry-delay", "0.1s", "--", "sh", "-c", "exit 3", db=db_path)
    assert result.returncode == 3
    assert re.fullmatch(
        rf"jobctl: {flaky} failed: exit code 3 after \d+\.\d s \(attempt 1/2, retrying in 0.1s\)\n"
        rf"jobctl: {flaky} failed: exit code 3 after \d+\.\d s \(attempt 2/2\)\n",
        result.stderr,
    )
    result = run("run", missing, "--", "no-such-command-here", db=db_path)
    assert result.returncode == 127
    assert re.fullmatch(
        rf"jobctl: {missing} failed: command not found: no-such-command-here after \d+\.\d s"
        r" \(attempt 1\)\n",
        result.stderr,
    )
    result = run("run", slow, "--timeout", "0.5s", "--", "sleep", "60", db=db_path)
    assert result.returncode == 124 and result.stderr == f"jobctl: {slow} failed: timed out after 0.5s (attempt 1)\n"
    result = run("run", quiet, "--quiet", "--retries", "1", "--", "false", db=db_path)
    assert result.returncode == 1 and result.stderr == ""


def test_the_database_given_to_the_command_is_absolute(db, tmp_path):
    """`jobctl --db jobs.db run ...`: the command gets JOBCTL_DB as an absolute
    path (a URL as it is), so a `cd` in it still reaches the same database."""
    with Jobctl(db) as jc:
        parent = jc.create("p")
        (busy,) = jc.spawn(parent, count=1)
        jc.set_status([busy], "running")
    (tmp_path / "sub").mkdir()
    given = os.path.relpath(db, tmp_path) if os.path.exists(db) else db
    result = subprocess.run(
        [
            JOBCTL,
            "--db",
            given,
            "run",
            "--parent",
            parent,
            "--",
            "sh",
            "-c",
            'cd sub && "$JOBCTL" log "$JOBCTL_JOB_ID" hi && echo "$JOBCTL_DB"',
        ],
        cwd=tmp_path,
        env=dict(os.environ, JOBCTL=JOBCTL),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{db}\n" and os.listdir(tmp_path / "sub") == []
    with Jobctl(db) as jc:
        assert ("info", "hi") in [(x["level"], x["text"]) for x in jc.logs(f"{parent}.2")]


def test_output_without_newlines_keeps_memory_flat(db_path, tmp_path):
    """200 MB of output with no newline: jobctl run stays under 50 MB (the peak RSS
    of `jobctl run` and what it waited for, from /usr/bin/time), echoes it all,
    and stores the line cut to 64 KiB with a marker saying how much was cut."""
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    size = 200_000_000
    rss = tmp_path / "rss"
    counted = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            "-o",
            str(rss),
            JOBCTL,
            "--db",
            str(db_path),
            "run",
            job,
            "--",
            "sh",
            "-c",
            f"head -c {size} /dev/zero | tr '\\0' x",
        ],
        capture_output=True,
        timeout=300,
    )
    assert counted.returncode == 0, counted.stderr
    assert len(counted.stdout) == size  # every byte reached the CI log
    peak_mb = int(rss.read_text().split()[-1]) / 1024
    assert peak_mb < 50, peak_mb
    stored = logs(db_path, job)[2][1]
    assert stored == "x" * 65536 + f" [jobctl: {size - 65536:,} bytes of this line cut]"


def test_a_progress_bar_is_echoed_live_and_stored_as_its_last_state(db_path, tmp_path):
    import select

    with Jobctl(db_path) as jc:
        job = jc.create("x")
    gate = tmp_path / "gate"
    proc = subprocess.Popen(
        [
            JOBCTL,
            "--db",
            str(db_path),
            "run",
            job,
            "--",
            "sh",
            "-c",
            f"printf '10%%\\r'; while [ ! -e {gate} ]; do sleep 0.02; done; printf '50%%\\r100%%\\n'",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and os.read(proc.stdout.fileno(), 100) == b"10%\r"  # echoed before any newline
    finally:
        gate.touch()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == b"50%\r100%\n"
    assert [text for _, text in logs(db_path, job)[2:-1]] == ["100%"]  # one line, its last state


LEAVES = (
    "setsid sleep 60 >/dev/null 2>&1 & echo $!; "  # one that leaves the process group and the session
    '(trap "" TERM; exec sleep 61) >/dev/null 2>&1 & echo $!; '
)  # one that ignores SIGTERM


@pytest.mark.parametrize("how", ["normal exit", "timeout"])
def test_no_process_of_the_command_outlives_its_job(db_path, how):
    """What the command started is stopped when its job ends: processes left in its
    group that hold no output, and those that left the group (setsid)."""
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    extra = ["--timeout", "1s", "--kill-after", "0.5s"] if how == "timeout" else []
    proc = start(db_path, job, *extra, "--", "sh", "-c", LEAVES + ("wait" if how == "timeout" else "exit 0"))
    pids = [int(proc.stdout.readline()), int(proc.stdout.readline())]
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == (124 if how == "timeout" else 0), err
    assert [p for p in pids if alive(p)] == []


def test_a_killed_jobctl_run_takes_its_command_with_it(db_path):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    proc = start(db_path, job, "--", "sh", "-c", "sleep 60 & echo $$ $!; " + LEAVES + "wait")
    pids = [*map(int, proc.stdout.readline().split()), int(proc.stdout.readline()), int(proc.stdout.readline())]
    with Jobctl(db_path) as jc:  # past its first moments: its output is stored (the guardian watches it by then)
        wait_for(lambda: len(logs(db_path, job)) >= 5, "five log lines stored", jc=jc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 3  # (the promise is 1 s; a loaded machine gets some slack)
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p for p in pids if alive(p)] == []


@pytest.mark.parametrize("on_term", ["requeue", "cancel"])
def test_sigterm_to_a_claim_worker_gives_its_children_back(db, tmp_path, on_term):
    """A preempted worker (SIGTERM) stops its commands and puts their children back
    to pending, the attempt not counted, for another worker to run; with
    --on-term cancel they end cancelled, as before."""
    with Jobctl(db) as jc:
        parent = jc.create("shards")
        kids = jc.spawn(parent, count=3, max_attempts=1)
    gate = tmp_path / "gate"
    worker = start(
        db,
        "--claim",
        parent,
        "--jobs",
        "2",
        "--on-term",
        on_term,
        "--",
        "sh",
        "-c",
        f'echo "$JOBCTL_JOB_ID"; while [ ! -e {gate} ]; do sleep 0.02; done',
    )
    taken = {worker.stdout.readline().split(": ")[0] for _ in range(2)}
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 143, err
    with Jobctl(db) as jc:
        got = {k: jc.get(k) for k in taken}
        assert jc.verify() == []
    if on_term == "cancel":
        assert [j["status"] for j in got.values()] == ["cancelled"] * 2
        return
    assert [(j["status"], j["attempt"]) for j in got.values()] == [("pending", 1)] * 2
    gate.touch()
    other = run("run", "--claim", parent, "--", "true", db=db)  # another runner takes them
    assert other.returncode == 0, other.stderr
    with Jobctl(db) as jc:
        assert [(jc.status(k), jc.get(k)["attempt"]) for k in kids] == [("completed", 1)] * 3
        assert jc.verify() == []


def test_a_final_write_whose_commit_reply_is_lost_is_not_replayed(pg_url, tmp_path):
    """On PostgreSQL, the COMMIT of run's final write reaches the server but its
    reply is lost (a proxy cuts the connection right after forwarding it): the
    write is not replayed (each output line stored once) and stderr says nothing
    false (no 'taken back'); the retry that write decided runs and completes."""
    import importlib.util
    from urllib.parse import urlsplit

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("tcp_proxy", ROOT / "bench" / "tcp_proxy.py")
    tcp_proxy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tcp_proxy)
    with Jobctl(pg_url) as jc:
        job = jc.create("flaky")
    parts = urlsplit(pg_url)
    gate = tmp_path / "gate"
    script = (
        f"if [ ! -e first ]; then touch first; echo a; echo b; while [ ! -e {gate} ]; do sleep 0.02; done; exit 3; fi"
    )
    with tcp_proxy.Proxy(parts.hostname, parts.port) as proxy:
        user = f"{parts.username}@" if parts.username else ""
        url = parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}").geturl()
        proc = subprocess.Popen(
            [JOBCTL, "--db", url, "run", job, "--retries", "1", "--", "sh", "-c", script],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with Jobctl(pg_url) as jc:  # its output is stored: the next write is the final one
                wait_for(
                    lambda: [t for _, t in logs(pg_url, job)][-2:] == ["a", "b"], "the lines a and b stored", jc=jc
                )
            cut = proxy.cut_after_client_sends(b"; COMMIT")  # a write's COMMIT (a read's goes alone)
        finally:
            gate.touch()
        out, err = proc.communicate(timeout=120)
        assert cut.is_set()
    assert proc.returncode == 0, err
    assert "taken back" not in err and "could not be recorded" not in err, err
    texts = [t for _, t in logs(pg_url, job)]
    assert (texts.count("a"), texts.count("b")) == (1, 1), texts
    with Jobctl(pg_url) as jc:
        assert [e["new_status"] for e in jc.events(job=job) if e["kind"] == "status"] == [
            "running",
            "pending",
            "running",
            "completed",
        ]
        assert jc.verify() == []


def _tcp_proxy():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("tcp_proxy", ROOT / "bench" / "tcp_proxy.py")
    tcp_proxy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tcp_proxy)
    return tcp_proxy


def _through(pg_url, proxy):
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}").geturl()


def _ended(proc):
    """The worker's (returncode, stderr) once it ended by itself (the test fails if it waits on)."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the worker did not end: {err}")
    assert "Traceback" not in err, err
    return proc.returncode, err


def _each_ran_once(pg_url, kids, ran):
    """After the worker: every child completed, its command run exactly once, none left running."""
    assert sorted(ran.read_text().split()) == sorted(kids)
    with Jobctl(pg_url) as jc:
        assert [jc.status(k) for k in kids] == ["completed"] * len(kids)
        assert jc.verify() == []


def test_a_claim_whose_commit_reply_is_lost_runs_its_child_once(pg_url, tmp_path):
    """On PostgreSQL, the COMMIT of `run --claim`'s claim reaches the server but its
    reply is lost (a proxy cuts the connection right after forwarding it): the
    worker finds the child it claimed by its claim's token and runs it, so no child
    is left running without its command, and every command runs once."""
    from urllib.parse import urlsplit

    with Jobctl(pg_url) as jc:
        parent = jc.create("shards")
        kids = jc.spawn(parent, count=3)
    ran = tmp_path / "ran"
    parts = urlsplit(pg_url)
    with _tcp_proxy().Proxy(parts.hostname, parts.port) as proxy:
        cut = proxy.cut_after_client_sends(b"run: sh")  # the first claim's COMMIT batch: its running event
        proc = start(
            _through(pg_url, proxy),
            "--claim",
            parent,
            "--jobs",
            "2",
            "--",
            "sh",
            "-c",
            f'echo "$JOBCTL_JOB_ID" >> {ran}',
        )
        code, err = _ended(proc)
        assert cut.is_set()
    assert code == 0, err
    _each_ran_once(pg_url, kids, ran)


def test_a_claim_still_committing_when_its_connection_drops_is_settled_before_it_is_looked_for(pg_url, tmp_path):
    """The claim's COMMIT batch is still on the server, waiting for the write lock
    (held by another session here), when its connection drops: the worker ends that
    session before it looks for its claim, so the claim is rolled back rather than
    committed behind the worker's back after the look found nothing; every
    command runs once, none is left running."""
    from urllib.parse import urlsplit

    from conftest import connect_to

    with Jobctl(pg_url) as jc:
        parent = jc.create("shards")
        kids = jc.spawn(parent, count=2)
        key = jc._store.lock_key
    ran = tmp_path / "ran"
    holder = connect_to(pg_url)
    holder.autocommit = True
    lock = holder.cursor()
    lock.execute("SELECT pg_advisory_lock(%s)", (key,))

    def waiting_ports():  # the server ports of the sessions waiting for a lock (the write lock, or a row's)
        lock.execute(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted"
        )
        return {port for (port,) in lock.fetchall()}

    parts = urlsplit(pg_url)
    try:
        with _tcp_proxy().Proxy(parts.hostname, parts.port) as proxy:
            cut = proxy.cut_after_client_sends(b"run: sh")
            proc = start(
                _through(pg_url, proxy),
                "--claim",
                parent,
                "--jobs",
                "1",
                "--",
                "sh",
                "-c",
                f'echo "$JOBCTL_JOB_ID" >> {ran}',
            )
            try:
                # the worker has looked for its cut claim and claims again, on a new connection
                wait_for(lambda: cut.is_set() and waiting_ports() - {cut.port}, "the worker's next claim to wait")
            finally:
                lock.execute("SELECT pg_advisory_unlock(%s)", (key,))
            code, err = _ended(proc)
    finally:
        holder.close()
    assert code == 0, err
    _each_ran_once(pg_url, kids, ran)


def test_a_claim_whose_connection_drops_after_its_commit_is_found_by_its_token(jc, monkeypatch):
    """Jobctl.claim (both stores): the store commits the claim, then reports the
    connection lost (store.Lost, as PostgreSQL does when the reply is lost): the
    claim returns the child it claimed, set running once, not a second one."""
    from contextlib import contextmanager

    from jobctl.store.base import Lost

    parent = jc.create("p")
    first, second = jc.spawn(parent, count=2)
    store, real = jc._store, jc._store.write

    @contextmanager
    def lost_reply():
        with real() as s:
            yield s
        monkeypatch.setattr(store, "write", real)  # (once)
        raise Lost("lost the connection (its reply)")

    monkeypatch.setattr(store, "write", lost_reply)
    assert jc.claim(parent, fields={"host": "h", "pid": 1}) == first
    assert (jc.status(first), jc.status(second)) == ("running", "pending")
    assert [e["new_status"] for e in jc.events(job=first) if e["kind"] == "status"] == ["running"]
    assert jc.ran_on(first) == {"host": "h", "pid": 1}  # (the token is no place)
    assert jc.verify() == []


def test_a_claimed_child_whose_row_cannot_be_read_goes_back_to_pending(db_path, tmp_path, monkeypatch):
    """`run --claim` (in-process): a child is claimed, then reading it fails (the
    database unusable past its timeouts, injected): the worker gives it back to
    pending, its attempt not counted, and ends with the error (exit 5) saying so;
    the command never ran."""
    from jobctl import DatabaseUnusable, model
    from jobctl.run.attempt import Options
    from jobctl.run.pool import run_claim

    with Jobctl(db_path) as jc:
        parent = jc.create("p")
        (kid,) = jc.spawn(parent, count=1)
    real = Jobctl.get

    def get(self, job_id, *args, **kwargs):
        if job_id == kid:
            raise DatabaseUnusable("the database is unreachable (injected)")
        return real(self, job_id, *args, **kwargs)

    monkeypatch.setattr(Jobctl, "get", get)
    ran = tmp_path / "ran"
    with pytest.raises(DatabaseUnusable) as info:
        run_claim(str(db_path), parent, ["touch", str(ran)], Options(), jobs=1, wait_for_more=False)
    monkeypatch.undo()
    assert str(info.value).endswith(f"job {kid} was claimed, its command not started: given back to pending")
    assert info.value.exit_code == 5 and not ran.exists()
    with Jobctl(db_path) as jc:
        assert (jc.status(kid), jc.get(kid)["attempt"]) == ("pending", 1)
        assert [e["message"] for e in jc.events(job=kid) if e["kind"] == "status"][-1] == model.UNSTARTED
        assert jc.verify() == []


def test_the_running_event_says_where_it_ran(db):
    """The running event of `run` (a child it creates, and one a worker claims)
    records the host, jobctl run's pid and the CI job; `show` and the report say it."""
    import socket

    with Jobctl(db) as jc:
        parent = jc.create("p")
        (pending,) = jc.spawn(parent, count=1)
    ci = {"GITHUB_RUN_ID": "99", "GITHUB_JOB": "test", "CI_JOB_ID": "", "BUILDKITE_JOB_ID": ""}  # empty: not given
    owned = run("run", "--parent", parent, "--", "sh", "-c", "echo $PPID; exit 3", db=db, env=ci)
    claimed = run(
        "run", "--claim", parent, "--jobs", "1", "--", "sh", "-c", "echo $PPID", db=db, env={"BUILDKITE_JOB_ID": "bk-1"}
    )
    assert (owned.returncode, claimed.returncode) == (3, 0), owned.stderr + claimed.stderr
    host = socket.gethostname()
    shown = json.loads(run("show", f"{parent}.2", "--json", db=db).stdout)
    assert shown["ran_on"] == {"host": host, "pid": int(owned.stdout), "GITHUB_JOB": "test", "GITHUB_RUN_ID": "99"}
    shown = json.loads(run("show", pending, "--json", db=db).stdout)
    assert shown["ran_on"] == {"host": host, "pid": int(claimed.stdout), "BUILDKITE_JOB_ID": "bk-1"}
    text = run("show", f"{parent}.2", db=db).stdout
    assert f"ran on: {host} (pid {int(owned.stdout)}), GITHUB_JOB test, GITHUB_RUN_ID 99\n" in text
    report = run("report", parent, db=db).stdout
    assert f"(ran on {host} (pid {int(owned.stdout)}), GITHUB_JOB test, GITHUB_RUN_ID 99)" in report


def test_a_finish_with_the_same_token_is_written_once(jc):
    """Jobctl.finish with a token is idempotent: run's second try of a final write
    whose COMMIT went through (its reply lost) changes nothing (both stores)."""
    (kid,) = jc.spawn(jc.create("p"), count=1, max_attempts=2)
    jc.set_status([kid], "running")
    args = dict(message="exit code 1", exit_code=1, duration=0.5, lines=[("info", "out")], retry_in=0, attempt=1)
    assert jc.finish(kid, "failed", token="t1", **args) == "pending"
    before = jc.events(job=kid)
    assert jc.finish(kid, "failed", token="t1", **args) == "pending"  # found: not written again
    assert jc.events(job=kid) == before and jc.get(kid)["attempt"] == 2
    assert [x["text"] for x in jc.logs(kid)].count("out") == 1
    assert jc.verify() == []
