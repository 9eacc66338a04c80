"""A command as a process tree, with no database: start it, read its output,
stop it, and say how it ended (an Outcome). `attempt.py` records all that."""

from __future__ import annotations

import enum
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

from jobctl import model
from jobctl.model import CANCELLED, COMPLETED, FAILED, PENDING, seconds_text


class StopReason(enum.Enum):
    """Why a command is stopped before it ends by itself."""

    TIMEOUT = "timeout"  # --timeout: the attempt fails (and may be retried)
    CANCELLED = "cancelled"  # from elsewhere, or with the others (--each, fail-fast)
    SIGINT = signal.SIGINT.value  # jobctl got a signal, passed on to the command: the job is cancelled
    SIGTERM = signal.SIGTERM.value
    PREEMPTED = "preempted"  # a claim worker got SIGTERM: the job goes back to pending, its attempt not counted

    @classmethod
    def interrupt(cls, signum: int) -> StopReason:
        return cls(signum)

    @property
    def interrupted(self) -> bool:
        return isinstance(self.value, int)

    @property
    def signum(self) -> int:
        assert isinstance(self.value, int)
        return self.value


@dataclass
class Outcome:
    status: str
    message: str
    exit_code: int | None  # the command's, or 128 + signal; None: it never ran
    exit: int  # what jobctl run exits with


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_of(code: int) -> int:
    """A child's return code as a shell shows it: 128 + N when killed by signal N."""
    return 128 - code if code < 0 else code


LINE_LIMIT = 64 * 1024  # bytes of one output line stored (the rest cut, and said so); the echo is whole
CHUNK = 64 * 1024  # output is read this much at a time: memory stays flat whatever the command prints
_BREAK = re.compile(rb"[\r\n]")


def text_of(raw: bytes) -> str:
    """A line of output as text: not UTF-8 is escaped (\\xNN), and so is NUL, never a crash."""
    return raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


class Lines:
    """One output stream, read in chunks, cut into lines: each line goes to `keep`
    (as text, at most LINE_LIMIT bytes of it, with a marker saying how much was
    cut); a `\\r` line (a progress bar) is echoed at each update and stored
    once, as its last state. `echo` gets the bytes as they are, a piece at a
    time: up to a line end (`\\n` or `\\r`), or LINE_LIMIT bytes."""

    def __init__(self, keep: Callable[[str], None], echo: Callable[[bytes], None] | None):
        self.keep = keep
        self.echo = echo
        self.line = bytearray()  # what is kept of the current line
        self.cut = 0  # bytes of it not kept
        self.cr = False  # a \r ended the last piece: what comes next (unless \n) replaces the line
        self.shown = bytearray()  # not echoed yet

    def feed(self, data: bytes) -> None:
        pos = 0
        for m in _BREAK.finditer(data):
            self._keep(data[pos : m.start()])
            self._show(data[pos : m.end()], end=True)
            if m.group() == b"\n":
                self._end()
            else:
                self.cr = True
            pos = m.end()
        if pos < len(data):
            self._keep(data[pos:])
            self._show(data[pos:], end=False)

    def close(self) -> None:
        if self.shown:
            self._show(b"", end=True)
        if self.line or self.cut:
            self._end()

    def _keep(self, piece: bytes) -> None:
        if not piece:
            return
        if self.cr:  # a new state of a \r line
            self.cr = False
            self.line.clear()
            self.cut = 0
        room = max(0, LINE_LIMIT - len(self.line))
        self.line += piece[:room]
        self.cut += max(0, len(piece) - room)

    def _end(self) -> None:
        raw, cut = bytes(self.line), self.cut
        text = text_of(raw)
        if len(text) > LINE_LIMIT:  # escaped bytes take 4 characters each: keep what fits
            lo, hi = 0, len(raw)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if len(text_of(raw[:mid])) <= LINE_LIMIT else (lo, mid - 1)
            text, cut = text_of(raw[:lo]), cut + len(raw) - lo
        self.keep(text + (f" [jobctl: {cut:,} bytes of this line cut]" if cut else ""))
        self.line.clear()
        self.cut = 0
        self.cr = False

    def _show(self, piece: bytes, *, end: bool) -> None:
        if self.echo is None:
            return
        self.shown += piece
        if end or len(self.shown) >= LINE_LIMIT:
            shown, self.shown = bytes(self.shown), bytearray()
            try:
                self.echo(shown)
            except Exception:  # our own output went away (`jobctl run ... | head`): keep storing it
                self.echo = None


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


# ------------------------------------------------ every process a command starts
# A command's process group is stopped as a whole. On Linux jobctl run is also a
# child subreaper: a descendant that left the group (setsid, a daemon) and lost
# its parent becomes jobctl's child instead of init's, and is told apart by the
# JOBCTL_JOB_ID in its environment, so it is stopped with its job too. And a
# guardian process (guardian.py) watches a pipe from jobctl run: if jobctl run
# dies (even by SIGKILL) the pipe closes and the guardian kills the groups of
# the commands still running, and (Linux) every process with their JOBCTL_JOB_ID.
PR_SET_CHILD_SUBREAPER = 36
_spawning = threading.Lock()  # held while a command starts and while leftovers are reaped
_leaders: set[int] = set()  # the commands' own pids: subprocess waits for those, never us
_guardian: list = []  # [pid, write end of its pipe, its Popen], once started
_subreaper: list[bool] = []  # [whether prctl succeeded], once tried


def _become_subreaper() -> bool:
    if not _subreaper:
        ok = False
        if sys.platform == "linux":
            import ctypes

            try:
                ok = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            except (OSError, AttributeError):
                pass
        _subreaper.append(ok)
    return _subreaper[0]


def _children(pid: int, *, threads: bool = True) -> list[int]:
    """The pids whose parent is `pid` (any of its threads; only its main thread,
    where orphans are reparented, without `threads`), from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task") if threads else [str(pid)]
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += map(int, f.read().split())
        except OSError:
            pass
    return found


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += _children(p)
    return found


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _has(pid: int, entry: bytes) -> bool:
    """Whether the process's environment holds `entry` (NAME=value)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except OSError:
        return False


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def guard() -> None:
    """Start the guardian (guardian.py) once, if not started yet: a small process
    that stops the commands still running if jobctl run dies. It is started only
    for a command that outlives its first moments (a quick one costs nothing)."""
    with _spawning:
        if _guardian:
            return
        r, w = os.pipe()
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", script, str(r)],
                pass_fds=(r,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            os.close(w)
            return
        finally:
            os.close(r)
        _guardian.extend([proc.pid, w, proc])  # (the Popen kept: never waited for, it ends when jobctl does)


def _tell_guardian(line: bytes) -> None:
    if _guardian:
        try:
            os.write(_guardian[1], line)
        except OSError:
            pass


class Process:
    """One command run directly (no shell) in a process group of its own, its
    output copied to `echo` (stream, raw line) and to `output` as it comes."""

    def __init__(
        self, argv: Sequence[str], output: Output, echo: Callable[[str, bytes], None] | None, job_id: str = ""
    ):
        self.marker = f"JOBCTL_JOB_ID={job_id}".encode()  # in the environment of what it starts
        self.argv = list(argv)
        self.output = output
        self.echo = echo
        self.proc: subprocess.Popen | None = None
        self.readers: list[threading.Thread] = []
        self.told = False  # the guardian knows of it

    def start(self, env: dict) -> Outcome | None:
        """Start the command; None, or the Outcome of a command that cannot start."""
        _become_subreaper()
        try:
            with _spawning:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    start_new_session=True,  # a process group of its own: a stop reaches its children too
                )
                _leaders.add(self.proc.pid)
        except FileNotFoundError:
            code = model.EXIT_NO_COMMAND
            return Outcome(FAILED, f"command not found: {self.argv[0]}", code, code)
        except PermissionError:
            code = model.EXIT_CANNOT_RUN
            return Outcome(FAILED, f"permission denied: {self.argv[0]}", code, code)
        except OSError as exc:
            code = model.EXIT_CANNOT_RUN
            return Outcome(FAILED, f"cannot run {self.argv[0]}: {exc.strerror}", code, code)
        self.readers = [
            threading.Thread(target=self._read, args=(stream, name, level), daemon=True)
            for stream, name, level in ((self.proc.stdout, "stdout", "info"), (self.proc.stderr, "stderr", "warning"))
        ]
        for r in self.readers:
            r.start()
        return None

    def guarded(self) -> None:
        """From now on, if jobctl run dies, the guardian stops this command (see guard)."""
        guard()
        assert self.proc is not None
        self.told = True
        _tell_guardian(b"+%d %s\n" % (self.proc.pid, self.marker))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> bool:
        """Whether the command ended within `timeout` seconds."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def end(self) -> int:
        """Wait for the command to end and its output to be read; its return code."""
        assert self.proc is not None
        code = self.proc.wait()
        for r in self.readers:  # what it left behind holding its output may end by itself, for a moment
            r.join(2)
        # then whatever it left behind goes with it (a job runner leaves nothing running)
        self.sweep()
        for r in self.readers:
            r.join(2)
        with _spawning:
            _leaders.discard(self.proc.pid)
        if self.told:
            _tell_guardian(b"-%d %s\n" % (self.proc.pid, self.marker))
        return code

    def sweep(self) -> None:
        """SIGKILL to what is left of the command once it ended: its process group,
        and (as subreaper) the processes that left it, became jobctl's children
        and carry its JOBCTL_JOB_ID, with their descendants; jobctl's children
        that ended meanwhile are reaped (subprocess reaps only the commands)."""
        self.signal(signal.SIGKILL)
        if not _subreaper or not _subreaper[0]:
            return
        me, guardian = os.getpid(), _guardian[0] if _guardian else None
        for _ in range(100):  # (what a killed one leaves comes to us in turn)
            with _spawning:
                left = []
                for pid in _children(me, threads=False):  # (orphans come to the main thread)
                    if pid in _leaders or pid == guardian:
                        continue
                    if _zombie(pid):
                        try:
                            os.waitpid(pid, os.WNOHANG)
                        except ChildProcessError:
                            pass
                    elif _has(pid, self.marker):
                        left.append(pid)
                for pid in left:
                    for p in _tree(pid):
                        _send(p, signal.SIGKILL)
            if not left:
                return
            for pid in left:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass

    def _read(self, stream, name: str, level: str) -> None:
        echo = self.echo
        lines = Lines(lambda text: self.output.add(level, text), None if echo is None else lambda raw: echo(name, raw))
        fd = stream.fileno()
        while chunk := os.read(fd, CHUNK):
            lines.feed(chunk)
        lines.close()
        stream.close()

    def stop(self, reason: StopReason, kill_after: float) -> None:
        """SIGTERM to the command's process group (an interrupt was passed on
        already), SIGKILL after `kill_after` seconds."""
        if not reason.interrupted:
            self.signal(signal.SIGTERM)
        if not self.wait(kill_after):
            self.signal(signal.SIGKILL)

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass


def outcome_of(code: int, reason: StopReason | None, timeout: float | None) -> Outcome:
    """How a command that ended with return `code` went, stopped for `reason` or not."""
    if reason is StopReason.TIMEOUT:
        return Outcome(FAILED, f"timed out after {seconds_text(timeout or 0)}", exit_of(code), model.EXIT_TIMEOUT)
    if reason is StopReason.CANCELLED:
        return Outcome(CANCELLED, "cancelled", exit_of(code), model.EXIT_TERMINATED)
    if reason is StopReason.PREEMPTED:
        return Outcome(PENDING, model.REQUEUED, exit_of(code), model.EXIT_TERMINATED)
    if reason is not None:
        return Outcome(CANCELLED, "interrupted", exit_of(code), 128 + reason.signum)
    if code == 0:
        return Outcome(COMPLETED, "exit code 0", 0, 0)
    if code < 0:
        return Outcome(FAILED, f"killed by {signal_name(-code)}", 128 - code, 128 - code)
    return Outcome(FAILED, f"exit code {code}", code, code)
