"""kill -9 in the middle of a write leaves all or nothing, and everything works after."""

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest

from conftest import FULL, JOBCTL, run
from jobctl import Jobctl

pytestmark = pytest.mark.slow  # subprocesses throughout: `dev.py test --fast` skips them

SPAWN = 100_000
BATCH = 100_000 if FULL else 30_000


@dataclass
class Kill:
    grew: bool  # the WAL had grown by `grown` bytes since the start: the transaction was writing
    returncode: int  # -9 if our kill ended the process, else the process's own exit code

    @property
    def mid_write(self) -> bool:
        """The kill landed after the write had started and before the process exited.

        (It may still have landed after the COMMIT and before the exit: the database
        tells which, all or nothing.)"""
        return self.grew and self.returncode == -signal.SIGKILL

    def __bool__(self) -> bool:
        return self.mid_write


def kill_mid_write(cmd, wal, stdin=None, grown=2 * 1024 * 1024, timeout=60) -> Kill:
    """Start `cmd`, wait until its transaction has spilled pages into the WAL, kill -9 it.

    True (see Kill.mid_write) only if the WAL growth was really seen and the kill is what
    ended the process; False if it exited by itself first or the WAL never grew in time."""
    base = os.path.getsize(wal) if os.path.exists(wal) else 0
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE if stdin else None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    if stdin:
        proc.stdin.write(stdin)
        proc.stdin.close()
    deadline = time.monotonic() + timeout
    grew = False
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(wal) and os.path.getsize(wal) > base + grown:
            grew = True
            break
        time.sleep(0.002)  # polling the file size, not waiting for something to happen
    proc.send_signal(signal.SIGKILL)  # a no-op on a process that has already exited (not yet reaped)
    proc.wait()
    return Kill(grew, proc.returncode)


def assert_consistent(db_path):
    result = run("verify", "--json", db=db_path)
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["ok"] is True


def test_killed_mid_spawn_leaves_all_or_nothing(db_path):
    with Jobctl(db_path) as jc:
        parent = jc.create("big")
        n_events = len(jc.events())
    kill = kill_mid_write([JOBCTL, "--db", str(db_path), "spawn", parent, "--count", str(SPAWN)], f"{db_path}-wal")
    with Jobctl(db_path) as jc:
        children = jc.progress(parent)["total_children"]
        # all or nothing, whether the kill landed before the COMMIT or after it
        assert children in (0, SPAWN)
        assert len(jc.events()) == n_events + (children + 1 if children else 0)
        assert len(list(jc.list(parent=parent))) == children
        if kill.returncode != -signal.SIGKILL:  # it ended by itself before the kill: all done
            assert kill.returncode == 0 and children == SPAWN, kill
    assert_consistent(db_path)
    # the next writer and watch work normally
    kids = run("spawn", parent, "--count", "3", db=db_path, check=True).stdout.split()
    assert kids[0] == f"{parent}.{children + 1}"
    run("status", "set", *kids, "completed", db=db_path, check=True)
    if children:
        run("cancel", parent, db=db_path, check=True)
    result = run("watch", parent, "--exit-status", "--timeout", "10", db=db_path)
    assert result.returncode in (0, 6)
    assert_consistent(db_path)


def test_killed_mid_batch_status_set_leaves_all_or_nothing(db_path):
    with Jobctl(db_path) as jc:
        parent = jc.create("batch")
        kids = jc.spawn(parent, count=BATCH)
        n_events = len(jc.events())
    kill = kill_mid_write(
        [JOBCTL, "--db", str(db_path), "status", "set", "--stdin", "running"],
        f"{db_path}-wal",
        stdin="\n".join(kids) + "\n",
        grown=1024 * 1024,
    )
    with Jobctl(db_path) as jc:
        running = jc.progress(parent)["running_children"]
        # all or nothing, whether the kill landed before the COMMIT or after it
        assert running in (0, BATCH)
        assert jc.progress(parent)["pending_children"] == BATCH - running
        if kill.returncode != -signal.SIGKILL:
            assert kill.returncode == 0 and running == BATCH, kill  # it ended by itself: all done
        assert len(jc.events()) == n_events + (running if running else 0)
    assert_consistent(db_path)
    run("status", "set", kids[0], "completed", db=db_path, check=True)
    assert_consistent(db_path)


def test_a_killed_test_really_killed_mid_write(tmp_path):
    """Guard: the kill can land inside the write, after it started and before its COMMIT.

    A kill that lands after the COMMIT (the process still running, but done) is possible
    on a fast machine: then the test tries again, a few times, on a fresh database."""
    tries = []
    for attempt in range(5):
        db_path = tmp_path / f"guard{attempt}.db"
        with Jobctl(db_path) as jc:
            parent = jc.create("big")
        kill = kill_mid_write([JOBCTL, "--db", str(db_path), "spawn", parent, "--count", str(SPAWN)], f"{db_path}-wal")
        with Jobctl(db_path) as jc:
            children = jc.progress(parent)["total_children"]
        assert children in (0, SPAWN)
        assert_consistent(db_path)
        tries.append((kill, children))
        if kill.mid_write and children == 0:
            break  # the WAL grew, the kill ended the process, and nothing was committed
    else:
        raise AssertionError(f"no kill landed inside the write in {len(tries)} tries: {tries}")
