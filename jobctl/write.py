"""The write side: the unit of work of one write transaction, the
transaction envelope, and every mutation jobctl offers (`Writes`, which the
façade `jobctl.api.Jobctl` exposes).

Each mutation is one write transaction (see `jobctl.store.base` for the
contract) that changes the rows and appends one event for every job whose
status it creates or changes, parents whose derived status follows included.
Status rules come from `jobctl.model`; SQL stays in the store modules, and
nothing here knows which backend it runs on.
"""

from __future__ import annotations

import builtins
import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Concatenate, ParamSpec, TypeVar

    from jobctl.store.base import Store

    P = ParamSpec("P")
    T = TypeVar("T")
    W = TypeVar("W", bound="Writes")

from jobctl import model
from jobctl.backoff import Backoff
from jobctl.model import (
    CANCELLED,
    CREATE,
    FAILED,
    LOG,
    PENDING,
    POLICY,
    RETRYABLE,
    RUNNING,
    STATUS,
    STATUSES,
    TERMINAL,
    Conflict,
    DatabaseUnusable,
    UsageError,
    check_id,
    check_message,
    check_name,
    check_text,
    not_found,
)
from jobctl.progress import create_message, fold
from jobctl.store.base import Lost, Retryable

SPAWN_CHUNK = 10_000  # children written at a time by spawn (memory stays flat at any count)
PRUNE_BATCH = 1000  # jobs prune removes per transaction (the write lock is held for one batch only)
WRITE_RETRIES = 5  # tries of a write transaction that failed for a transient reason (PostgreSQL)


_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:/@+ ")


def _fields_json(fields: Mapping | None) -> str | None:
    """An event's fields as stored: a JSON object (keys sorted), or None. Plain
    keys and values (what `run` records: a host name, a pid, CI job ids, a
    token) are written as json.dumps would, without importing json (~2 ms at
    every `run`)."""
    if not fields:
        return None
    items = sorted(fields.items())
    if all(_PLAIN.issuperset(k) and (type(v) is int or type(v) is str and _PLAIN.issuperset(v)) for k, v in items):
        return "{" + ",".join(f'"{k}":{v}' if type(v) is int else f'"{k}":"{v}"' for k, v in items) + "}"
    import json

    return json.dumps(dict(items), separators=(",", ":"))


def _meta_json(meta: Mapping | None) -> str | None:
    import json

    return json.dumps(dict(meta), sort_keys=True, ensure_ascii=False) if meta else None


class UnitOfWork:
    """The unit of work of one write transaction (`ch` in the mutations).

    Loads jobs and child counts on demand, applies status changes through the
    model (rolling each change up to the parents), and writes everything back
    with a few executemany calls at the end.
    """

    def __init__(self, store: Store):
        self.store = store
        self.at = model.now()
        self.jobs: dict[str, dict] = {}
        self.dirty: dict[str, dict] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.deltas: dict[str, dict[str, int]] = {}  # what this change adds to each parent's counts
        self.events: list[dict] = []
        # Jobs whose status this change sets explicitly (cancel): their
        # children's changes do not re-derive them.
        self.frozen: set[str] = set()
        # Fail-fast parents to settle before the commit: {parent id: the child
        # that failed first}. Their unfinished children are cancelled after the
        # change's own work, so a change of several jobs (status set, reap)
        # applies to all of them first.
        self.fail_fast_due: dict[str, str] = {}
        # Jobs this change ended failed or cancelled: the pending jobs waiting on them
        # (--after) are cancelled before the commit (cancel_dependents).
        self.ended: list[str] = []

    def load(self, ids: Sequence[str]) -> list[dict]:
        """The jobs, with their kept child counts, read in one query where not loaded yet
        (what this change has loaded already, and perhaps changed, is kept)."""
        missing = [i for i in ids if i not in self.counts]  # (a job with its counts is in self.jobs)
        if missing:
            # their parents too, in the same read: a change rolls up to them
            jobs, counts = self.store.jobs_and_counts(missing, parents=True)
            for i, job in jobs.items():
                self.jobs.setdefault(i, job)
                self.counts.setdefault(i, counts[i])
        try:
            return [self.jobs[i] for i in ids]
        except KeyError as exc:
            raise not_found(exc.args[0]) from None

    def job(self, job_id: str) -> dict:
        if job_id in self.counts:  # loaded already (the common case: a parent, again)
            return self.jobs[job_id]
        return self.load([job_id])[0]

    def subtree(self, job_id: str) -> list[dict]:
        """The job and its descendants (parents first), loaded into this change."""
        rows = self.store.subtree(job_id)
        if not rows:
            raise not_found(job_id)
        for row in rows:
            row.pop("depth", None)
        return [self.jobs.setdefault(row["id"], row) for row in rows]

    def counts_of(self, parent_id: str) -> dict[str, int]:
        if parent_id not in self.counts:
            self.load([parent_id])  # with the job itself: the roll-up needs both
        return self.counts[parent_id]

    def event(
        self,
        job: dict,
        kind: str,
        old: str | None,
        new: str | None,
        message: str | None = None,
        log_id: int | None = None,
    ) -> None:
        self.events.append(
            {
                "job_id": job["id"],
                "parent_id": job["parent_id"],
                "root_id": job["root_id"],
                "kind": kind,
                "old_status": old,
                "new_status": new,
                "at": self.at,
                "message": message,
                "log_id": log_id,
                "fields": None,
                "exit_code": None,
                "duration": None,
                "attempt": job["attempt"] if kind in (CREATE, STATUS) else None,
                "max_attempts": job["max_attempts"] if kind != LOG else None,
            }
        )

    def set_status(
        self, job: dict, new: str, message: str | None, *, derived: bool = False, fields: str | None = None
    ) -> bool:
        """Move `job` to `new` (no checks: callers check), with its event and roll-up.
        A `derived` change (a parent's) is no attempt of the job's: its event has none.
        `fields`: the event's (JSON text; `run`'s running event: where it runs)."""
        old = job["status"]
        if old == new:
            return False
        model.enter_status(job, new, self.at, message)
        self.dirty[job["id"]] = job
        if job.get("waited_on", 1) and model.cancels(new, 0):  # (a row without the column: looked for)
            self.ended.append(job["id"])
        self.event(job, STATUS, old, new, message)
        self.events[-1]["fields"] = fields
        if derived:
            self.events[-1]["attempt"] = self.events[-1]["max_attempts"] = None
        if job["parent_id"] is not None:
            self.child_changed(job["parent_id"], old, new, child_id=job["id"])
        return True

    def child_changed(
        self, parent_id: str, old: str | None, new: str | None, n: int = 1, child_id: str | None = None
    ) -> None:
        counts = self.counts_of(parent_id)
        fold(counts, old, new, n)
        delta = self.deltas.get(parent_id)
        if delta is None:
            delta = self.deltas[parent_id] = dict.fromkeys(STATUSES, 0)
        fold(delta, old, new, n)
        if parent_id in self.frozen:
            return
        parent = self.job(parent_id)
        if new == FAILED and model.fails_fast(counts, parent["fail_fast"], parent["allow_failures"]):
            self.fail_fast_due.setdefault(parent_id, child_id or "a child")
        new_child = old is None and parent["status"] in TERMINAL and child_id is not None
        self.rederive(parent, model.new_child_message(child_id, n) if new_child else None)  # type: ignore[arg-type]

    def rederive(self, parent: dict, message: str | None = None) -> None:
        """Set the parent's status to what its children's counts and its policy give."""
        counts = self.counts_of(parent["id"])
        derived = model.derive(counts, parent)
        if derived != parent["status"]:
            message = message or model.derived_message(counts, derived, parent["allow_failures"])
            self.set_status(parent, derived, message, derived=True)

    def settle(self) -> None:
        """Before the commit: every fail-fast parent that more children failed in
        than allowed cancels its unfinished descendants (`fail-fast: <child>
        failed`), then fails, its event after theirs; a parent failing so may
        make its own fail-fast parent due in turn. Then the jobs waiting on one
        that ended failed or cancelled are cancelled (cancel_dependents), and
        so on, until nothing more is due."""
        while self.fail_fast_due or self.ended:
            if not self.fail_fast_due:
                self.cancel_dependents()
                continue
            # the deepest first: one inside another's subtree fails (as its own
            # children say) before the outer one's cancelling reaches it
            parent_id = max(self.fail_fast_due, key=self.depth)
            child_id = self.fail_fast_due.pop(parent_id)
            parent = self.job(parent_id)
            if not model.fails_fast(self.counts_of(parent_id), parent["fail_fast"], parent["allow_failures"]):
                continue  # (a later job of this change retried the failure, say)
            message = model.fail_fast_message(child_id)
            self.cancel_tree(parent, message, below=True)
            self.rederive(parent, message)

    def cancel_dependents(self) -> None:
        """Cancel every pending job that waits (--after) on a job this change ended
        failed or cancelled: `dependency P.2 failed`; those it cancels are ended
        in turn, so a chain is cancelled to its end in this change."""
        ended, self.ended = self.ended, []
        waiting = self.store.dependents(ended, PENDING)
        self.load(list(dict.fromkeys(d[k] for d in waiting for k in ("job_id", "after_id"))))  # in one read
        for d in waiting:
            after = self.job(d["after_id"])
            job = self.job(d["job_id"])
            if job["status"] != PENDING or not model.cancels(after["status"], d["any_outcome"]):
                continue
            message = model.dependency_message(after["id"], after["status"])
            if any(self.counts_of(job["id"]).values()):  # (a parent pending: only --force makes one)
                self.cancel_tree(job, message)
            else:
                self.set_status(job, CANCELLED, message)

    def depth(self, job_id: str) -> int:
        """How many ancestors the job has (read through this change's copies)."""
        n, parent = 0, self.job(job_id)["parent_id"]
        while parent is not None:
            n, parent = n + 1, self.job(parent)["parent_id"]
        return n

    def cancel_tree(self, job: dict, message: str, *, below: bool = False) -> list[str]:
        """Cancel the job (not with `below`: fail-fast, whose parent is derived
        afterwards) and every unfinished descendant, deepest first, each with
        its event, so the job's own comes after all of theirs; then the usual
        roll-up above it. Returns the ids cancelled, in event order.

        Set-based in the store, after this change's writes so far (which the
        store must see); what this change had read is read again. A final job
        with unfinished children below (only --force makes one) is re-derived,
        so that subtree goes job by job."""
        self.write_pending()
        old = job["status"]
        ids = self.store.cancel_subtree(job["id"], message, self.at, below=below)
        if ids is not None:
            self.ended += ids
            self.jobs.clear()
            self.counts.clear()
            job.update(self.job(job["id"]))  # the caller's copy stays this change's copy
            self.jobs[job["id"]] = job
            if ids and ids[-1] == job["id"] and job["parent_id"] is not None:
                self.child_changed(job["parent_id"], old, CANCELLED, child_id=job["id"])
            return ids
        targets = [j for j in reversed(self.subtree(job["id"])) if j["status"] not in TERMINAL]
        if below:
            targets = [j for j in targets if j["id"] != job["id"]]
        before = set(self.frozen)  # the targets (and, below it, the job) are not derived again meanwhile
        self.frozen |= {j["id"] for j in targets} | ({job["id"]} if below else set())
        try:
            for j in targets:
                self.set_status(j, CANCELLED, message)
        finally:
            self.frozen = before
        return [j["id"] for j in targets]

    def add_jobs(self, parent: dict | None, jobs: list[dict], deps: Sequence[tuple[str, int]] = ()) -> None:
        """Insert new pending jobs (all children of `parent`, or one root), each
        waiting on `deps` (model.check_after's). If one of their ids is taken,
        IdTaken is raised and nothing has changed."""
        self.store.insert_jobs(jobs)
        fields = _fields_json(model.after_fields(deps))
        for j in jobs:
            self.jobs[j["id"]] = j
            text = model.policy_text(
                j["fail_fast"], j["allow_failures"], j["max_attempts"], j["is_open"], j["max_running"]
            )
            self.event(j, CREATE, None, j["status"], create_message(text, deps))
            self.events[-1]["fields"] = fields
        if deps:
            self.store.insert_dependencies([(j["id"], a, any_outcome) for j in jobs for a, any_outcome in deps])
        if parent is not None:
            self.child_changed(parent["id"], None, PENDING, n=len(jobs), child_id=jobs[0]["id"])

    def insert_children(self, parent: dict, jobs: list[dict], deps: Sequence[tuple[str, int]] = ()) -> None:
        """Insert a chunk of new pending children with their create events at once,
        keeping none of them in this change (a spawn of a million stays small
        in memory); IdTaken if an id is taken, with nothing of this chunk written."""
        if self.events:  # whatever came before, first: events stay in order
            self.store.insert_events(self.events)
            self.events = []
        cap = jobs[0]["max_attempts"] if jobs else None  # a spawn's children share it
        message = create_message(model.policy_text(0, None, cap), deps)
        self.store.insert_children(jobs, message, _fields_json(model.after_fields(deps)))
        if deps:
            self.store.insert_dependencies([(j["id"], a, any_outcome) for j in jobs for a, any_outcome in deps])
        self.child_changed(parent["id"], None, PENDING, n=len(jobs), child_id=jobs[0]["id"] if jobs else None)

    def flush(self) -> None:
        self.settle()
        self.write_pending()

    def write_pending(self) -> None:
        """Write what this change did so far: rows, kept counts, events (in order)."""
        if self.dirty:
            self.store.update_statuses(self.dirty.values())
            self.dirty = {}
        if self.deltas:
            self.store.apply_count_deltas(self.deltas)
            self.deltas = {}
        if self.events:
            self.store.insert_events(self.events)
            self.events = []


def transaction(method: Callable[Concatenate[W, UnitOfWork, P], T]) -> Callable[Concatenate[W, P], T]:
    """The envelope of every mutation: `method(self, ch, ...)` runs inside one
    write transaction with a fresh UnitOfWork `ch`, which is flushed before the
    commit. A transaction that failed for a transient reason (the store raises
    Retryable, with nothing written) runs again, a few times, with jitter.
    The envelope's type drops `ch`, so a type checker sees the call as callers
    make it (a wrong argument is caught)."""

    def run(self: W, /, *args: P.args, **kwargs: P.kwargs) -> T:
        backoff = Backoff(0.03, 0.5)
        for attempt in range(WRITE_RETRIES):
            try:
                with self._store.write():
                    ch = UnitOfWork(self._store)
                    result = method(self, ch, *args, **kwargs)
                    ch.flush()
                return result
            except Retryable as exc:
                if attempt == WRITE_RETRIES - 1:
                    raise DatabaseUnusable(
                        f"{exc} (still failing after {WRITE_RETRIES} tries; nothing was written)"
                    ) from None
                backoff.sleep()
        raise AssertionError("unreachable")

    run.__name__, run.__qualname__, run.__doc__ = method.__name__, method.__qualname__, method.__doc__
    return run


class Writes:
    """The mutations; `jobctl.api.Jobctl` is the façade that has them."""

    _store: Store

    def create(
        self,
        name: str,
        *,
        type: str | None = None,
        parent: str | None = None,
        id: str | None = None,
        meta: Mapping[str, str] | None = None,
        fail_fast: bool = False,
        allow_failures: str | int | None = None,
        max_attempts: int | None = None,
        running: str | None = None,
        fields: Mapping[str, object] | None = None,
        open: bool = False,
        max_running: int | None = None,
        after: Iterable[str] = (),
        after_any: Iterable[str] = (),
    ) -> str:
        """Create a job (pending) and return its id.

        Its failure policy, for when it has children: with `fail_fast`, the first
        child that fails (beyond `allow_failures`) fails it and cancels the
        rest; `allow_failures` ("2" or "5%") failed children still let it
        complete. `max_attempts` caps how often it may start (None: no cap).
        With `id`, creating the same job again is a no-op that returns the id;
        the same id with other attributes (or another policy, where one is
        given) raises Conflict. An `open` parent is not derived final, whatever
        its children's states, until it is closed (`close`): more may come.
        `max_running`: at most that many of its children run at once.
        With `running` (a message), the job is set running in the same
        transaction (`run --parent P`: no worker can claim it pending
        meanwhile); an existing job (`id`) must be pending then, and childless;
        `fields` go on that running event (where it runs: see Jobctl.set_status).
        With `after` (job ids), it waits, pending, until each of them has
        completed (`after_any`: has ended, whatever its outcome): claim skips it,
        starting it by hand needs force, and `running` leaves it pending (`run`
        waits). One of `after` that ends failed or cancelled cancels it at once
        (`dependency P.2 failed`), even if it had before. A job that does not
        exist, or one that cannot end before this one does (its parent, say: a
        cycle), is a UsageError.
        """
        deps = model.check_after(after, after_any)
        check_name(name)
        check_message(running)
        check_text(type, "type")
        if id is not None:
            check_id(id)
            if id == parent:
                raise UsageError(f"job {id} cannot be its own parent")
        policy = {
            "fail_fast": int(bool(fail_fast)),
            "allow_failures": model.check_allowance(allow_failures),
            "max_attempts": model.check_max_attempts(max_attempts),
            "is_open": int(bool(open)),
            "max_running": model.check_max_running(max_running),
        }
        return self._create(name, type, parent, id, _meta_json(meta), policy, running, _fields_json(fields), deps)

    @transaction
    def _create(
        self,
        ch: UnitOfWork,
        name: str,
        type: str | None,
        parent: str | None,
        id: str | None,
        meta_json: str | None,
        policy: dict,
        running: str | None = None,
        fields: str | None = None,
        deps: Sequence[tuple[str, int]] = (),
    ) -> str:
        if id is not None:
            existing = self._store.get_job(id)
            if existing is not None:
                given = {k: v for k, v in policy.items() if v}  # the policy parts given (not defaults)
                want = {"name": name, "type": type, "parent_id": parent, "metadata": meta_json, **given}
                differ = [k for k, v in want.items() if existing[k] != v]
                had = [(d["after_id"], d["any_outcome"]) for d in self._store.dependencies_of([id])]
                differ += ["--after"] if deps and had != list(deps) else []
                if differ:
                    raise Conflict(f"job {id} already exists with a different {', '.join(differ)}")
                if running is not None:
                    job = ch.job(id)
                    if any(ch.counts_of(id).values()):
                        raise UsageError(f"job {id} has children: its status is derived, it runs no command")
                    if job["status"] != PENDING:
                        raise UsageError(f"job {id} is {job['status']}: only a pending job can be run")
                    if not self._waiting_on(job):  # (else left pending: `run` waits)
                        self._check_limit(ch, job)
                        ch.set_status(job, RUNNING, running, fields=fields)
                return id
        p = self._open_parent(ch, parent) if parent is not None else None
        if id is None:
            id = self._free_child_id(p) if p else self._free_root_id()
        if p is not None and policy["max_attempts"] is None:  # a child gets its parent's cap, as in spawn
            policy = {**policy, "max_attempts": p["max_attempts"]}
        waits = self._check_after(ch, id, parent, deps)
        job = self._new_job(ch, id, name, type, p, meta_json, **policy, waits=len(deps))
        ch.add_jobs(p, [job], deps)
        if running is not None and not waits:
            self._check_limit(ch, job)
            ch.set_status(job, RUNNING, running, fields=fields)
        return id

    def spawn(
        self,
        parent: str,
        *,
        count: int | None = None,
        names: Sequence[str] | None = None,
        type: str | None = None,
        max_attempts: int | None = None,
        after: Iterable[str] = (),
        after_any: Iterable[str] = (),
    ) -> list[str]:
        """Create children of `parent`, pending, in one transaction; return their ids.
        Each may start `max_attempts` times (default: the parent's cap, if any),
        and waits on `after` and `after_any` as in `create`."""
        deps = model.check_after(after, after_any)
        model.check_max_attempts(max_attempts)
        if (count is None) == (names is None):
            raise UsageError("give either a count or names of the children")
        check_text(type, "type")
        if names is not None:
            names = [check_name(n) for n in names]
            if not names:
                raise UsageError("no child names given")
            count = len(names)
        elif not isinstance(count, int) or count < 1:
            raise UsageError(f"--count must be a positive whole number, not {count}")
        elif count > model.MAX_SPAWN:
            raise UsageError(f"--count is at most {model.MAX_SPAWN:,} children in one spawn, not {count:,}")
        return self._spawn(parent, count, names, type, max_attempts, deps)

    @transaction
    def _spawn(
        self,
        ch: UnitOfWork,
        parent: str,
        n: int,
        names: Sequence[str] | None,
        type: str | None,
        cap: int | None,
        deps: Sequence[tuple[str, int]] = (),
    ) -> list[str]:
        p = self._open_parent(ch, parent)
        cap = p["max_attempts"] if cap is None else cap
        self._check_after(ch, None, parent, deps)
        return self._add_children(ch, p, sum(ch.counts_of(parent).values()) + 1, n, names, type, cap, deps)

    _KEEP = object()  # set_policy: leave this part of the policy as it is

    def set_policy(
        self,
        job_id: str,
        *,
        fail_fast: bool | None = None,
        allow_failures: str | int | None | object = _KEEP,
        max_attempts: int | None | object = _KEEP,
        open: bool | None = None,
        max_running: int | None | object = _KEEP,
    ) -> dict:
        """Change the job's failure policy (parts not given stay), with a `policy`
        event; the job's status follows at once (a fail-fast parent with a child
        failed already fails now and cancels the rest; a parent closed is
        derived from its children). Opening a final parent is refused unless it
        would take a new child (model.takes_child). Returns the new policy."""
        change: dict = {}
        if open is not None:
            change["is_open"] = int(bool(open))
        if max_running is not Writes._KEEP:
            change["max_running"] = model.check_max_running(max_running)  # type: ignore[arg-type]
        if fail_fast is not None:
            change["fail_fast"] = int(bool(fail_fast))
        if allow_failures is not Writes._KEEP:
            change["allow_failures"] = model.check_allowance(allow_failures)  # type: ignore[arg-type]
        if max_attempts is not Writes._KEEP:
            change["max_attempts"] = model.check_max_attempts(max_attempts)  # type: ignore[arg-type]
        if not change:
            raise UsageError(
                "no policy given (--open, --closed, --fail-fast, --no-fail-fast, --allow-failures,"
                " --max-attempts, --max-running)"
            )
        return self._set_policy(job_id, change)

    @transaction
    def _set_policy(self, ch: UnitOfWork, job_id: str, change: dict) -> dict:
        job = ch.job(job_id)
        policy = {k: job[k] for k in ("fail_fast", "allow_failures", "max_attempts", "is_open", "max_running")}
        if {**policy, **change} == policy:
            return _policy(policy)
        counts = ch.counts_of(job_id)
        before = dict(job)
        if change.get("is_open") and not policy["is_open"]:
            self._check_takes_child(counts, job, "open")
        job.update(change)
        if change.keys() - {"is_open", "max_running"}:
            self._store.set_policy(job_id, job["fail_fast"], job["allow_failures"], job["max_attempts"])
        if (job["is_open"], job["max_running"]) != (policy["is_open"], policy["max_running"]):
            self._store.set_fanout(job_id, job["is_open"], job["max_running"])
        text = model.policy_text(
            job["fail_fast"], job["allow_failures"], job["max_attempts"], job["is_open"], job["max_running"]
        )
        ch.event(job, POLICY, None, None, text or "none")
        if model.fails_fast(counts, job["fail_fast"], job["allow_failures"]):
            first = next(iter(self._store.list_jobs(parent_id=job_id, statuses=[FAILED], limit=1)))
            ch.fail_fast_due[job_id] = first["id"]  # settled before the commit
        elif model.follows_children(counts, before):
            closed = job["is_open"] < policy["is_open"]
            ch.rederive(job, model.CLOSED_MESSAGE if closed else None)  # a status set by hand (cancel, --force) stays
        return _policy(job)

    def close_parent(self, job_id: str) -> dict:
        """Close an open parent (`jobctl close`): no more children are expected,
        its status is derived from its children's at once. Returns its policy."""
        return self.set_policy(job_id, open=False)

    def set_status(
        self,
        ids: Sequence[str],
        status: str,
        *,
        message: str | None = None,
        force: bool = False,
        fields: Mapping[str, object] | None = None,
    ) -> list[str]:
        """Set the status of every job in `ids`, all or nothing; return the ids that changed.

        Setting a status a job already has is a no-op. A job with children has
        a derived status: setting it needs `force`. `fields` (a JSON object's
        keys and values) are stored with each event: `run` says where it runs.
        """
        model.check_status_word(status)
        check_message(message)
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise UsageError("no job ids given")
        return self._set_status(ids, status, message, force, _fields_json(fields))

    @transaction
    def _set_status(
        self, ch: UnitOfWork, ids: list[str], status: str, message: str | None, force: bool, fields: str | None = None
    ) -> list[str]:
        changed = []
        jobs = ch.load(ids)
        for job in jobs:
            if job["status"] == status:
                continue
            model.check_transition(job["id"], job["status"], status, force=force)
            if not force and any(ch.counts_of(job["id"]).values()):
                raise Conflict(
                    f"job {job['id']} has children: its status is derived from theirs (use `jobctl cancel`, or --force)"
                )
            if status == RUNNING and not force:
                self._check_limit(ch, job)
                held_by = self._waiting_on(job)
                if held_by:
                    raise model.not_ready(job["id"], held_by)
            ch.set_status(job, status, message, fields=fields)
            changed.append(job["id"])
        return changed

    def cancel(self, job_id: str, *, message: str | None = None) -> list[str]:
        """Cancel the job and every non-terminal descendant; return the ids cancelled."""
        check_message(message)
        return self._cancel(job_id, message)

    @transaction
    def _cancel(self, ch: UnitOfWork, job_id: str, message: str | None) -> list[str]:
        return ch.cancel_tree(ch.job(job_id), message or "cancelled")

    def retry(self, job_id: str, *, failed_children: bool = False) -> Retried:
        """Put failed or cancelled jobs back to pending, each starting its next
        attempt; return their ids (a list, with `.skipped`: those left alone).

        A job without children is retried itself; one that used all its
        attempts (--max-attempts) is refused (Conflict). For a job with
        children the failed or cancelled jobs without children of its own
        below it are retried (only the failed ones with `failed_children`),
        except those without attempts left, which are skipped (Conflict if
        that leaves none); the parents' derived statuses follow.
        """
        return self._retry(job_id, failed_children)

    @transaction
    def _retry(self, ch: UnitOfWork, job_id: str, failed_children: bool) -> Retried:
        job = ch.job(job_id)
        if not sum(ch.counts_of(job_id).values()):
            if failed_children or job["status"] == PENDING:
                targets = []
            elif job["status"] in RETRYABLE:
                if not model.attempts_left(job):
                    raise model.out_of_attempts(job)
                targets = [job]
            else:
                raise Conflict(f"job {job_id} is {job['status']}: only failed or cancelled jobs can be retried")
        else:
            sub = ch.subtree(job_id)
            parents = {j["parent_id"] for j in sub}
            wanted = {FAILED} if failed_children else RETRYABLE
            targets = [j for j in sub if j["id"] not in parents and j["status"] in wanted]
        skipped = [t["id"] for t in targets if not model.attempts_left(t)]
        if skipped and len(skipped) == len(targets):
            raise Conflict(
                f"none retried: {len(skipped)} of job {job_id}'s children"
                f" {'has' if len(skipped) == 1 else 'have'} used all their attempts (--max-attempts)"
            )
        retried = Retried((t["id"] for t in targets if model.attempts_left(t)), skipped)
        for d in self._store.dependencies_of(retried, locked=True):
            if model.cancels(d["status"], d["any_outcome"]) and d["after_id"] not in retried:
                raise Conflict(
                    f"job {d['job_id']} waits on {d['after_id']}, which is {d['status']}:"
                    f" retry {d['after_id']} first (or a job above both)"
                )
        for t in targets:
            if model.attempts_left(t):
                ch.set_status(t, PENDING, "retry")
        return retried

    def claim(
        self,
        parent: str,
        *,
        message: str | Callable[[dict], str] | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> str | None:
        """Atomically take the oldest pending child of `parent` (not one backing off
        before a retry: see `not_before`) and set it running; concurrent
        claimers never get the same child. `message` may be a function of the
        child's row (its name, say), for the running event.

        A claim whose connection drops (store.Lost: its COMMIT may have gone
        through, the reply lost) is not left running without its claimer: each
        claim carries a token of its own in its running event's fields
        (model.CLAIM_FIELD), looked for once the store has reconnected; the
        child found is returned, and if none is, the claim changed nothing and
        runs again (up to WRITE_RETRIES tries). A claimer that cannot tell
        (the database stays unreachable) raises DatabaseUnusable saying so."""
        for attempt in range(WRITE_RETRIES):
            token = os.urandom(8).hex()
            try:
                return self._claim(parent, message, _fields_json({**(fields or {}), model.CLAIM_FIELD: token}))
            except Lost as exc:
                try:
                    found = self._store.child_marked(parent, RUNNING, f'"{model.CLAIM_FIELD}":"{token}"')
                except DatabaseUnusable as again:
                    raise DatabaseUnusable(
                        f"{exc}; whether it claimed a child of {parent} is unknown ({again}):"
                        " a child left running without its worker is reapable (jobctl reap)"
                    ) from None
                if found is not None:
                    return found
                if attempt == WRITE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    @transaction
    def _claim(
        self, ch: UnitOfWork, parent: str, message: str | Callable[[dict], str] | None, fields: str | None
    ) -> str | None:
        p = ch.job(parent)
        if model.at_limit(ch.counts_of(parent), p):
            return None  # (a worker waits for a change, as when none is pending)
        row = self._store.next_child(parent, PENDING, ready_at=ch.at)
        if row is None:
            return None
        job = ch.jobs.setdefault(row["id"], row)
        ch.set_status(job, RUNNING, message(row) if callable(message) else message, fields=fields)
        return job["id"]

    def log(self, job_id: str, message: str, *, level: str = "info") -> None:
        """Append a log line to a job (a logs row plus a `log` event for watchers)."""
        if level not in model.LOG_LEVELS:
            raise UsageError(f"unknown log level {level!r} (valid: {', '.join(model.LOG_LEVELS)})")
        if not message or not message.strip():
            raise UsageError("a log message must not be empty")
        check_message(message)
        self._log(job_id, message, level)

    @transaction
    def _log(self, ch: UnitOfWork, job_id: str, message: str, level: str) -> None:
        job = ch.job(job_id)
        (log_id,) = self._store.insert_logs(job_id, [(level, message)], ch.at)
        ch.event(job, LOG, None, None, None, log_id)

    def set_output(self, job_id: str, key: str, value: object) -> None:
        """Store a small named output with the job (`jobctl output set`), as an
        `output` event: a string, or any JSON value; the last one set of a key wins.
        UsageError for a bad key or a value over model.MAX_OUTPUT_VALUE."""
        self._set_outputs(job_id, [model.output_message(key, value)])

    @transaction
    def _set_outputs(self, ch: UnitOfWork, job_id: str, messages: Sequence[str]) -> None:
        job = ch.job(job_id)
        for message in messages:
            ch.event(job, model.OUTPUT, None, None, message)

    def log_lines(self, job_id: str, lines: Sequence[tuple[str, str]]) -> None:
        """Append many log lines (level, text) to a job in one transaction (`jobctl run`'s output)."""
        self._log_lines(job_id, lines)

    @transaction
    def _log_lines(self, ch: UnitOfWork, job_id: str, lines: Sequence[tuple[str, str]]) -> None:
        self._append_lines(ch, job_id, lines)

    def _append_lines(self, ch: UnitOfWork, job_id: str, lines: Sequence[tuple[str, str]]) -> None:
        job = ch.job(job_id)
        cut = [(level, text[: model.MAX_MESSAGE_LENGTH] or " ") for level, text in lines]
        for log_id in self._store.insert_logs(job_id, cut, ch.at):  # (one statement: one round trip)
            ch.event(job, LOG, None, None, None, log_id)

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        message: str | None,
        exit_code: int | None,
        duration: float | None,
        lines: Sequence[tuple[str, str]] = (),
        retry_in: float | None = None,
        retries: int | None = None,
        attempt: int | None = None,
        token: str | None = None,
        outputs: Sequence[tuple[str, str]] = (),
    ) -> str:
        """End a running job with its command's outcome, in one transaction: the
        last log lines, the status change and the exit code and duration. A job
        already final (cancelled from elsewhere meanwhile) keeps its status.
        With `retry_in` (seconds; 0: at once), a failure is retried when the job
        may run again (model.may_retry: its max_attempts, or `retries`, as
        `run --retries`): it goes back to pending, its next
        attempt (`exit code 1; retrying in 5s`), not to be claimed before then.
        With `attempt` (the one the command ran as), an outcome that comes after
        the job moved on to another attempt (reaped, and perhaps run elsewhere
        already) is stale: only its log lines are kept. With `token` (unique to
        this outcome), a finish that committed already (its reply lost with the
        connection: `run` tries again) changes nothing: its events carry the
        token, looked for first. `outputs` (key, value), from `run --output-file`,
        are stored with the outcome. Returns the job's status."""
        messages = [model.output_message(k, v) for k, v in outputs]
        return self._finish(
            job_id, status, message, exit_code, duration, lines, retry_in, retries, attempt, token, messages
        )

    @transaction
    def _finish(
        self,
        ch: UnitOfWork,
        job_id: str,
        status: str,
        message: str | None,
        exit_code: int | None,
        duration: float | None,
        lines: Sequence[tuple[str, str]],
        retry_in: float | None,
        retries: int | None,
        attempt: int | None,
        token: str | None,
        outputs: Sequence[str] = (),
    ) -> str:
        mark, n = _fields_json({"token": token} if token is not None else None), len(ch.events)
        job = ch.job(job_id)  # first: its row lock keeps the look for the token true (event_fields)
        if mark is not None and any(row["fields"] == mark for row in self._store.event_fields(job_id)):
            return job["status"]
        self._append_lines(ch, job_id, lines)
        if attempt is not None and job["attempt"] != attempt:
            return job["status"]
        for text in outputs:
            ch.event(job, model.OUTPUT, None, None, text)
        seconds = None if duration is None else round(duration, 3)
        if job["status"] not in TERMINAL:
            if status == FAILED and retry_in is not None and model.may_retry(job, retries):
                status = PENDING
                message = f"{message}; retrying" + (f" in {model.seconds_text(retry_in)}" if retry_in else "")
            # (no change when the job is pending already: reaped meanwhile, and a retry is due anyway)
            if ch.set_status(job, status, message):
                if status == PENDING and retry_in:
                    job["not_before"] = model.timestamp(time.time() + retry_in)
                final = next(e for e in reversed(ch.events) if e["job_id"] == job_id and e["kind"] == STATUS)
                final["exit_code"], final["duration"] = exit_code, seconds  # events --json carries the outcome too
        self._store.set_outcome(job_id, exit_code, seconds)
        for e in ch.events[n:]:  # (this change's events of the job: nothing flushed them yet)
            if e["job_id"] == job_id:
                e["fields"] = mark
        return job["status"]

    def heartbeat(self, job_id: str) -> None:
        """Record that the job's worker is alive. Not a status change: no event."""
        self._heartbeat(job_id)

    @transaction
    def _heartbeat(self, ch: UnitOfWork, job_id: str) -> None:
        if not self._store.set_heartbeat(job_id, ch.at):
            raise not_found(job_id)

    def reap(self, stale_after: float, *, to: str = FAILED, parent: str | None = None) -> list[str]:
        """Move running jobs whose heartbeat is older than `stale_after` seconds to `to`
        (only the children of `parent`, if given)."""
        if to not in (FAILED, PENDING):
            raise UsageError(f"reap moves stale jobs to failed or pending, not {to!r}")
        return self._reap(model.ago(stale_after), to, parent)

    @transaction
    def _reap(self, ch: UnitOfWork, cutoff: str, to: str, parent: str | None) -> list[str]:
        if parent is not None:
            ch.job(parent)
        stale = list(self._store.list_jobs(parent_id=parent, statuses=[RUNNING], alive_before=cutoff))
        for row in stale:
            row.pop("alive_at", None)
            j = ch.jobs.setdefault(row["id"], row)
            if to == PENDING and not model.attempts_left(j):  # no attempt left to go back to
                ch.set_status(j, FAILED, f"heartbeat lost; no attempts left ({j['attempt']}/{j['max_attempts']})")
            else:
                ch.set_status(j, to, "heartbeat lost")
        return [j["id"] for j in stale]

    def prune(
        self,
        older_than: float,
        *,
        statuses: Sequence[str] = (),
        dry_run: bool = False,
        on_tree: Callable[[str, int, int], None] | None = None,
    ) -> dict:
        """Remove the finished top-level trees (jobs, events, logs, outputs) whose
        root has one of `statuses` (every final status if none) and that changed
        last more than `older_than` seconds ago; with `dry_run`, only count them.
        A transaction removes at most PRUNE_BATCH jobs, leaves first, so the write
        lock is never held long and every commit leaves the counts right. The tree
        holding the newest event is kept (PostgreSQL numbers events from it).
        `on_tree(root, jobs, events)` is called for each tree as it goes. Returns
        the totals: trees, jobs, events, and the low-water mark `before`."""
        chosen = model.check_prune_statuses(statuses)
        cutoff = model.ago(older_than)
        store = self._store
        totals = {"trees": 0, "jobs": 0, "events": 0}
        after = ""
        while True:
            roots = store.prune_roots(cutoff, chosen, after=after)
            if not roots:
                break
            after = roots[-1]
            for root in roots:
                jobs, events = store.tree_size(root)
                if not dry_run and not self._prune_tree(root, cutoff, chosen):
                    continue  # it changed meanwhile: kept (what went is consistent)
                totals["trees"] += 1
                totals["jobs"] += jobs
                totals["events"] += events
                if on_tree is not None:
                    on_tree(root, jobs, events)
        return {**totals, "before": store.pruned_before()}

    def _prune_tree(self, root: str, cutoff: str, statuses: Sequence[str]) -> bool:
        """Remove one tree a batch a transaction, depth first; False if it stopped
        being one to prune (a new event came) before its root went."""
        path = [root]  # the jobs whose children are being removed, root first
        while path:
            step, job_id = self._prune_step(path[-1], root, cutoff, statuses)
            if step == "stop":
                return False
            if step == "down":
                path.append(job_id)
            elif step == "up":
                path.pop()  # (no children left: its parent's next batch removes it)
        return True

    @transaction
    def _prune_step(
        self, ch: UnitOfWork, job_id: str, root: str, cutoff: str, statuses: Sequence[str]
    ) -> tuple[str, str]:
        """One batch: remove up to PRUNE_BATCH childless children of `job_id` ("gone"),
        or the root itself once it has none ("up"); or go down to a child that has
        children ("down"); "stop" if the tree is no longer one to prune."""
        store = self._store
        if not store.prune_roots(cutoff, statuses, only=root):
            return "stop", root
        children = store.prune_children(job_id, PRUNE_BATCH)
        if not children:
            if job_id == root:
                store.prune_jobs(root, [{"id": root, "parent_id": None, "status": None}])
            return "up", job_id
        leaves = [c for c in children if not c["inner_node"]]
        if not leaves:
            return "down", children[0]["id"]
        store.prune_jobs(root, leaves)
        return "gone", job_id

    def _check_after(
        self, ch: UnitOfWork, job_id: str | None, parent_id: str | None, deps: Sequence[tuple[str, int]]
    ) -> list[str]:
        """Check what a new job (`job_id`: None for a spawn's) is to wait on: each job
        exists (else UsageError) and can end before the new one does (else UsageError:
        a cycle, model.dependency_cycle). One that failed or was cancelled already
        is this change's to follow up (cancel_dependents cancels the new job). Returns
        the ids the new job waits on now. On PostgreSQL their rows are locked first (a
        change that ends one of them locks it too: the two queue on its row, in the
        order every change locks rows, before the write lock), then read again under
        the write lock, which a change ending one of them holds when it reads what
        waits on it (cancel_dependents), so neither misses the other whichever
        commits first, even where a parent is read without a row lock; the write lock
        also keeps two creations from closing a cycle between them."""
        if not deps:
            return []
        ids = [a for a, _ in deps]
        try:
            ch.load(ids)
        except model.NotFound as exc:
            raise UsageError(f"--after: {exc}") from None
        self._store.hold_write_lock()
        fresh = self._store.jobs_and_counts(ids)[0]
        after = [ch.jobs[a] for a in ids]
        for a in after:
            a.update(fresh[a["id"]], waited_on=1)  # (this change's copies: cancel_dependents reads them)
        cycle = model.dependency_cycle(job_id or "", parent_id, ids, self._store.required_by)
        if cycle is not None:
            raise UsageError(
                f"--after {cycle}: job {cycle} cannot end before {job_id or 'the new jobs'} do"
                f"{'es' if job_id else ''} (a cycle)"
            )
        rows = [{"after_id": a["id"], "any_outcome": flag, "status": a["status"]} for a, (_, flag) in zip(after, deps)]
        blocked = model.blocker(rows)
        if blocked is not None:
            ch.ended.append(blocked["after_id"])
        return model.waiting_on(rows)

    def _waiting_on(self, job: Mapping) -> list[str]:
        """The jobs that hold `job` back (model.waiting_on); read only if it waits on any."""
        return model.waiting_on(self._store.dependencies_of([job["id"]])) if job.get("waits", 1) else []

    @staticmethod
    def _check_limit(ch: UnitOfWork, job: dict) -> None:
        """AtLimit (exit 4) if the job starting would run its parent past --max-running."""
        if job["parent_id"] is not None:
            parent = ch.job(job["parent_id"])
            if model.at_limit(ch.counts_of(parent["id"]), parent):
                raise model.over_limit(parent, job["id"])

    def _open_parent(self, ch: UnitOfWork, parent_id: str) -> dict:
        p = ch.job(parent_id)
        self._check_takes_child(ch.counts_of(parent_id), p, "add children to")
        return p

    def _check_takes_child(self, counts: Mapping[str, int], p: dict, what: str) -> None:
        """Conflict unless the job may get a new child (model.takes_child)."""
        if p["status"] not in TERMINAL:
            return
        last = next(
            (e for e in reversed(self._store.events(job_ids=[p["id"]])) if e["kind"] == STATUS),
            None,
        )
        if not model.takes_child(counts, p, last):
            how = "" if last is not None and model.is_derived(last) else " (not derived from its children)"
            raise Conflict(f"cannot {what} job {p['id']}: it is {p['status']}{how}")

    def _free_root_id(self) -> str:
        while True:
            candidate = os.urandom(4).hex()
            if self._store.get_job(candidate) is None:
                return candidate

    def _free_child_id(self, parent: dict) -> str:
        """The next free numbered id for one child: <parent>.<N>."""
        n = sum(self._store.get_counts([parent["id"]])[parent["id"]].values()) + 1
        while self._store.get_job(f"{parent['id']}.{n}") is not None:
            n += 1
        return f"{parent['id']}.{n}"

    def _add_children(
        self,
        ch: UnitOfWork,
        parent: dict,
        start: int,
        n: int,
        names: Sequence[str] | None,
        type: str | None,
        cap: int | None,
        deps: Sequence[tuple[str, int]] = (),
    ) -> list[str]:
        """Children are numbered <parent>.<start>, <parent>.<start + 1>, ..., written a
        chunk at a time. Where a chosen --id took a number, the numbering goes on
        after the highest one taken."""
        ids: list[str] = []
        k = start
        while len(ids) < n:
            size = min(SPAWN_CHUNK, n - len(ids))
            numbers = range(k, k + size)
            chunk_names = names[len(ids) : len(ids) + size] if names is not None else [f"child {x}" for x in numbers]
            base = self._new_job(ch, "", "", type, parent, None, max_attempts=cap, waits=len(deps))  # shared
            prefix = parent["id"] + "."
            jobs = [{**base, "id": f"{prefix}{x}", "name": nm} for x, nm in zip(numbers, chunk_names)]
            try:
                ch.insert_children(parent, jobs, deps)
            except model.IdTaken:
                k = self._store.last_child_number(parent["id"]) + 1
                continue
            ids += [j["id"] for j in jobs]
            k += size
        return ids

    @staticmethod
    def _new_job(
        ch: UnitOfWork,
        id: str,
        name: str,
        type: str | None,
        parent: dict | None,
        meta_json: str | None,
        fail_fast: int = 0,
        allow_failures: str | None = None,
        max_attempts: int | None = None,
        is_open: int = 0,
        max_running: int | None = None,
        waits: int = 0,
    ) -> dict:
        job = {
            "id": id,
            "parent_id": parent["id"] if parent else None,
            "root_id": parent["root_id"] if parent else id,
            "name": name,
            "type": type,
            "created_at": ch.at,
            "started_at": None,
            "completed_at": None,
            "last_heartbeat": None,
            "exit_code": None,
            "duration": None,
            "metadata": meta_json,
            "fail_fast": fail_fast,
            "allow_failures": allow_failures,
            "max_attempts": max_attempts,
            "attempt": 1,
            "not_before": None,
            "is_open": is_open,
            "max_running": max_running,
            "waits": waits,
            "waited_on": 0,
        }
        model.enter_status(job, PENDING, ch.at)
        return job


def _policy(job: Mapping) -> dict:
    """A job's policy as set_policy returns it."""
    return {
        "fail_fast": bool(job["fail_fast"]),
        "allow_failures": job["allow_failures"],
        "max_attempts": job["max_attempts"],
        "open": bool(job["is_open"]),
        "max_running": job["max_running"],
    }


class Retried(builtins.list):
    """The ids `retry` put back to pending, with `skipped`: those it left alone
    because they had used all their attempts."""

    def __init__(self, ids: Iterable[str] = (), skipped: Iterable[str] = ()):
        super().__init__(ids)
        self.skipped = builtins.list(skipped)
