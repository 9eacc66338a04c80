"""Progress: the counts of a job's direct children by status, folding events
into counts, and the text and JSON forms. Pure code: no I/O."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

from jobctl.model import (
    CANCELLED,
    COMPLETED,
    CREATE,
    FAILED,
    LOG,
    PENDING,
    POLICY,
    RUNNING,
    STATUS,
    STATUSES,
    attempts_text,
    n_children,
)


def waiting_text(deps: Iterable[tuple[str, int]]) -> str:
    """What a job waits on (its dependencies, (id, any_outcome)): `waiting on P.2, P.4 (any outcome)`."""
    return "waiting on " + ", ".join(f"{a} (any outcome)" if any_outcome else a for a, any_outcome in deps)


def held_text(waiting_on: Iterable[str]) -> str:
    """A pending job still held back (a row's `waiting_on`): `waiting on P.2, P.3` ('' for none)."""
    ids = list(waiting_on)
    return waiting_text((a, 0) for a in ids) if ids else ""


def after_text(after: Iterable[Mapping]) -> str:
    """What a job waits on, with their statuses (`show`): `P.2 completed, P.4 running (any outcome)`."""
    return ", ".join(f"{d['id']} {d['status']}" + (" (any outcome)" if d["any_outcome"] else "") for d in after)


def create_message(policy: str | None, deps: Iterable[tuple[str, int]]) -> str | None:
    """A create event's message: its policy text (model.policy_text), then what it waits on."""
    deps = list(deps)
    return "; ".join(t for t in (policy, waiting_text(deps) if deps else None) if t) or None


def empty_counts() -> dict[str, int]:
    return {s: 0 for s in STATUSES}


def fold(counts: dict[str, int], old: str | None, new: str | None, n: int = 1) -> None:
    """Apply `n` children's change old -> new to `counts`, in place, in O(1).

    old None means the children were just created; new None means they went away.
    """
    if old is not None:
        counts[old] -= n
    if new is not None:
        counts[new] += n


def fold_event(counts: dict[str, int], parent_id: str, e: Mapping) -> None:
    """Fold one event into `parent_id`'s child counts, if it is a direct child's
    creation or status change."""
    if e["parent_id"] == parent_id and e["kind"] in (CREATE, STATUS):
        fold(counts, e["old_status"], e["new_status"])


def fold_events(events: Iterable[Mapping], parent_id: str, counts: dict[str, int] | None = None):
    """Yield (event, counts after it) for every event, folding the events of
    `parent_id`'s direct children into `counts` (a fresh zero count by default).

    The same dict is yielded each time: copy it to keep a snapshot.
    """
    counts = empty_counts() if counts is None else counts
    for e in events:
        fold_event(counts, parent_id, e)
        yield e, counts


def change_text(e: Mapping) -> str:
    """An event's change: `running → failed`, with `(attempt 2/3)` when the job
    has a cap or is past its first attempt (`new → pending` for a creation,
    `policy set` for a policy change)."""
    if e["kind"] == POLICY:
        return "policy set"
    text = f"{e['old_status'] or 'new'} → {e['new_status']}"
    if e["kind"] == STATUS:
        attempts = attempts_text(e.get("attempt"), e.get("max_attempts"))
        if attempts:
            text += f" ({attempts})"
    return text


def event_text(e: Mapping) -> str:
    """An event as `events` and the page's event list say it after its job:
    `running → failed (attempt 1/3): exit code 1` (change_text and the change's
    message), or `[info] text` for a log line."""
    if e["kind"] == LOG:
        return f"[{e['level'] or 'info'}] {e['message']}"
    text = change_text(e)
    return f"{text}: {e['message']}" if e["message"] else text


def log_text(e: Mapping, own: bool, counts: Mapping[str, int]) -> str | None:
    """An event as a line of a job's log (`logs`, the page's log): the job's own
    view (`own`), or its parent's view of a child, with the parent's `counts`
    after it. None: the event is not in that log."""
    if e["kind"] == LOG:
        return e["message"] if own else f"child {e['job_id']}: {e['message']}"
    if e["kind"] == CREATE:
        return f"created ({e['new_status']})" if own else None
    if e["kind"] == POLICY:
        return f"policy set: {e['message']}" if own else None
    if own:
        return f"status changed: {event_text(e)}"
    return f"child {e['job_id']} {change_text(e)}: {progress_text(counts)}"


def progress_text(counts: Mapping[str, int]) -> str:
    """`66 pending, 1 running, 41 completed, 0 failed`, plus `, V cancelled` when V > 0."""
    text = (
        f"{counts.get(PENDING, 0)} pending, {counts.get(RUNNING, 0)} running, "
        f"{counts.get(COMPLETED, 0)} completed, {counts.get(FAILED, 0)} failed"
    )
    if counts.get(CANCELLED, 0):
        text += f", {counts[CANCELLED]} cancelled"
    return text


def progress_dict(job_id: str, status: str, counts: Mapping[str, int]) -> dict:
    """The JSON form of a job's progress."""
    d: dict = {"job_id": job_id, "status": status, "total_children": n_children(counts)}
    for s in STATUSES:
        d[f"{s}_children"] = counts.get(s, 0)
    d["progress_text"] = progress_text(counts)
    return d


def counts_of(progress: Mapping) -> dict[str, int]:
    """The counts in a progress dict (progress_dict's `<status>_children`)."""
    return {s: progress.get(f"{s}_children", 0) for s in STATUSES}


def finished(counts: Mapping[str, int]) -> int:
    """How many children are in a terminal status."""
    return counts.get(COMPLETED, 0) + counts.get(FAILED, 0) + counts.get(CANCELLED, 0)


def done_text(counts: Mapping[str, int]) -> str:
    """`44 of 108 finished`."""
    return f"{finished(counts)} of {n_children(counts)} finished"


def percent_done(counts: Mapping[str, int]) -> int | None:
    """The whole percent of the children that finished, rounded down (None without children)."""
    total = n_children(counts)
    return 100 * finished(counts) // total if total else None
