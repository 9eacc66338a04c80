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

FAST, TYPER = "fast path", "typer app"  # which path the console script is expected to take
CASES = [
    (["status", "set", "{a}", "running"], None, FAST),
    (["status", "set", "{a}", "{b}", "completed", "-m", "done: 12 pages"], None, FAST),
    (["status", "set", "{a}", "failed", "--message", "boom", "--force"], None, FAST),
    (["status", "set", "--stdin", "cancelled"], "{a}\n{b}\n", FAST),
    (["status", "set", "{a}", "--stdin", "running"], "{b}", FAST),
    (["status", "set", "{a}", "RUN"], None, FAST),
    (["status", "set", "{a}", "nope", "running"], None, FAST),
    (["status", "set", "{c}", "pending"], None, FAST),  # completed -> pending: not allowed
    (["status", "set", "{c}", "pending", "--force"], None, FAST),
    (["status", "set", "{p}", "completed"], None, FAST),  # a parent: derived
    (["status", "set", "running"], None, FAST),  # no ids
    (["status", "set", "--", "{a}", "running"], None, FAST),
    (["status", "set", "{a}", "running", "-m"], None, TYPER),  # -m without a value
    (["status", "set", "{a}", "running", "--bogus"], None, TYPER),
    (["log", "{a}", "hello world"], None, FAST),
    (["log", "{a}", "careful", "--level", "warning"], None, FAST),
    (["log", "{a}", "x", "--level", "loud"], None, FAST),
    (["log", "{a}", ""], None, FAST),
    (["log", "nope", "x"], None, FAST),
    (["log", "{a}"], None, TYPER),
    (["heartbeat", "{a}"], None, FAST),
    (["heartbeat", "nope"], None, FAST),
    (["heartbeat"], None, TYPER),
]


def state(db):
    conn = sqlite3.connect(db)
    jobs = conn.execute(
        "SELECT id, status, started_at IS NULL, completed_at IS NULL, last_heartbeat IS NULL FROM jobs ORDER BY id"
    ).fetchall()
    events = conn.execute(
        "SELECT e.job_id, e.kind, e.old_status, e.new_status, e.message, l.level, l.message"
        " FROM events e LEFT JOIN logs l ON l.id = e.log_id ORDER BY e.id"
    ).fetchall()
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


# The console script's entry point (jobctl.fastpath:main), called as the installed
# script calls it, that also tells afterwards, in a file, whether typer was imported.
ENTRY_POINT = """
import sys
from jobctl.fastpath import main
report = sys.argv.pop(1)
try:
    code = main()
finally:
    with open(report, "w") as f:
        f.write("typer app" if "typer" in sys.modules or "jobctl.cli" in sys.modules else "fast path")
sys.exit(code)
"""


def run_entry_point(tmp_path, argv, stdin=None):
    """The console script's entry point in a subprocess: (completed process, the path it took)."""
    report = tmp_path / "path-taken.txt"
    report.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT, str(report), *argv], input=stdin or "", capture_output=True, text=True
    )
    return result, report.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("argv,stdin,path", CASES)
def test_fast_path_matches_the_typer_app(tmp_path, template, argv, stdin, path):
    db, ids = template
    argv = [x.format(**ids) for x in argv]
    stdin = stdin.format(**ids) if stdin else None
    fast_db, slow_db = tmp_path / "fast.db", tmp_path / "slow.db"
    shutil.copy(db, fast_db)
    shutil.copy(db, slow_db)
    fast, taken = run_entry_point(tmp_path, ["--db", str(fast_db), *argv], stdin)
    assert taken == path, f"{argv} went through the {taken}, not the {path}"
    slow = CliRunner().invoke(app, ["--db", str(slow_db), *argv], input=stdin or "")
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.exit_code, slow.stdout, slow.stderr)
    assert state(fast_db) == state(slow_db)


@pytest.mark.slow
def test_the_path_report_tells_the_two_paths_apart(tmp_path):
    """Guard for the check above: a call that must load typer (help) is reported as such."""
    result, taken = run_entry_point(tmp_path, ["status", "set", "--help"])
    assert result.returncode == 0 and "Usage" in result.stdout
    assert taken == TYPER
    result, taken = run_entry_point(tmp_path, ["--db", str(tmp_path / "x.db"), "heartbeat", "nope"])
    assert result.returncode == 3 and result.stderr == "jobctl: error: job nope not found\n"
    assert taken == FAST


def test_the_fast_path_takes_the_common_calls_and_leaves_the_rest():
    assert parse(["status", "set", "a", "b", "running"]) == ("status_set", None, {"args": ["a", "b", "running"]})
    assert parse(["--db", "x.db", "status", "set", "a", "completed", "-m", "ok", "--force"])[1] == "x.db"
    assert parse(["log", "a", "hello", "--level", "error"]) == (
        "log",
        None,
        {"job": "a", "message": "hello", "level": "error"},
    )
    assert parse(["heartbeat", "a"]) == ("heartbeat", None, {"job": "a"})
    assert parse(["status", "get", "a", "--json"]) == ("status_get", None, {"job": "a", "json": True})
    assert parse(["create", "x", "--meta", "a=1", "--meta", "b=2"]) == (
        "create",
        None,
        {"name": "x", "meta": ["a=1", "b=2"]},
    )
    assert parse(["spawn", "p", "--count", "3"]) == ("spawn", None, {"parent": "p", "count": 3})
    assert parse(["events", "--since", "7"]) == ("events", None, {"since": 7})
    assert parse(["--version"]) == ("version", None, {})
    for argv in (
        ["status", "set", "--help"],
        ["status", "get", "a", "-h"],
        ["log", "a"],
        ["--version", "x"],
        ["status", "set", "a", "running", "--message=x"],
        ["list"],
        ["heartbeat", "a", "b"],
        ["spawn", "p", "--count", "1e3"],
        ["create", "x", "--type", "a", "--type", "b"],
    ):
        assert parse(argv) is None, argv


def test_the_fast_table_accepts_exactly_the_typer_commands_options():
    """FAST is a second parser: built from the Typer app here, so the two cannot drift apart."""
    import typer.main

    from jobctl.fastpath import FAST

    group = typer.main.get_command(app)
    for words, (body, positional, flags, valued) in FAST.items():
        command = group
        for word in words:
            command = command.commands[word]
        params = [p for p in command.params if p.name != "help"]
        arguments = [p for p in params if p.param_type_name == "argument"]
        want = [("*" if a.nargs == -1 else "") + a.name for a in arguments]
        assert positional == want, words
        options = [p for p in params if p.param_type_name == "option"]
        typer_flags = {o: p.name for p in options if p.is_flag for o in p.opts}
        typer_valued = {o: p.name for p in options if not p.is_flag for o in p.opts}
        assert flags == typer_flags, words
        assert {o: name for o, (name, _) in valued.items()} == typer_valued, words
        for option, (_name, kind) in valued.items():
            p = next(p for p in options if option in p.opts)
            assert (kind is list) == p.multiple, (words, option)
            assert (kind is int) == (p.type.name == "int"), (words, option)
        import jobctl.commands

        assert callable(getattr(jobctl.commands, body)), body
