"""Unit tests for jobctl.progress: counts, folding events, text and JSON forms."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl.model import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, STATUSES
from jobctl.progress import (
    counts_of,
    done_text,
    empty_counts,
    event_text,
    finished,
    fold,
    fold_events,
    log_text,
    percent_done,
    progress_dict,
    progress_text,
)


def c(p=0, r=0, co=0, f=0, ca=0) -> dict:
    return {PENDING: p, RUNNING: r, COMPLETED: co, FAILED: f, CANCELLED: ca}


# -------------------------------------------------------------- empty_counts
def test_empty_counts():
    counts = empty_counts()
    assert counts == {"pending": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    assert list(counts) == list(STATUSES)
    counts[PENDING] += 1
    assert empty_counts()[PENDING] == 0  # a fresh dict each time


# ------------------------------------------------------------- progress_text
def test_progress_text_seed_example():
    assert progress_text(c(p=66, r=1, co=41)) == "66 pending, 1 running, 41 completed, 0 failed"


@pytest.mark.parametrize(
    "counts,text",
    [
        (c(), "0 pending, 0 running, 0 completed, 0 failed"),
        ({}, "0 pending, 0 running, 0 completed, 0 failed"),
        (c(p=66, r=1, co=41, ca=0), "66 pending, 1 running, 41 completed, 0 failed"),
        (c(p=1, r=2, co=3, f=4, ca=5), "1 pending, 2 running, 3 completed, 4 failed, 5 cancelled"),
        (c(ca=1), "0 pending, 0 running, 0 completed, 0 failed, 1 cancelled"),
        ({CANCELLED: 2}, "0 pending, 0 running, 0 completed, 0 failed, 2 cancelled"),
        ({FAILED: 7}, "0 pending, 0 running, 0 completed, 7 failed"),
        (c(p=1000000), "1000000 pending, 0 running, 0 completed, 0 failed"),
    ],
)
def test_progress_text(counts, text):
    assert progress_text(counts) == text


@given(st.fixed_dictionaries({s: st.integers(0, 10**6) for s in STATUSES}))
def test_progress_text_shape(counts):
    text = progress_text(counts)
    parts = text.split(", ")
    expected = [f"{counts[s]} {s}" for s in (PENDING, RUNNING, COMPLETED, FAILED)]
    if counts[CANCELLED] > 0:
        expected.append(f"{counts[CANCELLED]} cancelled")
    assert parts == expected
    assert ("cancelled" in text) == (counts[CANCELLED] > 0)


# ------------------------------------------------------------- progress_dict
def test_progress_dict_fields_exactly():
    d = progress_dict("abc", RUNNING, c(p=66, r=1, co=41))
    assert d == {
        "job_id": "abc",
        "status": "running",
        "total_children": 108,
        "pending_children": 66,
        "running_children": 1,
        "completed_children": 41,
        "failed_children": 0,
        "cancelled_children": 0,
        "progress_text": "66 pending, 1 running, 41 completed, 0 failed",
    }
    assert list(d) == [
        "job_id",
        "status",
        "total_children",
        "pending_children",
        "running_children",
        "completed_children",
        "failed_children",
        "cancelled_children",
        "progress_text",
    ]


def test_progress_dict_with_cancelled_and_partial_counts():
    d = progress_dict("p.1", FAILED, {FAILED: 2, CANCELLED: 3})
    assert d["total_children"] == 5
    assert d["pending_children"] == 0
    assert d["failed_children"] == 2
    assert d["cancelled_children"] == 3
    assert d["progress_text"] == "0 pending, 0 running, 0 completed, 2 failed, 3 cancelled"


def test_progress_dict_no_children():
    d = progress_dict("x", PENDING, empty_counts())
    assert d["total_children"] == 0
    assert all(d[f"{s}_children"] == 0 for s in STATUSES)


# ---------------------------------------------------------------------- fold
def test_fold_create():
    counts = empty_counts()
    fold(counts, None, PENDING)
    assert counts == c(p=1)


def test_fold_change():
    counts = c(p=2)
    fold(counts, PENDING, RUNNING)
    assert counts == c(p=1, r=1)
    fold(counts, RUNNING, COMPLETED)
    assert counts == c(p=1, co=1)


def test_fold_many():
    counts = empty_counts()
    fold(counts, None, PENDING, n=108)
    assert counts == c(p=108)
    fold(counts, PENDING, COMPLETED, n=41)
    assert counts == c(p=67, co=41)


def test_fold_removed():
    counts = c(f=3)
    fold(counts, FAILED, None)
    assert counts == c(f=2)


def test_fold_same_status_is_unchanged():
    counts = c(r=2)
    fold(counts, RUNNING, RUNNING)
    assert counts == c(r=2)


def test_fold_returns_none_and_mutates_in_place():
    counts = empty_counts()
    before = dict(counts)  # a copy: the dict passed in must change, the copy must not
    assert fold(counts, None, FAILED, 2) is None
    assert counts[FAILED] == 2 and counts == c(f=2)
    assert before == c() and counts != before
    assert fold(counts, FAILED, COMPLETED) is None
    assert counts == c(co=1, f=1) and before == c()


# -------------------------------------------------------------- fold_events
def ev(kind, job_id, parent_id, old, new, i=0):
    return {"id": i, "kind": kind, "job_id": job_id, "parent_id": parent_id, "old_status": old, "new_status": new}


def test_fold_events_only_direct_children_of_parent():
    events = [
        ev("create", "p", None, None, PENDING, 1),
        ev("create", "p.1", "p", None, PENDING, 2),
        ev("create", "p.2", "p", None, PENDING, 3),
        ev("status", "p", None, PENDING, RUNNING, 4),  # the parent itself: not folded
        ev("create", "p.1.1", "p.1", None, PENDING, 5),  # grandchild: not folded
        ev("status", "p.1", "p", PENDING, RUNNING, 6),
        ev("log", "p.1", "p", None, None, 7),  # a log: not folded
        ev("status", "p.1", "p", RUNNING, FAILED, 8),
        ev("create", "q.1", "q", None, PENDING, 9),  # another parent
        ev("status", "p.2", "p", PENDING, CANCELLED, 10),
    ]
    snapshots = [(e["id"], dict(counts)) for e, counts in fold_events(events, "p")]
    assert [i for i, _ in snapshots] == list(range(1, 11))  # every event is yielded
    assert snapshots == [
        (1, c()),
        (2, c(p=1)),
        (3, c(p=2)),
        (4, c(p=2)),
        (5, c(p=2)),
        (6, c(p=1, r=1)),
        (7, c(p=1, r=1)),
        (8, c(p=1, f=1)),
        (9, c(p=1, f=1)),
        (10, c(f=1, ca=1)),
    ]


def test_fold_events_yields_same_dict():
    """The same dict every time, updated in place between yields (documented: copy to keep one)."""
    events = [
        ev("create", "p.1", "p", None, PENDING, 1),
        ev("create", "p.2", "p", None, PENDING, 2),
        ev("status", "p.1", "p", PENDING, RUNNING, 3),
    ]
    dicts, seen = [], []
    for _, counts in fold_events(events, "p"):
        dicts.append(counts)
        seen.append(dict(counts))  # the values at this step, before the generator goes on
    assert len(dicts) == 3 and all(d is dicts[0] for d in dicts)
    assert seen == [c(p=1), c(p=2), c(p=1, r=1)]  # the values changed from one yield to the next
    assert dicts[0] == c(p=1, r=1)  # the one dict holds the last state


def test_fold_events_starts_from_given_counts():
    start = c(co=5)
    out = list(fold_events([ev("create", "p.6", "p", None, PENDING)], "p", start))
    assert out[-1][1] is start
    assert start == c(p=1, co=5)


def test_fold_events_empty():
    assert list(fold_events([], "p")) == []


def test_fold_events_no_match():
    events = [ev("create", "x.1", "x", None, PENDING)]
    assert [dict(cn) for _, cn in fold_events(events, "p")] == [c()]


# ------------------------------------------------------------------ finished
def test_finished():
    assert finished(c(p=1, r=2, co=3, f=4, ca=5)) == 12
    assert finished({}) == 0
    assert finished({RUNNING: 3}) == 0


# -------------------------------------------------- property: fold == count
step = st.one_of(
    st.tuples(st.just("create"), st.integers(1, 4)),  # create n children
    st.tuples(st.just("move"), st.integers(0, 10**6), st.sampled_from(STATUSES)),
    st.tuples(st.just("other"), st.integers(0, 10**6), st.sampled_from(STATUSES)),  # other parent
)


@given(st.lists(step, max_size=60))
def test_folded_events_equal_direct_count(steps):
    children: dict[str, str] = {}
    others: dict[str, str] = {}
    events = []
    for s in steps:
        if s[0] == "create":
            for _ in range(s[1]):
                cid = f"p.{len(children) + 1}"
                children[cid] = PENDING
                events.append(ev("create", cid, "p", None, PENDING, len(events) + 1))
        elif s[0] == "move" and children:
            cid = sorted(children)[s[1] % len(children)]
            old, new = children[cid], s[2]
            if old != new:
                children[cid] = new
                events.append(ev("status", cid, "p", old, new, len(events) + 1))
        elif s[0] == "other":
            oid = f"q.{s[1] % 3}"
            if oid not in others:
                others[oid] = PENDING
                events.append(ev("create", oid, "q", None, PENDING, len(events) + 1))
            else:
                events.append(ev("status", oid, "q", others[oid], s[2], len(events) + 1))
                others[oid] = s[2]
            events.append(ev("log", oid, "q", None, None, len(events) + 1))

    direct = {st_: 0 for st_ in STATUSES}
    direct.update(Counter(children.values()))

    created = 0
    last = empty_counts()
    for e, counts in fold_events(events, "p"):
        if e["kind"] == "create" and e["parent_id"] == "p":
            created += 1
        assert sum(counts.values()) == created
        assert all(v >= 0 for v in counts.values())
        last = counts
    assert dict(last) == direct
    assert sum(last.values()) == len(children)

    # the same with fold directly
    counts = empty_counts()
    for e in events:
        if e["parent_id"] == "p" and e["kind"] in ("create", "status"):
            fold(counts, e["old_status"], e["new_status"])
    assert counts == direct
    assert progress_dict("p", RUNNING, counts)["total_children"] == len(children)


# ------------------------------------------------------- the texts of events
def change(kind, old=None, new=None, message=None, attempt=None, cap=None, level=None, job="p.3"):
    return {
        "kind": kind,
        "job_id": job,
        "old_status": old,
        "new_status": new,
        "message": message,
        "attempt": attempt,
        "max_attempts": cap,
        "level": level,
    }


def test_event_text_and_log_text():
    failed = change("status", RUNNING, FAILED, "exit code 1", attempt=1, cap=3)
    assert event_text(failed) == "running → failed (attempt 1/3): exit code 1"
    assert log_text(failed, True, {}) == "status changed: running → failed (attempt 1/3): exit code 1"
    assert log_text(failed, False, c(p=2, f=1)) == (
        "child p.3 running → failed (attempt 1/3): 2 pending, 0 running, 0 completed, 1 failed"
    )
    created = change("create", None, PENDING, attempt=1)
    assert (event_text(created), log_text(created, True, {}), log_text(created, False, {})) == (
        "new → pending",
        "created (pending)",
        None,
    )
    line = change("log", message="fetching", level="warning")
    assert (event_text(line), log_text(line, True, {}), log_text(line, False, {})) == (
        "[warning] fetching",
        "fetching",
        "child p.3: fetching",
    )
    policy = change("policy", message="max-attempts 2", cap=2)
    assert (event_text(policy), log_text(policy, True, {}), log_text(policy, False, {})) == (
        "policy set: max-attempts 2",
        "policy set: max-attempts 2",
        None,
    )


def test_counts_of_percent_done_and_done_text():
    counts = c(p=64, co=43, f=1)
    assert counts_of(progress_dict("p", RUNNING, counts)) == counts
    assert (percent_done(counts), done_text(counts)) == (40, "44 of 108 finished")
    assert percent_done(empty_counts()) is None and percent_done(c(co=2, ca=1)) == 100
