"""The database file: location, creation, connection settings, migrations, refusals."""

import ast
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run
from jobctl import DatabaseUnusable, Jobctl
from jobctl.store.sqlite import APPLICATION_ID, SCHEMA_VERSION


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def jc(db_path):
    """This module's tests are about the SQLite file itself: the API on a file."""
    with Jobctl(db_path) as j:
        yield j


def test_new_database_settings(db_path):
    with Jobctl(db_path) as jc:
        conn = jc._store.conn
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
    monkeypatch.setenv("JOBCTL_BUSY_TIMEOUT", "2.5")
    with Jobctl(db_path) as jc:  # shared among the tries of BEGIN IMMEDIATE
        # the first try waits at most WAIT_NOTICE (then says so); the retries share the rest
        assert jc._store.conn.execute("PRAGMA busy_timeout").fetchone()["timeout"] == 1000
        assert jc._store.busy_timeout == 2.5
    monkeypatch.setenv("JOBCTL_BUSY_TIMEOUT", "soon")
    with pytest.raises(DatabaseUnusable):
        Jobctl(db_path)


def test_children_by_status_uses_the_index(jc):
    plan = jc._store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE parent_id = ? AND status = ?", ("p", "pending")
    ).fetchall()
    assert "idx_jobs_parent_id_status" in " ".join(r["detail"] for r in plan)


def test_events_are_append_only(jc):
    job = jc.create("x")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        jc._store.conn.execute("UPDATE events SET new_status = 'failed' WHERE job_id = ?", (job,))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        jc._store.conn.execute("DELETE FROM events")


def test_v1_database_is_migrated_on_open(tmp_path):
    old = tmp_path / "v1.db"
    shutil.copy(ROOT / "fixtures" / "v1.db", old)
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == 1
    with Jobctl(old) as jc:
        assert jc._store.conn.execute("PRAGMA user_version").fetchone()["user_version"] == SCHEMA_VERSION
        assert jc.progress("v1p")["progress_text"] == "1 pending, 0 running, 1 completed, 1 failed"
        assert jc.verify() == []
        jc.set_status(["v1p.3"], "completed")
        assert jc.status("v1p") == "failed"
        assert jc.verify() == []


@pytest.mark.slow
def test_concurrent_first_opens_migrate_once(tmp_path):
    db = tmp_path / "race.db"
    code = "import sys; from jobctl import Jobctl; Jobctl(sys.argv[1]).create('x')"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db)], stderr=subprocess.PIPE) for _ in range(6)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    with Jobctl(db) as jc:
        assert len(list(jc.list())) == 6
        applied = jc._store.conn.execute("SELECT count(*) AS n FROM _sqlite_migrations").fetchone()["n"]
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "make,expect",
    [
        (lambda p: p.write_text("hello, I am a text file\n" * 40), "not a jobctl database"),
        (_other_programs_db, "another program"),
        (_future_jobctl_db, "newer"),
    ],
)
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


@pytest.mark.slow
def test_directory_and_missing_parent_refused(tmp_path):
    result = run("create", "x", db=tmp_path)
    assert result.returncode == 5 and "directory" in result.stderr
    missing = tmp_path / "no" / "such" / "dir" / "j.db"
    result = run("create", "x", db=missing)
    assert result.returncode == 5 and "does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


NOBODY = 65534
CANNOT_DROP = 77  # the forked child could not give up root


def preload_jobctl() -> None:
    """Import, in this process, every module jobctl may import while it runs: its own
    modules and whatever any of them imports, at the top or inside a function. A child
    forked from here then needs to read no module file: after dropping root it may not be
    allowed to (the checkout, its virtualenv or Python itself may sit in a directory
    only root can enter)."""
    import importlib
    import pkgutil

    import jobctl

    wanted = {"jobctl.cli", "jobctl.fastpath"}
    wanted |= {m.name for m in pkgutil.walk_packages(jobctl.__path__, "jobctl.", onerror=lambda name: None)}
    for path in (ROOT / "jobctl").rglob("*.py"):
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Import):
                wanted |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                wanted.add(n.module)
                wanted |= {f"{n.module}.{a.name}" for a in n.names}  # submodules imported by name
    for name in sorted(wanted):
        if name.split(".")[-1] == "__main__":  # running it is what importing it does
            continue
        try:
            importlib.import_module(name)
        except ImportError:  # not a module (a name in one), or an optional backend's driver
            pass


def run_unprivileged(*argv):
    """`jobctl ARGV` as an unprivileged user (root ignores file permissions): the console
    script's entry point, jobctl.fastpath.main, in a forked child that drops to nobody
    first when running as root, and as this user otherwise. The child runs on the modules
    this process has already imported, so it works wherever the checkout sits, even in a
    private directory nobody cannot enter. Returns (exit code, stdout, stderr)."""
    import threading

    preload_jobctl()
    from jobctl.fastpath import main

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            if os.geteuid() == 0:
                try:
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                except PermissionError:  # root without CAP_SETUID/CAP_SETGID (some containers)
                    code = CANNOT_DROP
                    raise
            assert os.geteuid() != 0
            code = main([str(a) for a in argv])
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 70)
    os.close(out_w)
    os.close(err_w)
    captured = {}

    def drain(fd, key):
        with open(fd, "rb") as f:
            captured[key] = f.read().decode()

    readers = [threading.Thread(target=drain, args=(out_r, "out")), threading.Thread(target=drain, args=(err_r, "err"))]
    for t in readers:
        t.start()
    _, status = os.waitpid(pid, 0)
    for t in readers:
        t.join(timeout=60)
    code = os.waitstatus_to_exitcode(status)
    if code == CANNOT_DROP:
        pytest.skip(f"running as root without the right to drop to uid {NOBODY}: {captured['err']}")
    return code, captured["out"], captured["err"]


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
    code, out, err = run_unprivileged("--db", db, "create", "y")
    assert code == 5 and "read-only" in err and err.count("\n") == 1, err
    assert out == ""
    assert digest(db) == before
    code, out, err = run_unprivileged("--db", db, "status", "get", job)
    assert (code, out, err) == (0, "pending\n", "")


def test_path_in_read_only_directory_refused(shared_dir):
    ro_dir = shared_dir / "ro"
    ro_dir.mkdir()
    ro_dir.chmod(0o555)
    code, out, err = run_unprivileged("--db", ro_dir / "j.db", "create", "x")
    assert code == 5 and "read-only" in err and err.count("\n") == 1, err
    assert out == ""
    assert list(ro_dir.iterdir()) == []


@pytest.mark.slow
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


# ------------------------------------------------- layering: who speaks SQL, who knows the rules
PACKAGE = ROOT / "jobctl"
# SQL as this project writes it: statement shapes with upper-case keywords, so prose that
# says "select" or "update" does not count. SQL in lower case would still need an
# .execute() call or a driver to run, and those are looked for too.
SQL = re.compile(
    r"""
      \bSELECT\b[\s\S]*\bFROM\b
    | \bINSERT\s+(OR\s+[A-Z]+\s+)?INTO\b
    | \bUPDATE\s+\w+\s+SET\b
    | \bDELETE\s+FROM\b
    | \bPRAGMA\s+\w
    | ^\s*(BEGIN(\s+(IMMEDIATE|EXCLUSIVE|DEFERRED|TRANSACTION))? | COMMIT | ROLLBACK(\s+TO\s+\w+)?
           | SAVEPOINT\s+\w+ | RELEASE\s+(SAVEPOINT\s+)?\w+)\s*;?\s*$
    | \b(CREATE|DROP|ALTER)\s+(TEMP\s+)?(TABLE|INDEX|TRIGGER|VIEW)\b
    | \bWHERE\s+[\w.]+\s*(=|<|>|!=|\bIN\b|\bIS\b|\bLIKE\b)
""",
    re.X,
)
DRIVERS = {"sqlite3", "sqlite_utils", "psycopg", "psycopg2", "asyncpg"}
EXECUTE = {"execute", "executemany", "executescript"}


def store_modules() -> list:
    """The store: jobctl/store.py before the move to a package, jobctl/store/*.py after it."""
    return sorted({*PACKAGE.glob("store.py"), *PACKAGE.glob("store/**/*.py")})


def other_modules() -> list:
    store = set(store_modules())
    return sorted(p for p in PACKAGE.rglob("*.py") if p not in store and "__pycache__" not in p.parts)


def code_strings(tree):
    """(line, text) of every string constant that is code, not a docstring or a bare
    string statement. The literal parts of f-strings are included."""
    bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in bare:
            yield n.lineno, n.value


def imported_modules(tree, path):
    """(line, absolute module name, imported names or None) of every import; relative imports resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ROOT).parts[:-1])
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for alias in n.names:
                yield n.lineno, alias.name, None
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (n.level - 1)]
                base = ".".join(parts + ([n.module] if n.module else []))
            yield n.lineno, base, [a.name for a in n.names]


def sql_in(path) -> list:
    tree = ast.parse(path.read_text(), str(path))
    found = [
        f"{path.name}:{line}: SQL in a string: {text[:60]!r}" for line, text in code_strings(tree) if SQL.search(text)
    ]
    found += [
        f"{path.name}:{n.lineno}: .{n.func.attr}() call"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in EXECUTE
    ]
    found += [
        f"{path.name}:{line}: imports {module}"
        for line, module, _ in imported_modules(tree, path)
        if module.split(".")[0] in DRIVERS
    ]
    return found


def test_only_the_store_speaks_sql():
    """Every module under jobctl/ except the store modules holds no SQL: no SQL statement in a
    string (docstrings may talk about it), no .execute() call, no database driver imported."""
    store, others = store_modules(), other_modules()
    names = {p.relative_to(PACKAGE).as_posix() for p in others}
    assert store, "no store module found"
    assert {"cli.py", "api.py", "watch.py", "model.py", "progress.py", "fastpath.py"} <= names, names
    assert not names & {p.relative_to(PACKAGE).as_posix() for p in store}
    # the detector does find the store's SQL, so an empty result below means something
    assert any(sql_in(p) for p in store), "the SQL detector found no SQL even in the store"
    checked, problems = [], []
    for path in others:
        problems += sql_in(path)
        checked.append(path.relative_to(PACKAGE).as_posix())
    assert sorted(checked) == sorted(names)
    assert problems == []


def test_the_sql_detector_tells_sql_from_prose():
    for sql in [
        "SELECT id FROM jobs",
        "SELECT * FROM events WHERE id > ?",
        "INSERT INTO jobs VALUES (?)",
        "INSERT OR REPLACE INTO child_counts",
        "UPDATE jobs SET status = ?",
        "DELETE FROM logs",
        "PRAGMA user_version",
        "BEGIN IMMEDIATE",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT insert_jobs",
        "RELEASE insert_jobs",
        "CREATE TABLE t (x)",
        "status = 'running' AND x WHERE parent_id = ?",
        "f(x) FROM jobs WHERE parent_id IS NOT NULL",
    ]:
        assert SQL.search(sql), sql
    for prose in [
        "Select a job from the list",
        "update the counts",
        "begin",
        "end",
        "commit",
        "status set",
        "where N is the count",
        "Release notes",
        "delete from the list",
        "jobctl: error: job x not found",
        "the parent's progress is updated from its children",
    ]:
        assert not SQL.search(prose), prose


def model_definitions(path) -> set:
    """The names jobctl.model defines at its top level: constants, tables and functions."""
    names = set()
    for n in ast.parse(path.read_text()).body:
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            names.add(n.name)
        for target in n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []:
            names |= {t.id for t in ast.walk(target) if isinstance(t, ast.Name)}
    return names


# Where a store module's SQL may name a status ('running'): nowhere. The set-based cancel
# builds its SQL from jobctl.model's constants (store/base.py); nothing may be added here.
SQL_STATUS_WORDS_KNOWN: set = set()
QUOTED_STATUS = re.compile(r"'(pending|running|completed|failed|cancelled)'")


def sql_status_words(tree) -> set:
    """The functions, and the module-level names, holding a string constant of code in
    which a status word is quoted as an SQL literal."""
    quotes = lambda node: any(
        isinstance(c, ast.Constant)
        and isinstance(c.value, str)  # noqa: E731
        and QUOTED_STATUS.search(c.value)
        for c in ast.walk(node)
    )
    places = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and quotes(n)}
    for top in tree.body:
        if isinstance(top, ast.Assign) and quotes(top.value):
            places |= {t.id for t in top.targets if isinstance(t, ast.Name)}
    return places


def test_the_store_has_no_status_rules():
    """The store speaks SQL only; the status rules live in jobctl.model. A store module takes
    from jobctl.model only STATUSES (to name the count columns), the data the set-based
    cancel's SQL and PostgreSQL's fan-in check are built from (ACTIVE, ACTIVE_PARENT,
    CANCELLED, STATUS, entering) and exception classes, never
    imports the model module itself (so it cannot call its functions), never names one of
    the model's rules, compares nothing with a status word as a Python value, and quotes a
    status word in its SQL nowhere but in the places SQL_STATUS_WORDS_KNOWN lists."""
    from jobctl import model

    # the data the set-based cancel's and claim's SQL is built from (store/base.py), said in the model
    allowed = {
        "STATUSES",
        "ACTIVE",
        "ACTIVE_PARENT",
        "CANCELLED",
        "STATUS",
        "entering",
        "DEPENDENCY_DONE",
        "DEPENDENCY_DONE_ANY",
    } | {name for name, obj in vars(model).items() if isinstance(obj, type) and issubclass(obj, Exception)}
    rules = model_definitions(Path(model.__file__)) - allowed - {"TYPE_CHECKING"}
    assert {"ALLOWED", "TERMINAL", "RETRYABLE", "check_transition", "derive_status", "PENDING"} <= rules
    store = store_modules()
    assert store, "no store module found"
    checked, problems = [], []
    for path in store:
        name = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(), str(path))
        for line, module, names in imported_modules(tree, path):
            if module == "jobctl.model":
                bad = ["jobctl.model"] if names is None else sorted(set(names) - allowed)
                problems += [f"{name}:{line}: imports {b} from jobctl.model" for b in bad]
            elif module == "jobctl" and names and "model" in names:
                problems.append(f"{name}:{line}: imports the model module")
        for n in ast.walk(tree):
            ident = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else None
            if ident in rules:
                problems.append(f"{name}:{n.lineno}: names the model's {ident}")
        problems += [
            f"{name}:{line}: the status word {text!r} as a value"
            for line, text in code_strings(tree)
            if text in model.STATUSES
        ]
        problems += [
            f"{name}: {place} quotes a status word in its SQL"
            for place in sorted(sql_status_words(tree))
            if (path.name, place) not in SQL_STATUS_WORDS_KNOWN
        ]
        checked.append(name)
    assert checked and len(checked) == len(store)
    assert problems == []


def test_the_status_rule_check_sees_each_way_of_breaking_it():
    """test_the_store_has_no_status_rules's readers, on code that breaks each rule."""
    broken = ast.parse(
        "from jobctl.model import check_transition\n"
        "ACTIVE = \"status IN ('pending', 'running')\"\n"
        "def claim(cur, status):\n"
        "    if status == 'running':\n"
        "        check_transition(status, 'completed')\n"
        "    cur.execute(f\"UPDATE jobs SET status = 'failed' WHERE id = {status}\")\n"
        "def fine(cur):\n"
        "    cur.execute('SELECT status FROM jobs WHERE id = ?')\n"
    )
    assert sql_status_words(broken) == {"ACTIVE", "claim"}
    assert {text for _, text in code_strings(broken)} >= {"running", "completed"}
    assert any(names == ["check_transition"] for _, _, names in imported_modules(broken, PACKAGE / "store" / "x.py"))


def test_a_change_of_600_jobs_stays_within_the_oldest_sqlite_variable_limit(db_path):
    """SQLite before 3.32 allows 999 variables in a statement: a change reads its
    jobs with their parents (each id bound twice) in chunks that fit."""
    import sqlite3

    with Jobctl(db_path) as jc:
        p = jc.create("P")
        kids = jc.spawn(p, count=600)
        jc._store.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        assert jc.set_status(kids, "running") == kids
        assert jc.verify() == []


def test_a_write_that_fails_at_commit_is_rolled_back_and_exits_5(jc):
    """A COMMIT that fails (here a deferred foreign key) leaves nothing written, the
    connection out of its transaction (the next write works), and says exit 5."""
    p = jc.create("P")
    before = jc._store.conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"]
    with pytest.raises(DatabaseUnusable, match="FOREIGN KEY"):
        with jc._store.write() as store:
            store.conn.execute("PRAGMA defer_foreign_keys = ON")
            store.conn.execute("INSERT INTO events (job_id, root_id, kind, at) VALUES ('nobody', 'x', 'log', 'now')")
    assert not jc._store.conn.in_transaction
    assert jc._store.conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"] == before
    assert jc.set_status([p], "running") == [p]


def test_a_write_whose_body_fails_is_rolled_back_with_its_own_error(jc):
    """The body's own exception goes on as it is (a database error as DatabaseUnusable),
    and nothing of the transaction stays."""
    p = jc.create("P")
    for error, expect in ((KeyError("boom"), KeyError), (sqlite3.OperationalError("disk I/O error"), DatabaseUnusable)):
        with pytest.raises(expect):
            with jc._store.write() as store:
                store.conn.execute("UPDATE jobs SET name = 'changed' WHERE id = ?", (p,))
                raise error
        assert not jc._store.conn.in_transaction
        assert jc.get(p)["name"] == "P"


# ------------------------------------------- what a connection knows of jobs
def reads_of_jobs(store, action):
    """The SELECTs of the jobs table that `action()` runs on the store's connection."""
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    try:
        action()
    finally:
        store.conn.set_trace_callback(None)
    return [s for s in seen if s.lstrip().startswith("SELECT") and "FROM jobs" in s]


def parent_with_a_running_child(jc, children=1):
    """A parent of `children` pending children, the first set running: this
    connection now keeps the child and the parent."""
    p = jc.create("P")
    kid = jc.spawn(p, count=children)[0]
    jc.set_status([kid], "running")
    return p, kid


def test_a_connection_that_changes_its_jobs_again_does_not_read_them_again(db_path):
    """A worker's second change of a job finds the job and its parent where its
    first change left them: no read of the jobs table (SqliteStore.known)."""
    with Jobctl(db_path) as jc:
        p = jc.create("P")
        kid = jc.spawn(p, count=3)[0]
        assert reads_of_jobs(jc._store, lambda: jc.set_status([kid], "running")) != []
        assert reads_of_jobs(jc._store, lambda: jc.set_status([kid], "completed")) == []
        assert jc.status(kid) == "completed" and jc.status(p) == "running"
        assert jc.progress(p)["completed_children"] == 1 and jc.verify() == []


def test_what_a_connection_knows_gives_way_to_another_writer(db_path):
    """Rows a connection kept are dropped as soon as another connection has
    committed: its next change starts from what the other one wrote."""
    from jobctl import Conflict

    with Jobctl(db_path) as a, Jobctl(db_path) as b:
        p = a.create("P")
        k0, k1 = a.spawn(p, count=2)
        a.set_status([k0], "running")
        assert {k0, p} <= set(a._store.known)
        b.set_status([k0], "completed")  # behind a's back
        b.set_status([k1], "failed")
        with pytest.raises(Conflict, match="completed"):
            a.set_status([k0], "failed")  # a knew k0 as running
        assert a.set_status([k0], "failed", force=True) == [k0]
        assert a.status(p) == "failed"  # from b's k1 and a's k0: both read afresh
        assert a.progress(p)["failed_children"] == 2 and a.verify() == []


def test_what_a_connection_knows_follows_its_own_policy_change(db_path):
    """`policy set` changes a parent's row behind the rows kept: it is read again."""
    with Jobctl(db_path) as jc:
        p, kid = parent_with_a_running_child(jc)  # P kept with no allowance
        jc.set_policy(p, allow_failures="1")
        jc.set_status([kid], "failed")  # the one failure allowed
        assert jc.status(p) == "completed" and jc.verify() == []


def test_a_rolled_back_write_is_forgotten(db_path):
    """What a transaction wrote to the kept rows goes with its rollback."""
    with Jobctl(db_path) as jc:
        p, kid = parent_with_a_running_child(jc)
        with pytest.raises(KeyError):
            with jc._store.write() as store:
                jobs, _ = store.jobs_and_counts([kid], parents=True)
                store.update_statuses([dict(jobs[kid], status="completed", completed_at=None, updated_at="x")])
                delta = {"pending": 0, "running": -1, "completed": 1, "failed": 0, "cancelled": 0}
                store.apply_count_deltas({p: delta})
                raise KeyError("boom")
        assert jc._store.known == {}
        assert jc.status(kid) == "running"
        jc.set_status([kid], "completed")
        assert jc.status(p) == "completed" and jc.progress(p)["completed_children"] == 1 and jc.verify() == []


def test_what_a_connection_knows_stays_bounded(db_path):
    """A long-lived connection keeps at most KNOWN_LIMIT jobs, and nothing of a big batch."""
    from jobctl.store.sqlite import KNOWN_LIMIT

    with Jobctl(db_path) as jc:
        p = jc.create("P")
        kids = jc.spawn(p, count=KNOWN_LIMIT + 200)
        jc.set_status(kids, "running")
        assert not set(kids) & set(jc._store.known)  # (P is kept, from the spawn, with its counts)
        assert jc._store.known[p][1]["running"] == len(kids)
        for kid in kids:
            jc.set_status([kid], "completed")
            assert len(jc._store.known) <= KNOWN_LIMIT
        assert jc.status(p) == "completed" and jc.verify() == []


def test_what_a_connection_knows_follows_its_own_cancel(db_path):
    """`cancel` changes a whole subtree in SQL, behind the rows kept: all are read again."""
    from jobctl import Conflict

    with Jobctl(db_path) as jc:
        p, kid = parent_with_a_running_child(jc, children=2)
        jc.cancel(p)
        with pytest.raises(Conflict, match="cancelled"):
            jc.set_status([kid], "completed")
        assert jc.status(p) == "cancelled" and jc.progress(p)["cancelled_children"] == 2 and jc.verify() == []


def test_kept_rows_are_handed_out_as_copies(db_path):
    """A change works on copies of the kept rows: what it does to them reaches the
    kept rows only through the writes, once (here: two changes in a row that both
    find the parent kept)."""
    with Jobctl(db_path) as jc:
        p = jc.create("P")
        kids = jc.spawn(p, count=3)
        for kid in kids:
            jc.set_status([kid], "running")
        jc.set_status([kids[0]], "completed")
        jc.set_status([kids[1]], "completed")
        assert jc.status(p) == "running"
        assert jc.progress(p)["progress_text"] == "0 pending, 1 running, 2 completed, 0 failed"
        assert jc._store.known[p][1] == {"pending": 0, "running": 1, "completed": 2, "failed": 0, "cancelled": 0}


def test_kept_attempts_follow_retries_up_to_the_cap(db_path):
    """A retry's new attempt reaches the kept row: the next retry is measured against it."""
    from jobctl import Conflict

    with Jobctl(db_path) as jc:
        (kid,) = jc.spawn(jc.create("P"), count=1, max_attempts=2)
        jc.set_status([kid], "running")
        jc.set_status([kid], "failed")
        assert jc.retry(kid) == [kid]  # attempt 2 of 2
        jc.set_status([kid], "running")
        jc.set_status([kid], "failed")
        with pytest.raises(Conflict, match="all 2 of its attempts"):
            jc.retry(kid)
        assert jc.get(kid)["attempt"] == 2 and jc.verify() == []


def test_a_writer_that_waited_for_the_lock_sees_what_the_holder_wrote(db_path):
    """What a connection keeps is checked once the write lock is its own: another
    connection that held the lock while this one waited for it (and added a child
    to the kept parent) is seen."""
    import threading

    with Jobctl(db_path) as a, Jobctl(db_path) as b:
        p, kid = parent_with_a_running_child(a)  # a keeps P: 1 running
        began = threading.Event()
        a._store.conn.set_trace_callback(lambda sql: sql.startswith("BEGIN IMMEDIATE") and began.set())
        waiting = threading.Thread(target=a.set_status, args=([kid], "completed"))
        with b._store.write() as store:  # b holds the lock ...
            waiting.start()
            assert began.wait(30)  # ... while a's write has started, waiting for it
            row = dict(store.get_job(kid), id=f"{p}.new", status="pending", started_at=None, attempt=1)
            row["updated_at"] = row["created_at"]
            store.insert_children([row], None)
            store.apply_count_deltas({p: {"pending": 1, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}})
        waiting.join(30)
        a._store.conn.set_trace_callback(None)
        assert a.status(kid) == "completed"
        assert a.status(p) == "running"  # the new child is pending: with stale counts P would be completed
        assert a.progress(p)["progress_text"] == "1 pending, 0 running, 1 completed, 0 failed" and a.verify() == []
