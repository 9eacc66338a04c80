"""Failure policies and capped retries, end to end on both stores (the `db`
fixture): fail-fast, allowed failures, `policy set`, the attempt counter,
retry at the cap, reap at the cap, and claim's backoff. The rules themselves
are tabled in tests/test_model.py; here the write path applies them, in one
transaction, with their events, and `verify` replays them."""

import json

import pytest

from conftest import run, snapshot, tamper
from jobctl import Conflict, UsageError


def statuses(jc, parent):
    return {k["id"]: k["status"] for k in jc.list(parent=parent)}


def changes_since(jc, since, job=None):
    return [
        (e["job_id"], e["old_status"], e["new_status"], e["message"])
        for e in jc.events(job=job, since=since)
        if e["kind"] == "status"
    ]


# ------------------------------------------------------------------ fail-fast
def test_the_first_failed_child_fails_the_parent_and_cancels_the_rest_in_one_transaction(jc):
    p = jc.create("shards", fail_fast=True)
    kids = jc.spawn(p, count=5)
    jc.set_status(kids[:2], "running")
    jc.set_status([kids[2]], "completed")
    since = jc.events()[-1]["id"]
    jc.set_status([kids[0]], "failed", message="exit code 2")
    assert jc.status(p) == "failed"
    assert statuses(jc, p) == {
        kids[0]: "failed",
        kids[1]: "cancelled",
        kids[2]: "completed",
        kids[3]: "cancelled",
        kids[4]: "cancelled",
    }
    got = changes_since(jc, since)
    why = f"fail-fast: {kids[0]} failed"
    # the failure first, then each unfinished child with its own event, the parent last
    assert got[0] == (kids[0], "running", "failed", "exit code 2")
    assert sorted(got[1:4]) == sorted(
        [
            (kids[1], "running", "cancelled", why),
            (kids[3], "pending", "cancelled", why),
            (kids[4], "pending", "cancelled", why),
        ]
    )
    assert got[4:] == [(p, "running", "failed", why)]
    assert len({e["id"] for e in jc.events(since=since)}) == 5
    assert jc.progress(p)["progress_text"] == "0 pending, 0 running, 1 completed, 1 failed, 3 cancelled"
    assert jc.verify() == []


def test_fail_fast_nests_a_failed_sub_parent_is_one_failed_child(jc):
    root = jc.create("pipeline", fail_fast=True)
    build, test, deploy = jc.spawn(root, names=["build", "test", "deploy"])
    shards = jc.spawn(test, count=3)  # test has no policy of its own: it waits for its shards
    steps = jc.spawn(deploy, count=2)
    jc.set_status([build], "completed")
    jc.set_status(shards + steps[:1], "running")
    jc.set_status([shards[0]], "failed")
    assert jc.status(test) == "running" and jc.status(root) == "running"  # test has shards still running
    jc.set_status(shards[1:], "completed")
    # now test is failed: one failed child of root, which cancels deploy and everything below it
    assert (jc.status(test), jc.status(root)) == ("failed", "failed")
    assert {s: jc.status(s) for s in [deploy, *steps]} == dict.fromkeys([deploy, *steps], "cancelled")
    assert [e["message"] for e in jc.events(job=steps[0]) if e["new_status"] == "cancelled"] == [
        f"fail-fast: {test} failed"
    ]
    assert jc.verify() == []


def test_fail_fast_with_an_allowance_goes_on_until_one_more_fails(jc):
    p = jc.create("p", fail_fast=True, allow_failures="1")
    kids = jc.spawn(p, count=4)
    jc.set_status(kids, "running")
    jc.set_status([kids[0]], "failed")
    assert jc.status(p) == "running" and statuses(jc, p)[kids[1]] == "running"
    jc.set_status([kids[1]], "failed")
    assert jc.status(p) == "failed"
    assert sorted(statuses(jc, p).values()) == ["cancelled", "cancelled", "failed", "failed"]


def test_retry_after_fail_fast_runs_the_cancelled_children_again(jc):
    p = jc.create("p", fail_fast=True, max_attempts=2)
    kids = jc.spawn(p, count=3)
    jc.set_status([kids[0]], "running")
    jc.set_status([kids[0]], "failed")
    assert jc.status(p) == "failed"
    assert sorted(jc.retry(p)) == sorted(kids)
    assert jc.status(p) == "running"
    # the failed child starts its 2nd attempt; those cancelled before they started keep their 1st
    assert [jc.get(k)["attempt"] for k in kids] == [2, 1, 1]
    jc.set_status(kids, "running")
    jc.set_status(kids, "completed")
    assert jc.status(p) == "completed" and jc.verify() == []


def test_a_cancel_of_a_fail_fast_parent_is_a_cancel(jc):
    p = jc.create("p", fail_fast=True)
    kids = jc.spawn(p, count=2)
    jc.cancel(p)
    assert jc.status(p) == "cancelled" and statuses(jc, p) == dict.fromkeys(kids, "cancelled")
    assert jc.verify() == []


# ------------------------------------------------------------ allowed failures
@pytest.mark.parametrize(
    "allow,failed,expected",
    [
        ("2", 2, "completed"),
        ("2", 3, "failed"),
        ("5%", 5, "completed"),
        ("5%", 6, "failed"),  # 5% of 108 = 5
    ],
)
def test_allowed_failures_at_the_boundary(jc, allow, failed, expected):
    p = jc.create("pages", allow_failures=allow)
    kids = jc.spawn(p, count=108)
    jc.set_status(kids, "running")
    jc.set_status(kids[:failed], "failed")
    assert jc.status(p) == "running"  # it waits for every child
    jc.set_status(kids[failed:], "completed")
    job = jc.get(p)
    assert job["status"] == expected
    assert job["progress"]["progress_text"] == f"0 pending, 0 running, {108 - failed} completed, {failed} failed"
    assert job["policy"]["allowed_failures"] == (2 if allow == "2" else 5)
    assert job["policy"]["allowance_used"] is (expected == "completed")
    last = [e for e in jc.events(job=p) if e["job_id"] == p][-1]
    within = "within" if expected == "completed" else "more than"
    assert (
        last["message"] == f"derived from children: {failed} failed, {within} --allow-failures {allow}"
        f" ({job['policy']['allowed_failures']} allowed)"
    )
    assert jc.verify() == []


def test_cancelled_children_are_never_allowed_failures(jc):
    p = jc.create("p", allow_failures="3")
    kids = jc.spawn(p, count=3)
    jc.set_status([kids[0]], "failed")
    jc.set_status(kids[1:], "cancelled")
    assert jc.status(p) == "cancelled"  # nothing completed: not a success thanks to the allowance
    assert jc.get(p)["policy"]["allowance_used"] is False


# ------------------------------------------------------------------ policy set
def test_policy_set_is_an_event_and_the_status_follows_at_once(jc):
    p = jc.create("p")
    kids = jc.spawn(p, count=4)
    jc.set_status([kids[0]], "failed")
    since = jc.events()[-1]["id"]
    assert jc.set_policy(p, fail_fast=True) == {
        "fail_fast": True,
        "allow_failures": None,
        "max_attempts": None,
        "open": False,
        "max_running": None,
    }
    events = jc.events(since=since)
    assert (events[0]["kind"], events[0]["job_id"], events[0]["message"]) == ("policy", p, "fail-fast")
    assert jc.status(p) == "failed"
    assert [e["message"] for e in events[1:]] == [f"fail-fast: {kids[0]} failed"] * 4  # 3 children, then p
    # the same policy again: no event
    n = len(jc.events())
    jc.set_policy(p, fail_fast=True)
    assert len(jc.events()) == n
    # an allowance that covers the failure: the parent's status is derived again
    jc.set_policy(p, allow_failures="1")
    assert jc.status(p) == "cancelled"  # 1 failed (allowed), 3 cancelled, none completed
    assert jc.verify() == []


def test_policy_set_refuses_bad_input_and_changes_nothing(db, jc):
    p = jc.create("p")
    before = snapshot(db)
    with pytest.raises(UsageError, match="no policy given"):
        jc.set_policy(p)
    with pytest.raises(UsageError, match="--allow-failures"):
        jc.set_policy(p, allow_failures="lots")
    with pytest.raises(UsageError, match="--max-attempts"):
        jc.set_policy(p, max_attempts=0)
    for args, code in [
        (["policy", "set", p], 2),
        (["policy", "set", p, "--allow-failures", "101%"], 2),
        (["policy", "set", p, "--max-attempts", "three"], 2),
        (["policy", "set", "nope", "--fail-fast"], 3),
    ]:
        result = run(*args, db=db)
        assert result.returncode == code, result.stderr
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("jobctl: error: ")
    assert snapshot(db) == before


def test_the_cli_sets_shows_and_prints_the_policy(db):
    p = run(
        "create", "pipe", "--fail-fast", "--allow-failures", "2.50%", "--max-attempts", "3", db=db, check=True
    ).stdout.strip()
    shown = json.loads(run("show", p, "--json", db=db, check=True).stdout)
    assert (shown["fail_fast"], shown["allow_failures"], shown["max_attempts"], shown["attempt"]) == (
        True,
        "2.5%",
        3,
        1,
    )
    assert shown["policy"] == {
        "fail_fast": True,
        "allow_failures": "2.5%",
        "allowed_failures": 0,
        "allowance_used": False,
        "max_attempts": 3,
        "open": False,
        "max_running": None,
    }
    kid = run("spawn", p, "--count", "1", db=db, check=True).stdout.strip()
    assert json.loads(run("show", kid, "--json", db=db).stdout)["max_attempts"] == 3  # the parent's cap
    result = run("policy", "set", p, "--no-fail-fast", "--allow-failures", "none", "--max-attempts", "none", db=db)
    assert (result.returncode, result.stdout) == (0, "none\n")
    result = run("policy", "set", p, "--allow-failures", "10%", db=db)
    assert result.stdout == "allow-failures 10%\n"
    plain = run("show", p, db=db).stdout
    assert "policy: allow-failures 10% (0 allowed)\n" in plain
    events = run("events", "--job", p, db=db).stdout.splitlines()
    assert events[-1].endswith(f"{p} policy set: allow-failures 10%")
    assert [json.loads(x)["kind"] for x in run("events", "--job", p, "--json", db=db).stdout.splitlines()][
        -1
    ] == "policy"
    # the same id again with another policy is a conflict, without one a no-op
    assert run("create", "pipe", "--id", "x1", "--max-attempts", "2", db=db).returncode == 0
    assert run("create", "pipe", "--id", "x1", db=db).returncode == 0
    again = run("create", "pipe", "--id", "x1", "--max-attempts", "3", db=db)
    assert again.returncode == 4 and "different max_attempts" in again.stderr


# -------------------------------------------------------------------- attempts
def test_the_attempt_counter_is_in_events_show_json_and_watch_lines(db, jc):
    p = jc.create("p")
    (kid,) = jc.spawn(p, count=1, max_attempts=3)
    for _ in range(2):
        jc.set_status([kid], "running")
        jc.set_status([kid], "failed", message="exit code 1")
        jc.retry(kid)
    assert jc.get(kid)["attempt"] == 3
    attempts = [(e["new_status"], e["attempt"], e["max_attempts"]) for e in jc.events(job=kid)]
    assert attempts == [
        ("pending", 1, 3),
        ("running", 1, 3),
        ("failed", 1, 3),
        ("pending", 2, 3),
        ("running", 2, 3),
        ("failed", 2, 3),
        ("pending", 3, 3),
    ]
    lines = run("watch", p, "--from-start", "--timeout", "0", db=db).stdout.splitlines()
    assert any(
        line.endswith(f"{kid} failed → pending (attempt 3/3): retry | 1 pending, 0 running, 0 completed, 0 failed")
        for line in lines[1:]
    ), lines
    assert any(f"{kid} running → failed (attempt 1/3): exit code 1 |" in line for line in lines), lines
    assert [json.loads(x)["attempt"] for x in run("events", "--job", kid, "--json", db=db).stdout.splitlines()] == [
        1,
        1,
        1,
        2,
        2,
        2,
        3,
    ]
    assert "attempt: 3\nmax_attempts: 3\n" in run("show", kid, db=db).stdout


def test_retry_at_the_cap_is_refused_with_exit_4_naming_the_cap(db, jc):
    (kid,) = jc.spawn(jc.create("p"), count=1, max_attempts=1)
    jc.set_status([kid], "running")
    jc.set_status([kid], "failed")
    before = snapshot(db)
    with pytest.raises(Conflict, match=r"used all 1 of its attempts \(--max-attempts 1\)"):
        jc.retry(kid)
    result = run("retry", kid, db=db)
    assert result.returncode == 4 and "--max-attempts 1" in result.stderr and len(result.stderr.splitlines()) == 1
    assert snapshot(db) == before


def test_retry_failed_children_skips_those_at_the_cap_and_says_so(db, jc):
    p = jc.create("p")
    capped = jc.spawn(p, count=2, max_attempts=1)
    free = jc.spawn(p, count=1)
    jc.set_status(capped + free, "running")
    jc.set_status(capped + free, "failed")
    result = run("retry", p, "--failed-children", db=db)
    assert result.returncode == 0
    assert result.stdout.split() == free
    assert result.stderr == "jobctl: skipped 2 jobs that used all their attempts (--max-attempts)\n"
    jc.set_status(free, "running")
    jc.set_status(free, "failed")
    jc.set_policy(free[0], max_attempts=2)
    before = snapshot(db)
    result = run("retry", p, "--failed-children", db=db)  # nothing has attempts left
    assert result.returncode == 4 and "none retried: 3" in result.stderr
    assert snapshot(db) == before


def test_reap_to_pending_at_the_cap_fails_the_job(jc):
    p = jc.create("p")
    capped, free = jc.spawn(p, count=1, max_attempts=1) + jc.spawn(p, count=1)
    jc.set_status([capped, free], "running")
    assert jc.reap(1e-6, to="pending") == [capped, free]
    assert (jc.status(capped), jc.status(free)) == ("failed", "pending")
    assert jc.get(free)["attempt"] == 2
    assert [e["message"] for e in jc.events(job=capped)][-1] == "heartbeat lost; no attempts left (1/1)"
    assert jc.verify() == []


def test_claim_does_not_take_a_child_before_its_backoff_ends(db, jc):
    p = jc.create("p")
    (kid,) = jc.spawn(p, count=1)
    tamper(db, "UPDATE jobs SET not_before = ? WHERE id = ?", ("2999-01-01T00:00:00.000000Z", kid))
    assert jc.claim(p) is None
    assert run("claim", p, db=db).returncode == 3
    tamper(db, "UPDATE jobs SET not_before = ? WHERE id = ?", ("2000-01-01T00:00:00.000000Z", kid))
    assert jc.claim(p) == kid
    assert jc.get(kid)["not_before"] is None  # running ends the backoff


def test_the_retry_delay_doubles_per_attempt_up_to_an_hour():
    """`run --retries N --retry-delay D` waits D after the first failed attempt, then
    doubles it per attempt, at most an hour (or D itself, if that is longer)."""
    from jobctl.run import backoff

    assert [backoff(5.0, attempt) for attempt in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert backoff(5.0, 5000) == 3600.0  # capped, and no overflow for a huge attempt number
    assert backoff(7200.0, 3) == 7200.0  # a delay longer than an hour is kept as given
    assert backoff(0.0, 2000) == 0.0


def test_a_run_outcome_with_attempts_left_goes_back_to_pending_with_a_backoff(jc):
    (kid,) = jc.spawn(jc.create("p"), count=1, max_attempts=2)
    jc.set_status([kid], "running")
    assert jc.finish(kid, "failed", message="exit code 1", exit_code=1, duration=0.5, retry_in=60) == "pending"
    assert jc.events(job=kid)[-1]["message"] == "exit code 1; retrying in 1m"
    job = jc.get(kid)
    assert job["attempt"] == 2 and job["not_before"] > job["updated_at"]
    assert jc.claim(job["parent_id"]) is None  # backing off
    jc.set_status([kid], "running")
    # attempt 2 of 2: a retry is out of the cap, so the outcome is a failure, and says no more
    assert jc.finish(kid, "failed", message="exit code 1", exit_code=1, duration=0.1, retry_in=0) == "failed"
    assert jc.events(job=kid)[-1]["message"] == "exit code 1"
    assert jc.verify() == []


# ------------------------------------- several jobs in one change, by-hand statuses
def test_a_change_of_several_children_applies_to_all_before_fail_fast_settles(jc):
    p = jc.create("p", fail_fast=True)
    kids = jc.spawn(p, count=4)
    since = jc.events()[-1]["id"]
    assert jc.set_status(kids[:2], "failed") == kids[:2]  # not refused because the first cancelled the second
    assert statuses(jc, p) == {kids[0]: "failed", kids[1]: "failed", kids[2]: "cancelled", kids[3]: "cancelled"}
    got = changes_since(jc, since)
    assert [g[0] for g in got[:2]] == kids[:2] and got[-1][:3] == (p, "running", "failed")
    assert {g[3] for g in got[2:]} == {f"fail-fast: {kids[0]} failed"}
    assert jc.verify() == []


def test_reap_under_a_fail_fast_parent_reaps_first_then_cancels_the_rest(jc):
    p = jc.create("p", fail_fast=True)
    capped = jc.spawn(p, count=1, max_attempts=1)[0]
    others = jc.spawn(p, count=2, max_attempts=5)
    jc.set_status([capped, others[0]], "running")
    since = jc.events()[-1]["id"]
    assert jc.reap(1e-6, to="pending") == [capped, others[0]]
    got = changes_since(jc, since)
    # the capped one fails (no attempt left), the other goes back to pending; then the cascade
    assert got[0] == (capped, "running", "failed", "heartbeat lost; no attempts left (1/1)")
    assert got[1] == (others[0], "running", "pending", "heartbeat lost")
    assert sorted(g[:3] for g in got[2:4]) == [(others[0], "pending", "cancelled"), (others[1], "pending", "cancelled")]
    assert got[4][:3] == (p, "running", "failed") and len(got) == 5  # nothing changes a final status after
    assert jc.verify() == []


def test_policy_set_leaves_a_status_set_by_hand_alone(jc):
    p = jc.create("p")
    kids = jc.spawn(p, count=3)
    jc.set_status([kids[0]], "completed")
    jc.cancel(p)
    jc.set_policy(p, max_attempts=3)
    assert jc.status(p) == "cancelled"  # its children would say completed: it was cancelled by hand
    q = jc.create("q")
    kids = jc.spawn(q, count=3)
    jc.set_status(kids[:2], "completed")
    jc.set_status(kids[2:], "failed")
    assert jc.status(q) == "failed"
    jc.set_policy(q, allow_failures="1")  # a derived status follows the new allowance: on call, "that one is fine"
    assert jc.status(q) == "completed" and jc.get(q)["policy"]["allowance_used"] is True
    assert jc.verify() == []


def test_a_child_created_under_a_capped_parent_gets_its_cap(jc):
    p = jc.create("p", max_attempts=4)
    assert jc.get(jc.create("one", parent=p))["max_attempts"] == 4
    assert jc.get(jc.create("own", parent=p, max_attempts=2))["max_attempts"] == 2


def test_claim_says_when_the_next_retry_is_due(db, jc):
    p = jc.create("p")
    (kid,) = jc.spawn(p, count=1, max_attempts=3)
    jc.set_status([kid], "running")
    jc.finish(kid, "failed", message="exit code 1", exit_code=1, duration=0.1, retry_in=3600)
    result = run("claim", p, db=db)
    due = jc.get(kid)["not_before"]
    assert result.returncode == 3
    assert result.stderr == f"jobctl: error: job {p} has no pending child ready: the next retry is due at {due}\n"


def test_big_changes_cross_the_store_s_chunks_and_fail_fast_settles_set_based(jc):
    """More ids than one statement takes (the store reads and writes 500 at a time),
    and a fail-fast cascade over a big subtree, done in SQL: the same result as
    job by job, verify clean."""
    p = jc.create("p", fail_fast=True)
    kids = jc.spawn(p, count=1_200)
    grand = jc.spawn(kids[-1], count=700)  # unfinished below an unfinished child: cancelled too
    assert jc.set_status(kids[:1_100], "running") == kids[:1_100]
    assert jc.set_status(kids[:600], "completed") == kids[:600]
    since = jc.events()[-1]["id"]
    jc.set_status([kids[700]], "failed", message="boom")
    got = changes_since(jc, since)
    assert got[0] == (kids[700], "running", "failed", "boom")
    assert len(got) == 1 + (1_200 - 600 - 1) + 700 + 1 and got[-1][:3] == (p, "running", "failed")
    assert {g[3] for g in got[1:]} == {f"fail-fast: {kids[700]} failed"}
    assert [g[0] for g in got[1:701]] == grand[::-1]  # deepest first, newest first
    assert jc.progress(p)["progress_text"] == "0 pending, 0 running, 600 completed, 1 failed, 599 cancelled"
    assert jc.verify() == []


@pytest.mark.parametrize("order", ["outer first", "inner first"])
def test_nested_fail_fast_settles_alike_whatever_the_order_of_the_ids(jc, order):
    a = jc.create("A", fail_fast=True)
    x, b = jc.spawn(a, count=2)
    jc.set_policy(b, fail_fast=True)
    g1, g2 = jc.spawn(b, count=2)
    jc.set_status([x, g1], "running")
    jc.set_status([x, g1] if order == "outer first" else [g1, x], "failed")
    # B fails (its own child failed; its other child cancelled), then A (two failed children)
    assert {j: jc.status(j) for j in (a, x, b, g1, g2)} == {
        a: "failed",
        x: "failed",
        b: "failed",
        g1: "failed",
        g2: "cancelled",
    }
    assert [e["message"] for e in jc.events(job=g2)][-1] == f"fail-fast: {g1} failed"
    assert jc.verify() == []


def test_cancel_and_fail_fast_while_a_list_is_being_read(jc):
    """A caller may change jobs while it iterates a list (a cursor of the same
    connection still open): the set-based cancel must not need a schema change then."""
    p = jc.create("P", fail_fast=True)
    kids = jc.spawn(p, count=600)
    for job in jc.list(parent=p):
        jc.set_status([job["id"]], "failed")  # the cascade cancels the other 599
        break
    q = jc.create("Q")
    jc.spawn(q, count=600)
    for job in jc.list(parent=q):
        assert len(jc.cancel(job["id"])) == 1
        break
    assert jc.progress(p)["progress_text"] == "0 pending, 0 running, 0 completed, 1 failed, 599 cancelled"
    assert kids[0] and jc.verify() == []


def test_a_run_outcome_for_a_job_reaped_back_to_pending_meanwhile(jc):
    """The command of a job that `reap --to pending` took back fails with attempts
    left: the job is pending already, so its retry is due anyway; the outcome is
    kept, with no second event (this raised StopIteration)."""
    (kid,) = jc.spawn(jc.create("p"), count=1, max_attempts=3)
    jc.set_status([kid], "running")
    assert jc.reap(0, to="pending") == [kid]
    before = len(jc.events(job=kid))
    assert jc.finish(kid, "failed", message="exit code 1", exit_code=1, duration=0.1, retry_in=0) == "pending"
    job = jc.get(kid)
    assert len(jc.events(job=kid)) == before and job["exit_code"] == 1 and job["attempt"] == 2
    assert jc.verify() == []


def test_a_stale_outcome_does_not_end_the_attempt_another_worker_runs(jc):
    """Worker A's job is reaped (A seemed dead) and worker B claims it, attempt 2.
    A's command then ends: its outcome is of attempt 1, stale; only its output is
    kept. B's outcome ends the job."""
    p = jc.create("p")
    (kid,) = jc.spawn(p, count=1)
    assert jc.claim(p) == kid  # A, attempt 1
    jc.reap(0, to="pending")
    assert jc.claim(p) == kid and jc.get(kid)["attempt"] == 2  # B
    lines = [("info", "A's last line")]
    status = jc.finish(kid, "failed", message="exit code 1", exit_code=1, duration=9.0, lines=lines, attempt=1)
    assert status == "running"
    job = jc.get(kid)
    assert job["status"] == "running" and job["exit_code"] is None
    assert "A's last line" in [line["text"] for line in jc.logs(kid)]
    assert jc.finish(kid, "completed", message="exit code 0", exit_code=0, duration=1.0, attempt=2) == "completed"
    assert jc.get(kid)["exit_code"] == 0 and [e["new_status"] for e in jc.events(job=kid)][-1] == "completed"
    assert jc.verify() == []
