"""Unit tests for jobctl.model: the transition table, status words, derived
parent status, status timestamps, replay, durations and timestamps."""

from __future__ import annotations

import itertools
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl import model
from jobctl.model import (
    ACTIVE,
    ALLOWED,
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    STATUSES,
    TERMINAL,
    Conflict,
    JobctlError,
    UsageError,
)

ALL_PAIRS = list(itertools.product(STATUSES, STATUSES))


def expected_allowed(old: str, new: str) -> bool:
    """The documented rule, written independently of the ALLOWED table."""
    if old in (COMPLETED, FAILED, CANCELLED):
        return False
    if old == new:
        return False
    return not (old == RUNNING and new == PENDING)


# ------------------------------------------------------------------ constants
def test_status_sets():
    assert STATUSES == ("pending", "running", "completed", "failed", "cancelled")
    assert TERMINAL == {"completed", "failed", "cancelled"}
    assert ACTIVE == {"pending", "running"}
    assert set(ALLOWED) == set(STATUSES)


def test_exit_codes_of_errors():
    assert UsageError("x").exit_code == 2
    assert Conflict("x").exit_code == 4
    assert model.NotFound("x").exit_code == 3
    assert model.DatabaseUnusable("x").exit_code == 5
    assert JobctlError("x", exit_code=7).exit_code == 7
    assert isinstance(Conflict("x"), JobctlError)
    assert isinstance(UsageError("x"), JobctlError)


# ----------------------------------------------------------- transition table
@pytest.mark.parametrize("old,new", ALL_PAIRS)
def test_allowed_table_matches_rule(old, new):
    assert (new in ALLOWED[old]) == expected_allowed(old, new)


@pytest.mark.parametrize("old,new", ALL_PAIRS)
def test_check_transition_without_force(old, new):
    if expected_allowed(old, new):
        assert model.check_transition("j1", old, new) is None
    else:
        with pytest.raises(Conflict) as info:
            model.check_transition("j1", old, new)
        assert info.value.exit_code == 4
        assert "j1" in str(info.value)
        assert f"{old} → {new}" in str(info.value)


@pytest.mark.parametrize("old,new", ALL_PAIRS)
def test_check_transition_force_allows_everything(old, new):
    assert model.check_transition("j1", old, new, force=True) is None


def test_allowed_counts():
    # pending -> 4 others, running -> 3 (not pending), terminal -> none
    assert {s: len(ALLOWED[s]) for s in STATUSES} == {PENDING: 4, RUNNING: 3, COMPLETED: 0, FAILED: 0, CANCELLED: 0}


@pytest.mark.parametrize("old", sorted(TERMINAL))
@pytest.mark.parametrize("new", STATUSES)
def test_terminal_is_final(old, new):
    with pytest.raises(Conflict) as info:
        model.check_transition("abc", old, new)
    assert "final status" in str(info.value)


def test_conflict_hints():
    for old in (FAILED, CANCELLED):
        with pytest.raises(Conflict) as info:
            model.check_transition("j", old, PENDING)
        assert "retry" in str(info.value)
    with pytest.raises(Conflict) as info:
        model.check_transition("j", COMPLETED, PENDING)
    assert "retry" not in str(info.value)
    assert "--force" in str(info.value)
    with pytest.raises(Conflict) as info:
        model.check_transition("j", RUNNING, PENDING)
    assert "--force" in str(info.value)
    assert "final" not in str(info.value)


# ---------------------------------------------------------------- status word
@pytest.mark.parametrize("word", STATUSES)
def test_check_status_word_accepts(word):
    assert model.check_status_word(word) == word


@pytest.mark.parametrize(
    "word", ["RUNNING", "Running", "", "done", " running", "running ", "Pending", "canceled", "complete", "fail"]
)
def test_check_status_word_rejects(word):
    with pytest.raises(UsageError) as info:
        model.check_status_word(word)
    assert info.value.exit_code == 2
    msg = str(info.value)
    assert repr(word) in msg
    for s in STATUSES:
        assert s in msg
    assert "pending, running, completed, failed, cancelled" in msg


# ------------------------------------------------------------- derive_status
def c(p=0, r=0, co=0, f=0, ca=0) -> dict:
    return {PENDING: p, RUNNING: r, COMPLETED: co, FAILED: f, CANCELLED: ca}


@pytest.mark.parametrize("current", STATUSES)
@pytest.mark.parametrize("counts", [{}, c(), {PENDING: 0, FAILED: 0}])
def test_derive_no_children_keeps_current(counts, current):
    assert model.derive_status(counts, current) == current


@pytest.mark.parametrize(
    "counts,expected",
    [
        (c(p=1), RUNNING),
        (c(r=1), RUNNING),
        (c(p=66, r=1, co=41), RUNNING),
        (c(p=1, f=5), RUNNING),
        (c(r=1, ca=3), RUNNING),
        (c(p=1, r=1, co=1, f=1, ca=1), RUNNING),
        ({RUNNING: 2}, RUNNING),
        (c(co=3), COMPLETED),
        ({COMPLETED: 1}, COMPLETED),
        (c(co=1, ca=1), COMPLETED),
        (c(co=1, ca=100), COMPLETED),
        (c(f=1), FAILED),
        (c(co=10, f=1), FAILED),
        (c(f=1, ca=9), FAILED),
        (c(co=1, f=1, ca=1), FAILED),
        ({FAILED: 2}, FAILED),
        (c(ca=1), CANCELLED),
        (c(ca=7), CANCELLED),
        ({CANCELLED: 3}, CANCELLED),
    ],
)
@pytest.mark.parametrize("current", STATUSES)
def test_derive_table(counts, expected, current):
    assert model.derive_status(counts, current) == expected


count_dicts = st.fixed_dictionaries({}, optional={s: st.integers(0, 5) for s in STATUSES})


@given(counts=count_dicts, current=st.sampled_from(STATUSES))
def test_derive_rules(counts, current):
    got = model.derive_status(counts, current)
    n = {s: counts.get(s, 0) for s in STATUSES}
    total = sum(n.values())
    if total == 0:
        assert got == current
    elif n[PENDING] or n[RUNNING]:
        assert got == RUNNING
    else:
        # all terminal
        if n[FAILED] > 0:
            assert got == FAILED
        elif n[CANCELLED] == total:
            assert got == CANCELLED
        else:
            assert got == COMPLETED
    # consequences of the rules stated the other way round
    if total:
        assert (got == CANCELLED) == (n[CANCELLED] == total)
        assert (got in TERMINAL) == (n[PENDING] + n[RUNNING] == 0)
        if got == COMPLETED:
            assert n[COMPLETED] > 0 and n[FAILED] == 0


# --------------------------------------------------------------- enter_status
def blank_job(status=PENDING):
    return {
        "status": status,
        "started_at": None,
        "completed_at": None,
        "updated_at": "t0",
        "attempt": 1,
        "not_before": None,
    }


def test_enter_running_sets_started_at():
    job = blank_job()
    model.enter_status(job, RUNNING, "t1")
    assert job == {
        "status": RUNNING,
        "started_at": "t1",
        "completed_at": None,
        "updated_at": "t1",
        "attempt": 1,
        "not_before": None,
    }


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_enter_terminal_sets_completed_at_and_keeps_started_at(terminal):
    job = blank_job()
    model.enter_status(job, RUNNING, "t1")
    model.enter_status(job, terminal, "t2")
    assert job == {
        "status": terminal,
        "started_at": "t1",
        "completed_at": "t2",
        "updated_at": "t2",
        "attempt": 1,
        "not_before": None,
    }


def test_enter_terminal_from_pending_leaves_started_at_none():
    job = blank_job()
    model.enter_status(job, COMPLETED, "t1")
    assert job["started_at"] is None
    assert job["completed_at"] == "t1"


def test_enter_pending_clears_both():
    job = blank_job()
    model.enter_status(job, RUNNING, "t1")
    model.enter_status(job, FAILED, "t2")
    model.enter_status(job, PENDING, "t3")
    assert job == {
        "status": PENDING,
        "started_at": None,
        "completed_at": None,
        "updated_at": "t3",
        "attempt": 2,
        "not_before": None,
    }


def test_enter_running_again_clears_completed_at():
    job = blank_job()
    model.enter_status(job, COMPLETED, "t1")
    model.enter_status(job, RUNNING, "t2")  # e.g. a forced or derived change
    assert job["started_at"] == "t2"
    assert job["completed_at"] is None


def test_enter_status_keeps_other_fields():
    job = dict(blank_job(), id="x", name="n", parent_id="p")
    model.enter_status(job, RUNNING, "t1")
    assert (job["id"], job["name"], job["parent_id"]) == ("x", "n", "p")


# --------------------------------------------------------------------- replay
def ev(kind, job_id, old, new, at, parent_id=None, attempt=None, message=None):
    return {
        "kind": kind,
        "job_id": job_id,
        "parent_id": parent_id,
        "old_status": old,
        "new_status": new,
        "at": at,
        "attempt": attempt,
        "message": message,
    }


NO_POLICY = {
    "attempt": 1,
    "is_open": 0,
    "fail_fast": 0,
    "allow_failures": None,
    "max_attempts": None,
    "max_running": None,
    "after": [],
    "waits": 0,
}


def test_replay_single_job():
    events = [
        ev("create", "a", None, PENDING, "t1"),
        ev("status", "a", PENDING, RUNNING, "t2"),
        ev("log", "a", None, None, "t3"),
        ev("status", "a", RUNNING, COMPLETED, "t4"),
    ]
    assert model.replay(events) == {
        "a": {
            "parent_id": None,
            "status": COMPLETED,
            "created_at": "t1",
            "started_at": "t2",
            "completed_at": "t4",
            "updated_at": "t4",
            **NO_POLICY,
        }
    }


def test_replay_several_jobs():
    events = [
        ev("create", "p", None, PENDING, "t01"),
        ev("create", "p.1", None, PENDING, "t02", parent_id="p"),
        ev("create", "p.2", None, PENDING, "t02", parent_id="p"),
        ev("status", "p", PENDING, RUNNING, "t02"),
        ev("status", "p.1", PENDING, RUNNING, "t03", parent_id="p"),
        ev("log", "p.1", None, None, "t04", parent_id="p"),
        ev("status", "p.1", RUNNING, FAILED, "t05", parent_id="p"),
        ev("status", "p.2", PENDING, CANCELLED, "t06", parent_id="p"),
        ev("status", "p", RUNNING, FAILED, "t06"),
        ev("status", "p.1", FAILED, PENDING, "t07", parent_id="p"),  # retry
        ev("status", "p", FAILED, RUNNING, "t07"),
        ev("create", "q", None, PENDING, "t08"),
    ]
    got = model.replay(events)
    assert set(got) == {"p", "p.1", "p.2", "q"}
    assert got["p"] == {
        "parent_id": None,
        "status": RUNNING,
        "created_at": "t01",
        "started_at": "t07",
        "completed_at": None,
        "updated_at": "t07",
        **NO_POLICY,
    }
    assert got["p.1"] == {
        "parent_id": "p",
        "status": PENDING,
        "created_at": "t02",
        "started_at": None,
        "completed_at": None,
        "updated_at": "t07",
        **NO_POLICY,
    }
    assert got["p.2"] == {
        "parent_id": "p",
        "status": CANCELLED,
        "created_at": "t02",
        "started_at": None,
        "completed_at": "t06",
        "updated_at": "t06",
        **NO_POLICY,
    }
    assert got["q"] == {
        "parent_id": None,
        "status": PENDING,
        "created_at": "t08",
        "started_at": None,
        "completed_at": None,
        "updated_at": "t08",
        **NO_POLICY,
    }
    for job in got.values():
        assert set(job) == set(model.REPLAYED_FIELDS)


def test_replay_empty():
    assert model.replay([]) == {}


def test_replay_status_for_unknown_job():
    got = model.replay([ev("status", "ghost", PENDING, RUNNING, "t1", parent_id="p")])
    assert got["ghost"]["created_at"] is None
    assert got["ghost"]["status"] == RUNNING
    assert got["ghost"]["parent_id"] == "p"


def test_replay_keeps_mismatching_old_status():
    # the event says running -> completed while the replayed job is pending: kept as is
    got = model.replay([ev("create", "a", None, PENDING, "t1"), ev("status", "a", RUNNING, COMPLETED, "t2")])
    assert got["a"]["status"] == COMPLETED
    assert got["a"]["started_at"] is None


@given(st.lists(st.sampled_from(STATUSES), max_size=15))
def test_replay_matches_enter_status(seq):
    events = [ev("create", "a", None, PENDING, "t000")]
    job = {"parent_id": None, "created_at": "t000", "started_at": None, "completed_at": None, **NO_POLICY}
    model.enter_status(job, PENDING, "t000")
    old = PENDING
    for i, new in enumerate(seq, 1):
        at = f"t{i:03d}"
        model.enter_status(job, new, at)
        events.append(ev("status", "a", old, new, at, attempt=job["attempt"]))
        old = new
    job.pop("not_before", None)
    assert model.replay(events) == {"a": job}
    # status always the last new_status
    assert model.replay(events)["a"]["status"] == (seq[-1] if seq else PENDING)


# ------------------------------------------------------------- parse_duration
@pytest.mark.parametrize(
    "text,seconds",
    [
        ("90s", 90),
        ("5m", 300),
        ("1h", 3600),
        ("2d", 172800),
        ("1.5", 1.5),
        ("10", 10),
        ("0.5m", 30),
        (" 5m ", 300),
        ("1e3", 1000),
        ("1.5h", 5400),
    ],
)
def test_parse_duration(text, seconds):
    assert model.parse_duration(text) == pytest.approx(seconds)
    assert isinstance(model.parse_duration(text), float)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "abc",
        "-5s",
        "-1",
        "0",
        "0s",
        "0.0",
        "nan",
        "nans",
        "inf",
        "infh",
        "-inf",
        "1e400",
        "5x",
        "s",
        "m",
        "5 m m",
        "5mm",
    ],
)
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError) as info:
        model.parse_duration(text)
    assert info.value.exit_code == 2
    assert repr(text) in str(info.value)


# ------------------------------------------------------------ timestamp / now
TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")


def test_timestamp_known_values():
    assert model.timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert model.timestamp(1.5) == "1970-01-01T00:00:01.500000Z"
    assert model.timestamp(86400 + 3661.25) == "1970-01-02T01:01:01.250000Z"
    assert model.timestamp(1_700_000_000) == "2023-11-14T22:13:20.000000Z"


@given(st.floats(0, 4e9, allow_nan=False, allow_infinity=False))
def test_timestamp_format(t):
    assert TS_RE.match(model.timestamp(t))


@given(st.floats(0, 4e9), st.floats(0, 4e9))
def test_timestamp_sortable_as_text(a, b):
    a, b = sorted((a, b))
    assert model.timestamp(a) <= model.timestamp(b)


def test_timestamp_microseconds_order():
    base = 1_700_000_000
    stamps = [model.timestamp(base + k / 1000) for k in range(0, 1000, 37)]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


def test_now_format_and_range():
    before = model.timestamp(time.time())
    n = model.now()
    after = model.timestamp(time.time())
    assert TS_RE.match(n)
    assert n.endswith("Z")
    assert len(n.split(".")[1]) == 7  # 6 digits + Z
    assert before <= n <= after


def test_ago():
    a = model.ago(3600)
    n = model.now()
    assert TS_RE.match(a)
    assert a < n
    # about an hour back
    assert model.timestamp(time.time() - 3605) < a < model.timestamp(time.time() - 3595)


def test_replay_describes_events_that_contradict_the_history():
    from jobctl.model import replay

    at = "2026-01-01T00:00:00.000000Z"
    events = [
        {
            "id": 1,
            "kind": "create",
            "job_id": "a",
            "parent_id": None,
            "old_status": None,
            "new_status": "pending",
            "at": at,
        },
        {
            "id": 2,
            "kind": "status",
            "job_id": "a",
            "parent_id": None,
            "old_status": "running",
            "new_status": "failed",
            "at": at,
        },
        {
            "id": 3,
            "kind": "status",
            "job_id": "b",
            "parent_id": None,
            "old_status": "pending",
            "new_status": "running",
            "at": at,
        },
        {
            "id": 4,
            "kind": "create",
            "job_id": "a",
            "parent_id": None,
            "old_status": None,
            "new_status": "pending",
            "at": at,
        },
        {
            "id": 5,
            "kind": "status",
            "job_id": "a",
            "parent_id": None,
            "old_status": "pending",
            "new_status": "running",
            "at": at,
        },
    ]
    problems = []
    jobs = replay(events, problems)
    assert jobs["a"]["status"] == "running" and jobs["b"]["status"] == "running"
    assert problems == [
        "event 2: job a running → failed, but it was pending",
        "event 3: status change of job b, which was never created",
        "event 4: job a created a second time",
    ]
    assert replay(events) == jobs  # without a list, the same fold


def test_in_tree_grows_with_jobs_created_under_it():
    from jobctl.model import in_tree

    ids = {"p"}
    create = lambda job, parent: {"kind": "create", "job_id": job, "parent_id": parent}  # noqa: E731
    assert in_tree(ids, create("p.1", "p")) and ids == {"p", "p.1"}
    assert in_tree(ids, create("p.1.1", "p.1")) and "p.1.1" in ids
    assert not in_tree(ids, create("q.1", "q")) and "q.1" not in ids
    assert not in_tree(ids, {"kind": "status", "job_id": "q", "parent_id": None})
    assert in_tree(None, {"kind": "status", "job_id": "anything", "parent_id": None})


# ------------------------------------------------------------ failure policies
@pytest.mark.parametrize(
    "counts,allow,expected",
    [
        # no allowance: today's rules
        (c(p=2, f=1), None, RUNNING),
        (c(co=2, f=1), None, FAILED),
        # an allowance decides when all are final: at exactly the boundary, and one past it
        (c(co=106, f=2), "2", COMPLETED),
        (c(co=105, f=3), "2", FAILED),
        (c(p=1, f=3), "2", RUNNING),  # the parent waits for every child (fail-fast acts through them)
        (c(co=2, f=1), "1", COMPLETED),
        # percentages round down: 5% of 108 is 5.4, so 5 failed may, 6 may not
        (c(co=103, f=5), "5%", COMPLETED),
        (c(co=102, f=6), "5%", FAILED),
        (c(co=19, f=1), "5%", COMPLETED),  # 5% of 20 is exactly 1
        (c(co=18, f=1), "5%", FAILED),  # 5% of 19 is 0.95: none
        (c(co=39, f=1), "2.5%", COMPLETED),  # 2.5% of 40 is exactly 1
        (c(co=38, f=1), "2.5%", FAILED),
        (c(f=3), "100%", COMPLETED),  # all may fail
        # cancelled children are never allowed failures: with none completed, cancelled
        (c(f=1, ca=2), "1", CANCELLED),
        (c(co=1, f=1, ca=2), "1", COMPLETED),
        (c(ca=3), "5", CANCELLED),
        # after a fail-fast cascade: the failures and the cancelled rest
        (c(co=2, f=1, ca=3), None, FAILED),
        (c(f=2, ca=3), "1", FAILED),
        # nesting: a failed sub-parent is one failed child of its parent, like any other
        (c(co=3, f=1), "1", COMPLETED),
    ],
)
@pytest.mark.parametrize("current", [PENDING, RUNNING, FAILED])
def test_derive_with_an_allowance(counts, allow, expected, current):
    assert model.derive_status(counts, current, allow_failures=allow) == expected


@pytest.mark.parametrize("allow", [None, "3", "50%"])
def test_derive_with_an_allowance_and_no_children_keeps_current(allow):
    for current in STATUSES:
        assert model.derive_status(c(), current, allow_failures=allow) == current
    assert model.allowed_failures(allow, 0) == (3 if allow == "3" else 0)


@pytest.mark.parametrize(
    "counts,status,allow,follows",
    [
        (c(co=1, ca=2), CANCELLED, None, False),  # cancelled by hand: its children say completed
        (c(co=3), FAILED, None, False),  # forced
        (c(co=2, f=1), FAILED, None, True),
        (c(co=2, f=1), COMPLETED, "1", True),
        (c(p=1), RUNNING, None, True),
        (c(), PENDING, None, True),  # no children: whatever it is
    ],
)
def test_follows_children(counts, status, allow, follows):
    job = {"status": status, "allow_failures": allow, "fail_fast": 0}
    assert model.follows_children(counts, job) is follows


@pytest.mark.parametrize(
    "counts,fail_fast,allow,expected",
    [
        (c(p=3, f=1), True, None, True),  # the first failure, others still to run: cancel them
        (c(co=3, f=1), True, None, False),  # nothing left to cancel
        (c(p=3, f=1), False, None, False),  # no fail-fast
        (c(p=3, f=1), True, "1", False),  # within the allowance
        (c(p=3, f=2), True, "1", True),
        (c(r=1, f=1), True, "10%", True),  # 10% of 2 is 0
    ],
)
def test_fails_fast(counts, fail_fast, allow, expected):
    assert model.fails_fast(counts, fail_fast, allow) is expected


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("2", "2"),
        (" 7 ", "7"),
        (3, "3"),
        ("5%", "5%"),
        ("2.5%", "2.5%"),
        ("2.50%", "2.5%"),
        ("100%", "100%"),
        ("0", None),
        ("0%", None),
        ("0.00%", None),
        ("none", None),
        ("", None),
        (None, None),
        ("007", "7"),
    ],
)
def test_check_allowance(text, canonical):
    assert model.check_allowance(text) == canonical


@pytest.mark.parametrize("bad", ["-1", "1.5", "101%", "5 %", "%", "2.555%", "abc", "1e3", "100.01%", "1%%"])
def test_check_allowance_refuses(bad):
    with pytest.raises(UsageError, match="--allow-failures"):
        model.check_allowance(bad)


@given(total=st.integers(0, 10_000), hundredths=st.integers(0, 10_000))
def test_allowed_failures_is_the_exact_floor(total, hundredths):
    whole, frac = divmod(hundredths, 100)
    allow = model.check_allowance(f"{whole}.{frac:02d}%")
    got = model.allowed_failures(allow, total)
    assert got * 10000 <= hundredths * total < (got + 1) * 10000


@pytest.mark.parametrize(
    "status,counts,allow,used",
    [
        (COMPLETED, c(co=9, f=1), "1", True),
        (COMPLETED, c(co=10), "1", False),  # nothing failed: not used
        (FAILED, c(co=8, f=2), "1", False),
        (COMPLETED, c(co=10), None, False),
    ],
)
def test_allowance_used(status, counts, allow, used):
    assert model.allowance_used(counts, status, allow) is used


@pytest.mark.parametrize(
    "policy",
    [
        (0, None, None, 0),
        (1, None, None, 0),
        (0, "5%", None, 0),
        (0, None, 3, 0),
        (1, "2", 7, 0),
        (1, "2.5%", 1, 0),
        (0, None, None, 1),
        (1, "2", 7, 1),
        (0, None, None, 0, 4),
        (1, "2", 7, 1, 1),
    ],
)
def test_policy_text_round_trips(policy):
    text = model.policy_text(*policy)
    assert model.parse_policy(text) == {
        "fail_fast": policy[0],
        "allow_failures": policy[1],
        "max_attempts": policy[2],
        "is_open": policy[3],
        "max_running": policy[4] if len(policy) > 4 else None,
    }
    assert (text is None) == (policy == (0, None, None, 0))


# -------------------------------------------------------------------- attempts
def test_attempt_rises_when_a_started_job_goes_back_to_pending():
    job = blank_job()
    for status, attempt in [(RUNNING, 1), (FAILED, 1), (PENDING, 2), (RUNNING, 2), (PENDING, 3), (PENDING, 3)]:
        model.enter_status(job, status, "t")
        assert job["attempt"] == attempt, status


def test_attempt_stays_for_a_job_cancelled_before_it_started():
    job = blank_job()
    model.enter_status(job, CANCELLED, "t1")  # e.g. fail-fast cancelled it while pending
    model.enter_status(job, PENDING, "t2")  # retry
    assert job["attempt"] == 1


@pytest.mark.parametrize(
    "job,left",
    [
        ({"max_attempts": None, "attempt": 9, "started_at": "t"}, True),
        ({"max_attempts": 3, "attempt": 2, "started_at": "t"}, True),
        ({"max_attempts": 3, "attempt": 3, "started_at": "t"}, False),
        ({"max_attempts": 3, "attempt": 3, "started_at": None}, True),  # cancelled before it started
        ({"max_attempts": 1, "attempt": 1, "started_at": "t"}, False),
    ],
)
def test_attempts_left(job, left):
    assert model.attempts_left(job) is left


@pytest.mark.parametrize(
    "attempt,cap,text",
    [
        (1, None, ""),
        (2, None, "attempt 2"),
        (1, 3, "attempt 1/3"),
        (3, 3, "attempt 3/3"),
        (None, 3, ""),
    ],
)
def test_attempts_text(attempt, cap, text):
    assert model.attempts_text(attempt, cap) == text


@pytest.mark.parametrize("bad", [0, -1, 1_000_001, 2.5])
def test_check_max_attempts_refuses(bad):
    with pytest.raises(UsageError, match="--max-attempts"):
        model.check_max_attempts(bad)


def test_replay_folds_policies_and_checks_attempts():
    problems: list = []
    got = model.replay(
        [
            ev("create", "p", None, PENDING, "t1", attempt=1, message="fail-fast, max-attempts 2"),
            ev("policy", "p", None, None, "t2", message="allow-failures 5%"),
            ev("status", "p", PENDING, RUNNING, "t3", attempt=1),
            ev("status", "p", RUNNING, PENDING, "t4", attempt=2),
            ev("status", "p", PENDING, RUNNING, "t5", attempt=3),  # the rules say 2
        ],
        problems,
    )
    assert got["p"]["fail_fast"] == 0 and got["p"]["allow_failures"] == "5%" and got["p"]["max_attempts"] is None
    assert got["p"]["attempt"] == 3
    assert problems == ["event None: job p is on attempt 3, the rules say 2"]


@pytest.mark.parametrize("allow", [None, "0", "1", "3", "5%", "2.5%", "100%"])
def test_every_derived_message_is_told_from_one_given_by_hand(allow):
    """verify checks a parent whose last status event is derived: is_derived knows
    each message derived_message makes, and no other (nor one with an attempt)."""
    for counts in (
        {"pending": 0, "running": 0, "completed": 7, "failed": 2, "cancelled": 1},
        {"pending": 1, "running": 0, "completed": 0, "failed": 0, "cancelled": 0},
        {"pending": 0, "running": 0, "completed": 0, "failed": 3, "cancelled": 0},
    ):
        status = model.derive_status(counts, "running", allow_failures=allow)
        message = model.derived_message(counts, status, allow)
        assert model.is_derived({"kind": "status", "attempt": None, "message": message}), message
        assert not model.is_derived({"kind": "status", "attempt": 2, "message": message})
    for by_hand in ("derived from children of the nightly batch", "derived from children: stopped", None, ""):
        assert not model.is_derived({"kind": "status", "attempt": None, "message": by_hand})


def test_a_parent_with_an_active_child_is_the_active_parent_status():
    """What PostgreSQL's fan-in check relies on (model.ACTIVE_PARENT): whatever the
    other counts, the current status and the allowance, one child pending or
    running derives ACTIVE_PARENT."""
    import itertools

    for active in model.ACTIVE:
        for others in itertools.product(range(3), repeat=3):
            counts = dict(zip((model.COMPLETED, model.FAILED, model.CANCELLED), others), **{active: 1})
            for current in model.STATUSES:
                for allow in (None, "1", "50%"):
                    assert model.derive_status(counts, current, allow_failures=allow) == model.ACTIVE_PARENT


# ---------------------------------------------------- fan-outs that grow (issue 21)
@pytest.mark.parametrize(
    "counts,open,fail_fast,allow,expected",
    [
        (c(co=3), True, False, None, RUNNING),  # open: more may come
        (c(f=1, co=2), True, False, None, RUNNING),
        (c(f=1, co=2), True, True, None, FAILED),  # fail-fast still fails it
        (c(f=1, co=2), True, True, "1", RUNNING),  # within its allowance
        (c(ca=2), True, False, None, RUNNING),
        (c(), True, False, None, PENDING),  # no child yet: its own status
        (c(co=3), False, False, None, COMPLETED),
    ],
)
def test_derive_an_open_parent(counts, open, fail_fast, allow, expected):
    assert model.derive_status(counts, PENDING, allow_failures=allow, open=open, fail_fast=fail_fast) == expected


DERIVED_EVENT = {"kind": "status", "attempt": None, "message": "derived from children"}
BY_HAND = {"kind": "status", "attempt": 1, "message": "derived from children"}  # a message given by hand


@pytest.mark.parametrize(
    "status,counts,fail_fast,last,takes",
    [
        (RUNNING, c(r=1), 0, None, True),  # not final
        (PENDING, c(), 0, None, True),
        (COMPLETED, c(co=2), 0, DERIVED_EVENT, True),  # derived final: takes one, runs again
        (FAILED, c(co=1, f=1), 0, DERIVED_EVENT, True),
        (CANCELLED, c(ca=2), 0, DERIVED_EVENT, True),
        (COMPLETED, c(co=2), 0, BY_HAND, False),  # --force
        (CANCELLED, c(ca=2), 0, {"kind": "status", "attempt": 1, "message": "cancelled"}, False),  # cancel
        (FAILED, c(co=1, f=1), 1, DERIVED_EVENT, False),  # fail-fast failed it
        (FAILED, c(co=2), 0, DERIVED_EVENT, False),  # its children say completed: not what they give
        (COMPLETED, c(), 0, None, False),  # no children: set by hand
    ],
)
def test_takes_child(status, counts, fail_fast, last, takes):
    job = {"status": status, "allow_failures": None, "fail_fast": fail_fast, "is_open": 0}
    assert model.takes_child(counts, job, last) is takes


@pytest.mark.parametrize("cap,running,full", [(None, 100, False), (2, 1, False), (2, 2, True), (1, 3, True)])
def test_at_limit(cap, running, full):
    assert model.at_limit(c(r=running, p=5), {"max_running": cap}) is full


@pytest.mark.parametrize(
    "statuses,code",
    [([COMPLETED, COMPLETED], 0), ([COMPLETED, FAILED, CANCELLED], 1), ([COMPLETED, CANCELLED], 6), ([], 0)],
)
def test_exit_code_of_several(statuses, code):
    assert model.exit_code_of(statuses) == code


def test_output_file_lines():
    text = "a=1\nmulti<<EOF\nx\n\ny=z\nEOF\nb=has=equals\n\n"
    assert model.parse_output_file(text) == [("a", "1"), ("multi", "x\n\ny=z"), ("b", "has=equals")]


# ------------------------------------------------------------- dependencies
@pytest.mark.parametrize(
    "status, strict_releases, any_releases, strict_cancels",
    [
        (PENDING, False, False, False),
        (RUNNING, False, False, False),
        (COMPLETED, True, True, False),
        (FAILED, False, True, True),
        (CANCELLED, False, True, True),
    ],
)
def test_what_a_dependency_in_each_status_does(status, strict_releases, any_releases, strict_cancels):
    assert model.releases(status, 0) is strict_releases
    assert model.releases(status, 1) is any_releases
    assert model.cancels(status, 0) is strict_cancels
    assert model.cancels(status, 1) is False  # --after-any never cancels


def test_check_after_sorts_and_refuses_a_job_given_twice_or_a_bad_id():
    assert model.check_after(["P.2", "P.1", "P.2"], ["Q"]) == [("P.1", 0), ("P.2", 0), ("Q", 1)]
    assert model.check_after() == []
    with pytest.raises(model.UsageError, match="both --after and --after-any"):
        model.check_after(["P.1"], ["P.1"])
    with pytest.raises(model.UsageError, match="bad job id"):
        model.check_after(["a b"])


def test_waiting_on_and_the_blocker():
    deps = [
        {"after_id": "a", "any_outcome": 0, "status": COMPLETED},
        {"after_id": "b", "any_outcome": 1, "status": FAILED},
        {"after_id": "c", "any_outcome": 0, "status": RUNNING},
        {"after_id": "d", "any_outcome": 0, "status": CANCELLED},
    ]
    assert model.waiting_on(deps) == ["c", "d"]
    assert model.blocker(deps)["after_id"] == "d"
    assert model.blocker(deps[:3]) is None
    assert model.dependency_message("P.2", FAILED) == "dependency P.2 failed"


def test_after_fields_round_trip_through_parse_after():
    deps = [("P.1", 0), ("P.3", 1), ("Q", 0)]
    fields = model.after_fields(deps)
    assert fields == {"after": ["P.1", "Q"], "after_any": ["P.3"]}
    import json

    assert model.parse_after(json.dumps(fields)) == deps
    assert model.after_fields([]) == {} and model.parse_after(None) == [] and model.parse_after('{"host":"x"}') == []


def test_a_create_message_keeps_the_policy_readable():
    from jobctl.progress import create_message

    text = create_message("fail-fast, max-attempts 3", [("open", 0), ("P.2", 1)])
    assert text == "fail-fast, max-attempts 3; waiting on open, P.2 (any outcome)"
    assert model.parse_policy(text) == {**model.parse_policy("fail-fast, max-attempts 3")}
    assert model.parse_policy(create_message(None, [("open", 0)]))["is_open"] == 0  # a job named open
    assert create_message(None, []) is None


GRAPH = {  # job: (parent, [jobs it waits on])
    "P": (None, []),
    "P.1": ("P", []),
    "P.2": ("P", ["P.1"]),
    "Q": (None, ["P"]),
    "Q.1": ("Q", []),
    "R": (None, ["Q.1"]),
}


def required_by(ids):
    """GRAPH's parents of `ids`, and the jobs waiting on them."""
    return [GRAPH[j][0] for j in ids if GRAPH[j][0]] + [k for k, (_, after) in GRAPH.items() if set(after) & set(ids)]


@pytest.mark.parametrize(
    "parent, after, cycle",
    [
        ("P", ["P.1", "P.2"], None),  # siblings: fine
        ("P", ["P"], "P"),  # its own parent cannot end first
        ("P.2", ["P"], "P"),  # nor a grandparent
        ("P", ["Q"], "Q"),  # Q waits on P, which needs the new job
        ("P", ["R"], None),  # R waits on Q.1 only: it does not need P
        ("Q", ["R"], None),  # R waits on Q.1, a child of Q, not on Q itself
        ("Q.1", ["R"], "R"),  # R waits on Q.1, which needs the new job
        (None, ["P", "Q", "R"], None),  # a new root: nothing needs it
    ],
)
def test_dependency_cycle(parent, after, cycle):
    assert model.dependency_cycle("new", parent, after, required_by) == cycle
    assert model.dependency_cycle("new", parent, ["new"], required_by) == "new"
