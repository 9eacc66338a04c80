"""The Python API: every mutation and query jobctl offers. The CLI is a thin
layer over this class; workers written in Python use it directly:

    from jobctl import Jobctl
    jc = Jobctl("jobs.db")
    parent = jc.create("News Crawler")
    kids = jc.spawn(parent, count=3)
    jc.set_status([kids[0]], "running")

Each mutation is one write transaction (see `jobctl.store.base` for the
contract) that changes the rows and appends one event for every job whose
status it creates or changes, parents whose derived status follows included.
Status rules come from `jobctl.model`; SQL stays in the store modules, and
nothing here knows which backend it runs on.
"""

from __future__ import annotations

import builtins  # Jobctl.list shadows the name `list` in annotations below it
import itertools
import os
import random
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
    from typing import TypeVar

    from jobctl.store.base import Store

    T = TypeVar("T")

from datetime import UTC

from jobctl import model
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
    not_found,
)
from jobctl.progress import change_text, empty_counts, fold, fold_events, progress_dict, progress_text
from jobctl.store import masked, open_store
from jobctl.store.base import Retryable

_ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.:@/+-]{0,199}\Z"
SPAWN_CHUNK = 10_000  # children written at a time by spawn (memory stays flat at any count)
SMALL_SUBTREE = 500  # events --job reads a subtree this small by job id (an index), not its whole tree
WRITE_RETRIES = 5  # tries of a write transaction that failed for a transient reason (PostgreSQL)


def default_db_path() -> str:
    """$XDG_DATA_HOME/jobctl/jobctl.db, i.e. ~/.local/share/jobctl/jobctl.db by default."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "jobctl", "jobctl.db")


def resolve_db_path(db: str | os.PathLike | None = None) -> str:
    """--db, else $JOBCTL_DB (unless empty), else the default location: a
    SQLite path or a PostgreSQL URL."""
    if db is not None:
        if not os.fspath(db):
            raise UsageError("--db must not be empty")
        return os.fspath(db)
    return os.environ.get("JOBCTL_DB") or default_db_path()


def display_name(db: str) -> str:
    """The database as shown to people: the path, or the URL with its password masked."""
    return masked(db)


def check_text(text: str | None, what: str) -> str | None:
    """Text is stored verbatim, except NUL, which PostgreSQL cannot store in
    text: refused on both backends alike."""
    if text is not None and "\x00" in text:
        raise UsageError(f"a {what} must not contain a NUL character")
    return text


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UsageError("a job name must not be empty")
    if len(name) > model.MAX_NAME_LENGTH:
        raise UsageError(f"a job name is at most {model.MAX_NAME_LENGTH} characters, not {len(name)}")
    check_text(name, "job name")
    return name


def check_message(message: str | None, what: str = "message") -> str | None:
    if message is not None and len(message) > model.MAX_MESSAGE_LENGTH:
        raise UsageError(f"a {what} is at most {model.MAX_MESSAGE_LENGTH} characters, not {len(message)}")
    return check_text(message, what)


def check_id(job_id: str) -> str:
    import re  # here, not at the top: json and re cost ~7 ms at every start of `status set`

    if not re.match(_ID_PATTERN, job_id):
        raise UsageError(
            f"bad job id {job_id!r}: use 1-200 letters, digits and _.:@/+- (starting with a letter, digit or _)"
        )
    return job_id


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


class _Change:
    """The unit of work of one write transaction.

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
        self.rederive(parent)

    def rederive(self, parent: dict, message: str | None = None) -> None:
        """Set the parent's status to what its children's counts and its allowance give."""
        counts = self.counts_of(parent["id"])
        allow = parent["allow_failures"]
        derived = model.derive_status(counts, parent["status"], allow_failures=allow)
        if derived != parent["status"]:
            self.set_status(parent, derived, message or model.derived_message(counts, derived, allow), derived=True)

    def settle(self) -> None:
        """Before the commit: every fail-fast parent that more children failed in
        than allowed cancels its unfinished descendants (`fail-fast: <child>
        failed`), then fails, its event after theirs; a parent failing so may
        make its own fail-fast parent due in turn."""
        while self.fail_fast_due:
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

    def add_jobs(self, parent: dict | None, jobs: list[dict]) -> None:
        """Insert new pending jobs (all children of `parent`, or one root).
        If one of their ids is taken, IdTaken is raised and nothing has changed."""
        self.store.insert_jobs(jobs)
        for j in jobs:
            self.jobs[j["id"]] = j
            self.event(
                j, CREATE, None, j["status"], model.policy_text(j["fail_fast"], j["allow_failures"], j["max_attempts"])
            )
        if parent is not None:
            self.child_changed(parent["id"], None, PENDING, n=len(jobs))

    def insert_children(self, parent: dict, jobs: list[dict]) -> None:
        """Insert a chunk of new pending children with their create events at once,
        keeping none of them in this change (a spawn of a million stays small
        in memory); IdTaken if an id is taken, with nothing of this chunk written."""
        if self.events:  # whatever came before, first: events stay in order
            self.store.insert_events(self.events)
            self.events = []
        cap = jobs[0]["max_attempts"] if jobs else None  # a spawn's children share it
        self.store.insert_children(jobs, model.policy_text(0, None, cap))
        self.child_changed(parent["id"], None, PENDING, n=len(jobs))

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


def transaction(method: Callable[..., T]) -> Callable[..., T]:
    """The envelope of every mutation: `method(self, ch, ...)` runs inside one
    write transaction with a fresh _Change `ch`, which is flushed before the
    commit. A transaction that failed for a transient reason (the store raises
    Retryable, with nothing written) runs again, a few times, with jitter."""

    def run(self: Jobctl, *args, **kwargs):
        for attempt in range(WRITE_RETRIES):
            try:
                with self.store.write():
                    ch = _Change(self.store)
                    result = method(self, ch, *args, **kwargs)
                    ch.flush()
                return result
            except Retryable as exc:
                if attempt == WRITE_RETRIES - 1:
                    raise DatabaseUnusable(
                        f"{exc} (still failing after {WRITE_RETRIES} tries; nothing was written)"
                    ) from None
                time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
        raise AssertionError("unreachable")

    run.__name__, run.__qualname__, run.__doc__ = method.__name__, method.__qualname__, method.__doc__
    return run


class Jobctl:
    """A jobctl database. Thread-unsafe; open one per process or thread."""

    def __init__(
        self, db: str | os.PathLike | Store | None = None, *, busy_timeout: float | None = None, create: bool = True
    ):
        """Open the database `db` (a SQLite path or a PostgreSQL URL; see
        resolve_db_path), or use a Store already open (`jobctl.store.open_store`).
        With `create=False`, a database that does not exist yet is refused
        (DatabaseUnusable) instead of created."""
        if hasattr(db, "write") and hasattr(db, "events"):  # a Store already open (open_store, or a test's)
            self.store: Store = db  # type: ignore[assignment]
            self.path = self.name = self.store.name
            return
        self.path = resolve_db_path(db)
        if create and db is None and not os.environ.get("JOBCTL_DB"):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.store = open_store(self.path, busy_timeout=busy_timeout, create=create)
        self.name = self.store.name  # for people: a URL's password is masked

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Jobctl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- mutations
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
    ) -> str:
        """Create a job (pending) and return its id.

        Its failure policy, for when it has children: with `fail_fast`, the first
        child that fails (beyond `allow_failures`) fails it and cancels the
        rest; `allow_failures` ("2" or "5%") failed children still let it
        complete. `max_attempts` caps how often it may start (None: no cap).
        With `id`, creating the same job again is a no-op that returns the id;
        the same id with other attributes (or another policy, where one is
        given) raises Conflict.
        With `running` (a message), the job is set running in the same
        transaction (`run --parent P`: no worker can claim it pending
        meanwhile); an existing job (`id`) must be pending then, and childless;
        `fields` go on that running event (where it runs: see Jobctl.set_status).
        """
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
        }
        return self._create(name, type, parent, id, _meta_json(meta), policy, running, _fields_json(fields))

    @transaction
    def _create(
        self,
        ch: _Change,
        name: str,
        type: str | None,
        parent: str | None,
        id: str | None,
        meta_json: str | None,
        policy: dict,
        running: str | None = None,
        fields: str | None = None,
    ) -> str:
        if id is not None:
            existing = self.store.get_job(id)
            if existing is not None:
                given = {k: v for k, v in policy.items() if v}  # the policy parts given (not defaults)
                want = {"name": name, "type": type, "parent_id": parent, "metadata": meta_json, **given}
                differ = [k for k, v in want.items() if existing[k] != v]
                if differ:
                    raise Conflict(f"job {id} already exists with a different {', '.join(differ)}")
                if running is not None:
                    job = ch.job(id)
                    if any(ch.counts_of(id).values()):
                        raise UsageError(f"job {id} has children: its status is derived, it runs no command")
                    if job["status"] != PENDING:
                        raise UsageError(f"job {id} is {job['status']}: only a pending job can be run")
                    ch.set_status(job, RUNNING, running, fields=fields)
                return id
        p = self._open_parent(ch, parent) if parent is not None else None
        if id is None:
            id = self._free_child_id(p) if p else self._free_root_id()
        if p is not None and policy["max_attempts"] is None:  # a child gets its parent's cap, as in spawn
            policy = {**policy, "max_attempts": p["max_attempts"]}
        job = self._new_job(ch, id, name, type, p, meta_json, **policy)
        ch.add_jobs(p, [job])
        if running is not None:
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
    ) -> list[str]:
        """Create children of `parent`, pending, in one transaction; return their ids.
        Each may start `max_attempts` times (default: the parent's cap, if any)."""
        model.check_max_attempts(max_attempts)
        if (count is None) == (names is None):
            raise UsageError("give either a count or names of the children")
        check_text(type, "type")
        if names is not None:
            names = [check_name(n) for n in names]
            if not names:
                raise UsageError("no child names given")
        elif not isinstance(count, int) or count < 1:
            raise UsageError(f"--count must be a positive whole number, not {count}")
        elif count > model.MAX_SPAWN:
            raise UsageError(f"--count is at most {model.MAX_SPAWN:,} children in one spawn, not {count:,}")
        return self._spawn(parent, count if names is None else len(names), names, type, max_attempts)

    @transaction
    def _spawn(
        self, ch: _Change, parent: str, n: int, names: Sequence[str] | None, type: str | None, cap: int | None
    ) -> list[str]:
        p = self._open_parent(ch, parent)
        cap = p["max_attempts"] if cap is None else cap
        return self._add_children(ch, p, sum(ch.counts_of(parent).values()) + 1, n, names, type, cap)

    _KEEP = object()  # set_policy: leave this part of the policy as it is

    def set_policy(
        self,
        job_id: str,
        *,
        fail_fast: bool | None = None,
        allow_failures: str | int | None | object = _KEEP,
        max_attempts: int | None | object = _KEEP,
    ) -> dict:
        """Change the job's failure policy (parts not given stay), with a `policy`
        event; the job's status follows at once (a fail-fast parent with a child
        failed already fails now and cancels the rest). Returns the new policy."""
        change: dict = {}
        if fail_fast is not None:
            change["fail_fast"] = int(bool(fail_fast))
        if allow_failures is not Jobctl._KEEP:
            change["allow_failures"] = model.check_allowance(allow_failures)  # type: ignore[arg-type]
        if max_attempts is not Jobctl._KEEP:
            change["max_attempts"] = model.check_max_attempts(max_attempts)  # type: ignore[arg-type]
        if not change:
            raise UsageError("no policy given (--fail-fast, --no-fail-fast, --allow-failures, --max-attempts)")
        return self._set_policy(job_id, change)

    @transaction
    def _set_policy(self, ch: _Change, job_id: str, change: dict) -> dict:
        job = ch.job(job_id)
        policy = {k: job[k] for k in ("fail_fast", "allow_failures", "max_attempts")}
        if {**policy, **change} == policy:
            return {**policy, "fail_fast": bool(policy["fail_fast"])}
        job.update(change)
        self.store.set_policy(job_id, job["fail_fast"], job["allow_failures"], job["max_attempts"])
        text = model.policy_text(job["fail_fast"], job["allow_failures"], job["max_attempts"])
        ch.event(job, POLICY, None, None, text or "none")
        counts = ch.counts_of(job_id)
        if model.fails_fast(counts, job["fail_fast"], job["allow_failures"]):
            first = next(iter(self.store.list_jobs(parent_id=job_id, statuses=[FAILED], limit=1)))
            ch.fail_fast_due[job_id] = first["id"]  # settled before the commit
        elif model.follows_children(counts, job["status"], policy["allow_failures"]):
            ch.rederive(job)  # a status set by hand (cancel, --force) stays
        return {
            "fail_fast": bool(job["fail_fast"]),
            "allow_failures": job["allow_failures"],
            "max_attempts": job["max_attempts"],
        }

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
        self, ch: _Change, ids: list[str], status: str, message: str | None, force: bool, fields: str | None = None
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
            ch.set_status(job, status, message, fields=fields)
            changed.append(job["id"])
        return changed

    def cancel(self, job_id: str, *, message: str | None = None) -> list[str]:
        """Cancel the job and every non-terminal descendant; return the ids cancelled."""
        check_message(message)
        return self._cancel(job_id, message)

    @transaction
    def _cancel(self, ch: _Change, job_id: str, message: str | None) -> list[str]:
        return ch.cancel_tree(ch.job(job_id), message or "cancelled")

    @transaction
    def retry(self, ch: _Change, job_id: str, *, failed_children: bool = False) -> Retried:
        """Put failed or cancelled jobs back to pending, each starting its next
        attempt; return their ids (a list, with `.skipped`: those left alone).

        A job without children is retried itself; one that used all its
        attempts (--max-attempts) is refused (Conflict). For a job with
        children the failed or cancelled jobs without children of its own
        below it are retried (only the failed ones with `failed_children`),
        except those without attempts left, which are skipped (Conflict if
        that leaves none); the parents' derived statuses follow.
        """
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
        for t in targets:
            if model.attempts_left(t):
                ch.set_status(t, PENDING, "retry")
        return retried

    @transaction
    def claim(
        self,
        ch: _Change,
        parent: str,
        *,
        message: str | Callable[[dict], str] | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> str | None:
        """Atomically take the oldest pending child of `parent` (not one backing off
        before a retry: see `not_before`) and set it running; concurrent
        claimers never get the same child. `message` may be a function of the
        child's row (its name, say), for the running event."""
        ch.job(parent)
        row = self.store.next_child(parent, PENDING, ready_at=ch.at)
        if row is None:
            return None
        job = ch.jobs.setdefault(row["id"], row)
        ch.set_status(job, RUNNING, message(row) if callable(message) else message, fields=_fields_json(fields))
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
    def _log(self, ch: _Change, job_id: str, message: str, level: str) -> None:
        job = ch.job(job_id)
        log_id = self.store.insert_log(job_id, level, message, ch.at)
        ch.event(job, LOG, None, None, None, log_id)

    @transaction
    def log_lines(self, ch: _Change, job_id: str, lines: Sequence[tuple[str, str]]) -> None:
        """Append many log lines (level, text) to a job in one transaction (`jobctl run`'s output)."""
        self._append_lines(ch, job_id, lines)

    def _append_lines(self, ch: _Change, job_id: str, lines: Sequence[tuple[str, str]]) -> None:
        job = ch.job(job_id)
        for level, text in lines:
            log_id = self.store.insert_log(job_id, level, text[: model.MAX_MESSAGE_LENGTH] or " ", ch.at)
            ch.event(job, LOG, None, None, None, log_id)

    @transaction
    def finish(
        self,
        ch: _Change,
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
        token, looked for first. Returns the job's status."""
        mark, n = _fields_json({"token": token} if token is not None else None), len(ch.events)
        if mark is not None and any(row["fields"] == mark for row in self.store.event_fields(job_id)):
            return ch.job(job_id)["status"]
        self._append_lines(ch, job_id, lines)
        job = ch.job(job_id)
        if attempt is not None and job["attempt"] != attempt:
            return job["status"]
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
        self.store.set_outcome(job_id, exit_code, seconds)
        for e in ch.events[n:]:  # (this change's events of the job: nothing flushed them yet)
            if e["job_id"] == job_id:
                e["fields"] = mark
        return job["status"]

    @transaction
    def heartbeat(self, ch: _Change, job_id: str) -> None:
        """Record that the job's worker is alive. Not a status change: no event."""
        if not self.store.set_heartbeat(job_id, ch.at):
            raise not_found(job_id)

    def reap(self, stale_after: float, *, to: str = FAILED, parent: str | None = None) -> list[str]:
        """Move running jobs whose heartbeat is older than `stale_after` seconds to `to`
        (only the children of `parent`, if given)."""
        if to not in (FAILED, PENDING):
            raise UsageError(f"reap moves stale jobs to failed or pending, not {to!r}")
        return self._reap(model.ago(stale_after), to, parent)

    @transaction
    def _reap(self, ch: _Change, cutoff: str, to: str, parent: str | None) -> list[str]:
        if parent is not None:
            ch.job(parent)
        stale = list(self.store.list_jobs(parent_id=parent, statuses=[RUNNING], alive_before=cutoff))
        for row in stale:
            row.pop("alive_at", None)
            j = ch.jobs.setdefault(row["id"], row)
            if to == PENDING and not model.attempts_left(j):  # no attempt left to go back to
                ch.set_status(j, FAILED, f"heartbeat lost; no attempts left ({j['attempt']}/{j['max_attempts']})")
            else:
                ch.set_status(j, to, "heartbeat lost")
        return [j["id"] for j in stale]

    def _open_parent(self, ch: _Change, parent_id: str) -> dict:
        p = ch.job(parent_id)
        if p["status"] in TERMINAL:
            raise Conflict(f"cannot add children to job {parent_id}: it is {p['status']}")
        return p

    def _free_root_id(self) -> str:
        while True:
            candidate = os.urandom(4).hex()
            if self.store.get_job(candidate) is None:
                return candidate

    def _free_child_id(self, parent: dict) -> str:
        """The next free numbered id for one child: <parent>.<N>."""
        n = sum(self.store.get_counts([parent["id"]])[parent["id"]].values()) + 1
        while self.store.get_job(f"{parent['id']}.{n}") is not None:
            n += 1
        return f"{parent['id']}.{n}"

    def _add_children(
        self,
        ch: _Change,
        parent: dict,
        start: int,
        n: int,
        names: Sequence[str] | None,
        type: str | None,
        cap: int | None,
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
            base = self._new_job(ch, "", "", type, parent, None, max_attempts=cap)  # what every child shares
            prefix = parent["id"] + "."
            jobs = [{**base, "id": f"{prefix}{x}", "name": nm} for x, nm in zip(numbers, chunk_names)]
            try:
                ch.insert_children(parent, jobs)
            except model.IdTaken:
                k = self.store.last_child_number(parent["id"]) + 1
                continue
            ids += [j["id"] for j in jobs]
            k += size
        return ids

    @staticmethod
    def _new_job(
        ch: _Change,
        id: str,
        name: str,
        type: str | None,
        parent: dict | None,
        meta_json: str | None,
        fail_fast: int = 0,
        allow_failures: str | None = None,
        max_attempts: int | None = None,
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
        }
        model.enter_status(job, PENDING, ch.at)
        return job

    # ---------------------------------------------------------------- queries
    def _job(self, job_id: str) -> dict:
        job = self.store.get_job(job_id)
        if job is None:
            raise not_found(job_id)
        return job

    def get(self, job_id: str) -> dict:
        """The job's row, with `metadata` decoded, `progress` when it has children,
        and `policy`: its failure policy and whether the allowance was used."""
        return self._add_progress([_decoded(self._job(job_id))])[0]

    def ran_on(self, job_id: str) -> dict | None:
        """Where `run` last started the job (its running event's fields: host, pid, CI job), or None."""
        import json

        rows = [r for r in self.store.event_fields(job_id) if r["kind"] == STATUS]
        for row in reversed(rows):
            fields = json.loads(row["fields"])
            if "host" in fields:
                return fields
        return None

    def status(self, job_id: str) -> str:
        return self._job(job_id)["status"]

    def progress(self, job_id: str) -> dict:
        """Counts of the job's direct children by status, in O(1) from the kept counts."""
        with self.store.read():
            job = self._job(job_id)
            counts = self.store.get_counts([job_id])[job_id]
        return progress_dict(job_id, job["status"], counts)

    def list(
        self,
        *,
        parent: str | None = None,
        status: str | Sequence[str] | None = None,
        type: str | None = None,
        stale_after: float | None = None,
        top_level: bool = False,
        newest_first: bool = False,
    ) -> Generator[dict, None, None]:
        """Jobs, streamed: with any of the statuses `status` (a word or several),
        children of `parent`, only roots with `top_level`; oldest first unless
        `newest_first`. Each row has its metadata decoded and `progress` (None
        for a job without children)."""
        statuses = [status] if isinstance(status, str) else (builtins.list(status) if status else None)
        for word in statuses or ():
            model.check_status_word(word)
        if parent is not None:
            self._job(parent)
        cutoff = None
        if stale_after is not None:  # stale: running, with no recent sign of life
            if statuses is not None and RUNNING not in statuses:
                return self._with_progress(())
            statuses, cutoff = [RUNNING], model.ago(stale_after)
        rows = self.store.list_jobs(
            parent_id=parent,
            statuses=statuses,
            type=type,
            alive_before=cutoff,
            top_level=top_level,
            newest_first=newest_first,
        )
        return self._with_progress(_decoded(row, "alive_at") for row in rows)

    def _with_progress(self, rows: Iterable[dict], chunk: int = 500) -> Generator[dict, None, None]:
        """Each row with its `progress` (None without children), the counts read a chunk at a time."""
        batch: builtins.list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) == chunk:
                yield from self._add_progress(batch)
                batch = []
        yield from self._add_progress(batch)

    def _add_progress(self, jobs: builtins.list[dict]) -> builtins.list[dict]:
        """Each job with `progress` (None without children) and `policy`: its failure
        policy and whether its allowance was used (the same in show, list and tree)."""
        counts = self.store.get_counts([j["id"] for j in jobs]) if jobs else {}
        for j in jobs:
            c = counts[j["id"]]
            total = sum(c.values())
            j["progress"] = progress_dict(j["id"], j["status"], c) if total else None
            j["policy"] = {
                "fail_fast": j["fail_fast"],
                "allow_failures": j["allow_failures"],
                "allowed_failures": model.allowed_failures(j["allow_failures"], total),
                "allowance_used": model.allowance_used(c, j["status"], j["allow_failures"]),
                "max_attempts": j["max_attempts"],
            }
        return jobs

    def tree(self, job_id: str, *, depth: int | None = None, limit: int | None = None) -> Generator[dict, None, None]:
        """The job and its descendants depth-first (each child right after its
        parent), each with `depth` and `progress`, streamed from one snapshot:
        down to `depth` levels below the job, at most `limit` rows."""
        if depth is not None and not 0 <= depth <= model.MAX_INT:
            raise UsageError(f"--depth must be 0 or more, not {depth}")
        if limit is not None and not 1 <= limit <= model.MAX_INT:
            raise UsageError(f"--limit must be a positive whole number, not {limit}")
        with self.store.read():
            rows = self.store.walk(job_id, max_depth=depth, limit=limit)
            first = next(rows, None)
            if first is None:
                raise not_found(job_id)
            yield from self._with_progress(_decoded(r) for r in itertools.chain([first], rows))

    def next_retry_at(self, parent: str) -> str | None:
        """When the first pending child of `parent` that is backing off before a
        retry may be claimed (None: none is)."""
        due = self.store.next_ready_at(parent, PENDING)
        return due if due is not None and due > model.now() else None

    def stale_children(self, parent: str, stale_after: float) -> dict[str, float]:
        """{child id: seconds since its last sign of life} for the running children
        of `parent` that count as stale (the rule is the store's list_jobs)."""
        from datetime import datetime

        now = datetime.now(UTC)
        rows = self.store.list_jobs(parent_id=parent, statuses=[RUNNING], alive_before=model.ago(stale_after))
        return {r["id"]: (now - datetime.fromisoformat(r["alive_at"])).total_seconds() for r in rows}

    def failed_children(self, job_id: str, limit: int = 10) -> tuple[builtins.list[dict], int]:
        """The first `limit` failed children of the job, each {id, name, message}
        (the message of the change that failed it), and how many failed in all."""
        total = self.store.get_counts([job_id])[job_id][FAILED]
        rows = builtins.list(self.store.list_jobs(parent_id=job_id, statuses=[FAILED], limit=limit)) if total else []
        out = []
        for r in rows:
            changes = [e for e in self.store.events(job_ids=[r["id"]]) if e["new_status"] == FAILED]
            out.append({"id": r["id"], "name": r["name"], "message": changes[-1]["message"] if changes else None})
        return out, total

    def subtree_ids(self, job_id: str) -> set[str]:
        return {j["id"] for j in self.store.subtree(job_id)}

    def events(self, *, job: str | None = None, since: int = 0, limit: int | None = None) -> builtins.list[dict]:
        """Events after `since`, in id order; with `job`, those of the job and its descendants."""
        return list(self.iter_events(job=job, since=since, limit=limit))

    def iter_events(
        self,
        *,
        job: str | None = None,
        since: int = 0,
        limit: int | None = None,
        page: int = 5000,
        as_json: bool = False,
    ) -> Generator[dict, None, None]:
        """events(), streamed a page at a time (a million events need not fit in memory).
        With `as_json`, each row has `json`, the event's JSON text, and `id` (see
        store.events)."""
        model.check_since(since)
        if limit is not None and not 1 <= limit <= model.MAX_INT:
            raise UsageError(f"--limit must be a positive whole number, not {limit}")
        root, ids = None, None
        if job is not None:
            with self.store.read():
                row = self._job(job)
                root = row["root_id"]
                if row["parent_id"] is not None:  # below a root: keep the subtree's ids
                    ids = self.subtree_ids(job)
        if ids is not None and len(ids) <= SMALL_SUBTREE:
            # A leaf, or a small subtree, under a big tree (one shard of a million):
            # read its jobs' events by the (job_id, id) index, not the whole tree's.
            yield from self._events_of(sorted(ids), since, limit, page, as_json)
            return
        left = limit
        while left is None or left > 0:
            rows, since, more = self.tree_events(since, root, ids, page, as_json)
            for e in rows:
                yield e
                if left is not None:
                    left -= 1
                    if not left:
                        return
            if not more:
                return

    def _events_of(
        self, ids: builtins.list[str], since: int, limit: int | None, page: int, as_json: bool = False
    ) -> Iterator[dict]:
        left = limit
        while left is None or left > 0:
            size = page if left is None else min(page, left)
            rows = self.store.events(since=since, job_ids=ids, limit=size, as_json=as_json)
            yield from rows
            if left is not None:
                left -= len(rows)
            if len(rows) < page:
                return
            since = rows[-1]["id"]

    def tree_events(
        self, since: int, root_id: str | None, ids: set | None, page: int, as_json: bool = False
    ) -> tuple[builtins.list[dict], int, bool]:
        """One page of events after `since` of the tree `root_id` (None: every
        tree), kept to the job ids `ids` when given (see model.in_tree).
        Returns (events, the cursor after the page, whether more may follow)."""
        rows = self.store.events(since=since, root_id=root_id, limit=page, as_json=as_json)
        cursor = rows[-1]["id"] if rows else since
        return [e for e in rows if model.in_tree(ids, e)], cursor, len(rows) == page

    def logs(self, job_id: str, *, children: bool = False) -> builtins.list[dict]:
        """The job's log: its status changes and log lines; with `children`, its
        children's changes too, each with the job's progress text after it."""
        return builtins.list(self.iter_logs(job_id, children=children))

    def iter_logs(self, job_id: str, *, children: bool = False) -> Generator[dict, None, None]:
        """logs(), streamed from one snapshot (a parent of a million children need not fit in memory)."""
        with self.store.read():
            self._job(job_id)
            for e, counts in fold_events(self.store.child_events(job_id), job_id):
                own = e["job_id"] == job_id
                if not own and not children:
                    continue
                text = log_text(e, own, counts)
                if text is not None:
                    yield {
                        "event_id": e["id"],
                        "at": e["at"],
                        "job_id": e["job_id"],
                        "level": e["level"] or "info",
                        "text": text,
                    }

    def verify(self) -> builtins.list[str]:
        """Differences between the events and the jobs table, between the kept
        child counts and a real count, between a parent's status derived last and
        what its children's real counts give, and the store's own integrity check
        (SQLite's). [] is clean."""
        problems: builtins.list[str] = []
        derived: dict[str, tuple[str, str | None]] = {}  # parents whose last status was derived
        with self.store.read():
            problems += [f"integrity: {p}" for p in self.store.integrity_check()]
            # A job's state depends on its own events alone, so the replay runs job by
            # job: the jobs in id order merged with the events in (job, id) order,
            # streamed, in memory that does not grow with the database.
            jobs = self.store.jobs_by_id()
            groups = itertools.groupby(self.store.events_by_job(), key=lambda e: e["job_id"])
            job, group = next(jobs, None), next(groups, None)
            while job is not None or group is not None:
                if group is None or (job is not None and job["id"] < group[0]):
                    problems.append(f"job {job['id']}: no create event")  # type: ignore[index]
                    job = next(jobs, None)
                elif job is None or group[0] < job["id"]:
                    problems.append(f"job {group[0]}: in the events but not in the jobs table")
                    group = next(groups, None)
                else:
                    events = builtins.list(group[1])  # (one job's own: a few)
                    r = model.replay(events, problems)[job["id"]]
                    for field in model.REPLAYED_FIELDS:
                        if r[field] != job[field]:
                            problems.append(f"job {job['id']}: {field} is {job[field]!r}, events say {r[field]!r}")
                    last = next((e for e in reversed(events) if e["kind"] == STATUS), None)
                    if last is not None and model.is_derived(last):
                        derived[job["id"]] = (job["status"], job["allow_failures"])
                    job, group = next(jobs, None), next(groups, None)
            real = self.store.count_children()
            kept = self.store.all_counts()
        zero = empty_counts()
        for parent in sorted(set(real) | set(kept)):
            if real.get(parent, zero) != kept.get(parent, zero):
                problems.append(
                    f"job {parent}: kept child counts {progress_text(kept.get(parent, zero))!r},"
                    f" real count {progress_text(real.get(parent, zero))!r}"
                )
        for parent, (status, allow) in sorted(derived.items()):
            want = model.derive_status(real.get(parent, zero), status, allow_failures=allow)
            if want != status:
                problems.append(
                    f"job {parent}: status {status}, derived from children, but they give {want}"
                    f" ({progress_text(real.get(parent, zero))})"
                )
        return problems


class Retried(builtins.list):
    """The ids `retry` put back to pending, with `skipped`: those it left alone
    because they had used all their attempts."""

    def __init__(self, ids: Iterable[str] = (), skipped: Iterable[str] = ()):
        super().__init__(ids)
        self.skipped = builtins.list(skipped)


def _decoded(job: dict, *drop: str) -> dict:
    """The job row with its metadata as an object ({} when it has none), less
    the query's helper columns `drop`."""
    for key in drop:
        job.pop(key, None)
    if job["metadata"]:
        import json

        job["metadata"] = json.loads(job["metadata"])
    else:
        job["metadata"] = {}
    job["fail_fast"] = bool(job["fail_fast"])
    return job


def log_text(e: Mapping, own: bool, counts: Mapping[str, int]) -> str | None:
    """One event as a log line: the job's own view, or a parent's view of a child."""
    if e["kind"] == LOG:
        return e["message"] if own else f"child {e['job_id']}: {e['message']}"
    if e["kind"] == CREATE:
        return f"created ({e['new_status']})" if own else None
    if e["kind"] == POLICY:
        return f"policy set: {e['message']}" if own else None
    if own:
        text = f"status changed: {change_text(e)}"
        return f"{text}: {e['message']}" if e["message"] else text
    return f"child {e['job_id']} {change_text(e)}: {progress_text(counts)}"
