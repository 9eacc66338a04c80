"""kill -9 in the middle of a write leaves all or nothing, and everything works after."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import FULL, JOBCTL, run
from jobctl import Jobctl

SPAWN = 100_000
BATCH = 100_000 if FULL else 30_000


def kill_mid_write(cmd, wal, stdin=None, grown=2 * 1024 * 1024, timeout=60):
    """Start `cmd`, wait until its transaction has spilled pages into the WAL, kill -9 it.

    Returns True if it was killed before it finished (the usual case)."""
    base = os.path.getsize(wal) if os.path.exists(wal) else 0
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else None, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)
    if stdin:
        proc.stdin.write(stdin)
        proc.stdin.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(wal) and os.path.getsize(wal) > base + grown:
            break
        time.sleep(0.002)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return not finished


def assert_consistent(db_path):
    result = run("verify", "--json", db=db_path)
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["ok"] is True


def test_killed_mid_spawn_leaves_all_or_nothing(db_path):
    with Jobctl(db_path) as jc:
        parent = jc.create("big")
        n_events = len(jc.events())
    killed = kill_mid_write([JOBCTL, "--db", str(db_path), "spawn", parent, "--count", str(SPAWN)],
                            f"{db_path}-wal")
    with Jobctl(db_path) as jc:
        children = jc.progress(parent)["total_children"]
        assert children in (0, SPAWN)
        assert len(jc.events()) == n_events + (children + 1 if children else 0)
        if killed:
            assert children == 0, "killed before its commit, yet children exist"
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
    killed = kill_mid_write([JOBCTL, "--db", str(db_path), "status", "set", "--stdin", "running"],
                            f"{db_path}-wal", stdin="\n".join(kids) + "\n", grown=1024 * 1024)
    with Jobctl(db_path) as jc:
        running = jc.progress(parent)["running_children"]
        assert running in (0, BATCH)
        if killed:
            assert running == 0
        assert len(jc.events()) == n_events + (running if running else 0)
    assert_consistent(db_path)
    run("status", "set", kids[0], "completed", db=db_path, check=True)
    assert_consistent(db_path)


def test_a_killed_test_really_killed_mid_write(db_path):
    """Guard: the kill lands inside the write, not before it started or after it ended."""
    with Jobctl(db_path) as jc:
        parent = jc.create("big")
    assert kill_mid_write([JOBCTL, "--db", str(db_path), "spawn", parent, "--count", str(SPAWN)],
                          f"{db_path}-wal")
    with Jobctl(db_path) as jc:
        assert jc.progress(parent)["total_children"] == 0
    assert_consistent(db_path)
