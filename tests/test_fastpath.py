"""The console script's fast path gives exactly what the Typer app gives."""

import shutil
import sqlite3
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from jobctl import Jobctl
from jobctl.cli import app
from jobctl.fastpath import parse

CASES = [
    (["status", "set", "{a}", "running"], None),
    (["status", "set", "{a}", "{b}", "completed", "-m", "done: 12 pages"], None),
    (["status", "set", "{a}", "failed", "--message", "boom", "--force"], None),
    (["status", "set", "--stdin", "cancelled"], "{a}\n{b}\n"),
    (["status", "set", "{a}", "--stdin", "running"], "{b}"),
    (["status", "set", "{a}", "RUN"], None),
    (["status", "set", "{a}", "nope", "running"], None),
    (["status", "set", "{c}", "pending"], None),  # completed -> pending: not allowed
    (["status", "set", "{c}", "pending", "--force"], None),
    (["status", "set", "{p}", "completed"], None),  # a parent: derived
    (["status", "set", "running"], None),  # no ids
    (["status", "set", "--", "{a}", "running"], None),
    (["status", "set", "{a}", "running", "-m"], None),  # -m without a value
    (["status", "set", "{a}", "running", "--bogus"], None),
    (["log", "{a}", "hello world"], None),
    (["log", "{a}", "careful", "--level", "warning"], None),
    (["log", "{a}", "x", "--level", "loud"], None),
    (["log", "{a}", ""], None),
    (["log", "nope", "x"], None),
    (["log", "{a}"], None),
    (["heartbeat", "{a}"], None),
    (["heartbeat", "nope"], None),
    (["heartbeat"], None),
]


def state(db):
    conn = sqlite3.connect(db)
    jobs = conn.execute("SELECT id, status, started_at IS NULL, completed_at IS NULL, last_heartbeat IS NULL"
                        " FROM jobs ORDER BY id").fetchall()
    events = conn.execute("SELECT e.job_id, e.kind, e.old_status, e.new_status, e.message, l.level, l.message"
                          " FROM events e LEFT JOIN logs l ON l.id = e.log_id ORDER BY e.id").fetchall()
    conn.close()
    return jobs, events


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    db = tmp_path_factory.mktemp("fast") / "template.db"
    with Jobctl(db) as jc:
        p = jc.create("parent", id="p")
        a, b, c = jc.spawn(p, count=3)
        jc.set_status([c], "completed")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db, {"p": p, "a": a, "b": b, "c": c}


@pytest.mark.parametrize("argv,stdin", CASES)
def test_fast_path_matches_the_typer_app(tmp_path, template, argv, stdin):
    db, ids = template
    argv = [x.format(**ids) for x in argv]
    stdin = stdin.format(**ids) if stdin else None
    fast_db, slow_db = tmp_path / "fast.db", tmp_path / "slow.db"
    shutil.copy(db, fast_db)
    shutil.copy(db, slow_db)
    fast = subprocess.run([sys.executable, "-m", "jobctl", "--db", str(fast_db), *argv], input=stdin or "",
                          capture_output=True, text=True)
    slow = CliRunner().invoke(app, ["--db", str(slow_db), *argv], input=stdin or "")
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.exit_code, slow.stdout, slow.stderr)
    assert state(fast_db) == state(slow_db)


def test_the_fast_path_takes_the_common_calls_and_leaves_the_rest():
    assert parse(["status", "set", "a", "b", "running"])[0] == "status set"
    assert parse(["--db", "x.db", "status", "set", "a", "completed", "-m", "ok", "--force"])[1] == "x.db"
    assert parse(["log", "a", "hello", "--level", "error"]) == ("log", None, ("a", "hello", "error"))
    assert parse(["heartbeat", "a"]) == ("heartbeat", None, ("a",))
    for argv in (["status", "set", "--help"], ["status", "get", "a"], ["log", "a"], ["--version"],
                 ["status", "set", "a", "running", "--message=x"], ["create", "x"], ["heartbeat", "a", "b"]):
        assert parse(argv) is None, argv
