import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobctl import DatabaseUnusable, Jobctl
from jobctl.cli import app
from throwaway_pg import connect_to, pg_schema_url, pg_server, pg_shared_database, pg_url  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
# The installed console script, next to the interpreter running the tests.
JOBCTL = shutil.which("jobctl", path=str(Path(sys.executable).parent)) or "jobctl"
# Larger sizes for the slow cases: JOBCTL_FULL=1 python3 dev.py test
FULL = os.environ.get("JOBCTL_FULL") == "1"


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture
def db_path(tmp_path):
    """A SQLite file (for the tests about SQLite itself)."""
    return tmp_path / "jobs.db"


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path) -> str:
    """The contract tests' database, once per backend: a SQLite path, or the
    URL of a fresh schema (`?schema=t_<hex>`) in a database on a real, throwaway
    PostgreSQL server (tests/throwaway_pg.py: a schema costs tens of milliseconds
    where a database costs hundreds)."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return request.getfixturevalue("pg_schema_url")


def exists(db: str) -> bool:
    """Whether a jobctl database is at `db` (either backend)."""
    try:
        Jobctl(db, create=False).close()
    except DatabaseUnusable:
        return False
    return True


def snapshot(db: str) -> tuple:
    """Everything in the database, as the API reads it: jobs, kept counts,
    events, logs and dependencies, to prove that a refused command changed nothing."""
    if not exists(db):
        return ()
    with Jobctl(db, create=False) as jc:
        store = jc._store
        return (
            store.all_jobs(),
            store.all_counts(),
            list(store.all_events()),
            [(e["id"], e["message"], e["level"]) for e in store.events()],
            store.all_dependencies(),
        )


@pytest.fixture
def jc(db):
    """The Python API on the `db` fixture's database (both backends)."""
    with Jobctl(db) as j:
        yield j


class Cli:
    """The Typer app in-process, through typer.testing.CliRunner."""

    def __init__(self, db):
        self.db = db
        self.runner = CliRunner()

    def __call__(self, *args, input=None, db=True):
        argv = (["--db", str(self.db)] if db else []) + [str(a) for a in args]
        return self.runner.invoke(app, argv, input=input)


@pytest.fixture
def cli(db):
    """The CLI on the `db` fixture's database (both backends)."""
    return Cli(db)


def tamper(db: str, sql: str, params: tuple = ()) -> None:
    """Change the database behind jobctl's back (`?` placeholders), on either
    backend: for the tests of what verify and the stale rule see."""
    if db.startswith("postgresql://"):
        conn = connect_to(db)
        try:
            with conn:
                cur = conn.cursor()
                cur.execute(sql.replace("?", "%s"), params)
        finally:
            conn.close()
        return
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def run(*args, db=None, input=None, env=None, check=False, timeout=60):
    """The installed `jobctl` console script in a subprocess."""
    full_env = dict(os.environ, **(env or {}))
    if db is not None:
        full_env["JOBCTL_DB"] = str(db)
    return subprocess.run(
        [JOBCTL, *map(str, args)],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        check=check,
        timeout=timeout,
    )


# How long a test waits for something a subprocess or another connection is to do
# before it fails saying what it waited for (pytest-timeout's per-test limit in
# pyproject.toml is the backstop for a read that blocks).
WAIT = 60.0


def wait_for(condition, what: str, *, jc: Jobctl | None = None, timeout: float = WAIT, pause: float = 0.02):
    """Call `condition()` until it returns something true, and return that. Between
    calls: the next wake-up of `jc`'s store (a commit by anyone), or a `pause` between
    polls (0 when `condition` itself blocks, reading a stream). After `timeout`
    seconds the test fails: "timed out after ... s waiting for `what`"."""
    deadline = time.monotonic() + timeout
    waker = jc.waker(0.1) if jc is not None else None
    try:
        while not (result := condition()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g} s waiting for {what}", pytrace=False)
            if waker is not None:
                waker.wait(0.1)
            elif pause:
                time.sleep(pause)  # the pause between polls, not a stand-in for an event
        return result
    finally:
        if waker is not None:
            waker.close()


def seed_news_crawler(jc: Jobctl) -> str:
    """The seed scenario through the API: 108 children, 41 completed, 1 running."""
    parent = jc.create("News Crawler", type="crawl")
    kids = jc.spawn(parent, count=108, type="page")
    jc.set_status(kids[:41], "running")
    jc.set_status(kids[:41], "completed")
    jc.set_status([kids[41]], "running")
    return parent


def on_a_terminal(argv, db, columns):
    """What `jobctl ARGV` prints on a pseudo-terminal `columns` wide (colours removed;
    test_top and test_watch share it)."""
    import fcntl
    import pty
    import re
    import struct
    import subprocess
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        [JOBCTL, "--db", str(db), *argv],
        stdout=slave,
        stderr=slave,
        env=dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns)),
    )
    os.close(slave)
    out = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    os.close(master)
    assert proc.wait(timeout=30) == 0
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode()).replace("\r", "")
