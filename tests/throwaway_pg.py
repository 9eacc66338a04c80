"""A real, throwaway PostgreSQL server for the test suite.

    from throwaway_pg import pg_server, pg_url, pg_schema_url   # in conftest.py

    def test_something(pg_schema_url):        # a fresh, empty jobctl schema per test
        ...

    def test_the_database_itself(pg_url):     # a fresh, empty database per test
        ...

`pg_server` (session scope) starts one server per test session: `initdb` into a
fresh directory under /tmp, started on a free port on 127.0.0.1 with trust
authentication and durability switched off, stopped and deleted at the end of
the session (and by `atexit` if the session dies half-way).

`pg_schema_url` is what the contract tests use: a URL with `?schema=t_<hex>`
(jobctl's own query parameter) in one database shared by the session, the
schema dropped after the test. A schema costs a few milliseconds where a
database costs a few hundred (CREATE DATABASE copies template1, and the first
connections to a new database fill their catalog caches from scratch), which
is most of what the fast tier used to spend. `pg_url` (a whole database) is for
the tests about the database itself: ALTER DATABASE, the default schema, roles.

Environment:
    JOBCTL_TEST_PG_URL=postgresql://user@host:port/db
        use that server instead of starting one; each test still gets its own
        schema or database, created and dropped there (the user needs CREATEDB)
    CI=true
        a missing PostgreSQL fails the PostgreSQL tests instead of skipping them

Where the binaries come from: `pg_config --bindir`, else the newest
/usr/lib/postgresql/*/bin, else `initdb` on PATH. As root (CI), initdb and
pg_ctl run as the `postgres` system user, which owns everything they touch;
that is why the server's files live in a directory of their own under /tmp and
never in the checkout or in pytest's tmp_path, either of which may sit in a
directory only root can enter.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ENV_URL = "JOBCTL_TEST_PG_URL"
SUPERUSER = "postgres"
RUN_AS = "postgres"  # the system user that runs the server when the tests run as root
INSTALL_HINT = "PostgreSQL not found: apt-get install postgresql (or set JOBCTL_TEST_PG_URL) to run the PostgreSQL half"
PREFIX = "jobctl-pg-"  # the server's directory: /tmp/jobctl-pg-XXXXXXXX/{data,sock,server.log,owner}
WAIT = 60  # seconds pg_ctl waits for start and stop

# A throwaway server: nothing needs to survive a crash, so skip every flush.
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",  # the load tests run 200 concurrent claimers
    "shared_buffers": "'128MB'",
    # Parallel queries take their shared memory from /dev/shm, which is only 64 MB
    # in a default Docker container: a test would fail on the machine, not the code.
    "max_parallel_workers_per_gather": "0",
}


def with_schema(url: str, schema: str) -> str:
    """`url` with its `?schema=` (jobctl's own query parameter) set to `schema`, the rest of its query kept."""
    from urllib.parse import parse_qsl, urlencode

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("schema", schema)])))


def schema_of(url: str) -> str:
    """The schema a jobctl URL names (`?schema=`; jobctl's default: `jobctl`)."""
    from urllib.parse import parse_qsl

    return dict(parse_qsl(urlsplit(url).query)).get("schema", "jobctl")


def connect_to(url: str, **kwargs):
    """A psycopg2 connection to a jobctl URL's database with the search path set to
    its schema (`?schema=`, jobctl's own query parameter, which libpq would refuse)."""
    from urllib.parse import parse_qsl, urlencode

    import psycopg2

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    libpq = urlunsplit(parts._replace(query=urlencode(query)))
    return psycopg2.connect(libpq, options=f"-c search_path={schema_of(url)}", **kwargs)


class PgServerError(RuntimeError):
    """The server could not be set up, started or stopped; the message says why."""


def _pg_env() -> dict[str, str]:
    """The environment for initdb/pg_ctl: none of the caller's PG* variables
    (PGDATA, PGPORT, PGHOST...) may steer our own server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _has_server(d: Path) -> bool:
    return all(os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres"))


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip() and _has_server(Path(out.stdout.strip())):
            return Path(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # no pg_config: Debian only installs it with libpq-dev
    version = lambda d: [int(n) for n in re.findall(r"\d+", Path(d).parent.name)]  # noqa: E731
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if _has_server(Path(d)):
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb:
        for d in (Path(initdb).parent, Path(initdb).resolve().parent):
            if _has_server(d):
                return d
    return None


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run initdb and pg_ctl as: the postgres user when we are root
    (initdb refuses to run as root), else None for ourselves. KeyError: no such user."""
    if os.geteuid() != 0:
        return None
    import pwd

    pw = pwd.getpwnam(RUN_AS)
    return pw.pw_uid, pw.pw_gid


def is_available() -> tuple[bool, str]:
    """Whether a throwaway server can be started here, and if not a one-line why."""
    bindir = find_bindir()
    if bindir is None:
        return False, INSTALL_HINT
    try:
        _run_as()
    except KeyError:
        return False, (
            f"PostgreSQL found in {bindir}, but the tests run as root and there is no "
            f"'{RUN_AS}' user to run it as: useradd --system {RUN_AS} "
            f"(or set {ENV_URL}) to run the PostgreSQL half"
        )
    return True, str(bindir)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tmp_root() -> str:
    # /tmp rather than $TMPDIR: the postgres user must be able to reach it, and
    # the socket path must stay short (107 bytes at most).
    return "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PgServer:
    """One PostgreSQL server: a throwaway one we start (PgServer()), or an
    existing one we only create databases on (PgServer(url=...))."""

    def __init__(self, url: str | None = None, bindir: Path | None = None):
        self.managed = url is None  # ours to start, stop, restart and delete
        self._url = url
        self.bindir = bindir
        self.port: int | None = None
        self.base: Path | None = None  # /tmp/jobctl-pg-XXXXXXXX
        self.version: str | None = None
        self.timings: dict[str, list[float]] = {}  # initdb, start, create_database, drop_database, restart, stop

    def _time(self, what: str, t0: float) -> None:
        self.timings.setdefault(what, []).append(time.perf_counter() - t0)

    # -- where things are -------------------------------------------------

    @property
    def url(self) -> str:
        """postgresql://postgres@127.0.0.1:PORT/postgres (or the given server's URL)."""
        if not self.managed:
            return self._url
        if self.port is None:
            raise PgServerError("the server has not been started")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    def database_url(self, name: str) -> str:
        """The server's URL with `name` as the database, query (sslmode...) kept."""
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path="/" + name))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError, AttributeError):
            return "(no server log)"

    # -- running initdb and pg_ctl ----------------------------------------

    def _pg(self, exe: str, *args: str) -> subprocess.CompletedProcess:
        ids = _run_as()
        kw = {} if ids is None else {"user": ids[0], "group": ids[1], "extra_groups": []}
        # cwd: the postgres user may not be able to enter ours (a private checkout).
        # -l is always given to pg_ctl start, so the server does not inherit our pipes.
        proc = subprocess.run(
            [str(self.bindir / exe), *args],
            cwd=self.base,
            env=_pg_env(),
            capture_output=True,
            text=True,
            timeout=WAIT + 30,
            **kw,
        )
        if proc.returncode != 0:
            raise PgServerError(
                f"{exe} {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}\n--- server log ---\n{self.log_tail()}"
            )
        return proc

    def _own(self, path: Path) -> None:
        ids = _run_as()
        if ids is not None:
            os.chown(path, *ids)

    def _write_conf(self) -> None:
        settings = dict(
            SETTINGS,
            listen_addresses="'127.0.0.1'",
            port=str(self.port),
            unix_socket_directories=f"'{self.socket_dir}'",
        )
        conf = self.data_dir / "jobctl_test.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._own(conf)

    # -- the life of a throwaway server -----------------------------------

    def start(self) -> "PgServer":
        """initdb into a fresh directory under /tmp and start the server on a free port."""
        if not self.managed or self.base is not None:
            return self
        if self.bindir is None:
            self.bindir = find_bindir()
            if self.bindir is None:
                raise PgServerError(INSTALL_HINT)
        sweep_stale()
        self.base = Path(tempfile.mkdtemp(prefix=PREFIX, dir=_tmp_root()))
        atexit.register(self.stop)  # a backstop for a session that dies before its teardown
        try:
            (self.base / "owner").write_text(str(os.getpid()))  # for sweep_stale()
            self.socket_dir.mkdir()
            self._own(self.socket_dir)
            self._own(self.base)  # last: from here on the postgres user owns the directory
            t0 = time.perf_counter()
            self._pg(
                "initdb",
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            self._time("initdb", t0)
            with open(self.data_dir / "postgresql.conf", "a") as f:
                f.write("\ninclude = 'jobctl_test.conf'\n")
            out = self._pg("postgres", "--version").stdout  # postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)
            self.version = (re.findall(r"\) (\S+)", out) or ["?"])[0]
            for attempt in range(3):  # the free port may be taken before the server binds it
                self.port = free_port()
                self._write_conf()
                try:
                    self._start()
                    break
                except PgServerError:
                    if attempt == 2 or "already in use" not in self.log_tail():
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        t0 = time.perf_counter()
        self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(WAIT), "start")
        self._time("start", t0)

    def stop(self) -> None:
        """Stop the server at once (-m immediate) and delete its directory. Idempotent."""
        atexit.unregister(self.stop)
        if not self.managed or self.base is None:
            return
        t0 = time.perf_counter()
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._note_cpu()
                try:
                    self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", str(WAIT), "stop")
                except (PgServerError, OSError, subprocess.SubprocessError):
                    _kill_postmaster(self.data_dir)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
            self._time("stop", t0)

    def _note_cpu(self) -> None:
        """The CPU seconds the server has used so far (the postmaster's own and its
        ended backends'), from /proc: for the summary, so a run's cost can be compared
        on a machine whose other load makes wall times say little."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime: fields 14-17 of stat(5), 12-15 after the name
            self.timings.setdefault("server_cpu", []).append(sum(map(int, fields[11:15])) / os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            pass  # not Linux, or the server is gone: the summary leaves it out

    def _need_managed(self, what: str) -> None:
        if not self.managed:
            pytest.skip(f"{what} needs the throwaway server, not the one at {ENV_URL}")
        if self.base is None:
            raise PgServerError("the server has not been started")

    def is_running(self) -> bool:
        """Whether the postmaster is up (its pid file names a live process)."""
        self._need_managed("is_running()")
        try:
            return _alive(int((self.data_dir / "postmaster.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            return False

    def restart(self, mode: str = "fast") -> None:
        """pg_ctl restart: same data, same port; clients lose their connections
        (mode "fast"; "immediate" is a crash, "smart" waits for clients)."""
        self._need_managed("restart()")
        t0 = time.perf_counter()
        self._pg(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-m", mode, "-w", "-t", str(WAIT), "restart"
        )
        self._time("restart", t0)

    def stop_server_only(self, mode: str = "fast") -> None:
        """Stop the server but keep its data, to start it again on the same port."""
        self._need_managed("stop_server_only()")
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(WAIT), "stop")

    def start_server_only(self) -> None:
        """Start the stopped server again, same data, same port."""
        self._need_managed("start_server_only()")
        self._start()

    # -- databases ---------------------------------------------------------

    def connect(self, dbname: str | None = None):
        """A psycopg2 connection in autocommit mode, to `dbname` or the server's own database."""
        import psycopg2

        conn = psycopg2.connect(self.database_url(dbname) if dbname else self.url, connect_timeout=10)
        conn.autocommit = True
        return conn

    def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE name (default t_<12 hex digits>); its URL."""
        from psycopg2 import sql

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                if self.version is None:
                    cur.execute("SHOW server_version")
                    self.version = cur.fetchone()[0].split()[0]
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        self._time("create_database", t0)
        return self.database_url(name)

    def drop_schemas(self, dbname: str, prefix: str) -> None:
        """DROP SCHEMA ... CASCADE for every schema of `dbname` whose name starts
        with `prefix` (a test's schema and those it derived from it), first
        disconnecting whoever is still connected to that database: the tests run
        one at a time, so a connection left there belongs to the test just ended."""
        from psycopg2 import sql

        t0 = time.perf_counter()
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                cur.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,))
                for (name,) in cur.fetchall():
                    cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        finally:
            conn.close()
        self._time("drop_schema", t0)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE name, disconnecting whoever is still connected to it."""
        from psycopg2 import sql

        t0 = time.perf_counter()
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                if conn.server_version >= 130000:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                else:
                    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        self._time("drop_database", t0)

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self) -> str:
        """One line: which server, and what starting, creating databases and stopping took."""
        t = self.timings
        if self.managed:
            head = f"PostgreSQL {self.version or '?'} (throwaway, 127.0.0.1:{self.port})"
        else:
            p = urlsplit(self._url)
            head = f"PostgreSQL {self.version or '?'} at {ENV_URL} ({p.hostname}:{p.port or 5432})"
        parts = []
        if "initdb" in t:
            parts.append(f"initdb {t['initdb'][0]:.2f}s + start {t.get('start', [0])[0]:.2f}s")
        for what, label in (
            ("create_database", "databases created"),
            ("drop_database", "dropped"),
            ("drop_schema", "test schemas dropped"),
        ):
            if what in t:
                parts.append(f"{len(t[what])} {label} (avg {1000 * sum(t[what]) / len(t[what]):.0f} ms)")
        if "restart" in t:
            parts.append(f"{len(t['restart'])} restarts (avg {sum(t['restart']) / len(t['restart']):.2f}s)")
        if "stop" in t:
            parts.append(f"stop {t['stop'][-1]:.2f}s")
        if "server_cpu" in t:
            parts.append(f"server CPU {t['server_cpu'][-1]:.1f}s")
        return head + (": " + ", ".join(parts) if parts else "")


def _kill_postmaster(data_dir: Path) -> None:
    """pg_ctl could not stop it: SIGQUIT (immediate shutdown), then SIGKILL."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        for _ in range(100):
            if not _alive(pid):
                return
            time.sleep(0.05)


def sweep_stale() -> None:
    """Stop and delete the servers of earlier sessions that were killed before
    they could clean up (SIGKILL, SIGTERM: atexit does not run then)."""
    ids = _run_as()
    owner_uid = os.geteuid() if ids is None else ids[0]
    for base in glob.glob(os.path.join(_tmp_root(), PREFIX + "*")):
        try:
            if os.stat(base).st_uid != owner_uid or _alive(int(Path(base, "owner").read_text())):
                continue
        except (OSError, ValueError):
            continue  # no owner file yet: a session that is just starting
        stale = PgServer()
        stale.base, stale.bindir = Path(base), find_bindir()
        if stale.bindir is None:
            continue
        try:
            stale.stop()
        except (OSError, subprocess.SubprocessError):
            pass


class _Report:
    """Adds the server's one-line summary to pytest's terminal summary."""

    def __init__(self, server: PgServer):
        self.server = server

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(self.server.summary())


class _FoldSkips:
    """pytest reports a skip raised in a fixture at each test's own line, so -ra
    would repeat the same reason once per PostgreSQL test; report them all here."""

    def __init__(self, reason: str):
        self.reason = reason

    def pytest_runtest_logreport(self, report):
        where = report.longrepr
        if report.skipped and isinstance(where, tuple) and len(where) == 3 and self.reason in str(where[2]):
            report.longrepr = (__file__, None, where[2])


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


@pytest.fixture(scope="session")
def pg_server(request) -> PgServer:
    """The session's PostgreSQL server: $JOBCTL_TEST_PG_URL's, or a throwaway one."""
    url = os.environ.get(ENV_URL)
    if url:
        server = PgServer(url=url)
        try:
            server.connect().close()
        except Exception as e:  # noqa: BLE001 - any failure to connect, said plainly
            where = urlsplit(url)
            pytest.fail(
                f"{ENV_URL}: cannot connect to {where.hostname}:{where.port or 5432}/"
                f"{where.path.lstrip('/')}: {str(e).strip()}",
                pytrace=False,
            )
    else:
        ok, why = is_available()
        if not ok:
            if _ci():
                pytest.fail(f"{why} [CI=true: a missing PostgreSQL is an error here]", pytrace=False)
            if not request.config.pluginmanager.has_plugin("jobctl-pgserver-skips"):
                request.config.pluginmanager.register(_FoldSkips(why), "jobctl-pgserver-skips")
            pytest.skip(why)
        server = PgServer()
        try:
            server.start()
        except PgServerError as e:
            pytest.fail(f"could not start a throwaway PostgreSQL server: {e}", pytrace=False)
    if not request.config.pluginmanager.has_plugin("jobctl-pgserver-report"):
        request.config.pluginmanager.register(_Report(server), "jobctl-pgserver-report")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a fresh, empty database on the session's server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        if pg_server.managed and not pg_server.is_running():
            pg_server.start_server_only()  # the test stopped it: bring it back for the next one
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def pg_shared_database(pg_server: PgServer) -> str:
    """The name of the session's database that holds the tests' schemas."""
    name = f"s_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        yield name
    finally:
        if pg_server.managed and not pg_server.is_running():
            pg_server.start_server_only()
        pg_server.drop_database(name)


@pytest.fixture
def pg_schema_url(pg_server: PgServer, pg_shared_database: str) -> str:
    """The URL of a fresh jobctl schema (not created yet: jobctl makes it on the
    first write) in the session's shared database, dropped after the test with
    every schema whose name starts with it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield with_schema(pg_server.database_url(pg_shared_database), schema)
    finally:
        if pg_server.managed and not pg_server.is_running():
            pg_server.start_server_only()  # the test stopped it: bring it back for the next one
        pg_server.drop_schemas(pg_shared_database, schema)
