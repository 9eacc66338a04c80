"""A hypothesis state machine against the real Python API on a real database
(a SQLite file, and a schema on a real PostgreSQL server), checked after every
step against a plain in-memory model of the documented semantics (written
here, independently of jobctl.model)."""

from __future__ import annotations

import itertools
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import jobctl
from throwaway_pg import schema_of, with_schema

PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "pending", "running", "completed", "failed", "cancelled"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
FINAL = {COMPLETED, FAILED, CANCELLED}
LARGE = 365 * 86400.0  # a stale_after nothing can reach

# NUL is refused on both backends (PostgreSQL cannot store it): tests/test_cli.py
names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12
).filter(lambda s: s.strip())


def may_move(old: str, new: str) -> bool:
    """Without force: a non-terminal job may move to any other status except running -> pending."""
    return old not in FINAL and old != new and (old, new) != (RUNNING, PENDING)


def allowed(allow: str | None, total: int) -> int:
    """How many failed children an allowance ("2", "50%") lets through: a share rounded down."""
    if allow is None:
        return 0
    if allow.endswith("%"):
        return int(Fraction(allow[:-1]) * total / 100)
    return int(allow)


def derived(counts: Counter, current: str, allow: str | None = None, open: bool = False, ff: bool = False) -> str:
    """A parent's status from its direct children's statuses and its allowance
    (fail-fast acts through the children: it cancels them); an open parent
    with children runs, unless it is fail-fast and too many failed."""
    total = sum(counts.values())
    if total == 0:
        return current
    if counts[PENDING] or counts[RUNNING]:
        return RUNNING
    too_many = counts[FAILED] > allowed(allow, total)
    if open and not (ff and too_many):
        return RUNNING
    if too_many:
        return FAILED
    if counts[CANCELLED] and not counts[COMPLETED]:
        return CANCELLED
    return COMPLETED


class Model:
    """Jobs as dicts; every status change counted as one event."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}  # id -> {status, parent, name, kids: [ids]}
        self.order: list[str] = []  # creation order (the jobs table's rowid order)
        self.events = 0
        self.due: dict[str, str] = {}  # fail-fast parents to settle at the end of the operation
        self.ended: list[str] = []  # jobs the operation ended failed or cancelled: what waits on them is cancelled

    def copy(self) -> "Model":
        m = Model()
        m.jobs = {k: dict(v, kids=list(v["kids"]), outputs=dict(v["outputs"])) for k, v in self.jobs.items()}
        m.order = list(self.order)
        m.events = self.events
        m.due = dict(self.due)
        m.ended = list(self.ended)
        return m

    def status(self, jid: str) -> str:
        return self.jobs[jid]["status"]

    def counts(self, jid: str) -> Counter:
        return Counter(self.jobs[k]["status"] for k in self.jobs[jid]["kids"])

    def add(
        self,
        parent: str | None,
        ids_names: list[tuple[str, str]],
        max_attempts: int | None = None,
        after: list[tuple[str, bool]] = (),
    ) -> None:
        """New pending jobs, each waiting on `after` ((id, any outcome) pairs): one
        that failed or was cancelled already (without any outcome) cancels them at once."""
        for jid, name in ids_names:
            assert jid not in self.jobs
            self.jobs[jid] = {
                "status": PENDING,
                "parent": parent,
                "name": name,
                "kids": [],
                "fail_fast": False,
                "allow": None,
                "max": max_attempts,
                "attempt": 1,
                "started": False,
                "open": False,
                "derived": False,
                "limit": None,
                "outputs": {},
                "after": sorted(after),
            }
            self.order.append(jid)
            self.events += 1
            if parent is not None:
                self.jobs[parent]["kids"].append(jid)
        if parent is not None:
            self.roll_up(parent, frozenset())
        self.ended += [a for a, any_outcome in after if not any_outcome and self.status(a) in (FAILED, CANCELLED)]
        self.settle()

    def set(self, jid: str, new: str, frozen: frozenset = frozenset(), derived: bool = False) -> bool:
        """`derived`: a parent's status following its children (its event says so)."""
        job = self.jobs[jid]
        if job["status"] == new:
            return False
        job["derived"] = derived
        if new == PENDING and job["started"]:  # a job that ran goes back: its next attempt
            job["attempt"] += 1
        job["started"] = new != PENDING and (job["started"] or new == RUNNING)
        job["status"] = new
        self.events += 1
        if new in (FAILED, CANCELLED):
            self.ended.append(jid)
        if job["parent"] is not None:
            self.roll_up(job["parent"], frozen, failed_child=jid if new == FAILED else None)
        return True

    def derive(self, pid: str) -> str:
        p = self.jobs[pid]
        return derived(self.counts(pid), p["status"], p["allow"], p["open"], p["fail_fast"])

    def roll_up(self, pid: str, frozen: frozenset, failed_child: str | None = None, fail_fast: bool = False) -> None:
        """`fail_fast`: the change is fail-fast's (its event names the child, it is no derived one)."""
        if pid in frozen:
            return
        if failed_child is not None and self.too_many_failed_while_open(pid):
            self.due.setdefault(pid, failed_child)
        d = self.derive(pid)
        if d != self.status(pid):
            self.set(pid, d, frozen, derived=not fail_fast)

    def takes_child(self, pid: str) -> bool:
        """Not final; or final as its children give it (its last change derived), not failed by fail-fast."""
        p, counts = self.jobs[pid], self.counts(pid)
        if p["status"] not in FINAL:
            return True
        failed_fast = p["fail_fast"] and counts[FAILED] > allowed(p["allow"], sum(counts.values()))
        return bool(p["kids"]) and p["derived"] and not failed_fast and self.derive(pid) == p["status"]

    def too_many_failed_while_open(self, pid: str) -> bool:
        p, counts = self.jobs[pid], self.counts(pid)
        return (
            p["fail_fast"]
            and bool(counts[PENDING] or counts[RUNNING])
            and counts[FAILED] > allowed(p["allow"], sum(counts.values()))
        )

    def waiting_on(self, jid: str) -> list[str]:
        """What holds a pending job back: each job it waits on that has not completed
        (with any outcome: not ended)."""
        job = self.jobs[jid]
        if job["status"] != PENDING:
            return []
        return [a for a, any_outcome in job["after"] if self.status(a) not in (FINAL if any_outcome else {COMPLETED})]

    def needs(self, jid: str) -> set[str]:
        """Every job that must end before `jid` can: its children and what it waits on, transitively."""
        out, todo = set(), [jid]
        while todo:
            j = todo.pop()
            for k in self.jobs[j]["kids"] + [a for a, _ in self.jobs[j]["after"]]:
                if k not in out:
                    out.add(k)
                    todo.append(k)
        return out

    def settle(self) -> None:
        """At the end of an operation: each fail-fast parent due cancels what is unfinished
        below it, then fails; when none is due, every pending job waiting (without any
        outcome) on a job that ended failed or cancelled is cancelled; until neither is left."""
        while self.due or self.ended:
            if not self.due:
                ended, self.ended = set(self.ended), []
                for jid in list(self.order):
                    job = self.jobs[jid]
                    bad = [a for a, any_outcome in job["after"] if a in ended and not any_outcome]
                    if job["status"] == PENDING and any(self.status(a) in (FAILED, CANCELLED) for a in bad):
                        targets = [j for j in reversed(self.subtree(jid)) if self.status(j) not in FINAL]
                        for t in targets:
                            assert self.set(t, CANCELLED, frozenset(targets))
                continue
            pid = max(self.due, key=self.depth)  # the deepest first
            del self.due[pid]
            if self.too_many_failed_while_open(pid):
                self.fail_fast(pid, frozenset())
                self.roll_up(pid, frozenset(), fail_fast=True)

    def fail_fast(self, pid: str, frozen: frozenset) -> None:
        """Every unfinished job below pid cancelled, deepest first, before pid's own change."""
        targets = [j for j in reversed(self.subtree(pid)) if j != pid and self.status(j) not in FINAL]
        inner = frozen | set(targets) | {pid}
        for t in targets:
            assert self.set(t, CANCELLED, inner)

    def depth(self, jid: str) -> int:
        parent, n = self.jobs[jid]["parent"], 0
        while parent is not None:
            parent, n = self.jobs[parent]["parent"], n + 1
        return n

    def attempts_left(self, jid: str) -> bool:
        job = self.jobs[jid]
        return job["max"] is None or not job["started"] or job["attempt"] < job["max"]

    def set_policy(self, jid: str, change: dict) -> None:
        job = self.jobs[jid]
        new = {**{k: job[k] for k in ("fail_fast", "allow", "max", "open", "limit")}, **change}
        if all(job[k] == v for k, v in new.items()):
            return
        if new["open"] and not job["open"] and not self.takes_child(jid):
            raise jobctl.Conflict(f"{jid} cannot be opened")
        by_hand = self.derive(jid) != job["status"]  # cancel, --force
        job.update(new)
        self.events += 1
        if self.too_many_failed_while_open(jid):
            self.due[jid] = "first failed child"
        elif not by_hand:
            self.roll_up(jid, frozenset())
        self.settle()

    def subtree(self, jid: str) -> list[str]:
        """The job and its descendants, by depth, then creation order."""
        out, level = [], [jid]
        while level:
            out += level
            nxt = [k for j in level for k in self.jobs[j]["kids"]]
            level = sorted(nxt, key=self.order.index)
        return out

    # ---- operations: return the expected result, or raise Conflict
    def set_status(self, ids: list[str], new: str, force: bool) -> list[str]:
        changed = []
        for jid in dict.fromkeys(ids):
            old = self.status(jid)
            if old == new:
                continue
            if not force and not may_move(old, new):
                raise jobctl.Conflict(f"{jid}: {old} -> {new}")
            if not force and self.jobs[jid]["kids"]:
                raise jobctl.Conflict(f"{jid} has children")
            parent = self.jobs[jid]["parent"]
            limit = parent and self.jobs[parent]["limit"]
            if new == RUNNING and not force and limit and self.counts(parent)[RUNNING] >= limit:
                raise jobctl.Conflict(f"{parent} runs {limit} at most")
            if new == RUNNING and not force and self.waiting_on(jid):
                raise jobctl.Conflict(f"{jid} waits on {self.waiting_on(jid)}")
            self.set(jid, new)
            changed.append(jid)
        self.settle()
        return changed

    def cancel(self, jid: str) -> list[str]:
        """The job and its non-final descendants, deepest first (the job's own
        event comes last); each stays cancelled: none is re-derived meanwhile."""
        targets = [j for j in reversed(self.subtree(jid)) if self.status(j) not in FINAL]
        frozen = frozenset(targets)
        for t in targets:
            assert self.set(t, CANCELLED, frozen)
        self.settle()
        return targets

    def retry(self, jid: str, failed_children: bool) -> list[str]:
        job = self.jobs[jid]
        if not job["kids"]:
            if failed_children or job["status"] == PENDING:
                targets = []
            elif job["status"] in (FAILED, CANCELLED):
                if not self.attempts_left(jid):
                    raise jobctl.Conflict(f"{jid} used its attempts")
                targets = [jid]
            else:
                raise jobctl.Conflict(f"{jid} is {job['status']}")
        else:
            wanted = {FAILED} if failed_children else {FAILED, CANCELLED}
            targets = [j for j in self.subtree(jid) if not self.jobs[j]["kids"] and self.status(j) in wanted]
        kept = [t for t in targets if self.attempts_left(t)]
        if targets and not kept:
            raise jobctl.Conflict(f"none of {targets} has attempts left")
        for t in kept:
            for a, any_outcome in self.jobs[t]["after"]:
                if not any_outcome and self.status(a) in (FAILED, CANCELLED) and a not in kept:
                    raise jobctl.Conflict(f"{t} waits on {a}, which is {self.status(a)}")
        for t in kept:
            assert self.set(t, PENDING)
        self.settle()
        return kept


class JobctlMachine(RuleBasedStateMachine):
    def __init__(self, db: str):
        super().__init__()
        self.jc = jobctl.Jobctl(db)
        self.m = Model()
        self.roots = 0

    def teardown(self):
        self.jc.close()

    # ------------------------------------------------------------- helpers
    def snapshot(self):
        rows = sorted((dict(r) for r in self.jc.list()), key=lambda r: r["id"])
        progress = {r["id"]: self.jc.progress(r["id"]) for r in rows}
        return rows, progress, len(self.jc.events())

    def last_event_id(self) -> int:
        events = self.jc.events()
        return events[-1]["id"] if events else 0

    def expect_conflict(self, call):
        before = self.snapshot()
        with pytest.raises(jobctl.Conflict) as info:
            call()
        assert info.value.exit_code == 4
        assert self.snapshot() == before

    def any_job(self, data) -> str:
        return data.draw(st.sampled_from(self.m.order), label="job")

    def pick(self, data, preferred: list[str]) -> str:
        """One of `preferred` nine times in ten (when there are any), else any job."""
        if preferred and data.draw(st.integers(0, 9), label="preferred?"):
            return data.draw(st.sampled_from(preferred), label="job")
        return self.any_job(data)

    def open_jobs(self) -> list[str]:
        """Jobs that take a new child: not final, or final as their children give it."""
        return [j for j in self.m.order if self.m.takes_child(j)]

    def final_jobs(self) -> list[str]:
        """Jobs that refuse a new child: final by hand (cancel, --force), or a fail-fast one that failed."""
        return [j for j in self.m.order if not self.m.takes_child(j)]

    # --------------------------------------------------------------- rules
    @initialize(
        shape=st.lists(st.integers(0, 3), max_size=4),
        fail_fast=st.booleans(),
        allow=st.sampled_from([None, "1", "50%"]),
        cap=st.sampled_from([None, 1, 2]),
        open=st.booleans(),
    )
    def seed_tree(self, shape, fail_fast, allow, cap, open):
        """A root with len(shape) children, child i with shape[i] children of its own;
        the root's policy (open or not), and its attempt cap on every job below it."""
        root = self.jc.create("seed", id="r0", fail_fast=fail_fast, allow_failures=allow, max_attempts=cap, open=open)
        self.m.add(None, [(root, "seed")], max_attempts=cap)
        self.m.jobs[root].update(fail_fast=fail_fast, allow=allow, open=open)
        if shape:
            kids = self.jc.spawn(root, count=len(shape))
            self.m.add(root, [(k, f"child {k.rsplit('.', 1)[1]}") for k in kids], max_attempts=cap)
            for kid, n in zip(kids, shape):
                if n:
                    grandkids = self.jc.spawn(kid, names=[f"g{i}" for i in range(n)])
                    self.m.add(kid, [(g, f"g{i}") for i, g in enumerate(grandkids)], max_attempts=cap)

    @rule(name=names, explicit=st.booleans(), open=st.booleans())
    def create_root(self, name, explicit, open):
        self.roots += 1
        want = f"r{self.roots}" if explicit else None
        jid = self.jc.create(name, id=want, open=open)
        if explicit:
            assert jid == want
        assert jid not in self.m.jobs
        self.m.add(None, [(jid, name)])
        self.m.jobs[jid]["open"] = open

    def draw_after(self, data) -> list[tuple[str, bool]]:
        """Up to two jobs to wait on, each with --after or --after-any."""
        ids = data.draw(st.lists(st.sampled_from(self.m.order), max_size=2, unique=True), label="after")
        return [(a, data.draw(st.booleans(), label="any outcome")) for a in ids]

    def expect_cycle(self, parent: str, after: list[tuple[str, bool]], call) -> bool:
        """A job to wait on that needs the new job's parent to end (or is it) cannot end
        before the new job does: UsageError, nothing written. True if so."""
        if not any(a == parent or parent in self.m.needs(a) for a, _ in after):
            return False
        before = self.snapshot()
        with pytest.raises(jobctl.UsageError, match="a cycle"):
            call()
        assert self.snapshot() == before
        return True

    @staticmethod
    def after_kwargs(after: list[tuple[str, bool]]) -> dict:
        return {"after": [a for a, x in after if not x], "after_any": [a for a, x in after if x]}

    @precondition(lambda self: self.open_jobs())
    @rule(data=st.data(), name=names)
    def create_child(self, data, name):
        parent = data.draw(st.sampled_from(self.open_jobs()), label="parent")
        after = self.draw_after(data)
        if self.expect_cycle(parent, after, lambda: self.jc.create(name, parent=parent, **self.after_kwargs(after))):
            return
        jid = self.jc.create(name, parent=parent, **self.after_kwargs(after))
        assert jid == f"{parent}.{len(self.m.jobs[parent]['kids']) + 1}"
        self.m.add(parent, [(jid, name)], max_attempts=self.m.jobs[parent]["max"], after=after)  # the parent's cap

    @precondition(lambda self: self.open_jobs())
    @rule(data=st.data(), n=st.integers(1, 5), cap=st.sampled_from([None, None, 1, 2]))
    def spawn(self, data, n, cap):
        parent = data.draw(st.sampled_from(self.open_jobs()), label="parent")
        after = self.draw_after(data)
        call = lambda: self.jc.spawn(parent, count=n, max_attempts=cap, **self.after_kwargs(after))  # noqa: E731
        if self.expect_cycle(parent, after, call):
            return
        ids = call()
        k = len(self.m.jobs[parent]["kids"])
        assert ids == [f"{parent}.{k + i}" for i in range(1, n + 1)]
        cap = self.m.jobs[parent]["max"] if cap is None else cap  # the parent's cap by default
        self.m.add(parent, [(i, f"child {i.rsplit('.', 1)[1]}") for i in ids], max_attempts=cap, after=after)

    @precondition(lambda self: any(j["kids"] for j in self.m.jobs.values()))
    @rule(data=st.data())
    def claim(self, data):
        """The oldest pending child that waits on nothing, unless the parent runs as many as its limit allows."""
        parent = data.draw(st.sampled_from([j for j in self.m.order if self.m.jobs[j]["kids"]]), label="parent")
        limit = self.m.jobs[parent]["limit"]
        ready = [k for k in self.m.jobs[parent]["kids"] if self.m.status(k) == PENDING and not self.m.waiting_on(k)]
        if (limit and self.m.counts(parent)[RUNNING] >= limit) or not ready:
            before = self.snapshot()
            assert self.jc.claim(parent) is None
            assert self.snapshot() == before
            return
        assert self.jc.claim(parent) == ready[0]
        self.m.set(ready[0], RUNNING)
        self.m.settle()

    @precondition(lambda self: self.m.jobs)
    @rule(
        data=st.data(),
        fail_fast=st.sampled_from([None, True, False]),
        allow=st.sampled_from(["keep", None, "1", "2", "50%", "34%"]),
        cap=st.sampled_from(["keep", None, 1, 2, 3]),
        open=st.sampled_from([None, None, True, False]),
        limit=st.sampled_from(["keep", "keep", None, 1, 2]),
    )
    def set_policy(self, data, fail_fast, allow, cap, open, limit):
        # mostly a parent with children: that is where a policy decides something
        jid = self.pick(data, [j for j in self.m.order if self.m.jobs[j]["kids"]])
        change, kwargs = {}, {}
        if fail_fast is not None:
            change["fail_fast"] = kwargs["fail_fast"] = fail_fast
        if allow != "keep":
            change["allow"] = kwargs["allow_failures"] = allow
        if cap != "keep":
            change["max"] = kwargs["max_attempts"] = cap
        if open is not None:
            change["open"] = kwargs["open"] = open
        if limit != "keep":
            change["limit"] = kwargs["max_running"] = limit
        if not kwargs:
            before = self.snapshot()
            with pytest.raises(jobctl.UsageError):
                self.jc.set_policy(jid)
            assert self.snapshot() == before
            return
        since = self.last_event_id()
        trial = self.m.copy()
        try:
            trial.set_policy(jid, change)
        except jobctl.Conflict:
            self.expect_conflict(lambda: self.jc.set_policy(jid, **kwargs))
            return
        self.jc.set_policy(jid, **kwargs)
        self.m = trial
        cancelled = [e for e in self.jc.events(since=since) if (e["message"] or "").startswith("fail-fast: ")]
        for e in cancelled:  # each names a child of a fail-fast parent that had failed
            named = e["message"].split(" ")[1]
            assert self.m.jobs[self.m.jobs[named]["parent"]]["fail_fast"]
            assert any(x["job_id"] == named and x["new_status"] == FAILED for x in self.jc.events(job=named))

    @precondition(lambda self: self.final_jobs())
    @rule(data=st.data(), name=names, how=st.sampled_from(["create", "spawn"]))
    def add_under_final_parent(self, data, name, how):
        parent = data.draw(st.sampled_from(self.final_jobs()), label="parent")
        if how == "create":
            self.expect_conflict(lambda: self.jc.create(name, parent=parent))
        else:
            self.expect_conflict(lambda: self.jc.spawn(parent, count=2))

    @precondition(lambda self: self.m.jobs)
    @rule(data=st.data())
    def create_again_with_same_id(self, data):
        jid = self.any_job(data)
        job = self.m.jobs[jid]
        before = self.snapshot()
        assert self.jc.create(job["name"], id=jid, parent=job["parent"]) == jid
        assert self.snapshot() == before

    @precondition(lambda self: self.m.jobs)
    @rule(data=st.data(), status=st.sampled_from(STATUSES), force=st.booleans())
    def set_status(self, data, status, force):
        jid = self.any_job(data)
        self._set_status([jid], status, force)

    @precondition(lambda self: len(self.m.jobs) >= 2)
    @rule(data=st.data(), status=st.sampled_from(STATUSES), force=st.booleans(), k=st.integers(2, 3))
    def set_status_many(self, data, status, force, k):
        ids = data.draw(st.lists(st.sampled_from(self.m.order), min_size=2, max_size=k), label="ids")
        self._set_status(ids, status, force)

    def _set_status(self, ids, status, force):
        trial = self.m.copy()
        try:
            expected = trial.set_status(ids, status, force)
        except jobctl.Conflict:
            self.expect_conflict(lambda: self.jc.set_status(ids, status, force=force))
            return
        assert self.jc.set_status(ids, status, force=force) == expected
        self.m = trial

    @precondition(lambda self: self.m.jobs)
    @rule(data=st.data())
    def cancel(self, data):
        # mostly a job with something left to cancel: cancelling a final tree is a no-op
        live = [j for j in self.m.order if any(self.m.status(k) not in FINAL for k in self.m.subtree(j))]
        jid = self.pick(data, live)
        since = self.last_event_id()
        expected = self.m.cancel(jid)
        assert self.jc.cancel(jid) == expected
        if expected and expected[-1] == jid:
            # the job's own event comes after every descendant's (only the
            # ancestors' derived events may follow it)
            sub = set(self.m.subtree(jid))
            mine = [e for e in self.jc.events(since=since) if e["job_id"] in sub]
            assert (mine[-1]["job_id"], mine[-1]["new_status"]) == (jid, CANCELLED)

    @precondition(lambda self: self.m.jobs)
    @rule(data=st.data(), failed_children=st.booleans())
    def retry(self, data, failed_children):
        # mostly a job with something to retry below it (or itself)
        wanted = {FAILED} if failed_children else {FAILED, CANCELLED}
        useful = [j for j in self.m.order if any(self.m.status(k) in wanted for k in self.m.subtree(j))]
        jid = self.pick(data, useful)
        trial = self.m.copy()
        try:
            expected = trial.retry(jid, failed_children)
        except jobctl.Conflict:
            self.expect_conflict(lambda: self.jc.retry(jid, failed_children=failed_children))
            return
        assert self.jc.retry(jid, failed_children=failed_children) == expected
        self.m = trial

    @precondition(lambda self: self.m.jobs)
    @rule(
        data=st.data(),
        key=st.sampled_from(["count", "url", "summary"]),
        value=st.one_of(names, st.integers(), st.lists(st.integers(), max_size=3)),
    )
    def set_output(self, data, key, value):
        jid = self.any_job(data)
        self.jc.set_output(jid, key, value)
        job = self.m.jobs[jid]
        job.setdefault("first_output", self.m.events)  # when it set its first: the order outputs gathers in
        job["outputs"][key] = value
        self.m.events += 1

    @precondition(lambda self: self.m.jobs)
    @rule(data=st.data(), message=names, level=st.sampled_from(["info", "warning", "error"]))
    def log(self, data, message, level):
        jid = self.any_job(data)
        self.jc.log(jid, message, level=level)
        self.m.events += 1
        last = self.jc.logs(jid)[-1]
        assert (last["text"], last["level"], last["job_id"]) == (message, level, jid)

    @precondition(lambda self: self.m.jobs)
    @rule(data=st.data())
    def heartbeat(self, data):
        jid = self.any_job(data)
        before = self.jc.get(jid)
        self.jc.heartbeat(jid)
        after = self.jc.get(jid)
        assert after["last_heartbeat"] is not None
        assert before["last_heartbeat"] is None or after["last_heartbeat"] >= before["last_heartbeat"]
        assert after["status"] == before["status"]

    @rule(to=st.sampled_from([FAILED, PENDING]))
    def reap_nothing_stale(self, to):
        before = self.snapshot()
        assert self.jc.reap(LARGE, to=to) == []
        assert self.snapshot() == before

    @rule(to=st.sampled_from([FAILED, PENDING]))
    def reap_every_running_leaf(self, to):
        """Every running job without children has a heartbeat (or start) older than a
        microsecond: all are reaped, oldest first, and their parents follow."""
        expected = [j for j in self.m.order if self.m.status(j) == RUNNING and not self.m.jobs[j]["kids"]]
        assert self.jc.reap(1e-6, to=to) == expected
        for jid in expected:
            # a job without attempts left cannot go back to pending: it fails
            self.m.set(jid, to if to == FAILED or self.m.attempts_left(jid) else FAILED)
        self.m.settle()
        for jid in expected:  # (a fail-fast parent may have cancelled it after)
            assert any("heartbeat lost" in x["text"] for x in self.jc.logs(jid)[-2:])

    # ---------------------------------------------------------- invariants
    @invariant()
    def statuses_match(self):
        rows = {r["id"]: r for r in self.jc.list()}
        assert set(rows) == set(self.m.jobs)
        for jid, job in self.m.jobs.items():
            row = rows[jid]
            assert row["status"] == job["status"], jid
            assert row["parent_id"] == job["parent"], jid
            policy = (
                row["fail_fast"],
                row["allow_failures"],
                row["max_attempts"],
                row["attempt"],
                row["is_open"],
                row["max_running"],
            )
            assert policy == (job["fail_fast"], job["allow"], job["max"], job["attempt"], job["open"], job["limit"]), (
                jid
            )
            # status timestamps follow the status
            if row["status"] == PENDING:
                assert row["started_at"] is None and row["completed_at"] is None, row
            elif row["status"] == RUNNING:
                assert row["started_at"] is not None and row["completed_at"] is None, row
            else:
                assert row["completed_at"] is not None, row

    @invariant()
    def progress_matches(self):
        for jid in self.m.order:
            p = self.jc.progress(jid)
            want = self.m.counts(jid)
            got = {s: p[f"{s}_children"] for s in STATUSES}
            assert got == {s: want[s] for s in STATUSES}, jid
            assert p["total_children"] == sum(got.values()) == len(self.m.jobs[jid]["kids"])
            assert p["status"] == self.m.status(jid)

    @invariant()
    def outputs_gathered(self):
        """Each parent's children's outputs, by name (a name shared: the later child's with its id),
        in the order the children first set one."""
        for jid, job in self.m.jobs.items():
            got = self.jc.outputs(jid)
            want = {}
            for kid in sorted(
                (k for k in job["kids"] if self.m.jobs[k]["outputs"]), key=lambda k: self.m.jobs[k]["first_output"]
            ):
                name = self.m.jobs[kid]["name"]
                want[name if name not in want else f"{name} ({kid})"] = self.m.jobs[kid]["outputs"]
            assert list(got.items()) == list(want.items()), jid

    @invariant()
    def waiting_matches(self):
        """What each job waits on, and what still holds a pending one back."""
        for row in self.jc.list():
            job = self.m.jobs[row["id"]]
            assert [(d["id"], d["any_outcome"]) for d in row["after"]] == job["after"], row["id"]
            assert row["waiting_on"] == self.m.waiting_on(row["id"]), row["id"]

    @invariant()
    def verify_clean(self):
        assert self.jc.verify() == []

    @invariant()
    def event_count(self):
        assert len(self.jc.events()) == self.m.events


def test_the_state_machine(db, tmp_path):
    """Against both backends (the `db` fixture): every example gets a database of
    its own, a SQLite file or a PostgreSQL schema of its own in the test's database."""
    examples = itertools.count()

    def fresh() -> str:
        n = next(examples)
        if db.startswith("postgresql://"):  # the test's schema's name, then _eN: dropped with it
            return with_schema(db, f"{schema_of(db)}_e{n}")
        return str(tmp_path / f"example{n}.db")

    run_state_machine_as_test(
        lambda: JobctlMachine(fresh()), settings=settings(max_examples=50, stateful_step_count=30, deadline=None)
    )


# ---------------------------------------------------------------------------
# A few fixed scenarios the state machine reaches only rarely, each checked
# against the same model and spelled out event by event.
def run_both(jc, m: Model, op: str, *args, **kw):
    got = getattr(jc, op)(*args, **kw)
    want = getattr(m, op)(*args, **kw)
    assert got == want
    assert {j["id"]: j["status"] for j in jc.list()} == {k: v["status"] for k, v in m.jobs.items()}
    assert len(jc.events()) == m.events
    assert jc.verify() == []
    return got


def changes(jc, since):
    return [(e["job_id"], e["old_status"], e["new_status"]) for e in jc.events(since=since)]


def last_id(jc):
    return jc.events()[-1]["id"]


def test_cancel_is_deepest_first_and_the_job_stays_cancelled(tmp_path):
    with jobctl.Jobctl(tmp_path / "j.db") as jc:
        m = Model()
        p = jc.create("p", id="p")
        m.add(None, [(p, "p")])
        kids = jc.spawn(p, count=3)
        m.add(p, [(k, k) for k in kids])
        a, b, c = kids
        run_both(jc, m, "set_status", [a], COMPLETED, force=False)
        run_both(jc, m, "set_status", [b], RUNNING, force=False)
        since = last_id(jc)
        assert run_both(jc, m, "cancel", p) == [c, b, p]
        # no derived flip of p to completed half-way: p is cancelled explicitly, once
        assert changes(jc, since) == [(c, PENDING, CANCELLED), (b, RUNNING, CANCELLED), (p, RUNNING, CANCELLED)]
        assert jc.status(p) == CANCELLED and jc.status(a) == COMPLETED


def test_cancel_through_a_forced_final_parent(tmp_path):
    with jobctl.Jobctl(tmp_path / "j.db") as jc:
        m = Model()
        r = jc.create("r", id="r")
        m.add(None, [(r, "r")])
        q, s = jc.spawn(r, count=2)
        m.add(r, [(q, q), (s, s)])
        q1, q2 = jc.spawn(q, count=2)
        m.add(q, [(q1, q1), (q2, q2)])
        run_both(jc, m, "set_status", [q], COMPLETED, force=True)
        since = last_id(jc)
        # q is final, so not a target: its status follows its children's
        assert run_both(jc, m, "cancel", r) == [q2, q1, s, r]
        assert changes(jc, since) == [
            (q2, PENDING, CANCELLED),
            (q, COMPLETED, RUNNING),
            (q1, PENDING, CANCELLED),
            (q, RUNNING, CANCELLED),
            (s, PENDING, CANCELLED),
            (r, RUNNING, CANCELLED),
        ]


def test_retry_below_a_parent(tmp_path):
    with jobctl.Jobctl(tmp_path / "j.db") as jc:
        m = Model()
        p = jc.create("p", id="p")
        m.add(None, [(p, "p")])
        a, b, c = jc.spawn(p, count=3)
        m.add(p, [(a, a), (b, b), (c, c)])
        run_both(jc, m, "set_status", [a], FAILED, force=False)
        run_both(jc, m, "set_status", [b], CANCELLED, force=False)
        run_both(jc, m, "set_status", [c], COMPLETED, force=False)
        assert jc.status(p) == FAILED
        assert run_both(jc, m, "retry", p, failed_children=True) == [a]
        assert jc.status(p) == RUNNING
        run_both(jc, m, "set_status", [a], FAILED, force=False)
        assert run_both(jc, m, "retry", p, failed_children=False) == [a, b]
        assert [jc.status(j) for j in (p, a, b, c)] == [RUNNING, PENDING, PENDING, COMPLETED]
        assert run_both(jc, m, "retry", a, failed_children=False) == []  # pending: nothing to do
        with pytest.raises(jobctl.Conflict):
            jc.retry(c)  # completed
        with pytest.raises(jobctl.Conflict):
            m.retry(c, False)


def test_set_status_of_a_parent_and_same_status(tmp_path):
    with jobctl.Jobctl(tmp_path / "j.db") as jc:
        m = Model()
        p = jc.create("p", id="p")
        m.add(None, [(p, "p")])
        (a,) = jc.spawn(p, count=1)
        m.add(p, [(a, a)])
        n = len(jc.events())
        with pytest.raises(jobctl.Conflict) as info:
            jc.set_status([p], COMPLETED)  # running -> completed is allowed, but p has children
        assert "children" in str(info.value)
        assert run_both(jc, m, "set_status", [p], RUNNING, force=False) == []  # same status: no-op
        assert len(jc.events()) == n
        # p first: p has children, a conflict, and nothing changes (all or nothing)
        with pytest.raises(jobctl.Conflict):
            jc.set_status([p, a], COMPLETED)
        assert len(jc.events()) == n and jc.status(a) == PENDING
        # a first: its change makes p completed, so p is then a no-op
        assert run_both(jc, m, "set_status", [a, p], COMPLETED, force=False) == [a]
        assert m.takes_child(p)  # (derived completed: a new child would reopen it; tests/test_open.py)
        assert run_both(jc, m, "set_status", [p], RUNNING, force=True) == [p]
        assert jc.progress(p)["completed_children"] == 1
