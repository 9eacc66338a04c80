"""The Python API: every mutation and query jobctl offers. The CLI is a thin
layer over this class; workers written in Python use it directly:

    from jobctl import Jobctl
    jc = Jobctl("jobs.db")
    parent = jc.create("News Crawler")
    kids = jc.spawn(parent, count=3)
    jc.set_status([kids[0]], "running")

Each mutation is one `BEGIN IMMEDIATE` transaction that changes the rows and
appends one event for every job whose status it creates or changes, parents
whose derived status follows included. Status rules come from `jobctl.model`;
SQL stays in `jobctl.store`.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from typing import Iterator, Mapping, Sequence

from jobctl import model
from jobctl.model import (ACTIVE, CANCELLED, CREATE, FAILED, LOG, PENDING, RETRYABLE, RUNNING,
                          STATUS, TERMINAL, Conflict, NotFound, UsageError)
from jobctl.progress import empty_counts, fold, fold_events, progress_dict, progress_text
from jobctl.store import Store

_ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.:@/+-]{0,199}\Z"
DERIVED_MESSAGE = "derived from children"


def default_db_path() -> str:
    """$XDG_DATA_HOME/jobctl/jobctl.db, i.e. ~/.local/share/jobctl/jobctl.db by default."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "jobctl", "jobctl.db")


def resolve_db_path(db: str | os.PathLike | None = None) -> str:
    """--db, else $JOBCTL_DB (unless empty), else the default location."""
    if db is not None:
        if not os.fspath(db):
            raise UsageError("--db must not be empty")
        return os.fspath(db)
    return os.environ.get("JOBCTL_DB") or default_db_path()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UsageError("a job name must not be empty")
    if len(name) > model.MAX_NAME_LENGTH:
        raise UsageError(f"a job name is at most {model.MAX_NAME_LENGTH} characters, not {len(name)}")
    return name


def check_message(message: str | None, what: str = "message") -> str | None:
    if message is not None and len(message) > model.MAX_MESSAGE_LENGTH:
        raise UsageError(f"a {what} is at most {model.MAX_MESSAGE_LENGTH} characters, not {len(message)}")
    return message


def check_id(job_id: str) -> str:
    import re  # here, not at the top: json and re cost ~7 ms at every start of `status set`

    if not re.match(_ID_PATTERN, job_id):
        raise UsageError(f"bad job id {job_id!r}: use 1-200 letters, digits and _.:@/+- "
                         "(starting with a letter, digit or _)")
    return job_id


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
        self.changed_counts: set[str] = set()
        self.events: list[dict] = []
        # Jobs whose status this change sets explicitly (cancel): their
        # children's changes do not re-derive them.
        self.frozen: set[str] = set()

    def load(self, ids: Sequence[str]) -> list[dict]:
        missing = [i for i in ids if i not in self.jobs]
        if missing:
            self.jobs.update(self.store.get_jobs(missing))
        for i in ids:
            if i not in self.jobs:
                raise NotFound(f"job {i} not found")
        return [self.jobs[i] for i in ids]

    def job(self, job_id: str) -> dict:
        return self.load([job_id])[0]

    def subtree(self, job_id: str) -> list[dict]:
        """The job and its descendants (parents first), loaded into this change."""
        rows = self.store.subtree(job_id)
        if not rows:
            raise NotFound(f"job {job_id} not found")
        for row in rows:
            row.pop("depth", None)
        return [self.jobs.setdefault(row["id"], row) for row in rows]

    def counts_of(self, parent_id: str) -> dict[str, int]:
        if parent_id not in self.counts:
            self.load_counts([parent_id])
        return self.counts[parent_id]

    def load_counts(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self.counts]
        if missing:
            self.counts.update(self.store.get_counts(missing))

    def event(self, job: dict, kind: str, old: str | None, new: str | None,
              message: str | None = None, log_id: int | None = None) -> None:
        self.events.append({"job_id": job["id"], "parent_id": job["parent_id"], "root_id": job["root_id"],
                            "kind": kind, "old_status": old, "new_status": new, "at": self.at,
                            "message": message, "log_id": log_id})

    def set_status(self, job: dict, new: str, message: str | None) -> bool:
        """Move `job` to `new` (no checks: callers check), with its event and roll-up."""
        old = job["status"]
        if old == new:
            return False
        model.enter_status(job, new, self.at)
        self.dirty[job["id"]] = job
        self.event(job, STATUS, old, new, message)
        if job["parent_id"] is not None:
            self.child_changed(job["parent_id"], old, new)
        return True

    def child_changed(self, parent_id: str, old: str | None, new: str | None, n: int = 1) -> None:
        counts = self.counts_of(parent_id)
        fold(counts, old, new, n)
        self.changed_counts.add(parent_id)
        if parent_id in self.frozen:
            return
        parent = self.job(parent_id)
        derived = model.derive_status(counts, parent["status"])
        if derived != parent["status"]:
            self.set_status(parent, derived, DERIVED_MESSAGE)

    def add_jobs(self, parent: dict | None, jobs: list[dict]) -> None:
        """Insert new pending jobs (all children of `parent`, or one root).
        If one of their ids is taken, IdTaken is raised and nothing has changed."""
        self.store.insert_jobs(jobs)
        for j in jobs:
            self.jobs[j["id"]] = j
            self.event(j, CREATE, None, j["status"])
        if parent is not None:
            self.child_changed(parent["id"], None, PENDING, n=len(jobs))

    def flush(self) -> None:
        if self.dirty:
            self.store.update_statuses(self.dirty.values())
        if self.changed_counts:
            self.store.save_counts({p: self.counts[p] for p in self.changed_counts})
        if self.events:
            self.store.insert_events(self.events)


class Jobctl:
    """A jobctl database. Thread-unsafe; open one per process or thread."""

    def __init__(self, db: str | os.PathLike | None = None, *, busy_timeout: float | None = None):
        self.path = resolve_db_path(db)
        if db is None and not os.environ.get("JOBCTL_DB"):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.store = Store.open(self.path, busy_timeout=busy_timeout)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Jobctl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- mutations
    def create(self, name: str, *, type: str | None = None, parent: str | None = None,
               id: str | None = None, meta: Mapping[str, str] | None = None) -> str:
        """Create a job (pending) and return its id.

        With `id`, creating the same job again is a no-op that returns the id;
        the same id with other attributes raises Conflict.
        """
        check_name(name)
        if id is not None:
            check_id(id)
            if id == parent:
                raise UsageError(f"job {id} cannot be its own parent")
        meta_json = _meta_json(meta)
        with self.store.write():
            ch = _Change(self.store)
            if id is not None:
                existing = self.store.get_job(id)
                if existing is not None:
                    want = {"name": name, "type": type, "parent_id": parent, "metadata": meta_json}
                    differ = [k for k, v in want.items() if existing[k] != v]
                    if differ:
                        raise Conflict(f"job {id} already exists with a different {', '.join(differ)}")
                    return id
            p = self._open_parent(ch, parent) if parent is not None else None
            if id is None:
                id = self._free_child_id(p) if p else self._free_root_id()
            job = self._new_job(ch, id, name, type, p, meta_json)
            ch.add_jobs(p, [job])
            ch.flush()
        return id

    def spawn(self, parent: str, *, count: int | None = None, names: Sequence[str] | None = None,
              type: str | None = None) -> list[str]:
        """Create children of `parent`, pending, in one transaction; return their ids."""
        if (count is None) == (names is None):
            raise UsageError("give either a count or names of the children")
        if names is not None:
            names = [check_name(n) for n in names]
            if not names:
                raise UsageError("no child names given")
        elif not isinstance(count, int) or count < 1:
            raise UsageError(f"--count must be a positive whole number, not {count}")
        elif count > model.MAX_SPAWN:
            raise UsageError(f"--count is at most {model.MAX_SPAWN:,} children in one spawn, not {count:,}")
        n = count if names is None else len(names)
        with self.store.write():
            ch = _Change(self.store)
            p = self._open_parent(ch, parent)
            start = sum(ch.counts_of(parent).values()) + 1
            try:
                ids = self._add_children(ch, p, start, n, names, type)
            except model.IdTaken:  # a chosen --id took a number: go on after the highest one
                ids = self._add_children(ch, p, self.store.last_child_number(parent) + 1, n, names, type)
            ch.flush()
        return ids

    def set_status(self, ids: Sequence[str], status: str, *, message: str | None = None,
                   force: bool = False) -> list[str]:
        """Set the status of every job in `ids`, all or nothing; return the ids that changed.

        Setting a status a job already has is a no-op. A job with children has
        a derived status: setting it needs `force`.
        """
        model.check_status_word(status)
        check_message(message)
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise UsageError("no job ids given")
        changed = []
        with self.store.write():
            ch = _Change(self.store)
            jobs = ch.load(ids)
            if not force:
                ch.load_counts(ids)
            for job in jobs:
                if job["status"] == status:
                    continue
                model.check_transition(job["id"], job["status"], status, force=force)
                if not force and sum(ch.counts_of(job["id"]).values()):
                    raise Conflict(f"job {job['id']} has children: its status is derived from theirs"
                                   " (use `jobctl cancel`, or --force)")
                ch.set_status(job, status, message)
                changed.append(job["id"])
            ch.flush()
        return changed

    def cancel(self, job_id: str, *, message: str | None = None) -> list[str]:
        """Cancel the job and every non-terminal descendant; return the ids cancelled."""
        check_message(message)
        with self.store.write():
            ch = _Change(self.store)
            # Deepest first, so the job's own event comes last: whoever sees it
            # has already seen every descendant's.
            targets = [j for j in reversed(ch.subtree(job_id)) if j["status"] not in TERMINAL]
            ch.frozen = {j["id"] for j in targets}
            for j in targets:
                ch.set_status(j, CANCELLED, message or "cancelled")
            ch.flush()
        return [j["id"] for j in targets]

    def retry(self, job_id: str, *, failed_children: bool = False) -> list[str]:
        """Put failed or cancelled jobs back to pending; return their ids.

        A job without children is retried itself. For a job with children the
        failed or cancelled jobs without children of its own below it are
        retried (only the failed ones with `failed_children`), and the
        parents' derived statuses follow.
        """
        with self.store.write():
            ch = _Change(self.store)
            job = ch.job(job_id)
            if not sum(ch.counts_of(job_id).values()):
                if failed_children or job["status"] == PENDING:
                    targets = []
                elif job["status"] in RETRYABLE:
                    targets = [job]
                else:
                    raise Conflict(f"job {job_id} is {job['status']}: only failed or cancelled jobs"
                                   " can be retried")
            else:
                sub = ch.subtree(job_id)
                parents = {j["parent_id"] for j in sub}
                wanted = {FAILED} if failed_children else RETRYABLE
                targets = [j for j in sub if j["id"] not in parents and j["status"] in wanted]
            for t in targets:
                ch.set_status(t, PENDING, "retry")
            ch.flush()
        return [t["id"] for t in targets]

    def claim(self, parent: str, *, message: str | None = None) -> str | None:
        """Atomically take the oldest pending child of `parent` and set it running."""
        with self.store.write():
            ch = _Change(self.store)
            ch.job(parent)
            rows = list(self.store.list_jobs(parent_id=parent, status=PENDING, limit=1))
            if not rows:
                return None
            job = ch.jobs.setdefault(rows[0]["id"], rows[0])
            ch.set_status(job, RUNNING, message)
            ch.flush()
            return job["id"]

    def log(self, job_id: str, message: str, *, level: str = "info") -> None:
        """Append a log line to a job (a logs row plus a `log` event for watchers)."""
        if level not in model.LOG_LEVELS:
            raise UsageError(f"unknown log level {level!r} (valid: {', '.join(model.LOG_LEVELS)})")
        if not message or not message.strip():
            raise UsageError("a log message must not be empty")
        check_message(message)
        with self.store.write():
            ch = _Change(self.store)
            job = ch.job(job_id)
            log_id = self.store.insert_log(job_id, level, message, ch.at)
            ch.event(job, LOG, None, None, None, log_id)
            ch.flush()

    def heartbeat(self, job_id: str) -> None:
        """Record that the job's worker is alive. Not a status change: no event."""
        with self.store.write():
            if not self.store.set_heartbeat(job_id, model.now()):
                raise NotFound(f"job {job_id} not found")

    def reap(self, stale_after: float, *, to: str = FAILED, parent: str | None = None) -> list[str]:
        """Move running jobs whose heartbeat is older than `stale_after` seconds to `to`
        (only the children of `parent`, if given)."""
        if to not in (FAILED, PENDING):
            raise UsageError(f"reap moves stale jobs to failed or pending, not {to!r}")
        with self.store.write():
            ch = _Change(self.store)
            if parent is not None:
                ch.job(parent)
            cutoff = model.ago(stale_after)
            stale = list(self.store.list_jobs(parent_id=parent, running_since_before=cutoff))
            for j in stale:
                job = ch.jobs.setdefault(j["id"], j)
                ch.set_status(job, to, "heartbeat lost")
            ch.flush()
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

    def _add_children(self, ch: _Change, parent: dict, start: int, n: int, names: Sequence[str] | None,
                      type: str | None) -> list[str]:
        """Children are numbered <parent>.<start>, <parent>.<start + 1>, ..."""
        ids = [f"{parent['id']}.{k}" for k in range(start, start + n)]
        names = names if names is not None else [f"child {k}" for k in range(start, start + n)]
        ch.add_jobs(parent, [self._new_job(ch, i, nm, type, parent, None) for i, nm in zip(ids, names)])
        return ids

    @staticmethod
    def _new_job(ch: _Change, id: str, name: str, type: str | None, parent: dict | None,
                 meta_json: str | None) -> dict:
        job = {"id": id, "parent_id": parent["id"] if parent else None,
               "root_id": parent["root_id"] if parent else id, "name": name, "type": type,
               "created_at": ch.at, "started_at": None, "completed_at": None,
               "last_heartbeat": None, "metadata": meta_json}
        model.enter_status(job, PENDING, ch.at)
        return job

    # ---------------------------------------------------------------- queries
    def get(self, job_id: str) -> dict:
        """The job's row, with `metadata` decoded and `progress` when it has children."""
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        _decoded(job)
        counts = self.store.get_counts([job_id])[job_id]
        job["progress"] = progress_dict(job_id, job["status"], counts) if sum(counts.values()) else None
        return job

    def status(self, job_id: str) -> str:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job["status"]

    def progress(self, job_id: str) -> dict:
        """Counts of the job's direct children by status, in O(1) from the kept counts."""
        with self.store.read():
            job = self.store.get_job(job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
            counts = self.store.get_counts([job_id])[job_id]
        return progress_dict(job_id, job["status"], counts)

    def list(self, *, parent: str | None = None, status: str | None = None, type: str | None = None,
             stale_after: float | None = None) -> Iterator[dict]:
        if status is not None:
            model.check_status_word(status)
        if parent is not None and self.store.get_job(parent) is None:
            raise NotFound(f"job {parent} not found")
        cutoff = model.ago(stale_after) if stale_after is not None else None
        rows = self.store.list_jobs(parent_id=parent, status=status, type=type, running_since_before=cutoff)
        return (_decoded(row) for row in rows)

    def tree(self, job_id: str) -> list[dict]:
        """The job and its descendants (parents first), each with `depth` and `progress`."""
        with self.store.read():
            sub = self.store.subtree(job_id)
            if not sub:
                raise NotFound(f"job {job_id} not found")
            counts = self.store.get_counts([j["id"] for j in sub])
        for j in sub:
            c = counts[j["id"]]
            j["progress"] = progress_dict(j["id"], j["status"], c) if sum(c.values()) else None
        return sub

    def subtree_ids(self, job_id: str) -> set[str]:
        return {j["id"] for j in self.store.subtree(job_id)}

    def events(self, *, job: str | None = None, since: int = 0, limit: int | None = None) -> list[dict]:
        """Events after `since`, in id order; with `job`, those of the job and its descendants."""
        return list(self.iter_events(job=job, since=since, limit=limit))

    def iter_events(self, *, job: str | None = None, since: int = 0, limit: int | None = None,
                    page: int = 5000) -> Iterator[dict]:
        """events(), streamed a page at a time (a million events need not fit in memory)."""
        if not 0 <= since <= model.MAX_INT:
            raise UsageError(f"--since takes an event id (0 or more), not {since}")
        if limit is not None and not 1 <= limit <= model.MAX_INT:
            raise UsageError(f"--limit must be a positive whole number, not {limit}")
        root, ids = None, None
        if job is not None:
            with self.store.read():
                row = self.store.get_job(job)
                if row is None:
                    raise NotFound(f"job {job} not found")
                root = row["root_id"]
                if row["parent_id"] is not None:  # below a root: keep the subtree's ids
                    ids = self.subtree_ids(job)
        left = limit
        while left is None or left > 0:
            rows = self.store.events(since=since, root_id=root, limit=page)
            for e in rows:
                if not model.in_tree(ids, e):
                    continue
                yield e
                if left is not None:
                    left -= 1
                    if not left:
                        return
            if len(rows) < page:
                return
            since = rows[-1]["id"]

    def logs(self, job_id: str, *, children: bool = False) -> list[dict]:
        """The job's log: its status changes and log lines; with `children`, its
        children's changes too, each with the job's progress text after it."""
        with self.store.read():
            if self.store.get_job(job_id) is None:
                raise NotFound(f"job {job_id} not found")
            events = list(self.store.child_events(job_id))
        out = []
        for e, counts in fold_events(events, job_id):
            own = e["job_id"] == job_id
            if not own and not children:
                continue
            out.append({"event_id": e["id"], "at": e["at"], "job_id": e["job_id"],
                        "level": e["level"] or "info", "text": log_text(e, own, counts)})
        return [o for o in out if o["text"] is not None]

    def verify(self) -> list[str]:
        """Differences between the events and the jobs table, between the kept
        child counts and a real count, and SQLite's integrity check. [] is clean."""
        problems = []
        with self.store.read():
            problems += [f"integrity: {p}" for p in self.store.integrity_check()]
            replayed = model.replay(self.store.all_events(), problems)
            jobs = self.store.all_jobs()
            real = self.store.count_children()
            kept = self.store.all_counts()
        for job in jobs:
            r = replayed.pop(job["id"], None)
            if r is None:
                problems.append(f"job {job['id']}: no create event")
                continue
            for field in model.REPLAYED_FIELDS:
                if r[field] != job[field]:
                    problems.append(f"job {job['id']}: {field} is {job[field]!r}, events say {r[field]!r}")
        for job_id in replayed:
            problems.append(f"job {job_id}: in the events but not in the jobs table")
        zero = empty_counts()
        for parent in sorted(set(real) | set(kept)):
            if real.get(parent, zero) != kept.get(parent, zero):
                problems.append(f"job {parent}: kept child counts {progress_text(kept.get(parent, zero))!r},"
                                f" real count {progress_text(real.get(parent, zero))!r}")
        return problems


def _decoded(job: dict) -> dict:
    """The job row with its metadata as an object ({} when it has none)."""
    if job["metadata"]:
        import json

        job["metadata"] = json.loads(job["metadata"])
    else:
        job["metadata"] = {}
    return job


def log_text(e: Mapping, own: bool, counts: Mapping[str, int]) -> str | None:
    """One event as a log line: the job's own view, or a parent's view of a child."""
    if e["kind"] == LOG:
        return e["message"] if own else f"child {e['job_id']}: {e['message']}"
    if e["kind"] == CREATE:
        return f"created ({e['new_status']})" if own else None
    if own:
        text = f"status changed: {e['old_status']} → {e['new_status']}"
        return f"{text}: {e['message']}" if e["message"] else text
    return f"child {e['job_id']} {e['old_status']} → {e['new_status']}: {progress_text(counts)}"
