"""The status model: statuses, allowed transitions, derived parent status,
status timestamps and the replay of events. Pure code: no I/O, no SQL.

Every rule about how a job's status may change lives here, so the write path
(`jobctl.api`) and the replay check (`jobctl verify`) apply the same rules.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
)
STATUSES: tuple[str, ...] = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
TERMINAL: frozenset[str] = frozenset({COMPLETED, FAILED, CANCELLED})
ACTIVE: frozenset[str] = frozenset({PENDING, RUNNING})

# The transition table, written down as data. A non-terminal job may move to
# any other status except running -> pending; terminal statuses are final.
ALLOWED: Mapping[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, COMPLETED, FAILED, CANCELLED}),
    RUNNING: frozenset({COMPLETED, FAILED, CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}
# `retry` is the one way back out of a terminal status (besides --force).
RETRYABLE: frozenset[str] = frozenset({FAILED, CANCELLED})

# Event kinds in the events table.
CREATE, STATUS, LOG, POLICY, OUTPUT = "create", "status", "log", "policy", "output"
LOG_LEVELS: tuple[str, ...] = ("info", "warning", "error")

# Exit codes, documented in docs/reference.md and in `jobctl --help`.
EXIT_OK = 0
EXIT_FAILED = 1  # watch/wait: the job failed
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_DATABASE = 5
EXIT_CANCELLED = 6  # watch/wait: the job was cancelled
EXIT_TIMEOUT = 124
EXIT_CANNOT_RUN = 126  # run: the command exists but cannot be executed (as a shell says)
EXIT_NO_COMMAND = 127  # run: the command was not found (as a shell says)
EXIT_HANGUP = 129  # 128 + SIGHUP
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C)
EXIT_TERMINATED = 143  # 128 + SIGTERM; run: the job was cancelled from elsewhere

# The exit status `watch --exit-status` and `wait` give for a terminal status.
EXIT_FOR_STATUS: Mapping[str, int] = {
    COMPLETED: EXIT_OK,
    FAILED: EXIT_FAILED,
    CANCELLED: EXIT_CANCELLED,
}


def exit_code_for(status: str, counts: Mapping[str, int], *, strict: bool = False) -> int:
    """The exit status of `watch --exit-status` and `wait` for a job that ended.
    With `strict`, a cancelled job, or any cancelled child, counts as a failure."""
    if strict and (status in (FAILED, CANCELLED) or counts.get(CANCELLED, 0)):
        return EXIT_FAILED
    return EXIT_FOR_STATUS.get(status, EXIT_OK)


def exit_code_of(statuses: Iterable[str | None]) -> int:
    """The exit status for several jobs that ended (`run --each`, its children):
    1 if any failed, else 6 if any was cancelled, else 0."""
    seen = set(statuses)
    return EXIT_FAILED if FAILED in seen else EXIT_CANCELLED if CANCELLED in seen else EXIT_OK


# How bad each outcome is, for `wait` on several jobs: the worst one wins.
SEVERITY: Mapping[int, int] = {EXIT_OK: 0, EXIT_CANCELLED: 1, EXIT_FAILED: 2, EXIT_TIMEOUT: 3}

MAX_INT = 2**63 - 1  # SQLite's largest integer: the most an event id or a --limit can be
MAX_SECONDS = 100 * 365 * 86400  # the longest duration or timeout that makes sense
MAX_NAME_LENGTH = 1000
MAX_SPAWN = 10_000_000  # children in one spawn: ids and rows are built in memory
MAX_MESSAGE_LENGTH = 100_000


class JobctlError(Exception):
    """An error a user can act on; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(JobctlError):
    exit_code = EXIT_USAGE


class NotFound(JobctlError):
    exit_code = EXIT_NOT_FOUND


class Conflict(JobctlError):
    """A transition that is not allowed, or a conflicting `--id`."""

    exit_code = EXIT_CONFLICT


class AtLimit(Conflict):
    """A child would run past its parent's --max-running."""


class Waiting(Conflict):
    """A job started by hand while it waits on other jobs (--after)."""


class IdTaken(Conflict):
    """A new job's id already exists."""


class DatabaseUnusable(JobctlError):
    exit_code = EXIT_DATABASE


class PrunedHistory(DatabaseUnusable):
    """A reader's cursor points into history `prune` removed: the events it would
    read next are gone (exit 5), never skipped in silence."""

    def __init__(self, before: int, cursor: int):
        super().__init__(f"events before {before} were pruned (the cursor {cursor} is older; read again from 0)")
        self.before = before


def check_prune_statuses(words: Iterable[str]) -> tuple[str, ...]:
    """The final statuses whose trees `prune` removes (all of them if none given)."""
    chosen = tuple(words) or tuple(s for s in STATUSES if s in TERMINAL)
    for word in chosen:
        if word not in TERMINAL:
            final = ", ".join(s for s in STATUSES if s in TERMINAL)
            raise UsageError(f"prune removes finished trees: --status takes {final}, not {word!r}")
    return chosen


def not_found(job_id: str) -> NotFound:
    """The one "job X not found" error; the id quoted when it is empty or has a space
    or an invisible character in it (`job 'P.1 ' not found`), so what was asked is seen."""
    plain_id = job_id.isprintable() and job_id and not any(c.isspace() for c in job_id)
    return NotFound(f"job {job_id if plain_id else repr(job_id)} not found")


def check_since(since: int) -> int:
    """An event id to read after (--since): 0 or more."""
    if not 0 <= since <= MAX_INT:
        raise UsageError(f"--since takes an event id (0 or more), not {since}")
    return since


def check_status_word(word: str) -> str:
    """Return `word` if it is a status, else raise a usage error listing them."""
    if word not in STATUSES:
        raise UsageError(f"unknown status {word!r} (valid: {', '.join(STATUSES)})")
    return word


def check_transition(job_id: str, old: str, new: str, *, force: bool = False) -> None:
    """Raise Conflict unless `old -> new` is allowed. Same-status is the caller's no-op."""
    if force or new in ALLOWED[old]:
        return
    if old in TERMINAL:
        hint = " (use `jobctl retry` or --force)" if new == PENDING and old in RETRYABLE else " (use --force)"
        raise Conflict(f"job {job_id} is {old}, a final status: {old} → {new} not allowed{hint}")
    raise Conflict(f"job {job_id}: {old} → {new} not allowed (use --force)")


_ZEROS = (0,) * len(STATUSES)


def n_children(counts: Mapping[str, int]) -> int:
    """How many children the counts are of (a status missing from them counts 0)."""
    return sum(map(counts.get, STATUSES, _ZEROS))


# What derive_status gives a parent while a child is pending or running (ACTIVE):
# PostgreSQL's fan-in check (store/postgres.py, _parent_checks) relies on it, so it
# is named here; tests/test_model.py checks derive_status against it.
ACTIVE_PARENT = RUNNING


def derive_status(
    counts: Mapping[str, int],
    current: str,
    *,
    allow_failures: str | None = None,
    open: bool | int = False,
    fail_fast: bool | int = False,
) -> str:
    """A parent's status from the counts of its direct children and its policy.

    No children: the job keeps its status. Any child pending or running:
    running. An `open` parent (more children may come: `create --open`) is
    running whatever its children's states, unless it is fail-fast and more
    failed than allowed. All final: failed if more failed than allowed
    (`allowed_failures`); cancelled if none completed and some were cancelled
    (cancelled children are never allowed failures); else completed.
    (Fail-fast acts through the children: see fails_fast.)
    """
    children = n_children(counts)
    if children == 0:
        return current
    if counts.get(PENDING, 0) or counts.get(RUNNING, 0):
        return RUNNING
    too_many = counts.get(FAILED, 0) > allowed_failures(allow_failures, children)
    if open and not (fail_fast and too_many):
        return RUNNING
    if too_many:
        return FAILED
    if not counts.get(COMPLETED, 0) and counts.get(CANCELLED, 0):
        return CANCELLED
    return COMPLETED


def fails_fast(counts: Mapping[str, int], fail_fast: bool, allow_failures: str | None) -> bool:
    """Whether a fail-fast parent must cancel its unfinished children (at the end
    of the change that made it so): more children failed than allowed while
    some are still pending or running. Once they are cancelled, derive_status
    gives failed."""
    return (
        bool(fail_fast)
        and bool(counts.get(PENDING, 0) or counts.get(RUNNING, 0))
        and counts.get(FAILED, 0) > allowed_failures(allow_failures, n_children(counts))
    )


DERIVED_MESSAGE = "derived from children"


def derive(counts: Mapping[str, int], job: Mapping) -> str:
    """derive_status for a job row (its status and policy)."""
    return derive_status(
        counts,
        job["status"],
        allow_failures=job["allow_failures"],
        open=job.get("is_open", 0),
        fail_fast=job["fail_fast"],
    )


def follows_children(counts: Mapping[str, int], job: Mapping) -> bool:
    """Whether a parent's status is what its children give (derive_status), and
    not one set by hand (cancel, --force): only such a parent follows a new policy."""
    return derive(counts, job) == job["status"]


def takes_child(counts: Mapping[str, int], job: Mapping, last_status: Mapping | None) -> bool:
    """Whether a job may get a new child: one not final does; a final one only
    if its status was derived from its children (its last status event
    `last_status` is derived, and they still give it), then it goes back to
    running. A parent made final by hand (`cancel`, --force), or a fail-fast
    one that failed, refuses."""
    if job["status"] not in TERMINAL:
        return True
    children = n_children(counts)
    failed_fast = job["fail_fast"] and counts.get(FAILED, 0) > allowed_failures(job["allow_failures"], children)
    return (
        children > 0
        and not failed_fast
        and last_status is not None
        and is_derived(last_status)
        and follows_children(counts, job)
    )


def new_child_message(first: str, n: int = 1) -> str:
    """Why a final parent went back to running: `derived from children: new child P.4`."""
    return f"{DERIVED_MESSAGE}: new child {first}" if n == 1 else f"{DERIVED_MESSAGE}: {n} new children from {first}"


CLOSED_MESSAGE = DERIVED_MESSAGE + ": closed"

# every message derived_message, new_child_message and CLOSED_MESSAGE make
# (DERIVED_MESSAGE has no regex metacharacters)
_DERIVED = DERIVED_MESSAGE + (
    r"(: \d+ failed, (within|more than) --allow-failures \d+(\.\d+)?%? \(\d+ allowed\)"
    r"|: new child \S+|: \d+ new children from \S+|: closed)?"
)


def is_derived(event: Mapping) -> bool:
    """Whether a status event is a parent's status derived from its children: no
    attempt (a derived change is none of the job's) and a message derived_message
    makes, whole (events from before attempts were counted have none either,
    and a message given by hand may begin the same way)."""
    import re  # here: only verify asks, and `re` costs the one-shot commands ~3 ms

    if event["kind"] != STATUS or event.get("attempt") is not None:
        return False
    return re.fullmatch(_DERIVED, event.get("message") or "") is not None


def derived_message(counts: Mapping[str, int], status: str, allow: str | None) -> str:
    """Why a parent's status was derived, saying when its allowance decided it."""
    if not allow or status not in (COMPLETED, FAILED) or not counts.get(FAILED, 0):
        return DERIVED_MESSAGE
    failed = counts[FAILED]
    allowed = allowed_failures(allow, n_children(counts))
    within = "within" if status == COMPLETED else "more than"
    return f"{DERIVED_MESSAGE}: {failed} failed, {within} --allow-failures {allow} ({allowed} allowed)"


def fail_fast_message(child_id: str) -> str:
    return f"fail-fast: {child_id} failed"


def check_allowance(text: str | int | None) -> str | None:
    """An --allow-failures value: a count ("2") or a percentage of the children
    ("5%", "2.5%", at most two decimals, 0-100). Returns its canonical text;
    None, "", "0" and "none" mean no allowance (None)."""
    import re

    t = str(text).strip() if text is not None else ""
    if t in ("", "0", "0%", "none"):
        return None
    m = re.fullmatch(r"(\d{1,18})|(\d{1,3})(?:\.(\d{1,2}))?%", t)
    if m is None or (m[2] is not None and _hundredths(t) > 10000):
        raise UsageError(
            f"bad --allow-failures {text!r}: use a number of children (2) or a percentage of them (5%, 2.5%), or none"
        )
    if m[1] is not None:
        return str(int(m[1]))
    whole, frac = m[2], (m[3] or "").rstrip("0")
    return f"{int(whole)}{'.' + frac if frac else ''}%" if _hundredths(t) else None


def _hundredths(percent: str) -> int:
    """'2.5%' -> 250: a percentage in hundredths of a percent, exactly."""
    whole, _, frac = percent.rstrip("%").partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def allowed_failures(allow: str | None, total: int) -> int:
    """How many of `total` children may fail with the allowance `allow`
    (check_allowance's text): a count as it is; a percentage of the children
    rounded down (5% of 108 is 5), computed exactly."""
    if not allow:
        return 0
    if allow.endswith("%"):
        return _hundredths(allow) * total // 10000
    return int(allow)


def allowance_used(counts: Mapping[str, int], status: str, allow: str | None) -> bool:
    """Whether a parent completed thanks to its allowance (some children failed)."""
    return status == COMPLETED and counts.get(FAILED, 0) > 0 and bool(allow)


def policy_text(
    fail_fast: bool | int,
    allow: str | None,
    max_attempts: int | None,
    open: bool | int = False,
    max_running: int | None = None,
) -> str | None:
    """The canonical text of a policy (a create or policy event's message):
    `open, fail-fast, allow-failures 5%, max-attempts 3, max-running 4`; None for no policy."""
    parts = (["open"] if open else []) + (["fail-fast"] if fail_fast else [])
    parts += [f"allow-failures {allow}"] if allow else []
    parts += [f"max-attempts {max_attempts}"] if max_attempts is not None else []
    parts += [f"max-running {max_running}"] if max_running is not None else []
    return ", ".join(parts) or None


def parse_policy(text: str | None) -> dict:
    """policy_text's inverse: {is_open, fail_fast, allow_failures, max_attempts, max_running}."""
    out: dict = {"is_open": 0, "fail_fast": 0, "allow_failures": None, "max_attempts": None, "max_running": None}
    for part in (text or "").split("; ")[0].split(", "):  # (a create event's `; waiting on ...` is not policy)
        if part == "open":
            out["is_open"] = 1
        elif part.startswith("max-running "):
            out["max_running"] = int(part.split(" ", 1)[1])
        elif part == "fail-fast":
            out["fail_fast"] = 1
        elif part.startswith("allow-failures "):
            out["allow_failures"] = part.split(" ", 1)[1]
        elif part.startswith("max-attempts "):
            out["max_attempts"] = int(part.split(" ", 1)[1])
    return out


def check_max_attempts(n: int | None) -> int | None:
    """A --max-attempts value: 1 or more (None: unlimited)."""
    if n is not None and not (isinstance(n, int) and 1 <= n <= 1_000_000):
        raise UsageError(f"--max-attempts must be a whole number from 1 to 1,000,000, not {n}")
    return n


def check_max_running(n: int | None) -> int | None:
    """A --max-running value: 1 or more (None: no limit)."""
    if n is not None and not (isinstance(n, int) and 1 <= n <= 1_000_000):
        raise UsageError(f"--max-running must be a whole number from 1 to 1,000,000, not {n}")
    return n


def at_limit(counts: Mapping[str, int], parent: Mapping) -> bool:
    """Whether a parent runs as many children as its --max-running allows: no
    other may start (claim skips them; `status set running` needs --force)."""
    cap = parent.get("max_running")
    return cap is not None and counts.get(RUNNING, 0) >= cap


def over_limit(parent: Mapping, child_id: str) -> AtLimit:
    cap = parent["max_running"]
    return AtLimit(
        f"job {parent['id']} runs at most {cap} children at once (--max-running {cap}):"
        f" {child_id} not started (use --force)"
    )


# ------------------------------------------------------------- dependencies
# A job created with --after JOB waits, pending, until JOB has completed (with
# --after-any: until JOB has ended, whatever its outcome); claim skips it until
# then. A job it waits on (with --after) that ends failed or cancelled cancels
# it at once: `dependency P.2 failed`. Its dependencies are a list of
# (job id, any_outcome) pairs, sorted by id; they are recorded in its create
# event's fields ({"after": [...], "after_any": [...]}), so replay rebuilds them.
DEPENDENCY_PREFIX = "dependency "


def check_after(after: Iterable[str] = (), after_any: Iterable[str] = ()) -> list[tuple[str, int]]:
    """--after and --after-any ids as dependencies: [(id, any_outcome)] sorted by id,
    each once; an id given to both is refused."""
    strict, anyway = {check_id(a) for a in after}, {check_id(a) for a in after_any}
    both = sorted(strict & anyway)
    if both:
        raise UsageError(f"job {both[0]} is given to both --after and --after-any: use one")
    return sorted([(a, 0) for a in strict] + [(a, 1) for a in anyway])


# The statuses of a job waited on that release the job waiting on it (--after), and
# with --after-any; the stores' claim builds its SQL from these (store/base.py).
DEPENDENCY_DONE: frozenset[str] = frozenset({COMPLETED})
DEPENDENCY_DONE_ANY: frozenset[str] = TERMINAL


def releases(status: str, any_outcome: bool | int) -> bool:
    """Whether a job in `status` no longer holds a job that waits on it."""
    return status in (DEPENDENCY_DONE_ANY if any_outcome else DEPENDENCY_DONE)


def cancels(status: str, any_outcome: bool | int) -> bool:
    """Whether a job in `status` cancels a pending job that waits on it (--after, not --after-any)."""
    return not any_outcome and status in (FAILED, CANCELLED)


def dependency_message(after_id: str, status: str) -> str:
    """Why a waiting job was cancelled: `dependency P.2 failed`."""
    return f"{DEPENDENCY_PREFIX}{after_id} {status}"


def waiting_on(deps: Iterable[Mapping]) -> list[str]:
    """The ids of the jobs still holding a job back, of its dependencies
    ({after_id, any_outcome, status}: the status of the job waited on)."""
    return [d["after_id"] for d in deps if not releases(d["status"], d["any_outcome"])]


def blocker(deps: Iterable[Mapping]) -> Mapping | None:
    """The first dependency that cancels the job waiting on it (cancels), or None."""
    return next((d for d in deps if cancels(d["status"], d["any_outcome"])), None)


def not_ready(job_id: str, held_by: list[str]) -> Waiting:
    return Waiting(f"job {job_id} is waiting on {', '.join(held_by)}: not started (use --force)")


def after_fields(deps: Iterable[tuple[str, int]]) -> dict:
    """A create event's fields for its dependencies ({} without any)."""
    deps = list(deps)
    out = {}
    for key, flag in (("after", 0), ("after_any", 1)):
        ids = [a for a, any_outcome in deps if any_outcome == flag]
        if ids:
            out[key] = ids
    return out


def parse_after(fields: str | None) -> list[tuple[str, int]]:
    """after_fields' inverse, from the fields' JSON text: [(id, any_outcome)] sorted."""
    if not fields or '"after' not in fields:
        return []
    import json

    data = json.loads(fields)
    return sorted([(a, 0) for a in data.get("after", ())] + [(a, 1) for a in data.get("after_any", ())])


def dependency_cycle(
    job_id: str,
    parent_id: str | None,
    after: Iterable[str],
    required_by: Callable[[list[str]], Iterable[str]],
) -> str | None:
    """The first of `after` that a new job `job_id` (child of `parent_id`) cannot
    wait on, because that job cannot end before the new one does: a cycle.
    A job needs its children to end and the jobs it waits on to complete;
    `required_by(ids)` gives the jobs that need any of `ids` so (their parents,
    and the jobs waiting on them). None: no cycle."""
    seen = {job_id} | ({parent_id} if parent_id is not None else set())
    frontier = [parent_id] if parent_id is not None else []
    while frontier:
        frontier = [j for j in dict.fromkeys(required_by(frontier)) if j not in seen]
        seen.update(frontier)
    return next((a for a in after if a in seen), None)


def attempts_left(job: Mapping) -> bool:
    """Whether going back to pending is within the job's attempt cap. A job that
    never started in its current attempt (cancelled while pending) has used
    nothing: it keeps its attempt and may always be retried."""
    cap = job.get("max_attempts")
    return cap is None or job.get("started_at") is None or job.get("attempt", 1) < cap


def run_cap(job: Mapping, retries: int | None) -> int | None:
    """How many attempts `run` gives a job in all: `retries` (--retries N) lets it run
    N + 1, counted by its attempt counter whoever ran them; without it, its
    max_attempts does (None: no re-run); never past its cap."""
    cap = job.get("max_attempts")
    return cap if retries is None else min(cap or MAX_INT, retries + 1)


def may_retry(job: Mapping, retries: int | None) -> bool:
    """Whether a job whose command failed runs again (`run`): within its run_cap."""
    cap = run_cap(job, retries)
    return cap is not None and job.get("attempt", 1) < cap


def attempts_text(attempt: int | None, max_attempts: int | None) -> str:
    """`attempt 2/3` (`attempt 2` without a cap; "" for a first attempt without one)."""
    if attempt is None or (max_attempts is None and attempt <= 1):
        return ""
    return f"attempt {attempt}/{max_attempts}" if max_attempts is not None else f"attempt {attempt}"


def out_of_attempts(job: Mapping) -> Conflict:
    cap = job.get("max_attempts")
    return Conflict(f"job {job['id']} has used all {cap} of its attempts (--max-attempts {cap}): not retried")


# The key of a claim's token in its running event's fields: each claim carries a
# token of its own, so a claim whose reply was lost with the connection (its
# COMMIT may have gone through) is found again by it, never left running without
# the worker that made it (Jobctl.claim).
CLAIM_FIELD = "claim"

# The message of a running job given back to pending by its worker (`run --claim`
# stopped by SIGTERM): that attempt does not count, the job keeps its number.
REQUEUED = "requeued: its worker was stopped; this attempt does not count"
# ... and one its worker claimed but could not start (the database failed it).
UNSTARTED = "requeued: its worker could not start the command; this attempt does not count"
NOT_COUNTED = (REQUEUED, UNSTARTED)  # the messages of a return to pending that is no new attempt


def where_text(fields: Mapping) -> str:
    """Where `run` ran a job, from its running event's fields:
    `build-7 (pid 4242), GITHUB_RUN_ID 99, GITHUB_JOB test`."""
    parts = [f"{fields.get('host', '?')} (pid {fields.get('pid', '?')})"]
    parts += [f"{k} {v}" for k, v in fields.items() if k not in ("host", "pid")]
    return ", ".join(parts)


def entering(new: str) -> dict[str, str | None]:
    """What entering `new` from running sets besides the status, as enter_status does:
    {field: "at"} for a field set to the change's time, {field: None} for one
    cleared. The stores' set-based cancel builds its UPDATE from this."""
    before: dict = {
        "status": RUNNING,
        "attempt": 1,
        "started_at": "",
        "completed_at": "",
        "updated_at": "",
        "not_before": "",
    }
    job = dict(before)
    enter_status(job, new, "at")
    return {k: v for k, v in job.items() if k != "status" and v != before[k]}


def enter_status(job: dict, new: str, at: str, message: str | None = None) -> None:
    """Set `job['status']` and its status timestamps, in place.

    started_at is set on entering running, completed_at on entering a terminal
    status; going back to pending (retry) clears both, so a retried job's
    timestamps describe its latest attempt. Going back to pending after it
    started begins the job's next attempt (unless its `message` is one of NOT_COUNTED);
    entering running ends any backoff.
    """
    if (
        message not in NOT_COUNTED
        and new == PENDING
        and job.get("status") not in (None, PENDING)
        and job.get("started_at") is not None
    ):
        job["attempt"] = job.get("attempt", 1) + 1
    if new != PENDING:
        job["not_before"] = None
    job["status"] = new
    job["updated_at"] = at
    if new == RUNNING:
        job["started_at"] = at
        job["completed_at"] = None
    elif new in TERMINAL:
        job["completed_at"] = at
    else:
        job["started_at"] = None
        job["completed_at"] = None


def in_tree(ids: set | None, e: Mapping) -> bool:
    """Whether event `e` concerns the tree whose job ids are `ids` (None: any
    event does). A job created under the tree joins it: `ids` grows in place."""
    if ids is None:
        return True
    if e["kind"] == CREATE and e["parent_id"] in ids:
        ids.add(e["job_id"])
    return e["job_id"] in ids


REPLAYED_FIELDS = (
    "parent_id",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
    "attempt",
    "is_open",
    "fail_fast",
    "allow_failures",
    "max_attempts",
    "max_running",
    "after",  # what the job waits on (parse_after): the dependencies table's rows of it
    "waits",  # ... and how many: the jobs table's count of them
)


def replay(events: Iterable[Mapping], problems: list | None = None) -> dict[str, dict]:
    """Fold events (in id order) into every job's state, from empty.

    Returns {job_id: {field: value}} for REPLAYED_FIELDS (`after`: what the job
    waits on, parse_after of its create event's fields). Events that contradict
    the history so far (a second create, a change of a job never created, an
    old status that is not the job's status then, an attempt the rules do not
    give) are still applied, and are described in `problems` when a list is given.
    A create or policy event's message is the job's policy (policy_text).
    """
    jobs: dict[str, dict] = {}
    note = problems.append if problems is not None else (lambda text: None)
    for e in events:
        kind, job_id = e["kind"], e["job_id"]
        if kind == CREATE:
            if job_id in jobs:
                note(f"event {e.get('id')}: job {job_id} created a second time")
            job = {
                "parent_id": e["parent_id"],
                "created_at": e["at"],
                "started_at": None,
                "completed_at": None,
                "attempt": 1,
                **parse_policy(e.get("message")),
                "after": parse_after(e.get("fields")),
            }
            job["waits"] = len(job["after"])
            enter_status(job, e["new_status"], e["at"])
            jobs[job_id] = job
        elif kind == STATUS:
            known = jobs.get(job_id)
            if known is None:
                note(f"event {e.get('id')}: status change of job {job_id}, which was never created")
                job = jobs[job_id] = {
                    "parent_id": e["parent_id"],
                    "created_at": None,
                    "status": None,
                    "started_at": None,
                    "completed_at": None,
                    "attempt": 1,
                    **parse_policy(None),
                    "after": [],
                    "waits": 0,
                }
            else:
                job = known
                if job["status"] != e["old_status"]:
                    note(
                        f"event {e.get('id')}: job {job_id} {e['old_status']} → {e['new_status']},"
                        f" but it was {job['status']}"
                    )
            before = job["attempt"]
            enter_status(job, e["new_status"], e["at"], e.get("message"))
            carried = e.get("attempt")
            if carried is None:  # written before attempts were counted (schema 4 and older)
                job["attempt"] = before
            elif carried != job["attempt"]:
                note(f"event {e.get('id')}: job {job_id} is on attempt {carried}, the rules say {job['attempt']}")
                job["attempt"] = carried
        elif kind == POLICY and job_id in jobs:
            jobs[job_id].update(parse_policy(e["message"]))
        elif kind == OUTPUT and (job_id not in jobs or parse_output(e.get("message")) is None):
            note(
                f"event {e.get('id')}: an output of job {job_id} that "
                + ("is not key=value" if job_id in jobs else "was never created")
            )
    for job in jobs.values():
        job.pop("not_before", None)
    return jobs


_second: list = [None, ""]  # the last whole second formatted, and its text


def timestamp(t: float) -> str:
    """A Unix time as an ISO 8601 UTC string with microseconds, sortable as text."""
    whole = int(t)
    if _second[0] != whole:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int(t % 1 * 1e6):06d}Z"


def now() -> str:
    return timestamp(time.time())


def ago(seconds: float) -> str:
    """The timestamp `seconds` before now."""
    return timestamp(time.time() - seconds)


def parse_duration(text: str, *, zero: bool = False) -> float:
    """'90s', '5m', '1h', '2d' or plain seconds -> seconds (0 too with `zero`). Raises UsageError."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    try:
        if t and t[-1] in units:
            value = float(t[:-1]) * units[t[-1]]
        else:
            value = float(t)
    except ValueError:
        value = -1.0
    if not (0 <= value if zero else 0 < value) or not value <= MAX_SECONDS:  # also refuses nan and inf
        raise UsageError(f"bad duration {text!r} (use e.g. 90s, 5m, 1h; at most 100 years)")
    return value


def seconds_text(seconds: float) -> str:
    """300 -> '5m', 90 -> '90s', 7200 -> '2h': for `timed out after 5m`, `retrying in 10s`."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def duration_text(seconds: float) -> str:
    """How long something ran, in whole seconds: 42 -> '42s', 95 -> '1m35s', 7300 -> '2h01m'."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def job_seconds(job: Mapping, now: str | None = None) -> float | None:
    """How long a job ran: from started_at to completed_at, or to `now` while it
    runs (None: it has not started, or it runs and no `now` was given). Never
    below 0: the clocks of two machines may disagree."""
    end = job["completed_at"] or now
    if not job["started_at"] or not end:
        return None
    from datetime import datetime

    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(job["started_at"])).total_seconds())


def check_seconds(value: float | None, option: str, *, zero: bool = True) -> float | None:
    """A --timeout or --poll-interval: finite, not negative (and not 0 unless `zero`)."""
    if value is not None and not ((0 <= value if zero else 0 < value) and value <= MAX_SECONDS):
        raise UsageError(
            f"{option} must be {'0' if zero else 'more than 0'} seconds or more, at most 100 years, not {value}"
        )
    return value


# ------------------------------------------------------------- validators
_ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.:@/+-]{0,199}\Z"


def check_text(text: str | None, what: str) -> str | None:
    """Text is stored verbatim, except NUL, which PostgreSQL cannot store in
    text: refused on both backends alike."""
    if text is not None and "\x00" in text:
        raise UsageError(f"a {what} must not contain a NUL character")
    return text


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UsageError("a job name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(f"a job name is at most {MAX_NAME_LENGTH} characters, not {len(name)}")
    check_text(name, "job name")
    return name


def check_message(message: str | None, what: str = "message") -> str | None:
    if message is not None and len(message) > MAX_MESSAGE_LENGTH:
        raise UsageError(f"a {what} is at most {MAX_MESSAGE_LENGTH} characters, not {len(message)}")
    return check_text(message, what)


# --------------------------------------------------------------- outputs
MAX_OUTPUT_KEY = 100  # characters
MAX_OUTPUT_VALUE = 65_536  # characters of one value (a JSON value: of its compact text)
MAX_OUTPUT_FILE = 1_000_000  # bytes of a run's --output-file (GitHub's cap per job's outputs is 1 MB)
_OUTPUT_KEY = r"[A-Za-z_][A-Za-z0-9_-]{0,99}\Z"


def check_output_key(key: str) -> str:
    import re

    if not re.match(_OUTPUT_KEY, key):
        raise UsageError(
            f"bad output key {key!r}: use 1-{MAX_OUTPUT_KEY} letters, digits, _ and - (starting with a letter or _)"
        )
    return key


def output_message(key: str, value: object) -> str:
    """An output event's message: `key=text` for a string, `key:=json` for any
    other JSON value (compact); refuses a bad key or a value over the cap."""
    import json

    check_output_key(key)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_OUTPUT_VALUE:
        raise UsageError(f"output {key}: a value is at most {MAX_OUTPUT_VALUE:,} characters, not {len(text):,}")
    check_text(text, "output value")
    return f"{key}={text}" if isinstance(value, str) else f"{key}:={text}"


def parse_output(message: str | None) -> tuple[str, object] | None:
    """output_message's inverse: (key, value); None if it is not one."""
    import json
    import re

    m = re.match(r"([A-Za-z_][A-Za-z0-9_-]{0,99})(:?)=", message or "", re.S)
    if m is None:
        return None
    text = (message or "")[m.end() :]
    if not m[2]:
        return m[1], text
    try:
        return m[1], json.loads(text)
    except ValueError:
        return None


def parse_output_file(text: str) -> list[tuple[str, str]]:
    """`key=value` lines as a command writes $GITHUB_OUTPUT (and its `key<<DELIMITER`
    lines ... DELIMITER for a value of several lines): [(key, value)]."""
    pairs: list[tuple[str, str]] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r")
        n = i + 1
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delimiter = line.split("<<", 1)
            try:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip("\r") == delimiter)
            except StopIteration:
                raise UsageError(f"--output-file line {n}: no closing {delimiter!r} for {key!r}") from None
            pairs.append((key, "\n".join(x.rstrip("\r") for x in lines[i + 1 : end])))
            i = end + 1
            continue
        if "=" not in line:
            if line.strip():
                raise UsageError(f"--output-file line {n}: not key=value: {line[:100]!r}")
            i += 1
            continue
        pairs.append(tuple(line.split("=", 1)))  # type: ignore[arg-type]
        i += 1
    for key, value in pairs:
        output_message(key, value)  # a bad key or value: refused here, with nothing stored
    return pairs


def check_id(job_id: str) -> str:
    import re  # here, not at the top: json and re cost ~7 ms at every start of `status set`

    if not re.match(_ID_PATTERN, job_id):
        raise UsageError(
            f"bad job id {job_id!r}: use 1-200 letters, digits and _.:@/+- (starting with a letter, digit or _)"
        )
    return job_id
