"""`jobctl run`: run a command as a tracked job.

Three forms share one piece of code, `Execution` (one command as one job):

- `run JOB -- CMD...` runs CMD as the pending job JOB; `run --parent P -- CMD...`
  creates a child of P first;
- `run --parent P --each -- CMD {}` reads inputs from stdin, spawns one child per
  line in one transaction and runs up to --jobs of them at once, showing the
  parent as `watch` does;
- `run --claim P -- CMD` is a worker: it claims P's pending children one by
  one (on SQLite or, across machines, PostgreSQL) and runs CMD for each.

An Execution sets the job running with the command line as the message, runs
CMD directly (no shell) in a process group of its own with the job's identity
in its environment, copies its output through line by line and stores it as
log lines (batched, capped), sends heartbeats, notices a cancel from elsewhere
through the store's wake-ups, enforces --timeout, and ends the job with the
outcome (status, exit code, duration) in one transaction.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

from jobctl import model
from jobctl.api import Jobctl
from jobctl.console import info
from jobctl.model import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, DatabaseUnusable, UsageError, seconds_text

FLUSH_SECONDS = 0.5  # output lines are stored at most this late (one transaction per batch)
FLUSH_LINES = 500  # ...or as soon as this many are waiting
CHECK_SECONDS = 0.5  # how often the job's status is looked at, besides wake-ups (a cancel is seen within 1 s)
NAME_LENGTH = 80  # a child's default name: its command line, shortened


@dataclass
class Options:
    heartbeat: float = 30.0
    timeout: float | None = None
    kill_after: float = 10.0
    log_lines: int = 1000
    retries: int | None = None  # re-runs of a failed command (None: as the job's max_attempts allows)
    retry_delay: float = 0.0  # before the first re-run; doubled for each next one


@dataclass
class Outcome:
    status: str
    message: str
    exit_code: int | None  # the command's, or 128 + signal; None: it never ran
    exit: int  # what jobctl run exits with


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def shorten(text: str, limit: int = NAME_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def running_message(argv: Sequence[str]) -> str:
    """The message of a run's running event: the command as it is run."""
    return f"run: {shorten(command_line(argv), 1000)}"


def text_of(raw: bytes) -> str:
    """A line of output as text: not UTF-8 is escaped (\\xNN), and so is NUL, never a crash."""
    return raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Output:
    """A command's output on its way to the job's log: batched, and capped at
    `cap` lines (the first `cap` are stored as they come, then only the last
    `cap` are kept, and at the end one line says how many were dropped)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.lock = threading.Lock()
        self.pending: list[tuple[str, str]] = []
        self.stored = 0
        self.tail: deque[tuple[str, str]] = deque(maxlen=cap)
        self.dropped = 0

    def add(self, level: str, text: str) -> None:
        with self.lock:
            if self.stored + len(self.pending) < self.cap:
                self.pending.append((level, text))
            else:
                if len(self.tail) == self.tail.maxlen:
                    self.dropped += 1
                self.tail.append((level, text))

    def take(self) -> list[tuple[str, str]]:
        with self.lock:
            batch, self.pending = self.pending, []
            self.stored += len(batch)
            return batch

    def last(self) -> list[tuple[str, str]]:
        """What is left at the end: the pending lines, the note of the dropped ones, the tail."""
        with self.lock:
            lines = self.pending + (
                [("warning", f"[jobctl] {self.dropped} lines of output dropped (--log-lines {self.cap})")]
                if self.dropped
                else []
            )
            lines += list(self.tail)
            self.pending, self.tail = [], deque(maxlen=self.cap)
            return lines


@dataclass(eq=False)  # each one is itself (kept in a set while it runs)
class Execution:
    """One command run as one job."""

    db: str
    job_id: str
    argv: list[str]
    options: Options
    echo: Callable[[str, bytes], None] | None = None  # (stream, line): where the output goes on screen
    claimed: bool = False  # already set running (claim)
    one_of_many: bool = False  # --each: a child cancelled before its turn (fail-fast, cancel) is skipped
    env: dict = field(default_factory=dict)  # more environment for the command
    stop_reason: str | None = None  # set from elsewhere (another thread) to stop the command
    proc: subprocess.Popen | None = None

    def run(self) -> Outcome:
        with Jobctl(self.db) as jc:
            job = jc.get(self.job_id)
            message = running_message(self.argv)
            if not self.claimed:
                try:
                    check_runnable(job)
                    if not jc.set_status([self.job_id], RUNNING, message=message):  # another run took it meanwhile
                        raise UsageError(f"job {self.job_id} is running: only a pending job can be run")
                except (UsageError, model.Conflict):
                    status = jc.status(self.job_id)
                    if self.one_of_many and status != PENDING:  # cancelled, or run by someone else: skipped
                        return Outcome(status, f"{status} before its turn", None, 143 if status == CANCELLED else 0)
                    raise
            while True:
                started = time.monotonic()
                output = Output(self.options.log_lines)
                try:
                    outcome = self._supervise(jc, job, output, started)
                except BaseException as exc:
                    self._kill()
                    try:  # best effort: never leave the job running for nothing
                        jc.finish(
                            self.job_id,
                            FAILED,
                            message=f"jobctl run failed: {exc or type(exc).__name__}",
                            exit_code=None,
                            duration=time.monotonic() - started,
                            lines=output.take(),
                            attempt=job["attempt"],
                        )
                    except Exception:
                        pass
                    raise
                if not self._may_retry(outcome, job):
                    return self._finish(jc, job, outcome, output, time.monotonic() - started)
                delay = backoff(self.options.retry_delay, job["attempt"])
                recorded = self._finish(jc, job, outcome, output, time.monotonic() - started, retry_in=delay)
                if recorded.exit == model.EXIT_DATABASE:
                    return recorded
                if recorded.status == CANCELLED:  # cancelled from elsewhere as it ended
                    return Outcome(CANCELLED, "cancelled", outcome.exit_code, 143)
                if recorded.status != PENDING:  # no attempt left after all (a cap set meanwhile)
                    return outcome
                if self.stop_reason == "timeout":  # that attempt's timeout; the next has its own
                    self.stop_reason = None
                waited = self._back_off(jc, delay)
                if waited == "interrupted":
                    signum = int((self.stop_reason or "interrupted:2").split(":")[1])
                    return Outcome(CANCELLED, "interrupted", None, 128 + signum)
                if waited == "cancelled":
                    return Outcome(CANCELLED, "cancelled", None, 143)
                try:
                    if waited == "taken" or not jc.set_status([self.job_id], RUNNING, message=message):
                        # another worker runs the next attempt: this one's part ended in a retry, no failure
                        info(f"job {self.job_id}: its next attempt was started elsewhere")
                        return Outcome(PENDING, "retried elsewhere", outcome.exit_code, 0)
                except model.Conflict:  # cancelled since the last look
                    return Outcome(CANCELLED, "cancelled", None, 143)
                job = jc.get(self.job_id)

    def abandon(self, reason: str) -> None:
        """A claimed job that will not run (stopped before its command started) ends
        cancelled, as the running ones do, rather than stay running with no worker."""
        try:
            with Jobctl(self.db) as jc:
                jc.set_status(
                    [self.job_id], CANCELLED, message="interrupted" if reason.startswith("interrupted") else reason
                )
        except (DatabaseUnusable, model.Conflict):
            pass  # (the database is busy: its missing heartbeat makes it reapable)

    def _may_retry(self, outcome: Outcome, job: dict) -> bool:
        """Whether a failed (or timed-out) command runs again: --retries N lets a
        job run N + 1 attempts in all (its attempt counter, whoever ran them);
        without --retries, its --max-attempts does; never past its cap."""
        if outcome.status != FAILED or self.stop_reason not in (None, "timeout"):
            return False
        cap = job["max_attempts"]
        if self.options.retries is not None:
            cap = min(cap or model.MAX_INT, self.options.retries + 1)
        return cap is not None and job["attempt"] < cap

    def _back_off(self, jc: Jobctl, delay: float) -> str:
        """Wait `delay` seconds before the next attempt: "ready", or why not:
        "interrupted" (the job is then cancelled), "cancelled" (from
        elsewhere), "taken" (another worker started it)."""
        deadline = time.monotonic() + delay
        next_check = 0.0
        while True:
            now = time.monotonic()
            if (self.stop_reason or "").startswith("interrupted"):
                try:
                    jc.set_status([self.job_id], CANCELLED, message="interrupted")
                except (DatabaseUnusable, model.Conflict):
                    pass  # (the job moved on meanwhile, or the database is busy: reap finds it)
                return "interrupted"
            if self.stop_reason is not None:  # stopped with the others (--each)
                return "cancelled"
            if now >= next_check:
                next_check = now + CHECK_SECONDS
                try:
                    status = jc.status(self.job_id)
                except DatabaseUnusable:
                    status = PENDING
                if status != PENDING:
                    return "cancelled" if status == CANCELLED else "taken"
            if now >= deadline:
                return "ready"
            time.sleep(min(0.1, deadline - now))

    # ------------------------------------------------------------- the child
    def _environment(self, jc: Jobctl, job: dict) -> dict:
        env = dict(os.environ, **self.env)
        env.update(JOBCTL_JOB_ID=self.job_id, JOBCTL_PARENT_ID=job["parent_id"] or "", JOBCTL_DB=jc.path)
        return env

    def _supervise(self, jc: Jobctl, job: dict, output: Output, started: float) -> Outcome:
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._environment(jc, job),
                start_new_session=True,  # a process group of its own: a stop reaches its children too
            )
        except FileNotFoundError:
            return Outcome(FAILED, f"command not found: {self.argv[0]}", 127, 127)
        except PermissionError:
            return Outcome(FAILED, f"permission denied: {self.argv[0]}", 126, 126)
        except OSError as exc:
            return Outcome(FAILED, f"cannot run {self.argv[0]}: {exc.strerror}", 126, 126)
        reason = self.stop_reason or ""
        if reason.startswith("interrupted"):  # a signal came while it was starting
            self._signal(int(reason.split(":")[1]))
        readers = [
            threading.Thread(target=self._read, args=(stream, name, level, output), daemon=True)
            for stream, name, level in ((self.proc.stdout, "stdout", "info"), (self.proc.stderr, "stderr", "warning"))
        ]
        for r in readers:
            r.start()
        try:  # a quick command ends before the wake-ups are worth setting up
            self.proc.wait(0.05)
        except subprocess.TimeoutExpired:
            pass
        waker = jc.store.waker(CHECK_SECONDS) if self.proc.poll() is None else None
        deadline = None if self.options.timeout is None else started + self.options.timeout
        last_beat = last_flush = last_check = time.monotonic()
        try:
            while self.proc.poll() is None:
                changed = waker.wait(0.1) if waker is not None else False
                now = time.monotonic()
                if now - last_flush >= FLUSH_SECONDS or len(output.pending) >= FLUSH_LINES:
                    self._write(jc.log_lines, self.job_id, output.take())
                    last_flush = now
                if now - last_beat >= self.options.heartbeat:
                    self._write(jc.heartbeat, self.job_id)
                    last_beat = now
                if self.stop_reason is None and (changed or now - last_check >= CHECK_SECONDS):
                    last_check = now
                    try:
                        if jc.status(self.job_id) == CANCELLED:
                            self.stop_reason = "cancelled"
                    except DatabaseUnusable:  # unreadable for a moment: look again next time
                        pass
                if self.stop_reason is None and deadline is not None and now >= deadline:
                    self.stop_reason = "timeout"
                if self.stop_reason is not None:
                    self._stop()
                    break
        finally:
            if waker is not None:
                waker.close()
        code = self.proc.wait()
        for r in readers:
            r.join(2)
        if any(r.is_alive() for r in readers):
            # the command ended but left processes behind in its group, holding its
            # output open: they go with it (a job runner leaves nothing running)
            self._signal(signal.SIGKILL)
            for r in readers:
                r.join(2)
        return self._outcome(code)

    def _read(self, stream, name: str, level: str, output: Output) -> None:
        echo = self.echo
        for raw in iter(stream.readline, b""):
            if echo is not None:
                try:
                    echo(name, raw)
                except Exception:  # our own output went away (`jobctl run ... | head`): keep storing it
                    echo = None
            output.add(level, text_of(raw))
        stream.close()

    def _stop(self) -> None:
        """SIGTERM to the command's process group (an interrupt was passed on
        already), SIGKILL after --kill-after."""
        assert self.proc is not None
        if not (self.stop_reason or "").startswith("interrupted"):
            self._signal(signal.SIGTERM)
        try:
            self.proc.wait(self.options.kill_after)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait()

    def _signal(self, signum: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def _outcome(self, code: int) -> Outcome:
        reason = self.stop_reason
        if reason == "timeout":
            return Outcome(FAILED, f"timed out after {seconds_text(self.options.timeout or 0)}", exit_of(code), 124)
        if reason == "cancelled":
            return Outcome(CANCELLED, "cancelled", exit_of(code), 143)
        if reason is not None and reason.startswith("interrupted"):
            signum = int(reason.split(":")[1])
            return Outcome(CANCELLED, "interrupted", exit_of(code), 128 + signum)
        if code == 0:
            return Outcome(COMPLETED, "exit code 0", 0, 0)
        if code < 0:
            return Outcome(FAILED, f"killed by {signal_name(-code)}", 128 - code, 128 - code)
        return Outcome(FAILED, f"exit code {code}", code, code)

    # ------------------------------------------------------------ the record
    def _write(self, call: Callable, *args) -> None:
        """A write while the command runs (log lines, a heartbeat): a database
        that is busy for a moment costs a line, not the command."""
        try:
            if args[-1] != []:
                call(*args)
        except DatabaseUnusable as exc:
            info(f"could not record output or a heartbeat of job {self.job_id} ({exc}); going on")

    def _finish(
        self, jc: Jobctl, job: dict, outcome: Outcome, output: Output, duration: float, retry_in: float | None = None
    ) -> Outcome:
        """The outcome of the job's attempt (`job`, as it started), in one transaction
        with the last output; retried within the busy (or connect) timeout when the
        database is unusable for a while. With `retry_in`, a failure goes back to
        pending if the job has an attempt left (see Jobctl.finish). Returns it with
        the status the job has now."""
        lines = output.take() + output.last()
        deadline = time.monotonic() + float(os.environ.get("JOBCTL_BUSY_TIMEOUT") or 30)
        noted = False
        while True:
            try:
                now = jc.get(self.job_id)["attempt"]
                if now != job["attempt"] and not noted:  # (finish below records nothing of it then)
                    noted = True
                    info(
                        f"job {self.job_id}: attempt {job['attempt']} was taken back meanwhile (reaped; now attempt"
                        f" {now}): its outcome ({outcome.message}) is not recorded, only its output"
                    )
                status = jc.finish(
                    self.job_id,
                    outcome.status,
                    message=outcome.message,
                    exit_code=outcome.exit_code,
                    duration=duration,
                    lines=lines,
                    retry_in=retry_in,
                    attempt=job["attempt"],
                )
                return Outcome(status, outcome.message, outcome.exit_code, outcome.exit)
            except DatabaseUnusable as exc:
                if time.monotonic() >= deadline:
                    info(f"the outcome of job {self.job_id} ({outcome.message}) could not be recorded: {exc}")
                    return Outcome(outcome.status, outcome.message, outcome.exit_code, model.EXIT_DATABASE)
                time.sleep(0.2)


def backoff(delay: float, attempt: int) -> float:
    """The wait after attempt number `attempt` (1, 2, ...) failed: `delay`, then
    doubling, at most an hour (or `delay` itself, if longer)."""
    return min(delay * 2 ** min(attempt - 1, 32), max(delay, 3600.0))


def exit_of(code: int) -> int:
    """A child's return code as a shell shows it: 128 + N when killed by signal N."""
    return 128 - code if code < 0 else code


def check_runnable(job: dict) -> None:
    if job["progress"] is not None:
        raise UsageError(f"job {job['id']} has children: its status is derived, it runs no command")
    if job["status"] != PENDING:
        raise UsageError(f"job {job['id']} is {job['status']}: only a pending job can be run")


def check_command(argv: list[str]) -> list[str]:
    if not argv:
        raise UsageError("no command given: jobctl run JOB -- CMD [ARGS...]")
    return argv


# ------------------------------------------------------------------ one job
class Interrupts:
    """While one command runs in the foreground: SIGINT and SIGTERM to jobctl are
    passed on to the command; the job ends cancelled (`interrupted`)."""

    def __init__(self, execution: Execution):
        self.execution = execution
        self.old: dict = {}

    def __enter__(self) -> Interrupts:
        def handler(signum, frame):
            self.execution.stop_reason = f"interrupted:{signum}"
            if self.execution.proc is not None and self.execution.proc.poll() is None:
                self.execution._signal(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


def echo_through(stream: str, raw: bytes) -> None:
    out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    out.write(raw)
    out.flush()


def run_one(
    db: str | None,
    job: str | None,
    parent: str | None,
    name: str | None,
    id: str | None,
    argv: list[str],
    options: Options,
) -> int:
    """`run JOB -- CMD` and `run --parent P [--name N] [--id ID] -- CMD`."""
    check_command(argv)
    with Jobctl(db) as jc:
        resolved = jc.path
        if parent is not None:
            job = jc.create(name or shorten(command_line(argv)), parent=parent, id=id)
        else:
            assert job is not None
            check_runnable(jc.get(job))
    execution = Execution(resolved, job, argv, options, echo=echo_through)
    with Interrupts(execution):
        outcome = execution.run()
    return outcome.exit


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
        self.stopped: str | None = None  # why everything stops: also for executions not started yet

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

    def stop(self, reason: str) -> None:
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
) -> int:
    """`run --parent P --each`: one child per input line, spawned in one transaction,
    up to `jobs` at a time; the parent followed as `watch` does. Exit 0 if every
    child completed, 1 if any failed, 130 (143) on Ctrl-C (SIGTERM) after
    cancelling what had not finished."""
    from jobctl import watch as watching

    check_command(argv)
    if jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, not {jobs}")
    inputs = [line for line in inputs if line.strip()]
    if not inputs:
        raise UsageError("--each read no input lines from stdin")
    with Jobctl(db) as jc:
        jc.progress(parent)  # exists (exit 3 if not)
        cursor = jc.store.last_event_id()  # the watch below shows everything from the spawn on
        kids = jc.spawn(parent, names=inputs)
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
            pool.stop("cancelled")
            jc.cancel(parent, message="interrupted")

        try:
            code = watching.run_watch(
                jc, parent, sink, since=cursor, poll_interval=poll_interval, exit_status=True, on_interrupt=interrupted
            )
        except BaseException:  # the watch failed: stop the commands rather than leave them running
            queue.clear()
            pool.stop("cancelled")
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
    poll_interval: float = 1.0,
) -> int:
    """`run --claim P`: a worker that claims P's pending children and runs CMD for
    each, up to `jobs` at a time, until none is pending and none running (with
    `wait_for_more`, until P is final). Exit 0 if every command it ran exited 0,
    1 otherwise; 130/143 when interrupted (its running children end cancelled)."""
    check_command(argv)
    if jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, not {jobs}")
    with Jobctl(db) as jc:
        jc.progress(parent)  # exists (exit 3 if not)
        resolved = jc.path
    pool = Pool(jobs)
    out_lock = threading.Lock()
    stopping = threading.Event()

    def worker() -> None:
        with Jobctl(resolved) as jc:
            waker = jc.store.waker(poll_interval)
            try:
                while not stopping.is_set():
                    # the running event shows the command as it is run: {} replaced by the child's name
                    job_id = jc.claim(parent, message=lambda row: running_message(substitute(argv, row["name"])))
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
                    job = jc.get(job_id)
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
        pool.stop(f"interrupted:{signum}")
        for execution in list(pool.running):
            if execution.proc is not None and execution.proc.poll() is None:
                execution._signal(signum)

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


def meta_key(key: str) -> str:
    """A metadata key as part of an environment variable name: JOBCTL_META_OWNER."""
    return "".join(c if c.isalnum() else "_" for c in key).upper()
