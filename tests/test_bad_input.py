"""Bad input changes nothing: the console script, one bad command at a time.

Every case of the table runs one bad command through the installed console
script (a real subprocess) against a copy of a prepared database and checks the
contract of docs/guarantees.md: the documented exit code, exactly one line on stderr
starting with `jobctl: error: `, nothing on stdout, and a database that is
byte-identical afterwards (checkpointed into the main file before hashing, so
what is compared is the committed state, not WAL timing) with no file added or
removed next to it.

The small tests after the table cover what does not fit it: odd strings that
must be *accepted* verbatim, a full disk (a size-limited tmpfs, a file-size
ulimit, and SQLite's max_page_count through the API), and a few cases that need
their own set-up.

Cases that reveal a bug in jobctl assert the correct behaviour and are marked
`xfail(strict=True, reason="BUG: ...")`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import conftest
from conftest import JOBCTL, ROOT, run
from jobctl import STATUSES, DatabaseUnusable, Jobctl
from jobctl.model import MAX_NAME_LENGTH
from jobctl.store.sqlite import SCHEMA_VERSION

VALID_STATUSES = ", ".join(STATUSES)  # how the error message lists them
ONE_MB = 1_000_000


# ------------------------------------------------------------------ the state
def checkpoint(path: Path) -> None:
    """Move everything committed into the main file (and let SQLite drop the -wal)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\0"


def snapshot(path: Path):
    """What must not change: the file's sha256 after a checkpoint, and the size of
    its -wal if one is left (None: none; closing the last connection removes it)."""
    if path.is_dir():
        return ("directory", sorted(os.listdir(path)))
    if not path.exists():
        return None
    if is_sqlite(path):
        checkpoint(path)
    wal = path.with_name(path.name + "-wal")
    return (hashlib.sha256(path.read_bytes()).hexdigest(), wal.stat().st_size if wal.exists() else None)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def build_template(path: Path) -> None:
    """The SQLite template: the known state, checkpointed into the main file."""
    build_state(str(path))
    checkpoint(path)
    assert not path.with_name(path.name + "-wal").exists()


def build_state(db: str) -> None:
    """The known state every case starts from (ids are chosen, so the table can name them).

    root  pending, no children
    P     running (derived): P.1 pending, P.2 running (heartbeat, a log line),
          P.3 completed, P.4 failed, P.5 cancelled
    G     running: G.1 running (derived) with G.1.1, G.1.2 pending
    D     completed: D.1, D.2 completed
    F     failed: F.1 completed, F.2 failed
    C     cancelled (jobctl cancel): C.1, C.2 cancelled
    """
    with Jobctl(db) as jc:
        jc.create("root job", id="root")
        jc.create("parent", id="P", type="crawl", meta={"owner": "ci"})
        p = jc.spawn("P", count=5, type="page")
        jc.set_status(p[1:], "running")
        jc.set_status([p[2]], "completed", message="done")
        jc.set_status([p[3]], "failed", message="boom")
        jc.set_status([p[4]], "cancelled")
        jc.log(p[1], "working on it")
        jc.heartbeat(p[1])
        jc.create("grand", id="G")
        (g1,) = jc.spawn("G", count=1)
        jc.set_status([g1], "running")
        jc.spawn(g1, count=2)
        jc.create("done parent", id="D")
        jc.set_status(jc.spawn("D", count=2), "completed")
        jc.set_status(["D"], "failed", force=True)  # final by hand: it takes no new child
        jc.set_status(["D"], "completed", force=True)
        jc.create("failed parent", id="F", fail_fast=True)  # failed by fail-fast: the same
        f = jc.spawn("F", count=2)
        jc.set_status([f[0]], "completed")
        jc.set_status([f[1]], "failed")
        jc.create("cancelled parent", id="C")
        c = jc.spawn("C", count=2)
        jc.set_status([c[1]], "running")
        jc.cancel("C", message="stop")
        want = {
            "root": "pending",
            "P": "running",
            "P.1": "pending",
            "P.2": "running",
            "P.3": "completed",
            "P.4": "failed",
            "P.5": "cancelled",
            "G": "running",
            "G.1": "running",
            "G.1.1": "pending",
            "D": "completed",
            "F": "failed",
            "C": "cancelled",
            "C.1": "cancelled",
            "C.2": "cancelled",
        }
        assert {j: jc.status(j) for j in want} == want
        assert jc.verify() == []


@pytest.fixture
def jc(db_path):
    """This module's tests are about the SQLite file itself: the API on a file."""
    with Jobctl(db_path) as j:
        yield j


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    """Built once; read-only. Each case works on its own copy."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    build_template(path)
    os.chmod(path, 0o444)
    return path


def copy_template(template: Path, to: Path) -> Path:
    shutil.copyfile(template, to)
    os.chmod(to, 0o644)
    return to


def env_for(tmp_path: Path, **extra) -> dict:
    """Keep the default database location inside the test's directory; never wait long."""
    return {
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "JOBCTL_DB": "",
        "JOBCTL_BUSY_TIMEOUT": "5",
        "NO_COLOR": "1",
        **extra,
    }


def count_rows(db: Path) -> tuple[int, int, int]:
    conn = sqlite3.connect(db)
    try:
        return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("jobs", "events", "logs"))
    finally:
        conn.close()


def assert_one_error_line(result, code: int) -> None:
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert result.stdout == "", result.stdout[:500]
    assert result.stderr.startswith("jobctl: error: "), result.stderr[-2000:]
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr[-2000:]


# ----------------------------------------------------------- databases to use
def prepare_db(kind: str, tmp_path: Path, template: Path) -> Path:
    """The --db path of a case: a copy of the template, or something that is not one."""
    if kind == "jobctl":
        return copy_template(template, tmp_path / "jobs.db")
    if kind == "directory":
        d = tmp_path / "dbdir"
        d.mkdir()
        (d / "keep.txt").write_text("not a database\n")
        return d
    if kind == "text":
        path = tmp_path / "notes.txt"
        path.write_text("# my notes\nthis is not a database\n" * 100)
        return path
    if kind in ("foreign", "foreign-wal"):
        path = tmp_path / "other-program.db"
        conn = sqlite3.connect(path)
        if kind == "foreign-wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(50)])
        conn.commit()
        conn.close()
        return path
    if kind == "newer":
        path = copy_template(template, tmp_path / "newer.db")
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        checkpoint(path)
        return path
    if kind == "typo":  # a mistyped path: no file there
        return tmp_path / "typo.db"
    if kind == "missing-dir":
        return tmp_path / "no" / "such" / "dir" / "jobs.db"
    if kind == "parent-is-file":
        (tmp_path / "afile").write_text("x\n")
        return tmp_path / "afile" / "jobs.db"
    raise AssertionError(kind)


# ------------------------------------------------------------------ the table
@dataclass
class Case:
    id: str
    code: int
    args: tuple
    expect: str | None = None  # a substring of the error line
    db: str = "jobctl"
    files: dict = field(default_factory=dict)  # name -> text, written next to the database
    input: str | None = None  # stdin
    timeout: float = 30  # seconds; a command still running then has hung
    env: dict = field(default_factory=dict)  # environment variables of the command
    bug: str | None = None  # xfail(strict) reason: a bug in jobctl

    def param(self):
        marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"BUG: {self.bug}")] if self.bug else []
        return pytest.param(self, id=self.id, marks=marks)


def c(id, code, *args, **kw) -> Case:
    return Case(id, code, args, **kw)


NOT_FOUND = "job nope not found"
BIG_NAME = "y" * ONE_MB
NON_UTF8 = os.fsdecode(b"\xff\xfe")  # bytes that are not UTF-8, as Python's argv carries them
TERMINAL_LEAVES = [("P.3", "completed"), ("P.4", "failed"), ("P.5", "cancelled")]

CASES = [
    # --- unknown job ids, every command that takes one (exit 3)
    c("status-set-unknown", 3, "status", "set", "nope", "running", expect=NOT_FOUND),
    c("status-get-unknown", 3, "status", "get", "nope", expect=NOT_FOUND),
    c("progress-unknown", 3, "progress", "nope", expect=NOT_FOUND),
    c("show-unknown", 3, "show", "nope", "--json", expect=NOT_FOUND),
    c("list-parent-unknown", 3, "list", "--parent", "nope", expect=NOT_FOUND),
    c("tree-unknown", 3, "tree", "nope", expect=NOT_FOUND),
    c("log-unknown", 3, "log", "nope", "hello", expect=NOT_FOUND),
    c("logs-unknown", 3, "logs", "nope", "--children", expect=NOT_FOUND),
    c("events-job-unknown", 3, "events", "--job", "nope", expect=NOT_FOUND),
    c("cancel-unknown", 3, "cancel", "nope", expect=NOT_FOUND),
    c("retry-unknown", 3, "retry", "nope", expect=NOT_FOUND),
    c("claim-unknown", 3, "claim", "nope", expect=NOT_FOUND),
    c("heartbeat-unknown", 3, "heartbeat", "nope", expect=NOT_FOUND),
    c("spawn-unknown-parent", 3, "spawn", "nope", "--count", "2", expect=NOT_FOUND),
    c("create-unknown-parent", 3, "create", "x", "--parent", "nope", expect=NOT_FOUND),
    c("watch-unknown", 3, "watch", "nope", "--timeout", "5", expect=NOT_FOUND),
    c("wait-unknown", 3, "wait", "nope", "--timeout", "5", expect=NOT_FOUND),
    c("wait-known-and-unknown", 3, "wait", "P.3", "nope", "--timeout", "5", expect=NOT_FOUND),
    c("status-set-several-one-unknown", 3, "status", "set", "P.1", "root", "nope", "running", expect=NOT_FOUND),
    c(
        "status-set-stdin-one-unknown",
        3,
        "status",
        "set",
        "--stdin",
        "running",
        input="P.1\nnope\nroot\n",
        expect=NOT_FOUND,
    ),
    c("claim-no-pending-child", 3, "claim", "D", expect="no pending child"),
    c("reap-parent-unknown", 3, "reap", "--stale-after", "5m", "--parent", "nope", expect=NOT_FOUND),
    c("unknown-id-with-newline", 3, "status", "get", "no\nsuch"),
    c("unknown-parent-with-newline", 3, "create", "x", "--parent", "no\nsuch"),
    c("heartbeat-unknown-with-newline", 3, "heartbeat", "no\nsuch"),
    # --- status words (exit 2; the message lists the valid ones)
    c("status-RUNNING", 2, "status", "set", "P.1", "RUNNING", expect=VALID_STATUSES),
    c("status-Done", 2, "status", "set", "P.1", "Done", expect=VALID_STATUSES),
    c("status-complete", 2, "status", "set", "P.1", "complete", expect=VALID_STATUSES),
    c("status-empty-word", 2, "status", "set", "P.1", "", expect=VALID_STATUSES),
    c("status-word-only", 2, "status", "set", "running", expect="no job ids"),
    c("status-set-nothing", 2, "status", "set"),
    c("list-status-RUNNING", 2, "list", "--status", "RUNNING", expect=VALID_STATUSES),
    c("list-status-complete", 2, "list", "--status", "complete", expect=VALID_STATUSES),
    # --- names (exit 2)
    c("create-empty-name", 2, "create", "", expect="must not be empty"),
    c("create-whitespace-name", 2, "create", "   ", expect="must not be empty"),
    c("create-tab-newline-name", 2, "create", "\t\n ", expect="must not be empty"),
    c("create-name-1001", 2, "create", "n" * (MAX_NAME_LENGTH + 1), expect=f"not {MAX_NAME_LENGTH + 1}"),
    # argv takes at most 128 KiB per argument on Linux, so 1 MB goes through --names-from below
    c("create-name-100k-argv", 2, "create", "n" * 100_000, expect="not 100000"),
    c("spawn-empty-name", 2, "spawn", "P", "--name", "", expect="must not be empty"),
    c("spawn-one-whitespace-name", 2, "spawn", "P", "--name", "ok", "--name", "  ", expect="must not be empty"),
    c(
        "spawn-names-from-1mb-name",
        2,
        "spawn",
        "P",
        "--names-from",
        "{tmp}/names.txt",
        files={"names.txt": f"first\n{BIG_NAME}\nlast\n"},
        expect=f"not {ONE_MB}",
    ),
    c(
        "spawn-names-from-stdin-1mb-name",
        2,
        "spawn",
        "P",
        "--names-from",
        "-",
        input=BIG_NAME + "\n",
        expect=f"not {ONE_MB}",
    ),
    c(
        "spawn-names-from-only-blank",
        2,
        "spawn",
        "P",
        "--names-from",
        "{tmp}/blank.txt",
        files={"blank.txt": "\n   \n\t\n"},
        expect="no child names",
    ),
    c("spawn-names-from-missing", 2, "spawn", "P", "--names-from", "{tmp}/missing.txt", expect="cannot read"),
    c("spawn-names-from-directory", 2, "spawn", "P", "--names-from", "{tmp}", expect="cannot read"),
    c(
        "spawn-names-from-latin1",
        2,
        "spawn",
        "P",
        "--names-from",
        "{tmp}/latin1.txt",
        files={"latin1.txt": b"caf\xe9\n"},
        expect="cannot read",
    ),
    # --- counts (exit 2)
    c("spawn-count-negative", 2, "spawn", "P", "--count", "-1", expect="--count"),
    c("spawn-count-zero", 2, "spawn", "P", "--count", "0", expect="--count"),
    c("spawn-count-not-a-number", 2, "spawn", "P", "--count", "many", expect="--count"),
    c("spawn-count-and-name", 2, "spawn", "P", "--count", "2", "--name", "x", expect="exactly one"),
    c("spawn-nothing", 2, "spawn", "P", expect="exactly one"),
    # --- --meta, --since, --limit (exit 2)
    c("meta-novalue", 2, "create", "x", "--meta", "novalue", expect="bad --meta"),
    c("meta-key-twice", 2, "create", "x", "--meta", "a=1", "--meta", "a=2", expect="given twice"),
    c("meta-no-key", 2, "create", "x", "--meta", "=x", expect="bad --meta"),
    c("meta-blank-key", 2, "create", "x", "--meta", "ok=1", "--meta", "  =x", expect="bad --meta"),
    c("events-since-abc", 2, "events", "--since", "abc", expect="--since"),
    c("events-since-negative", 2, "events", "--since", "-1", expect="--since"),
    c("events-since-negative-job", 2, "events", "--job", "P", "--since", "-1", expect="--since"),
    c("watch-since-negative", 2, "watch", "P", "--since", "-1", "--timeout", "5", expect="--since"),
    c("watch-since-and-from-start", 2, "watch", "P", "--since", "1", "--from-start", "--timeout", "5"),
    c("events-limit-zero", 2, "events", "--limit", "0", expect="--limit"),
    c("events-since-huge", 2, "events", "--since", "9" * 20, expect="--since"),
    c("events-limit-huge", 2, "events", "--limit", "9" * 20, expect="--limit"),
    # --- durations, levels, messages, timeouts (exit 2)
    c("reap-stale-after-soon", 2, "reap", "--stale-after", "soon", expect="bad duration"),
    c("reap-stale-after-negative", 2, "reap", "--stale-after", "-5m", expect="bad duration"),
    c("reap-to-completed", 2, "reap", "--stale-after", "1h", "--to", "completed", expect="'completed'"),
    c("reap-missing-stale-after", 2, "reap", expect="--stale-after"),
    c("list-stale-after-zero", 2, "list", "--stale-after", "0", expect="bad duration"),
    c("list-stale-after-huge", 2, "list", "--stale-after", "1e300", expect="bad duration"),
    c("reap-stale-after-huge", 2, "reap", "--stale-after", "1e300", expect="bad duration"),
    c("log-level-loud", 2, "log", "P.2", "msg", "--level", "loud", expect="info, warning, error"),
    c("log-empty-message", 2, "log", "P.2", "", expect="must not be empty"),
    c("log-whitespace-message", 2, "log", "P.2", "   ", expect="must not be empty"),
    c("status-message-too-long", 2, "status", "set", "P.1", "running", "-m", "m" * 100_001, expect="100001"),
    c("log-message-too-long", 2, "log", "P.2", "m" * 100_001, expect="100001"),
    c("cancel-message-too-long", 2, "cancel", "P", "-m", "m" * 100_001, expect="100001"),
    c("watch-timeout-negative", 2, "watch", "P", "--timeout", "-1", expect="--timeout"),
    c("watch-timeout-nan", 2, "watch", "P", "--timeout", "nan", expect="--timeout", timeout=2),
    c("watch-poll-interval-zero", 2, "watch", "P", "--poll-interval", "0", "--timeout", "5", expect="--poll-interval"),
    c("wait-timeout-abc", 2, "wait", "P.1", "--timeout", "abc", expect="--timeout"),
    c("wait-no-job", 2, "wait"),
    # --- the parser (exit 2)
    c("unknown-command", 2, "frobnicate"),
    c("unknown-option", 2, "create", "x", "--no-such-option"),
    c("extra-argument", 2, "status", "get", "P", "extra"),
    c("create-no-name", 2, "create"),
    c("no-command", 2, expect="Missing command"),
    c("status-no-subcommand", 2, "status", expect="Missing command"),
    c("db-no-subcommand", 2, "db", expect="Missing command"),
    # --- arguments that are not UTF-8 (exit 2)
    c("create-name-not-utf8", 2, "create", NON_UTF8),
    c("spawn-name-not-utf8", 2, "spawn", "P", "--name", NON_UTF8),
    c("create-type-not-utf8", 2, "create", "x", "--type", NON_UTF8),
    c("create-meta-not-utf8", 2, "create", "x", "--meta", f"k={NON_UTF8}"),
    c("status-message-not-utf8", 2, "status", "set", "P.1", "running", "-m", NON_UTF8),
    c("log-message-not-utf8", 2, "log", "P.2", NON_UTF8),
    # --- children under a final parent (exit 4)
    c("spawn-under-completed", 4, "spawn", "P.3", "--count", "1", expect="it is completed"),
    c("spawn-under-failed", 4, "spawn", "P.4", "--count", "1", expect="it is failed"),
    c("spawn-under-cancelled", 4, "spawn", "P.5", "--count", "1", expect="it is cancelled"),
    c("spawn-under-completed-parent", 4, "spawn", "D", "--name", "late", expect="it is completed"),
    c("spawn-under-failed-parent", 4, "spawn", "F", "--count", "3", expect="it is failed"),
    c("spawn-under-cancelled-parent", 4, "spawn", "C", "--count", "1", expect="it is cancelled"),
    c("create-under-failed", 4, "create", "x", "--parent", "P.4", expect="it is failed"),
    c("create-under-cancelled-parent", 4, "create", "x", "--parent", "C", expect="it is cancelled"),
    # --- forbidden transitions without --force (exit 4)
    *[
        c(f"{old}-to-{new}", 4, "status", "set", job, new, expect=f"{old} → {new}")
        for job, old in TERMINAL_LEAVES
        for new in STATUSES
        if new != old
    ],
    c("running-to-pending", 4, "status", "set", "P.2", "pending", expect="running → pending"),
    c("set-job-with-children", 4, "status", "set", "P", "completed", expect="has children"),
    c("set-nested-job-with-children", 4, "status", "set", "G.1", "failed", expect="has children"),
    c("set-several-one-forbidden", 4, "status", "set", "P.1", "root", "P.3", "running", expect="completed → running"),
    c("retry-completed", 4, "retry", "P.3", expect="only failed or cancelled"),
    c("retry-running", 4, "retry", "P.2", expect="only failed or cancelled"),
    # --- --id (exit 4 for a conflict, 2 for a bad one)
    c("create-id-other-name", 4, "create", "another name", "--id", "root", expect="different name"),
    c("create-id-other-type", 4, "create", "root job", "--id", "root", "--type", "t", expect="different type"),
    c("create-id-other-meta", 4, "create", "root job", "--id", "root", "--meta", "k=v", expect="different metadata"),
    c("create-id-other-parent", 4, "create", "root job", "--id", "root", "--parent", "P", expect="different parent"),
    c("create-id-own-parent", 2, "create", "A", "--id", "A", "--parent", "A", expect="its own parent"),
    c("create-existing-id-own-parent", 2, "create", "x", "--id", "P", "--parent", "P", expect="its own parent"),
    c("create-id-with-space", 2, "create", "x", "--id", "has space", expect="bad job id"),
    c("create-id-empty", 2, "create", "x", "--id", "", expect="bad job id"),
    c("create-id-leading-dot", 2, "create", "x", "--id", ".hidden", expect="bad job id"),
    c("create-id-201-chars", 2, "create", "x", "--id", "i" * 201, expect="bad job id"),
    # --- failure policies and retries
    c("create-allow-failures-word", 2, "create", "x", "--allow-failures", "lots", expect="bad --allow-failures"),
    c("create-allow-failures-101-percent", 2, "create", "x", "--allow-failures", "101%", expect="bad --allow-failures"),
    c("create-max-attempts-zero", 2, "create", "x", "--max-attempts", "0", expect="--max-attempts must be"),
    c(
        "spawn-max-attempts-negative",
        2,
        "spawn",
        "P",
        "--count",
        "2",
        "--max-attempts",
        "-3",
        expect="--max-attempts must be",
    ),
    c("policy-set-nothing", 2, "policy", "set", "P", expect="no policy given"),
    c("policy-set-unknown", 3, "policy", "set", "nope", "--fail-fast", expect=NOT_FOUND),
    c(
        "policy-set-max-attempts-word",
        2,
        "policy",
        "set",
        "P",
        "--max-attempts",
        "many",
        expect="--max-attempts takes a number",
    ),
    c("create-max-running-zero", 2, "create", "x", "--max-running", "0", expect="--max-running must be"),
    c(
        "policy-set-max-running-word",
        2,
        "policy",
        "set",
        "P",
        "--max-running",
        "many",
        expect="--max-running takes a number",
    ),
    c("close-unknown", 3, "close", "nope", expect=NOT_FOUND),
    c("output-set-bad-key", 2, "output", "set", "P", "a key", "v", expect="bad output key"),
    c("output-set-unknown", 3, "output", "set", "nope", "k", "v", expect=NOT_FOUND),
    c("outputs-unknown", 3, "outputs", "nope", expect=NOT_FOUND),
    c(
        "run-output-file-with-each",
        2,
        "run",
        "--parent",
        "P",
        "--each",
        "--output-file",
        "o.txt",
        "--",
        "true",
        expect="--output-file goes with one job",
    ),
    c("policy-set-open-cancelled-parent", 4, "policy", "set", "C", "--open", expect="cannot open job C"),
    c("run-retries-negative", 2, "run", "P.1", "--retries", "-1", "--", "true", expect="--retries must be"),
    c("run-retry-delay-bad", 2, "run", "P.1", "--retry-delay", "soon", "--", "true", expect="bad duration"),
    c("watch-report-unknown-format", 2, "watch", "P", "--report", "pdf", expect="unknown report format"),
    # --- databases jobctl must refuse and leave alone (exit 5)
    c("db-directory", 5, "create", "x", db="directory", expect="is a directory"),
    c("db-text-file-create", 5, "create", "x", db="text", expect="not a jobctl database"),
    c("db-text-file-list", 5, "list", db="text", expect="not a jobctl database"),
    c("db-foreign-create", 5, "create", "x", db="foreign", expect="another program"),
    c("db-foreign-init", 5, "init", db="foreign", expect="another program"),
    c("db-foreign-wal-list", 5, "list", db="foreign-wal", expect="another program"),
    c("db-newer-create", 5, "create", "x", db="newer", expect="newer than this jobctl"),
    c("db-newer-init", 5, "init", db="newer", expect="newer than this jobctl"),
    c("db-newer-status-get", 5, "status", "get", "P", db="newer", expect="newer than this jobctl"),
    c("db-missing-directory", 5, "create", "x", db="missing-dir", expect="does not exist"),
    c("db-parent-is-a-file", 5, "create", "x", db="parent-is-file", expect="does not exist"),
    # --- a write command on a mistyped path creates nothing: only init and create make a database
    *(
        c(f"db-typo-{'-'.join(a[:2])}", 5, *a, db="typo", expect="no jobctl database at")
        for a in [
            ("status", "set", "x", "running"),
            ("log", "x", "hello"),
            ("heartbeat", "x"),
            ("claim", "x"),
            ("spawn", "x", "--count", "2"),
            ("cancel", "x"),
            ("retry", "x"),
            ("policy", "set", "x", "--fail-fast"),
            ("reap", "--stale-after", "5m"),
            ("watch", "x", "--timeout", "5"),
            ("tree", "x"),
        ]
    ),
    # --- a wait the environment cannot give (SQLite's busy timeout is a 32-bit count of ms)
    *(
        c(
            f"busy-timeout-{v}",
            5,
            "status",
            "set",
            "P.1",
            "running",
            env={"JOBCTL_BUSY_TIMEOUT": v},
            expect="from 0 to 86400",
        )
        for v in ("inf", "1e7", "nan")
    ),
    # --- what was meant is said
    c("status-set-missing-status", 2, "status", "set", "P.1", expect="status set P.1: the status is missing"),
    c("show-id-with-a-space", 3, "show", "P.1 ", expect="job 'P.1 ' not found"),
    c("status-get-empty-id", 3, "status", "get", "", expect="job '' not found"),
    c("watch-empty-id-wait-for-create", 2, "watch", "", "--wait-for-create", "--timeout", "5", expect="bad job id ''"),
    c(
        "wait-empty-id-wait-for-create",
        2,
        "wait",
        "P",
        "",
        "--wait-for-create",
        "--timeout",
        "5",
        expect="bad job id ''",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_bad_input_changes_nothing(case: Case, db, tmp_path, template):
    """Each case against both backends (the `db` fixture). On PostgreSQL the
    database is the same known state built in a fresh database, and "changes
    nothing" compares every row the API can read; the file-level cases (a
    directory, a text file, another program's SQLite file...) are SQLite's alone,
    and PostgreSQL's own refusals are in tests/test_postgres.py."""
    if db.startswith("postgresql://"):
        if case.db != "jobctl":
            pytest.skip("a file-level case: PostgreSQL's refusals are in tests/test_postgres.py")
        build_state(db)
        state = lambda: (conftest.snapshot(db), listing(tmp_path))  # noqa: E731
    else:
        db = prepare_db(case.db, tmp_path, template)
        state = lambda: (snapshot(db), listing(tmp_path))  # noqa: E731
    for name, content in case.files.items():
        target = tmp_path / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    before = state()

    try:
        result = run("--db", db, *args, input=case.input, env=env_for(tmp_path, **case.env), timeout=case.timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {case.timeout} s instead of refusing the input") from None

    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert_one_error_line(result, case.code)
    if case.expect is not None:
        assert case.expect in result.stderr
    assert state() == before


def readme_case_count() -> int:
    """The number of table cases docs/guarantees.md states under "Bad input cases" (kept by hand)."""
    import re

    readme = (ROOT / "docs" / "guarantees.md").read_text()
    section = re.search(r"^### Bad input cases\n(.*?)(?=^#|\Z)", readme, re.S | re.M)
    assert section, "docs/guarantees.md has no 'Bad input cases' section"
    stated = re.findall(r"\b(\d[\d,]*) cases in one\s+table\b", section[1])
    assert len(stated) == 1, f"expected one '<N> cases in one table' in the section, found {stated}"
    return int(stated[0].replace(",", ""))


def test_the_table_is_big_enough_and_the_readme_counts_it():
    assert len(CASES) >= 35
    assert len({case.id for case in CASES}) == len(CASES)
    assert readme_case_count() == len(CASES), "update the count in docs/guarantees.md's 'Bad input cases'"


# ------------------------------------------------ cases that need their own set-up
@pytest.mark.slow
def test_empty_db_option_does_not_fall_back_to_the_default(tmp_path, template):
    """`--db ""` is a bad value; it must not quietly mean the default database."""
    default = tmp_path / "xdg" / "jobctl" / "jobctl.db"
    default.parent.mkdir(parents=True)
    copy_template(template, default)
    before = (snapshot(default), listing(tmp_path))
    result = run("--db", "", "create", "x", env=env_for(tmp_path))
    assert (snapshot(default), listing(tmp_path)) == before
    assert_one_error_line(result, 2)


@pytest.mark.slow
def test_absurd_count_is_refused_not_a_memory_error(tmp_path, template):
    """A --count no database could hold must be refused up front (exit 2, or 5 as
    for a full disk), not by running out of memory. Run under a 250 MB address-space
    limit so that a regression costs a second, not the machine."""
    db = copy_template(template, tmp_path / "jobs.db")
    limited = ["bash", "-c", 'ulimit -v 250000; exec "$0" "$@"', JOBCTL, "--db", str(db)]
    env = {**os.environ, **env_for(tmp_path)}
    sane = subprocess.run([*limited, "status", "get", "P"], capture_output=True, text=True, env=env, timeout=60)
    if not (sane.returncode == 0 and sane.stdout == "running\n"):
        pytest.fail(f"jobctl does not even start under the memory limit: {sane.stderr[-500:]}", pytrace=False)
    before = snapshot(db)
    result = subprocess.run(
        [*limited, "spawn", "P", "--count", "9" * 20], capture_output=True, text=True, env=env, timeout=60
    )
    assert snapshot(db) == before
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode in (2, 5), result.stderr[-2000:]
    assert_one_error_line(result, result.returncode)


# ----------------------------------------- odd strings are data, stored verbatim
INJECTION = [
    "'); DROP TABLE jobs;--",
    "Robert'); DELETE FROM events WHERE 1=1; --",
    '" OR "1"="1',
    "x' UNION SELECT name FROM sqlite_master --",
    "$(touch pwned)",
    "`touch pwned`",
    "; rm -rf ~ ; echo gotcha #",
    "a && b || c | d > out.txt < in.txt 2>&1 &",
    "%s%n%x {0} ${HOME} $JOBCTL_DB",
    "*?[a-z] ~root !!",
    "\\' \\\" \\\\ \\n",
    "--force",
    "-m",
    "NULL",
]


@pytest.mark.slow
def test_injection_and_shell_metacharacters_are_stored_verbatim(tmp_path, template):
    db = copy_template(template, tmp_path / "jobs.db")
    env = env_for(tmp_path)
    before_rows = count_rows(db)

    def ok(*args, **kw):
        result = run("--db", db, *args, env=env, **kw)
        assert result.returncode == 0, result.stderr
        return result

    root_name, type_, meta_key, meta_value = INJECTION[0], "t'; DELETE FROM jobs; --", "k'\"", "v'); DROP TABLE logs;--"
    job = ok("create", root_name, "--type", type_, "--meta", f"{meta_key}={meta_value}").stdout.strip()
    (tmp_path / "names.txt").write_text("\n".join(INJECTION) + "\n")
    kids = ok("spawn", job, "--names-from", str(tmp_path / "names.txt")).stdout.split()
    assert len(kids) == len(INJECTION)
    log_message, status_message = INJECTION[1], "$(rm -rf ~); DROP TABLE events;-- `id`"
    ok("log", kids[0], log_message, "--level", "warning")
    ok("status", "set", kids[0], "running", "-m", status_message)

    shown = json.loads(ok("show", job, "--json").stdout)
    assert (shown["name"], shown["type"], shown["metadata"]) == (root_name, type_, {meta_key: meta_value})
    assert json.loads(ok("show", kids[0], "--json").stdout)["name"] == INJECTION[0]
    listed = [json.loads(line) for line in ok("list", "--parent", job, "--json").stdout.splitlines()]
    assert [j["name"] for j in listed] == INJECTION
    texts = [json.loads(line)["text"] for line in ok("logs", kids[0], "--json").stdout.splitlines()]
    assert log_message in texts and f"status changed: pending → running: {status_message}" in texts

    assert ok("verify").stdout == ""
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert {"jobs", "events", "logs", "child_counts"} <= tables
    after_rows = count_rows(db)
    assert after_rows[0] == before_rows[0] + 1 + len(INJECTION)  # nothing deleted, nothing else added
    assert after_rows[2] == before_rows[2] + 1
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()


# --------------------------------------------------------------- a full disk
def _userns_tmpfs_available(tmp_path: Path) -> bool:
    if not (shutil.which("unshare") and shutil.which("mount")):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        result = subprocess.run(
            [
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                f"mount -t tmpfs -o size=64k tmpfs '{probe}'",
            ],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


FULL_SCRIPT = r"""
set -eu
mount -t tmpfs -o size=256k tmpfs "$MNT"
cp "$TEMPLATE" "$MNT/jobs.db"
chmod 644 "$MNT/jobs.db"
set +e
"$JOBCTL" --db "$MNT/jobs.db" spawn P --count 200000 >"$OUT/stdout" 2>"$OUT/stderr"
echo $? >"$OUT/rc"
df -k "$MNT" | tail -1 >"$OUT/df"
set -e
cp "$MNT/jobs.db" "$OUT/after.db"
for suffix in -wal -shm; do
    if [ -e "$MNT/jobs.db$suffix" ]; then cp "$MNT/jobs.db$suffix" "$OUT/after.db$suffix"; fi
done
"""


@pytest.mark.slow
def test_disk_full_console_script(tmp_path, template):
    """SQLITE_FULL from a real full filesystem (ENOSPC): a 256 KiB tmpfs mounted in a
    private user+mount namespace, the console script spawning 200,000 children on it."""
    if not _userns_tmpfs_available(tmp_path):
        pytest.skip("needs `unshare --user --map-root-user --mount` and tmpfs (unprivileged user namespaces)")
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    env = {
        **os.environ,
        **env_for(tmp_path),
        "MNT": str(mnt),
        "OUT": str(out),
        "TEMPLATE": str(template),
        "JOBCTL": JOBCTL,
    }
    script = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", FULL_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert script.returncode == 0, script.stderr
    rc = int((out / "rc").read_text())
    stderr, stdout = (out / "stderr").read_text(), (out / "stdout").read_text()
    assert (rc, stdout) == (5, ""), (rc, stderr, (out / "df").read_text())
    assert stderr.startswith("jobctl: error: ") and stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert "full" in stderr and "Traceback" not in stderr
    after = out / "after.db"
    assert count_rows(after) == count_rows(template)
    assert snapshot(after)[0] == snapshot(copy_template(template, tmp_path / "expected.db"))[0]
    check = run("--db", after, "verify", env=env_for(tmp_path))
    assert check.returncode == 0 and check.stdout == "", check.stdout + check.stderr


@pytest.mark.slow
def test_file_size_limit_console_script(tmp_path, template):
    """`ulimit -f` (bash counts 1024-byte blocks): the write that crosses the limit fails.

    Python ignores SIGXFSZ, so the write returns EFBIG. SQLite retries the rest of a
    short write and so reports SQLITE_IOERR_WRITE ("disk I/O error"), not SQLITE_FULL:
    the message is not checked here (test_disk_full_console_script covers "full"); the
    contract is -- exit 5, one line, nothing written.
    """
    db = copy_template(template, tmp_path / "jobs.db")
    before, rows = snapshot(db), count_rows(db)
    limit_kib = db.stat().st_size // 1024 + 64  # room for the database, not for the -wal of 200,000 jobs
    result = subprocess.run(
        [
            "bash",
            "-c",
            f'ulimit -f {limit_kib}; exec "$0" "$@"',
            JOBCTL,
            "--db",
            str(db),
            "spawn",
            "P",
            "--count",
            "200000",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env_for(tmp_path)},
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert_one_error_line(result, 5)
    assert str(db) in result.stderr
    assert snapshot(db) == before and count_rows(db) == rows
    check = run("--db", db, "verify", env=env_for(tmp_path))
    assert check.returncode == 0 and check.stdout == "", check.stdout + check.stderr


def test_disk_full_through_the_api_max_page_count(jc, db_path):
    """SQLITE_FULL from SQLite's own page limit: DatabaseUnusable (exit 5), nothing written,
    and the connection still usable once there is room again."""
    parent = jc.create("parent")
    jc.spawn(parent, count=3)
    conn = jc._store.conn
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()
    events_before = jc.events()
    pages = conn.execute("PRAGMA page_count").fetchone()["page_count"]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(DatabaseUnusable) as failed:
        jc.spawn(parent, count=50_000)
    assert failed.value.exit_code == 5 and "full" in str(failed.value)
    assert "\n" not in str(failed.value)
    assert jc.progress(parent)["total_children"] == 3
    assert jc.events() == events_before
    assert jc.verify() == []
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert len(jc.spawn(parent, count=10)) == 10


@pytest.mark.slow
def test_invisible_characters_are_escaped_in_plain_lines(tmp_path):
    """Bidi overrides and zero-width characters in names and messages are escaped
    like control characters in plain list/tree/watch/show lines: a name cannot
    read as something it is not (`rtl\\u202egnp.exe` shown raw reads `rtlexe.png`)."""
    db = tmp_path / "jobs.db"
    parent = run("create", "rtl\u202egnp.exe", db=db, check=True).stdout.strip()
    kid = run("spawn", parent, "--name", "zero\u200bwidth\ufeff", db=db, check=True).stdout.strip()
    run("status", "set", kid, "running", db=db, check=True)
    run("status", "set", kid, "completed", "-m", "isolate\u2066d\u2069 \x85", db=db, check=True)
    out = "".join(
        run(*argv, db=db, check=True).stdout
        for argv in (["list"], ["tree", parent], ["watch", parent, "--from-start"], ["show", kid])
    )
    for raw, escaped in [
        ("\u202e", "rtl\\u202egnp.exe"),
        ("\u200b", "zero\\u200bwidth\\ufeff"),
        ("\u2066", "isolate\\u2066d\\u2069 \\x85"),
    ]:
        assert raw not in out and escaped in out, (raw, out)


@pytest.mark.slow
def test_a_corrupt_file_is_exit_5_in_one_line(tmp_path):
    """A database whose pages are garbage (`database disk image is malformed`): every
    command that reads it says so in one line, exit 5 (not verify's 1, not a
    traceback: the end of a read snapshot failing too must not hide the error)."""
    db = tmp_path / "jobs.db"
    with Jobctl(db) as jc:
        parent = jc.create("P")
        jc.spawn(parent, count=200)
        jc.log(f"{parent}.3", "hello")
    checkpoint(db)
    with open(db, "r+b") as f:  # pages 3 to 5: the tables' b-trees
        f.seek(4096 * 2)
        f.write(b"\xff" * 4096 * 3)
    for argv in (["verify"], ["tree", parent], ["logs", "--children", parent], ["report", parent], ["show", parent]):
        result = run(*argv, db=db)
        assert "Traceback" not in result.stderr, (argv, result.stderr[-2000:])
        assert_one_error_line(result, 5)
        assert "database disk image is malformed" in result.stderr, argv


@pytest.mark.slow
@pytest.mark.parametrize("xdg", ["/proc/nope", "/etc/passwd"])
def test_a_default_location_that_cannot_be_made_is_exit_5(tmp_path, xdg):
    for argv in (["create", "x"], ["init"], ["status", "set", "x", "running"], ["list"]):
        result = run(*argv, env={"XDG_DATA_HOME": xdg, "JOBCTL_DB": ""})
        assert "Traceback" not in result.stderr, (argv, result.stderr[-2000:])
        assert_one_error_line(result, 5)
        assert f"{xdg}/jobctl" in result.stderr
