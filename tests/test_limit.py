"""A concurrency limit (issue 21): `--max-running N` on a parent. claim skips
its children at the limit, `status set running` past it is exit 4 unless
--force, and real `run --claim`/`--each` processes racing never run more than
N at once (counted from the events, the order of commits). Both stores."""

import os
import subprocess

import pytest

import jobctl
from conftest import JOBCTL, run, snapshot
from jobctl import Jobctl


def most_running_at_once(jc, parent):
    """The most children of `parent` running at once, replaying its children's events in commit order."""
    kids = {j["id"] for j in jc.list(parent=parent)}
    running, most = set(), 0
    for e in jc.events():
        if e["job_id"] in kids and e["kind"] in ("create", "status"):
            (running.add if e["new_status"] == "running" else running.discard)(e["job_id"])
            most = max(most, len(running))
    return most


def test_claim_stops_at_the_limit_and_status_set_needs_force(db, jc):
    p = jc.create("shards", max_running=2)
    kids = jc.spawn(p, count=4)
    assert [jc.claim(p), jc.claim(p)] == kids[:2]
    assert jc.claim(p) is None  # at the limit: nothing claimed, though two are pending
    before = snapshot(db)
    with pytest.raises(jobctl.Conflict) as info:
        jc.set_status([kids[2]], "running")
    assert info.value.exit_code == 4 and "--max-running 2" in str(info.value)
    assert snapshot(db) == before
    jc.set_status([kids[0]], "completed")
    before = snapshot(db)
    with pytest.raises(jobctl.Conflict):  # all or nothing: one within the limit, one past it
        jc.set_status([kids[2], kids[3]], "running")
    assert snapshot(db) == before
    assert jc.claim(p) == kids[2]  # a slot came free
    assert jc.set_status([kids[3]], "running", force=True) == [kids[3]]  # --force goes past it
    assert jc.get(p)["policy"]["max_running"] == 2
    assert jc.verify() == []


def test_policy_set_changes_the_limit(jc, cli):
    p = jc.create("shards")
    jc.spawn(p, count=3)
    r = cli("policy", "set", p, "--max-running", "1")
    assert (r.exit_code, r.output) == (0, "max-running 1\n")
    assert jc.claim(p) is not None and jc.claim(p) is None
    r = cli("policy", "set", p, "--max-running", "none")
    assert (r.exit_code, r.output) == (0, "none\n")
    assert jc.claim(p) is not None
    r = cli("policy", "set", p, "--max-running", "0")
    assert r.exit_code == 2
    assert [e["message"] for e in jc.events(job=p) if e["kind"] == "policy"] == ["max-running 1", "none"]
    assert jc.verify() == []


def test_cli_status_set_past_the_limit_is_exit_4(db):
    p = run("create", "shards", "--max-running", "1", db=db, check=True).stdout.strip()
    a, b = run("spawn", p, "--count", "2", db=db, check=True).stdout.split()
    run("status", "set", a, "running", db=db, check=True)
    before = snapshot(db)
    r = run("claim", p, db=db)
    assert r.returncode == 3 and "as many children as its --max-running allows" in r.stderr
    r = run("status", "set", b, "running", db=db)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "--max-running 1" in r.stderr
    assert snapshot(db) == before
    assert run("status", "set", b, "running", "--force", db=db).returncode == 0


def test_racing_claim_workers_never_pass_the_limit(db):
    with Jobctl(db) as jc:
        p = jc.create("shards", max_running=2)
        jc.spawn(p, count=12)
    # three worker processes of two threads each: six would run at once without the limit
    workers = [
        subprocess.Popen(
            [JOBCTL, "--db", str(db), "run", "--claim", p, "--jobs", "2", "--", "sleep", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    with Jobctl(db) as jc:
        assert jc.progress(p)["completed_children"] == 12
        assert most_running_at_once(jc, p) == 2
        assert jc.verify() == []


def test_racing_each_runs_never_pass_the_limit(db):
    with Jobctl(db) as jc:
        p = jc.create("pages", max_running=2, open=True)
    env = dict(os.environ, JOBCTL_DB=str(db))
    runs = [
        subprocess.Popen(
            [JOBCTL, "run", "--parent", p, "--each", "--jobs", "4", "--", "sleep", "0.{}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    for r in runs:
        r.stdin.write("1\n2\n1\n2\n")
        r.stdin.close()
    for r in runs:
        r.wait(timeout=120)
        assert r.returncode == 0, r.stderr.read()
        r.stdout.close()
        r.stderr.close()
    with Jobctl(db) as jc:
        assert jc.progress(p)["completed_children"] == 8
        assert most_running_at_once(jc, p) == 2
        assert jc.verify() == []
