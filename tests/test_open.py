"""Fan-outs that grow while they run (issue 21): open parents (`create --open`,
`close`, `policy set --open/--closed`), and a parent whose status was derived
final taking a new child. Both stores (the `db`/`jc`/`cli` fixtures); watch and
the issue's script through real `jobctl` subprocesses."""

import json
import os
import subprocess

import pytest

import jobctl
from conftest import JOBCTL, run, snapshot
from jobctl import Jobctl


def status_events(jc, job):
    return [(e["old_status"], e["new_status"], e["message"]) for e in jc.events(job=job) if e["kind"] == "status"]


def test_an_open_parent_runs_whatever_its_children_until_closed(jc):
    p = jc.create("crawl", open=True)
    assert jc.status(p) == "pending"  # no child yet: its own status
    (a,) = jc.spawn(p, count=1)
    assert jc.status(p) == "running"
    jc.set_status([a], "completed")
    assert jc.status(p) == "running"  # open: more may come
    (b,) = jc.spawn(p, count=1)
    jc.set_status([b], "failed")
    assert jc.status(p) == "running"
    assert jc.get(p)["is_open"] == 1
    policy = jc.close_parent(p)
    assert policy["open"] is False
    assert jc.status(p) == "failed"  # derived at once: one failed, none allowed
    assert status_events(jc, p)[-1] == ("running", "failed", "derived from children: closed")
    kinds = [(e["kind"], e["message"]) for e in jc.events(job=p)]
    assert ("policy", "none") in kinds and ("create", "open") in kinds
    assert jc.verify() == []


def test_closing_applies_the_allowance(jc):
    p = jc.create("crawl", open=True, allow_failures="1")
    a, b = jc.spawn(p, count=2)
    jc.set_status([a], "failed")
    jc.set_status([b], "completed")
    assert jc.status(p) == "running"
    jc.set_policy(p, open=False)
    assert jc.status(p) == "completed"
    assert jc.verify() == []


def test_fail_fast_fails_an_open_parent_at_once(jc):
    p = jc.create("crawl", open=True, fail_fast=True)
    a, b, c = jc.spawn(p, count=3)
    jc.set_status([a], "failed")
    assert jc.status(p) == "failed"
    assert [jc.status(k) for k in (b, c)] == ["cancelled", "cancelled"]
    # the last child failing fails it too, with nothing left to cancel
    q = jc.create("crawl 2", open=True, fail_fast=True)
    (d,) = jc.spawn(q, count=1)
    jc.set_status([d], "failed")
    assert jc.status(q) == "failed"
    for parent in (p, q):  # a fail-fast parent that failed takes no new child
        with pytest.raises(jobctl.Conflict):
            jc.spawn(parent, count=1)
    assert jc.verify() == []


def test_a_parent_derived_final_takes_a_new_child_and_runs_again(jc):
    p = jc.create("pipeline")
    lint = jc.create("lint", parent=p)
    jc.set_status([lint], "completed")
    assert jc.status(p) == "completed"
    test = jc.create("test", parent=p)
    assert jc.status(p) == "running"
    assert status_events(jc, p)[-1] == ("completed", "running", f"derived from children: new child {test}")
    jc.set_status([test], "completed")
    assert jc.status(p) == "completed"
    more = jc.spawn(p, count=3)  # a spawn says how many came
    assert status_events(jc, p)[-1] == ("completed", "running", f"derived from children: 3 new children from {more[0]}")
    jc.set_status(more, "failed")
    assert jc.status(p) == "failed"  # derived failed takes one too
    jc.create("fix", parent=p)
    assert jc.status(p) == "running"
    assert jc.verify() == []


@pytest.mark.parametrize("how", ["cancel", "force"])
def test_a_parent_final_by_hand_still_refuses(db, jc, how):
    p = jc.create("pipeline")
    a = jc.create("a", parent=p)
    if how == "cancel":
        jc.cancel(p)
    else:
        jc.set_status([a], "completed")
        jc.set_status([p], "failed", force=True)  # its children say completed
    before = snapshot(db)
    with pytest.raises(jobctl.Conflict) as info:
        jc.create("late", parent=p)
    assert info.value.exit_code == 4 and "not derived from its children" in str(info.value)
    with pytest.raises(jobctl.Conflict):
        jc.set_policy(p, open=True)  # nor may it be opened
    assert snapshot(db) == before


def test_opening_a_derived_final_parent_runs_it_again(jc):
    p = jc.create("pipeline")
    (a,) = jc.spawn(p, count=1)
    jc.set_status([a], "completed")
    assert jc.set_policy(p, open=True)["open"] is True
    assert jc.status(p) == "running"
    assert jc.verify() == []


def test_cli_open_close_and_policy(cli):
    r = cli("create", "crawl", "--open")
    assert r.exit_code == 0, r.output
    p = r.output.strip()
    r = cli("spawn", p, "--count", "1")
    kid = r.output.strip()
    assert cli("status", "set", kid, "completed").exit_code == 0
    assert cli("status", "get", p).output.strip() == "running"
    r = cli("close", p)
    assert (r.exit_code, r.output) == (0, "completed\n")
    r = cli("policy", "set", p, "--open")
    assert (r.exit_code, r.output) == (0, "open\n")
    r = cli("policy", "set", p, "--closed", "--fail-fast")
    assert (r.exit_code, r.output) == (0, "fail-fast\n")
    assert cli("close", "nosuchjob").exit_code == 3


def test_the_issues_script_works_as_written(db):
    """The CI user's script from issue 21, with real `jobctl` processes."""
    env = dict(os.environ, JOBCTL_DB=str(db))
    script = """
    set -e
    P=$(jobctl create pipeline)
    jobctl run --parent "$P" --name lint -- true
    jobctl run --parent "$P" --name test -- true
    jobctl status get "$P"
    """
    path = os.path.dirname(JOBCTL) + os.pathsep + env["PATH"]
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={**env, "PATH": path}, timeout=60)
    assert (r.returncode, r.stdout.splitlines()[-1:]) == (0, ["completed"]), r.stderr
    with Jobctl(db) as jc:
        (p,) = [j["id"] for j in jc.list(top_level=True)]
        assert [j["name"] for j in jc.list(parent=p)] == ["lint", "test"]
        assert jc.verify() == []


def test_watch_exit_status_waits_through_an_open_parent(db):
    with Jobctl(db) as jc:
        p = jc.create("crawl", open=True)
        (a,) = jc.spawn(p, count=1)
    proc = subprocess.Popen(
        [JOBCTL, "--db", str(db), "watch", p, "--json", "--exit-status", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(proc.stdout.readline())["type"] == "start"
        run("status", "set", a, "completed", db=db, check=True)
        # every child is done; the watch is still there to see the next one come
        b = run("spawn", p, "--count", "1", db=db, check=True).stdout.strip()
        seen = []
        while b not in seen:
            line = json.loads(proc.stdout.readline())
            if line["type"] == "event":
                seen.append(line["event"]["job_id"])
        assert proc.poll() is None
        run("status", "set", b, "failed", db=db, check=True)
        run("close", p, db=db, check=True)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err  # failed: derived when it closed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    "command,code,statuses",
    [
        ("true", 0, ["completed", "completed"]),
        ("test {} != b", 1, ["completed", "failed"]),
        ('jobctl cancel "$JOBCTL_JOB_ID" > /dev/null; exec sleep 30', 6, ["cancelled", "cancelled"]),
    ],
)
def test_run_each_ends_with_the_children_it_created(db, command, code, statuses):
    """The parent has another child, pending, that nothing runs: `--each` ends
    with its own two all the same, with their exit code (it used to wait for the
    whole parent, forever)."""
    with Jobctl(db) as jc:
        p = jc.create("crawl", open=True)
        (other,) = jc.spawn(p, count=1)
    path = os.path.dirname(JOBCTL) + os.pathsep + os.environ["PATH"]
    r = run(
        "run", "--parent", p, "--each", "--", "sh", "-c", command, db=db, input="a\nb\n", env={"PATH": path}, timeout=60
    )
    assert r.returncode == code, r.stderr
    with Jobctl(db) as jc:
        kids = [j for j in jc.list(parent=p) if j["id"] != other]
        assert [j["status"] for j in kids] == statuses
        assert (jc.status(other), jc.status(p)) == ("pending", "running")
        assert jc.verify() == []
