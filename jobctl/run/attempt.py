"""One command run as one job: its attempts, each recorded (running, output,
heartbeats, outcome), and its retries. `process.py` runs the command itself."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

from jobctl import model
from jobctl.api import Jobctl
from jobctl.backoff import Backoff
from jobctl.console import info
from jobctl.model import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, DatabaseUnusable, UsageError
from jobctl.run.process import Outcome, Output, Process, StopReason, outcome_of
from jobctl.store import is_url
from jobctl.store.base import DEFAULT_BUSY_TIMEOUT, seconds_from_env

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
    quiet: bool = False  # no line on stderr for an outcome that is not `completed`
    output_file: str | None = None  # --output-file: key=value lines the command writes, stored as outputs


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def shorten(text: str, limit: int = NAME_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def running_message(argv: Sequence[str]) -> str:
    """The message of a run's running event: the command as it is run."""
    return f"run: {shorten(command_line(argv), 1000)}"


CI_JOB_VARIABLES = ("GITHUB_RUN_ID", "GITHUB_JOB", "CI_JOB_ID", "BUILDKITE_JOB_ID")  # GitHub, GitLab, Buildkite


def where() -> dict[str, object]:
    """Where a command runs, for the fields of its running event: the host, jobctl
    run's pid, and the CI job (those of CI_JOB_VARIABLES that are set)."""
    fields: dict[str, object] = {"host": os.uname().nodename, "pid": os.getpid()}  # (gethostname, no import)
    fields.update((k, os.environ[k]) for k in CI_JOB_VARIABLES if os.environ.get(k))
    return fields


def backoff(delay: float, attempt: int) -> float:
    """The wait after attempt number `attempt` (1, 2, ...) failed: `delay`, then
    doubling, at most an hour (or `delay` itself, if longer)."""
    return min(delay * 2 ** min(attempt - 1, 32), max(delay, 3600.0))


def check_runnable(job: dict) -> None:
    if job["progress"] is not None:
        raise UsageError(f"job {job['id']} has children: its status is derived, it runs no command")
    if job["status"] != PENDING:
        raise UsageError(f"job {job['id']} is {job['status']}: only a pending job can be run")


def check_command(argv: list[str]) -> list[str]:
    if not argv:
        raise UsageError("no command given: jobctl run JOB -- CMD [ARGS...]")
    return argv


CANCELLED_OUTCOME = Outcome(CANCELLED, "cancelled", None, model.EXIT_TERMINATED)


@dataclass(eq=False)  # each one is itself (kept in a set while it runs)
class Execution:
    """One command run as one job."""

    db: str
    job_id: str
    argv: list[str]
    options: Options
    echo: Callable[[str, bytes], None] | None = None  # (stream, line): where the output goes on screen
    claimed: bool = False  # already set running (claim, or created running: run --parent)
    one_of_many: bool = False  # --each: a child cancelled before its turn (fail-fast, cancel) is skipped
    env: dict = field(default_factory=dict)  # more environment for the command
    stop_reason: StopReason | None = None  # set from elsewhere (another thread) to stop the command
    process: Process | None = None

    def _start(self, jc: Jobctl, message: str, fields: dict) -> bool:
        """Set the job running (False: it is running already). One of `--each`'s
        children waits for a slot under its parent's --max-running (until
        stopped); anything else gets AtLimit. A job waiting on other jobs
        (--after) waits for them (until stopped); one cancelled meanwhile (a
        job it waited on failed) ends the run as cancelled (exit 6)."""
        waker = None
        try:
            while True:
                try:
                    return bool(jc.set_status([self.job_id], RUNNING, message=message, fields=fields))
                except model.Waiting:
                    if self.stop_reason is not None:
                        raise
                except model.AtLimit:
                    if not self.one_of_many or self.stop_reason is not None:
                        raise
                waker = waker or jc.waker(1.0)
                waker.wait(1.0)  # until the database changes: a sibling or a job waited on may have ended
        finally:
            if waker is not None:
                waker.close()

    def run(self, jc: Jobctl | None = None) -> Outcome:
        """Run it; on `jc` (the database, open already), else on a Jobctl of its own."""
        with nullcontext(jc) if jc is not None else Jobctl(self.db) as jc:
            job = jc.get(self.job_id)
            message = running_message(self.argv)
            if not self.claimed:
                try:
                    check_runnable(job)
                    if not self._start(jc, message, where()):  # taken meanwhile
                        raise UsageError(f"job {self.job_id} is running: only a pending job can be run")
                except (UsageError, model.Conflict) as exc:
                    status = jc.status(self.job_id)
                    if self.one_of_many and status == PENDING and self.stop_reason is not None:
                        return Outcome(PENDING, "stopped before its turn", None, model.EXIT_TERMINATED)
                    if self.one_of_many and status != PENDING:  # cancelled, or run by someone else: skipped
                        exit = model.EXIT_TERMINATED if status == CANCELLED else 0
                        return Outcome(status, f"{status} before its turn", None, exit)
                    if status == CANCELLED and job["status"] == PENDING:  # (cancelled since it was read)
                        raise cancelled_waiting(jc, self.job_id) or exc from None
                    raise
            while True:
                started = time.monotonic()
                output = Output(self.options.log_lines)
                try:
                    outcome = self._supervise(jc, job, output, started)
                except BaseException as exc:
                    if self.process is not None:
                        self.process.kill()
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
                # a failure is retried if the job has an attempt left (Jobctl.finish decides, see model.may_retry)
                retry = outcome.status == FAILED and self.stop_reason in (None, StopReason.TIMEOUT)
                delay = backoff(self.options.retry_delay, job["attempt"]) if retry else None
                duration = time.monotonic() - started
                recorded = self._finish(jc, job, outcome, output, duration, retry_in=delay)
                if recorded.exit != model.EXIT_DATABASE:
                    self._say(job, outcome, duration, delay if recorded.status == PENDING else None)
                if delay is None or recorded.exit == model.EXIT_DATABASE:
                    return recorded
                if recorded.status == CANCELLED:  # cancelled from elsewhere as it ended
                    return Outcome(CANCELLED, "cancelled", outcome.exit_code, model.EXIT_TERMINATED)
                if recorded.status != PENDING:  # no attempt left
                    return outcome
                if self.stop_reason is StopReason.TIMEOUT:  # that attempt's timeout; the next has its own
                    self.stop_reason = None
                stopped = self._back_off(jc, delay)
                try:
                    if stopped is None and not self._start(jc, message, where()):
                        stopped = Outcome(PENDING, "retried elsewhere", outcome.exit_code, 0)
                except model.AtLimit:  # its parent runs as many as it may: a worker runs the next attempt
                    stopped = Outcome(PENDING, "left pending (--max-running)", outcome.exit_code, 0)
                except model.Conflict:  # cancelled since the last look
                    stopped = CANCELLED_OUTCOME
                if stopped is not None and stopped.status == PENDING:
                    # another worker runs the next attempt: this one's part ended in a retry, no failure
                    info(f"job {self.job_id}: its next attempt was started elsewhere")
                    return Outcome(PENDING, stopped.message, outcome.exit_code, 0)
                if stopped is not None:
                    return stopped
                job = jc.get(self.job_id)

    def abandon(self, reason: StopReason) -> None:
        """A claimed job that will not run (stopped before its command started) ends
        cancelled, as the running ones do, rather than stay running with no worker."""
        try:
            with Jobctl(self.db) as jc:
                if reason is StopReason.PREEMPTED:  # given back, as a running one is
                    jc.finish(self.job_id, PENDING, message=model.REQUEUED, exit_code=None, duration=None)
                else:
                    message = "interrupted" if reason.interrupted else reason.value
                    jc.set_status([self.job_id], CANCELLED, message=message)
        except (DatabaseUnusable, model.Conflict):
            pass  # (the database is busy: its missing heartbeat makes it reapable)

    def _back_off(self, jc: Jobctl, delay: float) -> Outcome | None:
        """Wait `delay` seconds before the next attempt: None, or the Outcome of
        this run if it ends instead: interrupted (the job is then cancelled),
        cancelled (from elsewhere, or with the others), or taken (another
        worker started it: pending)."""
        deadline = time.monotonic() + delay
        next_check = 0.0
        while True:
            now = time.monotonic()
            reason = self.stop_reason
            if reason is StopReason.PREEMPTED:  # the job is pending already: another worker takes it
                return Outcome(PENDING, model.REQUEUED, None, model.EXIT_TERMINATED)
            if reason is not None and reason.interrupted:
                try:
                    jc.set_status([self.job_id], CANCELLED, message="interrupted")
                except (DatabaseUnusable, model.Conflict):
                    pass  # (the job moved on meanwhile, or the database is busy: reap finds it)
                return Outcome(CANCELLED, "interrupted", None, 128 + reason.signum)
            if reason is not None:  # stopped with the others (--each)
                return CANCELLED_OUTCOME
            if now >= next_check:
                next_check = now + CHECK_SECONDS
                try:
                    status = jc.status(self.job_id)
                except DatabaseUnusable:
                    status = PENDING
                if status == CANCELLED:
                    return CANCELLED_OUTCOME
                if status != PENDING:
                    return Outcome(PENDING, "retried elsewhere", None, 0)
            if now >= deadline:
                return None
            time.sleep(min(0.1, deadline - now))

    # ------------------------------------------------------------- the child
    def _environment(self, jc: Jobctl, job: dict) -> dict:
        env = dict(os.environ, **self.env)
        db = jc.path if is_url(jc.path) else os.path.abspath(jc.path)  # the command may change directory
        env.update(JOBCTL_JOB_ID=self.job_id, JOBCTL_PARENT_ID=job["parent_id"] or "", JOBCTL_DB=db)
        if self.options.output_file is not None:  # emptied for each attempt, as $GITHUB_OUTPUT is per step
            empty_output_file(self.options.output_file)
            env["JOBCTL_OUTPUT"] = self.options.output_file
        return env

    def _supervise(self, jc: Jobctl, job: dict, output: Output, started: float) -> Outcome:
        process = self.process = Process(self.argv, output, self.echo, self.job_id)
        failed = process.start(self._environment(jc, job))
        if failed is not None:
            return failed
        reason = self.stop_reason
        if reason is not None and reason.interrupted:  # a signal came while it was starting
            process.signal(reason.signum)
        if not process.wait(0.05):  # a quick command ends before the wake-ups (and the guardian) are worth it
            process.guarded()
        # (woken by cancels only where the store can tell: not by every runner's output)
        waker = jc.waker(CHECK_SECONDS, cancels_only=True) if process.running() else None
        deadline = None if self.options.timeout is None else started + self.options.timeout
        last_beat = last_flush = last_check = time.monotonic()
        try:
            while process.running():
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
                            self.stop_reason = StopReason.CANCELLED
                    except DatabaseUnusable:  # unreadable for a moment: look again next time
                        pass
                if self.stop_reason is None and deadline is not None and now >= deadline:
                    self.stop_reason = StopReason.TIMEOUT
                if self.stop_reason is not None:
                    process.stop(self.stop_reason, self.options.kill_after)
                    break
        finally:
            if waker is not None:
                waker.close()
        return outcome_of(process.end(), self.stop_reason, self.options.timeout)

    def interrupt(self, signum: int) -> None:
        """A signal to jobctl (from a handler): passed on to the command, whose job ends cancelled."""
        self.stop_reason = StopReason.interrupt(signum)
        if self.process is not None and self.process.running():
            self.process.signal(signum)

    # ------------------------------------------------------------ the record
    def _say(self, job: dict, outcome: Outcome, duration: float, retry_in: float | None) -> None:
        """One line on stderr for an attempt that did not complete (not with --quiet):
        `jobctl: P.3 failed: exit code 3 after 12.4 s (attempt 1/3, retrying in 10s)`."""
        if self.options.quiet or outcome.status == COMPLETED:
            return
        text = f"{self.job_id} {outcome.status}"
        if outcome.message != outcome.status:
            text += f": {outcome.message}"
        if outcome.exit != model.EXIT_TIMEOUT:  # (its message says how long)
            text += f" after {duration:.1f} s"
        cap = model.run_cap(job, self.options.retries)
        text += f" (attempt {job['attempt']}" + (f"/{cap}" if cap is not None else "")
        if retry_in is not None:
            text += ", retrying" + (f" in {model.seconds_text(retry_in)}" if retry_in else "")
        info(text + ")")

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
        outputs: list[tuple[str, str]] = []
        if self.options.output_file is not None and outcome.exit_code is not None:
            try:
                outputs = read_output_file(self.options.output_file)
            except UsageError as exc:  # as GitHub fails a step whose $GITHUB_OUTPUT it cannot read
                outcome = Outcome(FAILED, str(exc), outcome.exit_code, model.EXIT_FAILED)
                retry_in = None
        backoff = Backoff(0.1, 1.0, seconds_from_env("JOBCTL_BUSY_TIMEOUT", DEFAULT_BUSY_TIMEOUT))
        # the token makes trying again safe: a finish whose COMMIT went through but
        # whose reply was lost is found, not written twice (see Jobctl.finish)
        token, tried = os.urandom(16).hex(), False
        while True:
            try:
                now = jc.get(self.job_id)["attempt"]
                if now != job["attempt"] and not tried:  # (finish below records nothing of it then)
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
                    retries=self.options.retries,
                    attempt=job["attempt"],
                    token=token,
                    outputs=outputs,
                )
                return Outcome(status, outcome.message, outcome.exit_code, outcome.exit)
            except DatabaseUnusable as exc:
                tried = True  # (it may have committed: from now on its token says)
                if not backoff.sleep():
                    info(f"the outcome of job {self.job_id} ({outcome.message}) could not be recorded: {exc}")
                    return Outcome(outcome.status, outcome.message, outcome.exit_code, model.EXIT_DATABASE)


def empty_output_file(path: str) -> None:
    """Create --output-file, or empty it (UsageError if it cannot be written)."""
    try:
        with open(path, "w"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write --output-file {path}: {exc.strerror or exc}") from None


def read_output_file(path: str) -> list[tuple[str, str]]:
    """What the command wrote to --output-file: (key, value) pairs (model.parse_output_file)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(model.MAX_OUTPUT_FILE + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UsageError(f"cannot read --output-file {path}: {exc.strerror or exc}") from None
    if len(raw) > model.MAX_OUTPUT_FILE:
        raise UsageError(f"--output-file {path} is over {model.MAX_OUTPUT_FILE:,} bytes: no outputs stored")
    try:
        return model.parse_output_file(raw.decode())
    except UnicodeDecodeError:
        raise UsageError(f"--output-file {path} is not UTF-8: no outputs stored") from None


# ------------------------------------------------------------------ one job
class Interrupts:
    """While one command runs in the foreground: SIGINT and SIGTERM to jobctl are
    passed on to the command; the job ends cancelled (`interrupted`)."""

    def __init__(self, execution: Execution):
        self.execution = execution
        self.old: dict = {}

    def __enter__(self) -> Interrupts:
        def handler(signum, frame):
            self.execution.interrupt(signum)

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


def cancelled_waiting(jc: Jobctl, job_id: str) -> model.JobctlError | None:
    """`run` of a job cancelled while it waited on other jobs (its cancelling event's
    message is model.dependency_message's): exit 6, saying why. None for another cancel."""
    why = next(e["message"] for e in reversed(jc.events_of([job_id])) if e["kind"] == model.STATUS) or ""
    if not why.startswith(model.DEPENDENCY_PREFIX):
        return None
    return model.JobctlError(f"job {job_id} was cancelled while it waited: {why}", model.EXIT_CANCELLED)


def run_one(
    db: str | None,
    job: str | None,
    parent: str | None,
    name: str | None,
    id: str | None,
    argv: list[str],
    options: Options,
    *,
    after: Sequence[str] = (),
    after_any: Sequence[str] = (),
) -> int:
    """`run JOB -- CMD` and `run --parent P [--name N] [--id ID] [--after JOB] -- CMD`."""
    check_command(argv)
    with Jobctl(db) as jc:
        claimed = parent is not None
        if parent is not None:  # the child is created running, in one transaction: no worker can claim it
            name = name or shorten(command_line(argv))
            running = running_message(argv)
            job = jc.create(
                name, parent=parent, id=id, running=running, fields=where(), after=after, after_any=after_any
            )
            # (one that waits on other jobs stays pending: Execution.run waits for them)
            status = jc.status(job) if after or after_any else RUNNING
            if status == CANCELLED:  # one of them had failed or was cancelled
                raise cancelled_waiting(jc, job) or AssertionError(job)
            claimed = status == RUNNING
        assert job is not None  # (JOB itself is checked by Execution.run, before anything runs)
        execution = Execution(jc.path, job, argv, options, echo=echo_through, claimed=claimed)
        with Interrupts(execution):
            outcome = execution.run(jc)
    return outcome.exit
