"""The read side: every query jobctl offers (`Reads`, which the façade
`jobctl.api.Jobctl` exposes), and the event readers' way in (`feed`, which
gives a `jobctl.feed.EventFeed`). Only reads: nothing here writes.
"""

from __future__ import annotations

import builtins  # Reads.list shadows the name `list` in annotations below it
import itertools

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator, Sequence
    from contextlib import AbstractContextManager

    from jobctl.feed import EventFeed
    from jobctl.store.base import Store, Waker

from datetime import UTC

from jobctl import model
from jobctl.model import CREATE, FAILED, PENDING, RUNNING, STATUS, UsageError, not_found
from jobctl.progress import fold_events, log_text, progress_dict


class Reads:
    """The queries; `jobctl.api.Jobctl` is the façade that has them."""

    _store: Store

    def _job(self, job_id: str) -> dict:
        job = self._store.get_job(job_id)
        if job is None:
            raise not_found(job_id)
        return job

    def get(self, job_id: str) -> dict:
        """The job's row, with `metadata` decoded, `progress` when it has children,
        and `policy`: its failure policy and whether the allowance was used."""
        return self._add_progress([_decoded(self._job(job_id))])[0]

    def status(self, job_id: str) -> str:
        return self._job(job_id)["status"]

    def outputs(self, job_id: str) -> dict[str, dict]:
        """The outputs of the job's children, gathered: {child name: {key: value}}
        (the last value set of each key; a name that two children share is the
        later one's with its id: `name (P.7)`), children in the order they set
        their first output. Only children with outputs appear."""
        from jobctl.model import parse_output

        with self._store.read():
            self._job(job_id)
            by_child: dict[str, dict] = {}
            for e in self._store.output_events(job_id):
                parsed = parse_output(e["message"])
                if parsed is not None:
                    by_child.setdefault(e["job_id"], {})[parsed[0]] = parsed[1]
            out: dict[str, dict] = {}
            for child, values in by_child.items():
                name = self._job(child)["name"]
                out[name if name not in out else f"{name} ({child})"] = values
        return out

    def progress(self, job_id: str) -> dict:
        """Counts of the job's direct children by status, in O(1) from the kept counts."""
        with self._store.read():
            job = self._job(job_id)
            counts = self._store.get_counts([job_id])[job_id]
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
        rows = self._store.list_jobs(
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
        """Each job with `progress` (None without children), `policy`: its failure
        policy and whether its allowance was used, `after`: the jobs it waits on
        ({id, any_outcome, status}), and `waiting_on`: the ids of those still holding
        it back while it is pending (the same in show, list and tree)."""
        counts = self._store.get_counts([j["id"] for j in jobs]) if jobs else {}
        after: dict[str, builtins.list[dict]] = {}
        for d in self._store.dependencies_of([j["id"] for j in jobs]) if jobs else ():
            after.setdefault(d["job_id"], []).append(d)
        for j in jobs:
            deps = after.get(j["id"], [])
            j["after"] = [
                {"id": d["after_id"], "any_outcome": bool(d["any_outcome"]), "status": d["status"]} for d in deps
            ]
            j["waiting_on"] = model.waiting_on(deps) if j["status"] == PENDING else []
            c = counts[j["id"]]
            total = sum(c.values())
            j["progress"] = progress_dict(j["id"], j["status"], c) if total else None
            j["policy"] = {
                "fail_fast": j["fail_fast"],
                "allow_failures": j["allow_failures"],
                "allowed_failures": model.allowed_failures(j["allow_failures"], total),
                "allowance_used": model.allowance_used(c, j["status"], j["allow_failures"]),
                "max_attempts": j["max_attempts"],
                "open": bool(j.get("is_open")),
                "max_running": j.get("max_running"),
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
        with self._store.read():
            rows = self._store.walk(job_id, max_depth=depth, limit=limit)
            first = next(rows, None)
            if first is None:
                raise not_found(job_id)
            yield from self._with_progress(_decoded(r) for r in itertools.chain([first], rows))

    def ran_on(self, job_id: str) -> dict | None:
        """Where `run` last started the job (its running event's fields: host, pid, CI job), or None."""
        import json

        rows = [r for r in self._store.event_fields(job_id) if r["kind"] == STATUS]
        for row in reversed(rows):
            fields = json.loads(row["fields"])
            if "host" in fields:
                fields.pop(model.CLAIM_FIELD, None)  # (the claim's token: no place)
                return fields
        return None

    def next_retry_at(self, parent: str) -> str | None:
        """When the first pending child of `parent` that is backing off before a
        retry may be claimed (None: none is)."""
        due = self._store.next_ready_at(parent, PENDING)
        return due if due is not None and due > model.now() else None

    def stale_children(self, parent: str, stale_after: float) -> dict[str, float]:
        """{child id: seconds since its last sign of life} for the running children
        of `parent` that count as stale (the rule is the store's list_jobs)."""
        from datetime import datetime

        now = datetime.now(UTC)
        rows = self._store.list_jobs(parent_id=parent, statuses=[RUNNING], alive_before=model.ago(stale_after))
        return {r["id"]: (now - datetime.fromisoformat(r["alive_at"])).total_seconds() for r in rows}

    def failed_children(self, job_id: str, limit: int = 10) -> tuple[builtins.list[dict], int]:
        """The first `limit` failed children of the job, each {id, name, message}
        (the message of the change that failed it), and how many failed in all."""
        total = self._store.get_counts([job_id])[job_id][FAILED]
        rows = builtins.list(self._store.list_jobs(parent_id=job_id, statuses=[FAILED], limit=limit)) if total else []
        out = []
        for r in rows:
            changes = [e for e in self._store.events(job_ids=[r["id"]]) if e["new_status"] == FAILED]
            out.append({"id": r["id"], "name": r["name"], "message": changes[-1]["message"] if changes else None})
        return out, total

    def subtree_ids(self, job_id: str) -> set[str]:
        return {j["id"] for j in self._store.subtree(job_id)}

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
        if limit is not None and not 1 <= limit <= model.MAX_INT:
            raise UsageError(f"--limit must be a positive whole number, not {limit}")
        yield from self.feed(since, job=job, page=page, as_json=as_json, listing=True).take(limit)

    def feed(
        self,
        since: int = 0,
        *,
        job: str | None = None,
        root_id: str | None = None,
        ids: set[str] | None = None,
        page: int = 2000,
        as_json: bool = False,
        poll_interval: float = 1.0,
        listing: bool = False,
    ) -> EventFeed:
        """An EventFeed of the events after `since`: every event, or those of the
        job's tree with `job` (or of the tree `root_id`, kept to `ids` below its
        root, when the caller read them already). A `listing` reads once to the
        present, not to follow: a small subtree is read by its job ids."""
        from jobctl.feed import SMALL_SUBTREE, EventFeed

        model.check_since(since)
        root = root_id
        if job is not None:
            with self._store.read():
                row = self._job(job)
                root = row["root_id"]
                if row["parent_id"] is not None:  # below a root: keep the subtree's ids
                    ids = self.subtree_ids(job)
        by_job = listing and ids is not None and len(ids) <= SMALL_SUBTREE
        return EventFeed(
            self._store,
            since,
            root_id=root,
            ids=ids,
            by_job=by_job,
            page=page,
            as_json=as_json,
            poll_interval=poll_interval,
        )

    # ------------------------------------------------- for the event readers
    def snapshot(self) -> AbstractContextManager:
        """A read snapshot: the queries inside it see one state of the database."""
        return self._store.read()

    def find(self, job_id: str) -> dict | None:
        """The job's row as stored, or None."""
        return self._store.get_job(job_id)

    def counts(self, job_id: str) -> dict[str, int]:
        """The job's direct children by status, from the kept counts."""
        return self._store.get_counts([job_id])[job_id]

    def jobs_and_counts(self, ids: Sequence[str]) -> tuple[dict[str, dict], dict[str, dict[str, int]]]:
        """The jobs `ids` (those that exist) and their kept child counts."""
        return self._store.jobs_and_counts(ids)

    def ids_starting(self, prefix: str, limit: int) -> builtins.list[str]:
        """At most `limit` job ids that start with `prefix`, in order (shell completion)."""
        return self._store.ids_starting(prefix, limit)

    def check_cursor(self, since: int) -> None:
        """PrunedHistory (exit 5) if a reader of every event resuming after `since`
        would read across events `prune` removed (feed.check_cursor)."""
        from jobctl.feed import check_cursor

        check_cursor(self._store, since)

    def last_event_id(self) -> int:
        return self._store.last_event_id()

    def times_at(self, ids: Sequence[str], at: int) -> dict[str, dict]:
        """{id: {"status", "started_at", "completed_at", ...}} of the jobs `ids`
        just after event `at` (those that did not exist yet are left out): their
        last entry (creation or change) into pending or running, and their last
        into another status, folded by model.enter_status, which is all it needs."""
        out: dict[str, dict] = {}
        for e in self._store.last_entries(ids, at, (CREATE, STATUS), (PENDING, RUNNING)):
            job = out.setdefault(e["job_id"], {"status": None, "started_at": None, "completed_at": None})
            model.enter_status(job, e["new_status"], e["at"])
        return out

    def count_events(self, root_id: str, until: int, ids: set[str] | None = None) -> int:
        """How many events of the tree `root_id` (kept to `ids`) came up to event `until`."""
        return self._store.count_events(root_id, until, ids)

    def child_events(self, job_id: str, until: int | None = None) -> Iterator[dict]:
        """The job's own events and its direct children's, in id order (up to `until`)."""
        return self._store.child_events(job_id, until=until)

    def events_of(self, job_ids: Sequence[str]) -> builtins.list[dict]:
        """Every event of the jobs `job_ids`, in id order."""
        return self._store.events(job_ids=job_ids)

    def waker(self, poll_interval: float, *, cancels_only: bool = False) -> Waker:
        """What wakes a reader when the database may have changed (see Store.waker)."""
        return self._store.waker(poll_interval, cancels_only=cancels_only)

    def logs(self, job_id: str, *, children: bool = False) -> builtins.list[dict]:
        """The job's log: its status changes and log lines; with `children`, its
        children's changes too, each with the job's progress text after it."""
        return builtins.list(self.iter_logs(job_id, children=children))

    def iter_logs(self, job_id: str, *, children: bool = False) -> Generator[dict, None, None]:
        """logs(), streamed from one snapshot (a parent of a million children need not fit in memory)."""
        with self._store.read():
            self._job(job_id)
            for e, counts in fold_events(self._store.child_events(job_id), job_id):
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
