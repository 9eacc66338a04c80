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
        "jobctl: error: a postgresql:// database needs the PostgreSQL driver: pip install 'jobctl-db[postgres]'\n"
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


def test_a_running_job_s_waker_wakes_for_cancels_not_for_every_commit(pg_url):
    """`run` waits on a cancels-only waker: a commit that cancels a job (a status
    set, written as the rows' update; a subtree, in one statement; fail-fast's)
    says so in its NOTIFY and wakes it;
    the other commits (every runner's output and heartbeats) wake only the
    general wakers. Both share the process's one listening connection, so once
    the general waker has seen a commit, the cancels-only one has seen it too."""
    with Jobctl(pg_url) as jc:
        parent = jc.create("p", fail_fast=True)
        a, b, c = jc.spawn(parent, count=3)
        tree = jc.create("tree")
        jc.spawn(tree, count=3)
        everything = jc.waker(60)
        cancels = jc.waker(60, cancels_only=True)
        try:
            for change, is_cancel in [
                (lambda: jc.set_status([a], "running"), False),
                (lambda: jc.log(a, "output"), False),
                (lambda: jc.set_status([c], "cancelled"), True),  # a status set: the rows' update
                (lambda: jc.log(a, "still output"), False),
                (lambda: jc.cancel(tree), True),  # a subtree, in one statement
                (lambda: jc.log(a, "more output"), False),
                (lambda: jc.set_status([a], "failed"), True),  # fail-fast cancels b
            ]:
                change()
                assert everything.wait(30)
                assert cancels.wait(0 if not is_cancel else 30) is is_cancel
        finally:
            everything.close()
            cancels.close()
        assert jc.status(b) == "cancelled"


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
        real = jc._store.write
        failures = {"left": 2}

        def flaky():
            if failures["left"]:
                failures["left"] -= 1
                raise Retryable("could not serialize access")
            return real()

        monkeypatch.setattr(jc._store, "write", flaky)
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


def test_every_credential_in_a_url_is_masked_wherever_it_is_shown(pg_url, tmp_path):
    """`?password=`, `?sslpassword=` and `user:password@` never reach a person: not in
    `db path`, `init`, an error line, serve's start line, nor `/api/health`, which shows
    only the store's kind."""
    from test_serve import Server

    secret = pg_url.replace("postgres@", "postgres:S3CRETa@") + "?password=S3CRETb&sslpassword=S3CRETc"
    shown = run("db", "path", db=secret)
    assert shown.returncode == 0 and "S3CRET" not in shown.stdout
    assert shown.stdout.count("***") == 3 and "sslpassword=***" in shown.stdout
    init = run("init", db=secret)
    assert init.returncode == 0 and "S3CRET" not in init.stdout + init.stderr and "***" in init.stderr
    unreachable = secret.replace(urlsplit(pg_url).netloc.split("@")[1], "127.0.0.1:1")
    result = run("status", "set", "x", "running", db=unreachable)
    assert result.returncode == 5 and "S3CRET" not in result.stderr and "password=***" in result.stderr
    server = Server(secret, tmp_path)
    try:
        health = server.get("/api/health")
        assert health["store"] == "postgresql" and "database" not in health
        assert "S3CRET" not in json.dumps(health) and "127.0.0.1" not in json.dumps(health)
    finally:
        server.stop()
    log = server.log.read_text()
    assert "serving" in log and "S3CRET" not in log and "password=***" in log


def test_every_url_form_libpq_accepts(pg_url, pg_server, tmp_path):
    """The URL goes to libpq as written (only jobctl's ?schema= is taken out): the
    postgres:// scheme, no host with PGHOST/PGPORT/PGUSER, a host list, a socket
    directory as ?host=, a service; each reaches the same database."""
    where = urlsplit(pg_url)
    db, port = where.path.lstrip("/"), where.port
    (tmp_path / "pg_service.conf").write_text(f"[jobs]\nhost=127.0.0.1\nport={port}\nuser=postgres\ndbname={db}\n")
    pg_env = {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres"}
    forms = [
        (f"postgres://postgres@127.0.0.1:{port}/{db}", {}),
        (f"postgresql:///{db}", pg_env),
        (f"postgresql://postgres@127.0.0.1:1,127.0.0.1:{port}/{db}", {}),
        (f"postgresql://postgres@/{db}?host={pg_server.socket_dir}&port={port}", {}),
        ("postgresql:///?service=jobs", {"PGSERVICEFILE": str(tmp_path / "pg_service.conf")}),
        (f"postgresql:///{db}?schema=jobctl&connect_timeout=5", pg_env),
    ]
    for i, (url, env) in enumerate(forms):
        result = run("create", f"form {i}", db=url, env=env)
        assert result.returncode == 0, (url, result.stderr)
        assert run("db", "path", db=url, env=env).stdout == url + "\n"
    assert sorted(r[0] for r in sql(pg_url, "SELECT name FROM jobctl.jobs")) == [f"form {i}" for i in range(len(forms))]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:S3CRETpw@[::1/db",
        "postgresql://u@127.0.0.1:1/db?password=S3CRETpw&no_such_option=1",
        "postgres://u:S3CRETpw@127.0.0.1:notaport/db",
    ],
)
def test_a_malformed_url_is_exit_2_with_its_password_masked(url):
    result = run("status", "set", "x", "running", db=url)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("jobctl: error: bad PostgreSQL URL") and result.stderr.count("\n") == 1
    assert "S3CRET" not in result.stderr and "***" in result.stderr


def test_a_role_without_rights_on_the_schema_is_told_the_grant(pg_url):
    """A role that may not use jobctl's schema (no USAGE: PostgreSQL then skips it on
    the search path, and says `relation "meta" does not exist`) or create in it is
    told which schema and which grant, exit 5, and nothing is created."""
    dbname = urlsplit(pg_url).path.lstrip("/")
    role = f"reader_{os.getpid()}"
    sql(pg_url, f"CREATE ROLE {role} LOGIN")
    sql(pg_url, f"GRANT CONNECT ON DATABASE {dbname} TO {role}")
    Jobctl(pg_url).close()  # jobctl's schema, made by its owner
    sql(pg_url, "CREATE SCHEMA empty")  # and an empty one
    as_role = with_netloc(pg_url, f"{role}@{urlsplit(pg_url).netloc.split('@')[1]}")
    try:
        for url, argv, grant in [
            (as_role, ["list"], "GRANT USAGE ON SCHEMA jobctl"),
            (as_role, ["create", "x"], "GRANT USAGE ON SCHEMA jobctl"),
            (as_role + "?schema=empty", ["create", "x"], "GRANT USAGE, CREATE ON SCHEMA empty"),
        ]:
            result = run(*argv, db=url)
            assert result.returncode == 5 and result.stderr.count("\n") == 1, result.stderr
            assert f"permission denied for schema {url.partition('schema=')[2] or 'jobctl'}" in result.stderr
            assert f"{grant} TO {role}" in result.stderr, result.stderr
        sql(pg_url, f"GRANT USAGE ON SCHEMA empty TO {role}")  # may use it, may not create in it
        result = run("create", "x", db=as_role + "?schema=empty")
        assert result.returncode == 5 and f"GRANT CREATE ON SCHEMA empty TO {role}" in result.stderr, result.stderr
        assert sql(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'empty'") == [(0,)]
    finally:
        sql(pg_url, f"DROP OWNED BY {role}")
        sql(pg_url, f"DROP ROLE {role}")


# -- across machines: connections, poolers, refusals (issue 19) ---------------


def role_url(pg_url, role):
    return with_netloc(pg_url, f"{role}@{urlsplit(pg_url).netloc.split('@')[1]}")


def jobctl_backends(pg_url):
    """The server's connections named `jobctl`, to the test's database."""
    dbname = urlsplit(pg_url).path.lstrip("/")
    return sql(
        pg_url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobctl' AND datname = %s", (dbname,)
    )[0][0]


def wait_until(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def gated_claim(pg_url, parent, gate, jobs, env=None):
    """`run --claim PARENT --jobs N` whose commands wait for the file `gate`."""
    return subprocess.Popen(
        [
            JOBCTL,
            "--db",
            pg_url,
            "run",
            "--claim",
            parent,
            "--jobs",
            str(jobs),
            "--",
            "sh",
            "-c",
            f"while [ ! -e {gate} ]; do sleep 0.02; done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
    )


def test_one_process_uses_two_connections_whatever_its_jobs(pg_url, tmp_path):
    """`run --claim --jobs 8` with 8 commands running at once holds one connection
    for writes and one for wake-ups (the budget: N runners need 2N connections);
    each of its threads used to open its own, 4 per job."""
    with Jobctl(pg_url) as jc:
        parent = jc.create("budget")
        jc.spawn(parent, count=8)
    gate = tmp_path / "gate"
    proc = gated_claim(pg_url, parent, gate, 8)
    try:
        with Jobctl(pg_url) as jc:
            wait_until(lambda: jc.progress(parent)["running_children"] == 8)
        assert jobctl_backends(pg_url) == 2
    finally:
        gate.touch()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    with Jobctl(pg_url) as jc:
        assert jc.progress(parent)["progress_text"] == "0 pending, 0 running, 8 completed, 0 failed"


def test_watch_uses_two_connections(pg_url):
    """`watch` holds one connection for its reads and one for wake-ups (LISTEN), and
    follows changes on them."""
    with Jobctl(pg_url) as jc:
        parent = jc.create("watched")
        kids = jc.spawn(parent, count=2)
    watcher = subprocess.Popen(
        [JOBCTL, "--db", pg_url, "watch", parent, "--json", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(watcher.stdout.readline())["type"] == "start"
        with Jobctl(pg_url) as jc:
            jc.set_status([kids[0]], "running")
            assert json.loads(watcher.stdout.readline())["event"]["job_id"] == kids[0]
            assert jobctl_backends(pg_url) == 2 + 1  # (+ this test's own Jobctl)
            jc.set_status(kids, "completed", force=True)
        out, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 0, err
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


def test_twenty_runners_of_four_jobs_fit_in_forty_connections(pg_url, tmp_path):
    """The budget the docs give (N runners need 2N connections), held to: twenty
    `run --claim --jobs 4` workers under a role limited to 40 connections, all
    80 commands running at once, then every child completed and no worker
    refused. (The issue's case: 20 such workers exhausted max_connections=100.)"""
    dbname = urlsplit(pg_url).path.lstrip("/")
    role = f"budget_{os.getpid()}"
    sql(pg_url, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 40")
    sql(pg_url, f"GRANT CONNECT, CREATE ON DATABASE {dbname} TO {role}")
    url = role_url(pg_url, role)
    gate = tmp_path / "gate"
    workers = []
    try:
        with Jobctl(url) as jc:
            parent = jc.create("budget")
            jc.spawn(parent, count=80)
        workers = [gated_claim(url, parent, gate, 4, env={"JOBCTL_CONNECT_TIMEOUT": "2"}) for _ in range(20)]
        with Jobctl(pg_url) as jc:
            wait_until(lambda: jc.progress(parent)["running_children"] == 80, timeout=120)
        in_use = sql(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))[0][0]
        assert in_use == 40
        gate.touch()
        for w in workers:
            out, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
        with Jobctl(pg_url) as jc:
            assert jc.progress(parent)["progress_text"] == "0 pending, 0 running, 80 completed, 0 failed"
    finally:
        gate.touch()
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        sql(pg_url, f"DROP OWNED BY {role}")
        sql(pg_url, f"DROP ROLE {role}")


def test_a_role_with_a_connection_limit_runs_all_its_children(pg_url, tmp_path):
    """A role with `CONNECTION LIMIT 2`: `run --claim --jobs 4` runs every child (it
    needs two connections), and a process that finds no connection free is told so
    in one line, exit 5, after retrying within the connect timeout."""
    dbname = urlsplit(pg_url).path.lstrip("/")
    role = f"limited_{os.getpid()}"
    sql(pg_url, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    sql(pg_url, f"GRANT CONNECT, CREATE ON DATABASE {dbname} TO {role}")
    url = role_url(pg_url, role)
    try:
        with Jobctl(url) as jc:
            parent = jc.create("limited")
            jc.spawn(parent, count=10)
        result = run("run", "--claim", parent, "--jobs", "4", "--", "true", db=url, timeout=120)
        assert result.returncode == 0, result.stderr
        with Jobctl(url) as jc:
            assert jc.progress(parent)["progress_text"] == "0 pending, 0 running, 10 completed, 0 failed"
            # both of the role's connections taken: a third process waits, then gives up in one line
            blocker = psycopg2.connect(url)
            try:
                refused = run(
                    "status", "set", parent, "running", "--force", db=url, env={"JOBCTL_CONNECT_TIMEOUT": "2"}
                )
            finally:
                blocker.close()
            assert refused.returncode == 5
            assert refused.stderr.count("\n") == 1 and "too many connections" in refused.stderr, refused.stderr
            assert "still refused after 2 s; JOBCTL_CONNECT_TIMEOUT" in refused.stderr
            assert jc.status(parent) == "completed"  # nothing written
    finally:
        sql(pg_url, f"DROP OWNED BY {role}")
        sql(pg_url, f"DROP ROLE {role}")


def test_a_refused_connection_is_retried_until_one_is_free(pg_url, pg_server):
    """A refusal (here: the role's connection limit) is asked again with backoff: a
    slot freed within the connect timeout lets the command through."""
    dbname = urlsplit(pg_url).path.lstrip("/")
    role = f"one_{os.getpid()}"
    sql(pg_url, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
    sql(pg_url, f"GRANT CONNECT, CREATE ON DATABASE {dbname} TO {role}")
    url = role_url(pg_url, role)
    try:
        with Jobctl(url) as jc:
            job = jc.create("x")
        refusal = f'too many connections for role "{role}"'

        def refusals():
            return pg_server.log_file.read_text(errors="replace").count(refusal)

        before = refusals()
        blocker = psycopg2.connect(url)
        proc = subprocess.Popen(
            [JOBCTL, "--db", url, "status", "set", job, "running"],
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, JOBCTL_CONNECT_TIMEOUT="60"),
        )
        wait_until(lambda: refusals() > before)  # the command was refused at least once ...
        blocker.close()  # ... and the slot frees while it is retrying
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        with Jobctl(url) as jc:
            assert jc.status(job) == "running"
    finally:
        sql(pg_url, f"DROP OWNED BY {role}")
        sql(pg_url, f"DROP ROLE {role}")


def test_run_claim_survives_its_connections_being_terminated(pg_url, tmp_path):
    """pg_terminate_backend on every jobctl connection while `run --claim` waits for
    its commands: it reconnects (its wake-ups too) and records every outcome."""
    with Jobctl(pg_url) as jc:
        parent = jc.create("terminated")
        jc.spawn(parent, count=4)
    gate = tmp_path / "gate"
    proc = gated_claim(pg_url, parent, gate, 2)
    try:
        with Jobctl(pg_url) as jc:
            wait_until(lambda: jc.progress(parent)["running_children"] == 2)
        killed = sql(
            pg_url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'jobctl' AND pid <> pg_backend_pid()",
        )[0][0]
        assert killed == 2
    finally:
        gate.touch()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    with Jobctl(pg_url) as jc:
        assert jc.progress(parent)["progress_text"] == "0 pending, 0 running, 4 completed, 0 failed"
        assert jc.verify() == []


def test_writers_work_through_pgbouncer_in_transaction_pooling(pg_url, pg_server):
    """Eight writer processes through PgBouncer (pool_mode = transaction, 2 server
    connections): every change lands once, event ids stay consecutive, and a
    watcher on a session of its own (LISTEN needs one) sees them all."""
    if not os.access("/usr/sbin/pgbouncer", os.X_OK):  # CI installs it (.ci/run): there, its absence fails
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("Debian's pgbouncer is not installed")
    from throwaway_pg import PgBouncer

    with Jobctl(pg_url) as jc:
        parent = jc.create("pooled")
        kids = jc.spawn(parent, count=16)
    with PgBouncer(pg_server.url, pool_mode="transaction", pool_size=2) as bouncer:
        pooled = bouncer.url_for(pg_url)
        watcher = subprocess.Popen(
            [JOBCTL, "--db", pg_url, "watch", parent, "--json", "--timeout", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert json.loads(watcher.stdout.readline())["type"] == "start"
        writers = [
            subprocess.Popen(
                [JOBCTL, "--db", pooled, "status", "set", *kids[w::8], status], stderr=subprocess.PIPE, text=True
            )
            for status in ("running",)
            for w in range(8)
        ]
        for w in writers:
            assert w.wait(timeout=120) == 0, w.stderr.read()
        writers = [
            subprocess.Popen(
                [JOBCTL, "--db", pooled, "status", "set", *kids[w::8], "completed"], stderr=subprocess.PIPE, text=True
            )
            for w in range(8)
        ]
        for w in writers:
            assert w.wait(timeout=120) == 0, w.stderr.read()
        out, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, err + out[-3000:]
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[-1]["progress_text"] == "0 pending, 0 running, 16 completed, 0 failed"
    with Jobctl(pg_url) as jc:
        ids = [e["id"] for e in jc.events()]
        # P and its 16 children created, 32 changes, P running then completed: once each, consecutive
        assert ids == list(range(1, len(ids) + 1)) and len(ids) == 1 + 16 + 32 + 2
        assert jc.verify() == []


def test_a_write_that_fails_after_preparing_leaves_one_copy_of_each_statement(pg_url):
    """A write whose batch prepared a statement and then failed (here: an unknown
    job, found after the read) leaves that statement prepared, outliving the
    rollback: the next writes EXECUTE it, and the session's prepared statements
    do not grow with the writes that fail so."""
    from jobctl import NotFound

    with Jobctl(pg_url) as jc:
        parent = jc.create("p")
        kid = jc.spawn(parent, count=1)[0]
        store = jc._store
        held = []
        for i in range(6):
            jc.set_status([kid], "running" if i % 2 == 0 else "pending", force=True)
            store._execute("DEALLOCATE ALL")  # (as in a new session: the failing write prepares its read)
            store.shared.prepared.clear()
            with pytest.raises(NotFound):
                jc.set_status([kid, f"{parent}.nope{i}"], "running", force=True)
            held.append(store._query("SELECT count(*) AS n FROM pg_prepared_statements")[0]["n"])
        assert held[0] >= 1 and held[-1] == held[1]  # no copy per failure
        assert store.shared.prepares  # (a PREPARE of a name already there would have turned it off)
        assert jc.status(kid) == "pending" and jc.verify() == []


def test_long_lived_writers_through_pgbouncer_in_transaction_pooling(pg_url, pg_server):
    """Writers that change many times each prepare their statements (see
    PostgresStore._statement), which a pooler in transaction mode does not keep
    for them: the next transaction's server session lacks them or has another
    client's. Four such writers through PgBouncer (2 server connections): every
    change lands once, ids consecutive, the counts right."""
    if not os.access("/usr/sbin/pgbouncer", os.X_OK):  # CI installs it (.ci/run): there, its absence fails
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("Debian's pgbouncer is not installed")
    from throwaway_pg import PgBouncer

    with Jobctl(pg_url) as jc:
        parent = jc.create("pooled")
        kids = jc.spawn(parent, count=8)
        before = len(list(jc.events()))
    script = (
        "import sys; from jobctl import Jobctl\n"
        "jc = Jobctl(sys.argv[1])\n"
        "for i in range(20):\n"
        "    jc.set_status(sys.argv[2:], 'running' if i % 2 == 0 else 'pending', force=True)\n"
        "jc.set_status(sys.argv[2:], 'completed')\n"
    )
    with PgBouncer(pg_server.url, pool_mode="transaction", pool_size=2) as bouncer:
        pooled = bouncer.url_for(pg_url)
        writers = [
            subprocess.Popen([sys.executable, "-c", script, pooled, *kids[w::4]], stderr=subprocess.PIPE, text=True)
            for w in range(4)
        ]
        for w in writers:
            assert w.wait(timeout=120) == 0, w.stderr.read()
    with Jobctl(pg_url) as jc:
        events = list(jc.events())
        ids = [e["id"] for e in events]
        assert ids == list(range(1, len(ids) + 1))
        assert len([e for e in events[before:] if e["job_id"] in kids]) == 8 * 21  # every change once
        assert jc.progress(parent)["completed_children"] == 8 and jc.status(parent) == "completed"
        assert jc.verify() == []


def test_a_writer_whose_prepared_statements_vanish_sends_them_in_full(pg_url):
    """A long-lived writer prepares what it sends again; when its session no longer
    has them (what a pooler in transaction mode does), the write runs again in
    full, once, and the writer prepares nothing more."""
    with Jobctl(pg_url) as jc:
        parent = jc.create("p")
        kid = jc.spawn(parent, count=2)[0]
        for status in ("running", "pending", "running", "pending"):
            jc.set_status([kid], status, force=True)
        store = jc._store
        names = [r["name"] for r in store._query("SELECT name FROM pg_prepared_statements")]
        assert names and all(n.startswith("jobctl_") for n in names)
        events = len(list(jc.events()))
        store._execute("DEALLOCATE ALL")  # (behind the store's back: as if another server session)
        jc.set_status([kid], "running", force=True)
        assert store.shared.prepares is False
        assert len(list(jc.events())) == events + 1 and jc.status(kid) == "running"
        jc.set_status([kid], "completed")
        assert store._query("SELECT name FROM pg_prepared_statements") == []
        assert jc.verify() == []


def test_a_writer_that_waited_for_a_parent_sees_the_counts_committed_before_it(pg_url):
    """Two last children completing at once, from two processes, each having read
    the other as running: whichever commits second sees the parent's counts as the
    other left them (it waited for the row lock, or its check of the parent failed
    and it ran again), so the parent completes; a stale read would leave it
    running forever."""
    with Jobctl(pg_url) as setup:
        parent = setup.create("p")
        first, second = setup.spawn(parent, count=2)
        setup.set_status([first, second], "running")
    with Jobctl(pg_url) as jc:
        real = jc._store.insert_events
        other = {}

        def meanwhile(events):  # the other writer goes through, or queues for a lock we hold
            if "proc" not in other:
                other["proc"] = subprocess.Popen(
                    [JOBCTL, "--db", pg_url, "status", "set", second, "completed"], stderr=subprocess.PIPE, text=True
                )
                wait_until(
                    lambda: (
                        other["proc"].poll() is not None
                        or sql(pg_url, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] > 0
                    )
                )
            real(events)

        jc._store.insert_events = meanwhile
        jc.set_status([first], "completed")
        jc._store.insert_events = real
        assert other["proc"].wait(timeout=60) == 0, other["proc"].stderr.read()
        assert jc.status(parent) == "completed"
        assert jc.verify() == []


def test_a_child_s_change_commits_while_a_claimer_holds_its_parent_s_row(pg_url):
    """A claim locks its parent's row while it picks a child; a change of another
    child meanwhile (`run` ending one: its row updated twice in one transaction,
    so the server checks the child's foreign key to its parent) only needs the
    parent's key to stay: the row lock a write takes is FOR NO KEY UPDATE, so the
    change goes through at once. (A FOR UPDATE lock blocked it: once the claimer
    then waited for the write lock that change held, they deadlocked until the
    server noticed, and three `run --claim --jobs 2` workers took 30 s for 30
    children, one of them running out of its busy timeout.)"""
    with Jobctl(pg_url) as setup:
        parent = setup.create("p")
        first, second = setup.spawn(parent, count=2)
        setup.set_status([first], "running")
    with Jobctl(pg_url) as jc:
        store = jc._store
        with store.write():
            store.jobs_and_counts([parent])  # what a claim reads first: the parent, its row locked
            finish = (
                f"from jobctl import Jobctl; Jobctl({pg_url!r})"
                f".finish({first!r}, 'completed', message=None, exit_code=0, duration=0.1)"
            )
            done = subprocess.run(
                [sys.executable, "-c", finish],
                capture_output=True,
                text=True,
                timeout=60,
                env=dict(os.environ, JOBCTL_BUSY_TIMEOUT="5"),
            )
        assert done.returncode == 0, done.stderr
        assert jc.status(first) == "completed" and jc.progress(parent)["completed_children"] == 1
        assert jc.verify() == []


def test_claim_and_a_walk_down_a_subtree_stay_index_lookups_beside_a_huge_tree(pg_url):
    """Kept history is mostly a few huge fan-outs: the jobs a change reads with their
    parents, the next child to claim and the jobs under one job (cancel, retry of a
    parent, tree) are found through indexes, not by scanning the jobs table
    (which the planner chose, taking a parent's children to be spread evenly and
    many: a claim, or a leaf's cancel under the write lock, then cost what the
    whole table does)."""
    with Jobctl(pg_url) as jc:
        old = jc.create("history")
        jc.spawn(old, count=20_000)
        p = jc.create("now")
        kids = jc.spawn(p, count=20_000)
        grandchildren = jc.spawn(kids[-3], count=2)
        jc.set_status(grandchildren, "running")
        jc.set_status(grandchildren, "failed")
        store = jc._store
        store._execute("ANALYZE")
        seen = []
        real = store._run
        store.shared.prepares = False  # (statements sent in full, to be EXPLAINed as sent; prepared: below)

        def spy(sql, params, *args, **kwargs):
            seen.append((sql, params))
            return real(sql, params, *args, **kwargs)

        store._run = spy
        jc.claim(p)
        jc.cancel(kids[-1])
        jc.retry(kids[-3])  # a parent: reads its subtree
        assert [j["id"] for j in jc.tree(kids[-2])] == [kids[-2]]
        store._run = real
        store.shared.prepares = True
        for _ in range(3):  # a long-lived writer: its statements are prepared, then planned generically
            jc.set_status(kids[:2], "running")
            jc.heartbeat(kids[0])
            jc.set_status(kids[:2], "pending", force=True)
        prepared = store._query("SELECT name, cardinality(parameter_types) AS n FROM pg_prepared_statements")
        assert len(prepared) >= 4, prepared
        store._execute("SET plan_cache_mode = force_generic_plan")
        for p in prepared:
            args = ", ".join(["NULL"] * p["n"])
            plan = "\n".join(r["QUERY PLAN"] for r in store._query(f"EXPLAIN EXECUTE {p['name']}({args})"))
            assert "Seq Scan on jobs" not in plan and "jobs_seq_key" not in plan, (p, plan)
        store._execute("RESET plan_cache_mode")
    statements = []
    for sql, params in seen:
        left = list(params or ())
        for part in sql.split("; "):  # (a round trip's statements, each with its own parameters)
            n = part.count("%s")
            mine, left = left[:n], left[n:]
            if "SKIP LOCKED" in part or "WITH RECURSIVE" in part or "LEFT JOIN child_counts" in part:
                statements.append((part.strip(), mine))
    assert all(any(w in s for s, _ in statements) for w in ("SKIP LOCKED", "WITH RECURSIVE", "LEFT JOIN child_counts"))
    conn = psycopg2.connect(pg_url)
    try:
        cur = conn.cursor()
        cur.execute("SET search_path = jobctl")
        for statement, params in statements:
            cur.execute("EXPLAIN " + statement, params or None)
            plan = "\n".join(r[0] for r in cur.fetchall())
            # (nor a walk through every job in creation order, filtered: what claim did)
            assert "Seq Scan on jobs" not in plan and "jobs_seq_key" not in plan, (statement, plan)
    finally:
        conn.rollback()
        conn.close()


def test_a_waker_whose_server_refuses_it_still_says_look_each_poll_interval(pg_url, monkeypatch):
    """The wake-up connection is cut and the server refuses a new one: wait() still
    returns True once per poll interval, so the reader looks (and meets the refusal
    itself) instead of waiting forever."""
    dbname = urlsplit(pg_url).path.lstrip("/")
    role = f"waker_{os.getpid()}"
    sql(pg_url, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    sql(pg_url, f"GRANT CONNECT, CREATE ON DATABASE {dbname} TO {role}")
    url = role_url(pg_url, role)
    monkeypatch.setenv("JOBCTL_CONNECT_TIMEOUT", "0.2")
    try:
        with Jobctl(url) as jc:
            waker = jc.waker(0.3)
            try:
                sql(
                    pg_url,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE usename = %s AND query LIKE 'LISTEN%%'",
                    (role,),
                )
                wait_until(
                    lambda: sql(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))[0][0] == 1
                )
                blocker = psycopg2.connect(url)  # the freed slot is taken: the waker cannot come back
                try:
                    deadline = time.monotonic() + 5
                    looks = 0
                    while time.monotonic() < deadline and looks < 3:
                        looks += waker.wait(1.0)
                    assert looks == 3
                finally:
                    blocker.close()
            finally:
                waker.close()
    finally:
        sql(pg_url, f"DROP OWNED BY {role}")
        sql(pg_url, f"DROP ROLE {role}")


def test_watch_and_writers_through_a_network_cut(pg_url):
    """Every connection through a (delaying) proxy dropped at once: the watcher
    reconnects and sees every change, once, in order."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("tcp_proxy", ROOT / "bench" / "tcp_proxy.py")
    tcp_proxy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tcp_proxy)
    with Jobctl(pg_url) as jc:
        parent = jc.create("cut")
        kids = jc.spawn(parent, count=4)
    parts = urlsplit(pg_url)
    with tcp_proxy.Proxy(parts.hostname, parts.port, delay=0.002) as proxy:
        far = with_netloc(pg_url, f"{parts.username}@127.0.0.1:{proxy.port}")
        watcher = subprocess.Popen(
            [JOBCTL, "--db", far, "watch", parent, "--json", "--timeout", "60", "--poll-interval", "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert json.loads(watcher.stdout.readline())["type"] == "start"
        run("status", "set", *kids[:2], "completed", db=far, check=True)
        proxy.cut_all()
        run("status", "set", *kids[2:], "completed", db=far, check=True)
        out, err = watcher.communicate(timeout=90)
    assert watcher.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    ids = [x["event"]["id"] for x in lines if x["type"] == "event"]
    with Jobctl(pg_url) as jc:
        # every change after the parent's own start (as in the restart test above), once, in order
        assert ids == [e["id"] for e in jc.events(since=6)]
    assert lines[-1]["progress_text"] == "0 pending, 0 running, 4 completed, 0 failed"
