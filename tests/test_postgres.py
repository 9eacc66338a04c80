"""PostgreSQL-only behaviour, against a real throwaway server: selecting it by
URL, its own schema and migrations, refusals with exit 5, the driver as an
extra, LISTEN/NOTIFY wake-ups, and `watch` across a server restart."""

import json
import os
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from conftest import JOBCTL, run
from jobctl import DatabaseUnusable, Jobctl

pytestmark = pytest.mark.slow


def sql(url, statement, params=None):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def with_netloc(url, netloc=None, path=None):
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc or parts.netloc, path=path or parts.path))


def test_tables_live_in_their_own_schema_and_leave_others_alone(pg_url):
    sql(pg_url, "CREATE TABLE public.jobs (id int, note text); INSERT INTO public.jobs VALUES (1, 'theirs')")
    with Jobctl(pg_url) as jc:
        job = jc.create("x")
        jc.set_status([job], "running")
    tables = {r[0] for r in sql(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'jobctl'")}
    assert {"jobs", "events", "logs", "child_counts", "meta"} <= tables
    assert sql(pg_url, "SELECT * FROM public.jobs") == [(1, "theirs")]
    from jobctl.store.postgres import SCHEMA_VERSION

    assert sql(pg_url, "SELECT value FROM jobctl.meta WHERE key = 'version'") == [(str(SCHEMA_VERSION),)]
    # a second schema in the same database is a second, independent jobctl database
    other = pg_url + "?schema=ci_two"
    with Jobctl(other) as jc:
        assert list(jc.list()) == []
        jc.create("y")
    assert len(sql(pg_url, "SELECT * FROM ci_two.jobs")) == 1
    assert len(sql(pg_url, "SELECT * FROM jobctl.jobs")) == 1


def test_events_are_append_only(pg_url):
    with Jobctl(pg_url) as jc:
        jc.create("x")
    for statement in (
        "UPDATE jobctl.events SET new_status = 'failed'",
        "DELETE FROM jobctl.events",
        "TRUNCATE jobctl.events CASCADE",
    ):
        with pytest.raises(psycopg2.Error, match="append-only"):
            sql(pg_url, statement)


def test_a_foreign_or_newer_schema_is_refused_untouched(pg_url):
    sql(pg_url, "CREATE SCHEMA jobctl; CREATE TABLE jobctl.stuff (x int)")
    result = run("create", "x", db=pg_url)
    assert result.returncode == 5
    assert result.stderr == (
        f"jobctl: error: schema jobctl in {pg_url} is not a jobctl database (it belongs"
        " to another program; pick another with ?schema=NAME)\n"
    )
    assert [r[0] for r in sql(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'jobctl'")] == ["stuff"]
    newer = pg_url + "?schema=newer"
    Jobctl(newer).close()
    sql(pg_url, "UPDATE newer.meta SET value = '99' WHERE key = 'version'")
    result = run("create", "x", db=newer)
    assert result.returncode == 5 and "schema version 99, newer than this jobctl" in result.stderr
    assert sql(pg_url, "SELECT count(*) FROM newer.jobs") == [(0,)]


def test_read_commands_create_nothing(pg_url):
    result = run("list", db=pg_url)
    assert result.returncode == 5 and "no jobctl database at" in result.stderr
    assert sql(pg_url, "SELECT 1 FROM pg_namespace WHERE nspname = 'jobctl'") == []


def test_connection_failures_are_one_line_exit_5(pg_url, pg_server):
    port = urlsplit(pg_url).port
    # nothing listens on port 1; the role and the database do not exist
    cases = {
        with_netloc(pg_url, "postgres@127.0.0.1:1"): "cannot reach PostgreSQL at",
        with_netloc(pg_url, f"nobody@127.0.0.1:{port}"): "authentication failed",
        with_netloc(pg_url, path="/no_such_db"): "does not exist",
    }
    for url, text in cases.items():
        t0 = time.monotonic()
        result = run("status", "set", "x", "running", db=url, env={"JOBCTL_CONNECT_TIMEOUT": "3"})
        assert result.returncode == 5, result.stderr
        assert result.stderr.count("\n") == 1 and text in result.stderr, result.stderr
        assert time.monotonic() - t0 < 30


def test_a_password_in_the_url_is_masked(pg_url):
    secret = with_netloc(pg_url, "postgres:hunter2@" + urlsplit(pg_url).netloc.split("@")[1])
    result = run("db", "path", db=secret)
    assert result.returncode == 0 and "hunter2" not in result.stdout and ":***@" in result.stdout
    result = run(
        "create",
        "x",
        db=with_netloc(
            secret, secret.split("//")[1].split("/")[0].replace(urlsplit(pg_url).netloc.split("@")[1], "127.0.0.1:1")
        ),
    )
    assert result.returncode == 5 and "hunter2" not in result.stderr


def test_a_read_only_database_refuses_writes_and_keeps_its_data(pg_url):
    with Jobctl(pg_url) as jc:
        job = jc.create("x")
    dbname = urlsplit(pg_url).path.lstrip("/")
    sql(pg_url, f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
    result = run("status", "set", job, "running", db=pg_url)
    assert result.returncode == 5 and "read-only" in result.stderr and result.stderr.count("\n") == 1
    assert run("status", "get", job, db=pg_url).stdout == "pending\n"


def test_without_the_driver_a_url_names_the_extra():
    code = (
        "import sys; sys.modules['psycopg2'] = None; from jobctl.fastpath import main;"
        " sys.exit(main(['--db', 'postgresql://u@127.0.0.1:1/x', 'status', 'get', 'j']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 5
    assert result.stderr == (
        "jobctl: error: a postgresql:// database needs the PostgreSQL driver: pip install 'jobctl[postgres]'\n"
    )


def test_the_sqlite_hot_path_never_imports_the_driver(tmp_path):
    db = tmp_path / "hot.db"
    job = run("create", "x", db=db).stdout.strip()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jobctl", "--db", str(db), "status", "set", job, "running"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "jobctl.store.sqlite" in imported  # the check sees the imports at all
    assert not {"psycopg2", "jobctl.store.postgres", "typer", "rich"} & imported


def test_one_notify_per_transaction(pg_url):
    with Jobctl(pg_url) as jc:
        parent = jc.create("p")
        listener = psycopg2.connect(pg_url)
        listener.autocommit = True
        listener.cursor().execute("LISTEN jobctl_jobctl")
        jc.spawn(parent, count=500)  # 501 events, one transaction
        jc.heartbeat(parent)  # no event: no notification
        jc.log(parent, "hello")
    deadline = time.monotonic() + 10
    while len(listener.notifies) < 2 and time.monotonic() < deadline:
        import select

        select.select([listener], [], [], 0.5)
        listener.poll()
    listener.poll()
    assert len(listener.notifies) == 2
    listener.close()


def test_watch_survives_a_server_restart(pg_url, pg_server):
    with Jobctl(pg_url) as jc:
        parent = jc.create("across a restart")
        kids = jc.spawn(parent, count=6)
    watcher = subprocess.Popen(
        [JOBCTL, "--db", pg_url, "watch", parent, "--json", "--exit-status", "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, JOBCTL_CONNECT_TIMEOUT="30"),
    )
    assert json.loads(watcher.stdout.readline())["type"] == "start"
    with Jobctl(pg_url) as jc:
        jc.set_status(kids[:3], "completed")
    pg_server.restart()  # every connection is cut; the watcher reconnects and resumes from its cursor
    with Jobctl(pg_url) as jc:
        jc.set_status(kids[3:], "completed")
    out, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    ids = [x["event"]["id"] for x in lines if x["type"] == "event"]
    with Jobctl(pg_url) as jc:
        assert ids == [e["id"] for e in jc.events(since=8)]  # everything after the spawn, once, in order
    assert lines[-1]["progress_text"] == "0 pending, 0 running, 6 completed, 0 failed"


def test_a_transient_failure_is_retried_then_reported(pg_url, monkeypatch):
    from jobctl.store.base import Retryable

    with Jobctl(pg_url) as jc:
        job = jc.create("x")
        real = jc.store.write
        failures = {"left": 2}

        def flaky():
            if failures["left"]:
                failures["left"] -= 1
                raise Retryable("could not serialize access")
            return real()

        monkeypatch.setattr(jc.store, "write", flaky)
        jc.set_status([job], "running")  # two transient failures, then it goes through
        assert jc.status(job) == "running" and failures["left"] == 0
        failures["left"] = 99
        with pytest.raises(DatabaseUnusable, match="still failing after 5 tries"):
            jc.set_status([job], "completed")
        monkeypatch.undo()
        assert jc.status(job) == "running"


def test_an_older_jobctl_schema_is_migrated_on_open(pg_url):
    """A database made by a jobctl with the first PostgreSQL schema, migrated when opened."""
    from jobctl.store.postgres import MIGRATIONS, SCHEMA_VERSION

    sql(
        pg_url,
        "CREATE SCHEMA jobctl; SET search_path TO jobctl;"
        "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);"
        + MIGRATIONS[0]
        + "; INSERT INTO meta VALUES ('application', 'jobctl'), ('version', '1')",
    )
    with Jobctl(pg_url) as jc:
        job = jc.create("x")
        assert jc.get(job)["exit_code"] is None and jc.verify() == []
    assert sql(pg_url, "SELECT value FROM jobctl.meta WHERE key = 'version'") == [(str(SCHEMA_VERSION),)]


def test_a_role_without_temporary_tables_can_cancel_and_fail_fast(pg_url):
    """cancel and a fail-fast cascade are set-based without a temporary table: a
    role that may not create one (REVOKE TEMP) can still do both."""
    dbname = urlsplit(pg_url).path.lstrip("/")
    role = f"worker_{os.getpid()}"
    sql(pg_url, f"CREATE ROLE {role} LOGIN")
    sql(pg_url, f"REVOKE TEMP ON DATABASE {dbname} FROM PUBLIC")
    sql(pg_url, f"GRANT CONNECT, CREATE ON DATABASE {dbname} TO {role}")
    url = with_netloc(pg_url, f"{role}@{urlsplit(pg_url).netloc.split('@')[1]}") + f"?schema={role}"
    try:
        with Jobctl(url) as jc:
            assert sql(pg_url, f"SELECT has_database_privilege('{role}', '{dbname}', 'TEMP')") == [(False,)]
            p = jc.create("P")
            jc.spawn(p, count=3)
            assert len(jc.cancel(p)) == 4
            q = jc.create("Q", fail_fast=True)
            kids = jc.spawn(q, count=3)
            jc.set_status([kids[0]], "failed")
            assert [jc.status(k) for k in kids] == ["failed", "cancelled", "cancelled"] and jc.status(q) == "failed"
            assert jc.verify() == []
    finally:
        sql(pg_url, f"GRANT TEMP ON DATABASE {dbname} TO PUBLIC")
        sql(pg_url, f"DROP OWNED BY {role}")
        sql(pg_url, f"DROP ROLE {role}")
