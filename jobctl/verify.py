"""`jobctl verify`: replay the events and compare them with the jobs, the
kept child counts with a real count, and derived statuses with what the
children give."""

from __future__ import annotations

import itertools

TYPE_CHECKING = False

if TYPE_CHECKING:
    from jobctl.store.base import Store

from jobctl import model
from jobctl.model import STATUS
from jobctl.progress import empty_counts, progress_text


def verify(store: Store) -> list[str]:
    """Differences between the events and the jobs table (and the dependencies
    table: what each job waits on), between the kept
    child counts and a real count, between a parent's status derived last and
    what its children's real counts give, and the store's own integrity check
    (SQLite's). [] is clean."""
    problems: list[str] = []
    derived: dict[str, dict] = {}  # parents whose last status was derived
    with store.read():
        problems += [f"integrity: {p}" for p in store.integrity_check()]
        dependencies = store.all_dependencies()
        waited_on = {a for deps in dependencies.values() for a, _ in deps}
        # A job's state depends on its own events alone, so the replay runs job by
        # job: the jobs in id order merged with the events in (job, id) order,
        # streamed, in memory that does not grow with the database.
        jobs = store.jobs_by_id()
        groups = itertools.groupby(store.events_by_job(), key=lambda e: e["job_id"])
        job, group = next(jobs, None), next(groups, None)
        while job is not None or group is not None:
            if group is None or (job is not None and job["id"] < group[0]):
                problems.append(f"job {job['id']}: no create event")  # type: ignore[index]
                job = next(jobs, None)
            elif job is None or group[0] < job["id"]:
                problems.append(f"job {group[0]}: in the events but not in the jobs table")
                group = next(groups, None)
            else:
                events = list(group[1])  # (one job's own: a few)
                r = model.replay(events, problems)[job["id"]]
                job["after"] = dependencies.pop(job["id"], [])
                if job["waited_on"] != (job["id"] in waited_on):
                    some = "a job waits" if job["id"] in waited_on else "no job waits"
                    problems.append(f"job {job['id']}: waited_on is {job['waited_on']}, but {some} on it")
                for field in model.REPLAYED_FIELDS:
                    if r[field] != job[field]:
                        problems.append(f"job {job['id']}: {field} is {job[field]!r}, events say {r[field]!r}")
                last = next((e for e in reversed(events) if e["kind"] == STATUS), None)
                if last is not None and model.is_derived(last):
                    derived[job["id"]] = job
                job, group = next(jobs, None), next(groups, None)
        problems += [f"job {j}: waits on {w!r}, but it is not in the jobs table" for j, w in dependencies.items()]
        real = store.count_children()
        kept = store.all_counts()
    zero = empty_counts()
    for parent in sorted(set(real) | set(kept)):
        if real.get(parent, zero) != kept.get(parent, zero):
            problems.append(
                f"job {parent}: kept child counts {progress_text(kept.get(parent, zero))!r},"
                f" real count {progress_text(real.get(parent, zero))!r}"
            )
    for parent, job in sorted(derived.items()):
        status = job["status"]
        want = model.derive(real.get(parent, zero), job)
        if want != status:
            problems.append(
                f"job {parent}: status {status}, derived from children, but they give {want}"
                f" ({progress_text(real.get(parent, zero))})"
            )
    return problems
