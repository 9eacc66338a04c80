"""The fan-out of `jobctl run`: `--parent P --each` (one child per input line,
run by a pool of threads, the parent followed as `watch` does) and `--claim P`
(workers that claim P's pending children). Each child is an Execution."""

from __future__ import annotations

import signal
import threading
from collections import deque

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

from jobctl import model
from jobctl.api import Jobctl
from jobctl.model import UsageError
from jobctl.run.attempt import Execution, Options, check_command, echo_through, running_message, where
from jobctl.run.process import Outcome, StopReason


# ------------------------------------------------------------ many children
def substitute(argv: list[str], value: str) -> list[str]:
    """`{}` in the command replaced by the input line (or the child's name), as xargs -I{} does."""
    return [a.replace("{}", value) for a in argv]


class Pool:
    """Runs Executions on up to `jobs` threads; stop() stops every command still running."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.lock = threading.Lock()
        self.running: set[Execution] = set()
        self.outcomes: list[Outcome] = []
        self.errors: list[BaseException] = []
        self.stopped: StopReason | None = None  # why everything stops: also for executions not started yet

    def run(self, execution: Execution) -> None:
        with self.lock:
            stopped = self.stopped
            if stopped is None:
                self.running.add(execution)
        if stopped is not None:
            if execution.claimed:  # claimed just before the stop: it must not stay running
                execution.abandon(stopped)
            return
        try:
            outcome = execution.run()
            with self.lock:
                self.outcomes.append(outcome)
        except UsageError:
            if self.stopped is None:  # (a child cancelled before it started is no error)
                raise
        except BaseException as exc:  # a database error in a worker: reported by the main thread
            with self.lock:
                self.errors.append(exc)
        finally:
            with self.lock:
                self.running.discard(execution)

    def stop(self, reason: StopReason) -> None:
        with self.lock:
            self.stopped = reason
            for execution in self.running:
                execution.stop_reason = reason


def prefixed(job_id: str, lock: threading.Lock) -> Callable[[str, bytes], None]:
    """--output lines: each line of a child's output, prefixed with its id."""

    def echo(stream: str, raw: bytes) -> None:
        with lock:
            echo_through(stream, job_id.encode() + b": " + raw)

    return echo


class Ordered:
    """--keep-order: each child's output held back until every child before it has printed."""

    def __init__(self, ids: list[str]):
        self.ids = ids
        self.lines: dict[str, list[tuple[str, bytes]]] = {i: [] for i in ids}
        self.done: set[str] = set()
        self.next = 0
        self.lock = threading.Lock()

    def echo(self, job_id: str, prefix: bool) -> Callable[[str, bytes], None]:
        def hold(stream: str, raw: bytes) -> None:
            with self.lock:
                self.lines[job_id].append((stream, (job_id.encode() + b": " if prefix else b"") + raw))

        return hold

    def finished(self, job_id: str) -> None:
        with self.lock:
            self.done.add(job_id)
            while self.next < len(self.ids) and self.ids[self.next] in self.done:
                for stream, raw in self.lines.pop(self.ids[self.next]):
                    echo_through(stream, raw)
                self.next += 1


def run_each(
    db: str | None,
    parent: str,
    argv: list[str],
    options: Options,
    *,
    jobs: int,
    inputs: list[str],
    sink,
    output_lines: bool,
    keep_order: bool,
    poll_interval: float = 1.0,
    after: Sequence[str] = (),
    after_any: Sequence[str] = (),
) -> int:
    """`run --parent P --each`: one child per input line, spawned in one transaction
    (each waiting on `after`/`after_any` as in `spawn`: their commands start once
    those have ended so, and a child a failed one cancels is skipped), up to
    `jobs` at a time; the parent followed as `watch` does, until the
    children it created have ended (P may have others, and stay open). Exit 0 if
    every one of them completed, 1 if any failed, 6 if any was cancelled (none
    failed), 130 (143) on Ctrl-C (SIGTERM) after cancelling what had not finished."""
    from jobctl import watch as watching

    check_command(argv)
    if jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, not {jobs}")
    inputs = [line for line in inputs if line.strip()]
    if not inputs:
        raise UsageError("--each read no input lines from stdin")
    with Jobctl(db) as jc:
        jc.progress(parent)  # exists (exit 3 if not)
        cursor = jc.last_event_id()  # the watch below shows everything from the spawn on
        kids = jc.spawn(parent, names=inputs, after=after, after_any=after_any)
        resolved = jc.path
    queue = deque(zip(kids, inputs))
    pool = Pool(jobs)
    out_lock = threading.Lock()
    ordered = Ordered(kids) if keep_order else None

    def worker() -> None:
        while True:
            try:
                job_id, line = queue.popleft()
            except IndexError:
                return
            echo: Callable[[str, bytes], None] | None = None
            if ordered is not None:
                echo = ordered.echo(job_id, output_lines)
            elif output_lines:
                echo = prefixed(job_id, out_lock)
            pool.run(Execution(resolved, job_id, substitute(argv, line), options, echo=echo, one_of_many=True))
            if ordered is not None:
                ordered.finished(job_id)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(jobs, len(kids)))]
    for t in threads:
        t.start()

    def watchdog() -> None:
        """Workers that died of an error leave children unfinished: cancel the
        parent then, so the watch below ends (the error is raised after it)."""
        for t in threads:
            t.join()
        if pool.errors:
            with Jobctl(resolved) as jc:
                jc.cancel(parent, message=f"jobctl run failed: {pool.errors[0]}")

    threading.Thread(target=watchdog, daemon=True).start()
    with Jobctl(resolved) as jc:

        def interrupted() -> None:  # before the watch's summary, so that it says the real end
            queue.clear()
            pool.stop(StopReason.CANCELLED)
            jc.cancel(parent, message="interrupted")

        try:
            code = watching.run_watch(
                jc,
                parent,
                sink,
                since=cursor,
                poll_interval=poll_interval,
                exit_status=True,
                on_interrupt=interrupted,
                own=kids,
            )
        except BaseException:  # the watch failed: stop the commands rather than leave them running
            queue.clear()
            pool.stop(StopReason.CANCELLED)
            raise
    for t in threads:
        t.join()
    if pool.errors:
        raise pool.errors[0]
    return code


def run_claim(
    db: str | None,
    parent: str,
    argv: list[str],
    options: Options,
    *,
    jobs: int,
    wait_for_more: bool,
    requeue: bool = False,
    poll_interval: float = 1.0,
) -> int:
    """`run --claim P`: a worker that claims P's pending children and runs CMD for
    each, up to `jobs` at a time, until none is pending and none running (with
    `wait_for_more`, until P is final). Exit 0 if every command it ran exited 0,
    1 otherwise; 130/143 when interrupted: Ctrl-C cancels its running children;
    SIGTERM (a CI runner cancelled or preempted) gives them back to pending, their
    attempt not counted (model.REQUEUED), unless not `requeue` (--on-term cancel)."""
    check_command(argv)
    if jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, not {jobs}")
    with Jobctl(db) as jc:
        jc.progress(parent)  # exists (exit 3 if not)
        resolved = jc.path
    pool = Pool(jobs)
    out_lock = threading.Lock()
    stopping = threading.Event()
    here = where()

    def worker() -> None:
        try:
            claiming()
        except BaseException as exc:  # (a database unusable past its timeouts: exit 5, once the others end)
            with pool.lock:
                pool.errors.append(exc)
            stopping.set()

    def claiming() -> None:
        with Jobctl(resolved) as jc:
            waker = jc.waker(poll_interval)
            try:
                while not stopping.is_set():
                    # the running event shows the command as it is run: {} replaced by the child's name
                    job_id = jc.claim(
                        parent, message=lambda row: running_message(substitute(argv, row["name"])), fields=here
                    )
                    if job_id is None:
                        p = jc.progress(parent)
                        if (
                            wait_for_more
                            and p["status"] in model.TERMINAL
                            or not wait_for_more
                            and not (p["pending_children"] or p["running_children"])
                        ):
                            return
                        waker.wait(poll_interval)  # a retry or a reap may put one back
                        continue
                    try:
                        job = jc.get(job_id)
                    except model.DatabaseUnusable as exc:  # claimed, its command not started: given back
                        raise give_back(jc, job_id, exc) from None
                    env = {"JOBCTL_JOB_NAME": job["name"]}
                    env.update({f"JOBCTL_META_{meta_key(k)}": str(v) for k, v in job["metadata"].items()})
                    echo = prefixed(job_id, out_lock) if jobs > 1 else echo_through
                    pool.run(
                        Execution(
                            resolved, job_id, substitute(argv, job["name"]), options, echo=echo, claimed=True, env=env
                        )
                    )
            finally:
                waker.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(jobs)]
    got: dict = {}

    def handler(signum, frame):
        got["signum"] = signum
        stopping.set()
        if requeue and signum == signal.SIGTERM:  # preempted: the commands are stopped, their jobs given back
            pool.stop(StopReason.PREEMPTED)
            return
        pool.stop(StopReason.interrupt(signum))
        for execution in list(pool.running):
            execution.interrupt(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
    if pool.errors:
        raise pool.errors[0]
    if "signum" in got:
        return 128 + got["signum"]
    return 0 if all(o.exit == 0 for o in pool.outcomes) else 1


def give_back(jc: Jobctl, job_id: str, exc: model.DatabaseUnusable) -> model.DatabaseUnusable:
    """A claimed child whose command cannot start (`exc`) goes back to pending, its
    attempt not counted; the error to end with says so, or, when even that cannot
    be written, that the child is left running (reapable: no heartbeat comes)."""
    try:
        jc.finish(job_id, model.PENDING, message=model.UNSTARTED, exit_code=None, duration=None)
    except model.DatabaseUnusable:
        return model.DatabaseUnusable(
            f"{exc}; job {job_id} was claimed, its command not started: reap it (jobctl reap)"
        )
    return model.DatabaseUnusable(f"{exc}; job {job_id} was claimed, its command not started: given back to pending")


def meta_key(key: str) -> str:
    """A metadata key as part of an environment variable name: JOBCTL_META_OWNER."""
    return "".join(c if c.isalnum() else "_" for c in key).upper()
