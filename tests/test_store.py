"""The database file: location, creation, connection settings, migrations, refusals."""

import hashlib
import os
import time
import shutil
import sqlite3
import subprocess
import sys

import pytest

from conftest import JOBCTL, ROOT, run
from jobctl import DatabaseUnusable, Jobctl
from jobctl.store import APPLICATION_ID, SCHEMA_VERSION, Store


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_new_database_settings(db_path):
    with Jobctl(db_path) as jc:
        conn = jc.store.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()["journal_mode"] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()["foreign_keys"] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()["timeout"] > 0
        assert conn.execute("PRAGMA user_version").fetchone()["user_version"] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()["application_id"] == APPLICATION_ID
        tables = {r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"jobs", "events", "logs", "child_counts"} <= tables
        indexes = {r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "idx_jobs_parent_id_status" in indexes


def test_busy_timeout_from_environment(db_path, monkeypatch):
    from jobctl.store import BEGIN_RETRIES

    monkeypatch.setenv("JOBCTL_BUSY_TIMEOUT", "2.5")
    with Jobctl(db_path) as jc:  # shared among the tries of BEGIN IMMEDIATE
        assert jc.store.conn.execute("PRAGMA busy_timeout").fetchone()["timeout"] == 2500 // (BEGIN_RETRIES + 1)
    monkeypatch.setenv("JOBCTL_BUSY_TIMEOUT", "soon")
    with pytest.raises(DatabaseUnusable):
        Jobctl(db_path)


def test_children_by_status_uses_the_index(jc):
    plan = jc.store.conn.execute("EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE parent_id = ? AND status = ?",
                                 ("p", "pending")).fetchall()
    assert "idx_jobs_parent_id_status" in " ".join(r["detail"] for r in plan)


def test_events_are_append_only(jc):
    job = jc.create("x")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        jc.store.conn.execute("UPDATE events SET new_status = 'failed' WHERE job_id = ?", (job,))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        jc.store.conn.execute("DELETE FROM events")


def test_v1_database_is_migrated_on_open(tmp_path):
    old = tmp_path / "v1.db"
    shutil.copy(ROOT / "fixtures" / "v1.db", old)
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == 1
    with Jobctl(old) as jc:
        assert jc.store.conn.execute("PRAGMA user_version").fetchone()["user_version"] == SCHEMA_VERSION
        assert jc.progress("v1p")["progress_text"] == "1 pending, 0 running, 1 completed, 1 failed"
        assert jc.verify() == []
        jc.set_status(["v1p.3"], "completed")
        assert jc.status("v1p") == "failed"
        assert jc.verify() == []


def test_concurrent_first_opens_migrate_once(tmp_path):
    db = tmp_path / "race.db"
    code = "import sys; from jobctl import Jobctl; Jobctl(sys.argv[1]).create('x')"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db)], stderr=subprocess.PIPE) for _ in range(6)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    with Jobctl(db) as jc:
        assert len(list(jc.list())) == 6
        applied = jc.store.conn.execute("SELECT count(*) AS n FROM _sqlite_migrations").fetchone()["n"]
        assert applied == SCHEMA_VERSION
        assert jc.verify() == []


def _other_programs_db(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('mine')")
    conn.commit()
    conn.close()


def _future_jobctl_db(path):
    with Jobctl(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("make,expect", [
    (lambda p: p.write_text("hello, I am a text file\n" * 40), "not a jobctl database"),
    (_other_programs_db, "another program"),
    (_future_jobctl_db, "newer"),
])
def test_foreign_and_future_files_refused_byte_identical(tmp_path, make, expect):
    path = tmp_path / "thing.db"
    make(path)
    before = digest(path)
    files_before = sorted(os.listdir(tmp_path))
    result = run("create", "x", db=path)
    assert result.returncode == 5
    assert expect in result.stderr and result.stderr.count("\n") == 1
    assert digest(path) == before
    assert sorted(os.listdir(tmp_path)) == files_before


def test_directory_and_missing_parent_refused(tmp_path):
    result = run("create", "x", db=tmp_path)
    assert result.returncode == 5 and "directory" in result.stderr
    missing = tmp_path / "no" / "such" / "dir" / "j.db"
    result = run("create", "x", db=missing)
    assert result.returncode == 5 and "does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


def as_unprivileged():
    """A command prefix that drops root (root ignores file permissions)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv to drop privileges")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def shared_dir():
    """A directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="jobctl-ro-"))
    path.chmod(0o777)
    yield path
    for p in path.rglob("*"):
        p.chmod(0o777)
    shutil.rmtree(path)


def test_read_only_file_refused_and_unchanged(shared_dir):
    db = shared_dir / "ro.db"
    with Jobctl(db) as jc:
        job = jc.create("x")
    db.chmod(0o444)
    before = digest(db)
    cmd = as_unprivileged() + [JOBCTL, "--db", str(db)]
    result = subprocess.run(cmd + ["create", "y"], capture_output=True, text=True)
    assert result.returncode == 5 and "read-only" in result.stderr, result.stderr
    assert digest(db) == before
    reading = subprocess.run(cmd + ["status", "get", job], capture_output=True, text=True)
    assert reading.returncode == 0 and reading.stdout == "pending\n"


def test_path_in_read_only_directory_refused(shared_dir):
    ro_dir = shared_dir / "ro"
    ro_dir.mkdir()
    ro_dir.chmod(0o555)
    result = subprocess.run(as_unprivileged() + [JOBCTL, "--db", str(ro_dir / "j.db"), "create", "x"],
                            capture_output=True, text=True)
    assert result.returncode == 5 and "read-only" in result.stderr, result.stderr
    assert list(ro_dir.iterdir()) == []


def test_still_locked_after_busy_timeout_exits_5(db_path):
    with Jobctl(db_path) as jc:
        job = jc.create("x")
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        result = run("status", "set", job, "running", db=db_path, env={"JOBCTL_BUSY_TIMEOUT": "1"})
        waited = time.monotonic() - started
        assert result.returncode == 5
        assert 1 <= waited < 5  # the timeout is the whole wait, retries included (not 4 x 1 s)
        assert "locked" in result.stderr and result.stderr.count("\n") == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Jobctl(db_path) as jc:
        assert jc.status(job) == "pending"
        assert jc.verify() == []


def test_store_has_no_status_rules():
    """The store speaks SQL only; the model holds the rules (and the cli holds neither)."""
    cli_source = (ROOT / "jobctl" / "cli.py").read_text()
    assert "SELECT" not in cli_source and "execute(" not in cli_source
    api_source = (ROOT / "jobctl" / "api.py").read_text()
    assert "SELECT" not in api_source and ".execute(" not in api_source
