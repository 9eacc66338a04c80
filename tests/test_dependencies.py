"""Dependencies between jobs (issue 21): `create`/`spawn`/`run --parent P`
`--after JOB` (and `--after-any JOB`). A waiting job stays pending, claim skips
it until what it waits on completed; one that ends failed or cancelled cancels
it in the same transaction, down chains; a cycle or an unknown job is exit 2
with nothing written. Both stores; real `run --claim` workers racing a chain."""

import subprocess
import threading

import pytest

import jobctl
from conftest import JOBCTL, run, snapshot, tamper, wait_for
from jobctl import Jobctl


def status_events(jc, job_id):
    return [(e["old_status"], e["new_status"], e["message"]) for e in jc.events_of([job_id]) if e["kind"] == "status"]


def test_claim_skips_a_waiting_job_until_what_it_waits_on_completed(jc):
    p = jc.create("build", id="P")
    a, b = jc.spawn(p, count=2)
    c = jc.create("link", parent=p, after=[a, b])
    assert [jc.claim(p), jc.claim(p), jc.claim(p)] == [a, b, None]
    jc.set_status([a], "completed")
    assert jc.claim(p) is None  # b runs still
    assert jc.get(c)["waiting_on"] == [b]
    jc.set_status([b], "completed")
    assert jc.get(c)["waiting_on"] == []
    assert jc.claim(p) == c
    assert jc.verify() == []


def test_a_failed_dependency_cancels_the_chain_in_the_same_transaction(jc):
    p = jc.create("pipeline", id="P")
    (a,) = jc.spawn(p, count=1)
    b = jc.create("b", parent=p, after=[a])
    c = jc.create("c", parent=p, after=[b])
    d = jc.create("d", parent=p, after_any=[b])  # runs whatever b's outcome
    since = jc.events()[-1]["id"]
    jc.set_status([a], "failed")
    assert [(e["job_id"], e["new_status"], e["message"]) for e in jc.events(since=since)] == [
        (a, "failed", None),
        (b, "cancelled", f"dependency {a} failed"),
        (c, "cancelled", f"dependency {b} cancelled"),
    ]
    assert jc.status(d) == "pending" and jc.get(d)["waiting_on"] == []
    assert jc.claim(p) == d
    assert jc.verify() == []


def test_cancelling_a_tree_cancels_what_waits_on_it_elsewhere(jc):
    build = jc.create("build", id="B")
    jc.spawn(build, count=3)
    deploy = jc.create("deploy", id="D")
    (step,) = jc.spawn(deploy, count=1, after=[build])  # across trees
    assert jc.get(step)["waiting_on"] == [build]
    jc.cancel(build)
    assert status_events(jc, step) == [("pending", "cancelled", f"dependency {build} cancelled")]
    assert jc.status(deploy) == "cancelled"
    assert jc.verify() == []


def test_waiting_on_a_job_that_failed_already_cancels_at_once(jc):
    p = jc.create("p", id="P")
    (a,) = jc.spawn(p, count=1)
    jc.set_status([a], "failed")
    b = jc.create("b", parent=p, after=[a])
    assert status_events(jc, b) == [("pending", "cancelled", f"dependency {a} failed")]
    kids = jc.spawn(p, count=2, after_any=[a])  # --after-any: ended is enough
    assert [jc.get(k)["waiting_on"] for k in kids] == [[], []]
    assert jc.verify() == []


def test_starting_a_waiting_job_by_hand_needs_force(db, jc):
    p = jc.create("p", id="P")
    (a,) = jc.spawn(p, count=1)
    b = jc.create("b", parent=p, after=[a])
    before = snapshot(db)
    with pytest.raises(jobctl.Conflict, match=f"job {b} is waiting on {a}: not started"):
        jc.set_status([b], "running")
    assert snapshot(db) == before
    assert jc.set_status([b], "running", force=True) == [b]


def test_retry_needs_the_failed_dependency_retried_too(db, jc):
    p = jc.create("p", id="P")
    (a,) = jc.spawn(p, count=1)
    b = jc.create("b", parent=p, after=[a])
    jc.set_status([a], "failed")
    before = snapshot(db)
    with pytest.raises(jobctl.Conflict, match=f"job {b} waits on {a}, which is failed"):
        jc.retry(b)
    assert snapshot(db) == before
    assert jc.retry(p) == [a, b]  # both at once: b waits on a again
    assert jc.get(b)["waiting_on"] == [a]
    assert jc.claim(p) == a
    assert jc.verify() == []


def test_creating_the_same_id_again_with_other_dependencies_is_a_conflict(jc):
    p = jc.create("p", id="P")
    a, b = jc.spawn(p, count=2)
    assert jc.create("c", parent=p, id="P.c", after=[a]) == "P.c"
    assert jc.create("c", parent=p, id="P.c", after=[a]) == "P.c"  # the same: a no-op
    with pytest.raises(jobctl.Conflict, match="--after"):
        jc.create("c", parent=p, id="P.c", after=[b])


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "x", "--parent", "P", "--after", "P.9"], "--after: job P.9 not found"),
        (["create", "x", "--after", "nope"], "--after: job nope not found"),
        (["create", "x", "--parent", "P", "--after", "P"], "--after P: job P cannot end before P.2 does (a cycle)"),
        (["create", "x", "--parent", "P.1", "--after-any", "P"], "--after P: job P cannot end before P.1.1 does"),
        (["spawn", "P", "--count", "2", "--after", "P"], "--after P: job P cannot end before the new jobs do"),
        (["create", "x", "--parent", "P", "--after", "P.1", "--after-any", "P.1"], "both --after and --after-any"),
        (["create", "x", "--after", "bad id"], "bad job id"),
        (["run", "P.1", "--after", "P", "--", "true"], "--after and --after-any go with --parent P"),
    ],
)
def test_unknown_jobs_and_cycles_are_exit_2_and_write_nothing(db, jc, args, message):
    jc.create("p", id="P")
    jc.spawn("P", count=1)
    before = snapshot(db)
    got = run(*args, db=db)
    assert (got.returncode, got.stdout) == (2, "")
    assert message in got.stderr and got.stderr.count("\n") == 1
    assert snapshot(db) == before


def test_a_cycle_through_a_job_that_waits_on_a_parent(jc):
    p = jc.create("p", id="P")
    (a,) = jc.spawn(p, count=1)
    other = jc.create("other", after=[p])  # other cannot complete before P does
    with pytest.raises(jobctl.UsageError, match=f"--after {other}: job {other} cannot end before"):
        jc.create("b", parent=p, after=[other])


def test_show_tree_and_list_json_say_what_a_job_waits_on(db, jc):
    p = jc.create("p", id="P")
    a, b = jc.spawn(p, count=2)
    c = jc.create("c", parent=p, after=[a], after_any=[b])
    jc.set_status([a], "completed")
    shown = run("show", c, db=db).stdout
    assert f"after: {a} completed, {b} pending (any outcome)\n" in shown
    assert f"waiting on: {b}\n" in shown
    assert f"  {c} pending c [waiting on {b}]\n" in run("tree", p, db=db).stdout
    import json

    rows = {r["id"]: r for r in map(json.loads, run("list", "--json", "--parent", p, db=db).stdout.splitlines())}
    assert rows[c]["after"] == [
        {"id": a, "any_outcome": False, "status": "completed"},
        {"id": b, "any_outcome": True, "status": "pending"},
    ]
    assert rows[c]["waiting_on"] == [b] and rows[a]["waiting_on"] == []


def test_verify_sees_a_dependency_the_events_do_not_record(db, jc):
    p = jc.create("p", id="P")
    a, b = jc.spawn(p, count=2)
    assert jc.verify() == []
    tamper(db, "INSERT INTO dependencies (job_id, after_id, any_outcome) VALUES (?, ?, 0)", (b, a))
    assert jc.verify() == [
        f"job {a}: waited_on is 0, but a job waits on it",
        f"job {b}: after is [({a!r}, 0)], events say []",
    ]
    tamper(db, "UPDATE jobs SET waits = 2 WHERE id = ?", (b,))
    assert f"job {b}: waits is 2, events say 0" in jc.verify()


def test_run_parent_after_waits_then_runs_and_a_failure_cancels_it(db, jc):
    p = jc.create("p", id="P")
    a, b = jc.spawn(p, count=2)
    waiting = [
        subprocess.Popen(
            [JOBCTL, "--db", db, "run", "--parent", p, "--name", name, "--after", after, "--", "echo", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, after in (("ok", a), ("never", b))
    ]
    wait_for(lambda: jc.progress(p)["total_children"] == 4, "both runs' children", jc=jc)
    jc.set_status([a, b], "running")
    jc.set_status([a], "completed")
    jc.set_status([b], "failed")
    (out, err), (out2, err2) = (w.communicate(timeout=60) for w in waiting)
    assert (waiting[0].returncode, out) == (0, "ok\n"), err
    assert waiting[1].returncode == 6 and out2 == ""
    ids = {j["name"]: j["id"] for j in jc.list(parent=p)}
    assert err2 == f"jobctl: error: job {ids['never']} was cancelled while it waited: dependency {b} failed\n"
    events = [(e["job_id"], e["new_status"]) for e in jc.events() if e["kind"] == "status"]
    assert events.index((a, "completed")) < events.index((ids["ok"], "running"))
    assert jc.verify() == []


def test_run_each_after_runs_its_children_once_what_they_wait_on_completed(db, jc):
    """`run --parent P --each --after A`: every child it creates waits on A; the
    commands start only once A completed, and the run's exit is its children's.
    With a failed A they are cancelled, none started (exit 6). A cycle is exit 2
    before anything is written."""
    p = jc.create("p", id="P")
    a, b = jc.spawn(p, count=2)
    each = [
        subprocess.Popen(
            [
                JOBCTL,
                "--db",
                db,
                "run",
                "--parent",
                p,
                "--each",
                "--jobs",
                "2",
                "--output",
                "lines",
                "--after",
                after,
                "--",
                "echo",
                "{}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for after in (a, b)
    ]
    for proc, lines in zip(each, ("x\ny\n", "z\n")):
        proc.stdin.write(lines)
        proc.stdin.close()
        proc.stdin = None  # (communicate below has nothing more to send)
    wait_for(lambda: jc.progress(p)["total_children"] == 5, "both runs' children", jc=jc)
    assert jc.progress(p)["running_children"] == 0  # all waiting
    jc.set_status([a, b], "running")
    jc.set_status([a], "completed")
    jc.set_status([b], "failed")
    (out, err), (out2, err2) = (proc.communicate(timeout=60) for proc in each)
    assert each[0].returncode == 0, err
    kids = {j["name"]: j for j in jc.list(parent=p)}
    assert sorted(line for line in out.splitlines() if line.startswith(f"{p}.")) == [
        f"{kids['x']['id']}: x",
        f"{kids['y']['id']}: y",
    ]
    assert each[1].returncode == 6, err2
    kids = {j["name"]: j for j in jc.list(parent=p)}  # (now final)
    assert [kids[n]["status"] for n in ("x", "y", "z")] == ["completed", "completed", "cancelled"]
    assert kids["z"]["started_at"] is None  # its command never ran
    events = [(e["job_id"], e["new_status"]) for e in jc.events() if e["kind"] == "status"]
    assert events.index((a, "completed")) < events.index((kids["x"]["id"], "running"))
    before = snapshot(db)
    cycle = run("run", "--parent", p, "--each", "--after", p, "--", "true", db=db, input="w\n")
    assert cycle.returncode == 2 and "job P cannot end before the new jobs do" in cycle.stderr
    assert snapshot(db) == before
    assert jc.verify() == []


def test_racing_claim_workers_keep_the_order_of_a_chain(db):
    """Two `run --claim` worker processes of two threads each, on a chain and a
    fan-in: no job starts before every job it waits on has completed (the order
    of commits: event ids), and each runs once."""
    with Jobctl(db) as jc:
        p = jc.create("chain", id="P")
        first = jc.spawn(p, count=3)  # three at once, then a chain below them
        last = first
        chain = []
        for i in range(5):
            last = [jc.create(f"step {i}", parent=p, after=last)]
            chain += last
        fan = jc.spawn(p, count=3, after=last)
        waits = {j["id"]: [d["id"] for d in j["after"]] for j in jc.list(parent=p)}
    workers = [
        subprocess.Popen(
            [JOBCTL, "--db", db, "run", "--claim", p, "--jobs", "2", "--", "sleep", "0.05"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    with Jobctl(db) as jc:
        assert jc.progress(p)["completed_children"] == len(first) + len(chain) + len(fan)
        started, completed = {}, {}
        for e in jc.events():
            if e["kind"] == "status" and e["new_status"] == "running":
                assert e["job_id"] not in started, f"{e['job_id']} ran twice"
                started[e["job_id"]] = e["id"]
            elif e["kind"] == "status" and e["new_status"] == "completed":
                completed[e["job_id"]] = e["id"]
        for job, after in waits.items():
            for dep in after:
                assert completed[dep] < started[job], f"{job} started before {dep} completed"
        assert jc.verify() == []


def test_racing_creations_and_a_failure_leave_nothing_waiting_on_a_failed_job(db):
    """Writers add jobs waiting on X while another fails X: whichever commits
    first, every job waiting on X ends cancelled (none is left pending on a job
    that failed): the creations read X, and the failure reads what waits on X,
    under the same lock."""
    with Jobctl(db) as jc:
        p = jc.create("p", id="P")
        (x,) = jc.spawn(p, count=1)
    go = threading.Barrier(5)
    errors = []

    def add(n):
        try:
            with Jobctl(db) as mine:
                go.wait()
                for i in range(n):
                    mine.create(f"w{i}", parent=p, after=[x])
        except Exception as exc:  # pragma: no cover (the assert below says what)
            errors.append(exc)

    def fail():
        with Jobctl(db) as mine:
            go.wait()
            mine.set_status([x], "failed")

    threads = [threading.Thread(target=add, args=(10,)) for _ in range(4)] + [threading.Thread(target=fail)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with Jobctl(db) as jc:
        kids = [j for j in jc.list(parent=p) if j["id"] != x]
        assert len(kids) == 40
        assert {j["status"] for j in kids} == {"cancelled"}
        assert jc.verify() == []


def test_run_of_a_job_a_dependency_cancelled_is_refused_as_any_final_job(db, jc):
    p = jc.create("p", id="P")
    (a,) = jc.spawn(p, count=1)
    b = jc.create("b", parent=p, after=[a])
    jc.set_status([a], "failed")
    before = snapshot(db)
    got = run("run", b, "--", "true", db=db)
    assert (got.returncode, got.stderr) == (2, f"jobctl: error: job {b} is cancelled: only a pending job can be run\n")
    assert snapshot(db) == before
