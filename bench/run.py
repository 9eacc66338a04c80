#!/usr/bin/env python3
"""jobctl's benchmark harness: each benchmark measures jobctl and its baseline
in the same run, alternating them, and reports medians and the ratio.
Absolute times on a shared machine are noise; the ratios are what we track.

    python3 dev.py bench                 # every benchmark, default sizes
    python3 dev.py bench --only watch_latency --latency-events 500
    python3 dev.py bench --tiny          # the smoke test's sizes
    python3 dev.py bench --only pg_spawn --only pg_watch_latency

The pg_* benchmarks run against one throwaway PostgreSQL server (tests/
throwaway_pg.py), started once per run when any of them is selected and
stopped at the end; each benchmark gets databases of its own on it. Without
PostgreSQL's binaries they report `skipped` and why. --pg-url uses an existing
server instead (its user needs CREATEDB).

Results go to stdout as a table and to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
JOBCTL = str(Path(sys.executable).parent / "jobctl")
BENCHMARKS: dict = {}


def benchmark(fn):
    BENCHMARKS[fn.__name__] = fn
    return fn


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def latency_result(ours, floor, bar_ms):
    """A latency benchmark's result: jobctl's commit→print latencies against the
    floor's (the baseline's) of the same run, with the bar on jobctl's p99."""
    p99, f99 = percentile(ours, 99), percentile(floor, 99)
    return {
        "metric": "commit→print latency (ms)",
        "jobctl_p50": percentile(ours, 50),
        "jobctl_p99": p99,
        "baseline_p50": percentile(floor, 50),
        "baseline_p99": f99,
        "ratio_p99": p99 / f99,
        "events": len(ours) + len(floor),
        "bar": f"p99 ≤ {bar_ms} ms",
        "met": p99 <= bar_ms,
    }


class LineReader(threading.Thread):
    """Stamps every line a subprocess prints with perf_counter() on arrival."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self.ready = threading.Event()

    def run(self):
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter(), line))
            self.ready.set()


def start_reader(cmd, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1, env=dict(os.environ, **(env or {})))
    reader = LineReader(proc)
    reader.start()
    if not reader.ready.wait(30):
        proc.kill()
        raise RuntimeError(f"{cmd} printed nothing")
    return proc, reader


@contextmanager
def proxy_process(host, port, delay):
    """bench/tcp_proxy.py in a process of its own, yielding its port: its event loop
    then shares no interpreter lock with this process's threads that stamp the
    times measured (the proxy is the network, not part of what is timed)."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "tcp_proxy.py"), "--target", f"{host}:{port}", "--delay", str(delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "listening on 127.0.0.1:PORT, forwarding to ..."
        if not line.startswith("listening on 127.0.0.1:"):
            raise RuntimeError(f"tcp_proxy.py did not start: {line!r}")
        yield int(line.split(":")[1].split(",")[0])
    finally:
        stop(proc)


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


# ------------------------------------------------------------------ watch
def _latency_run(db, parent, kids, cmd, floor, rate):
    """Commit one status change per kid at `rate`/s; return commit→line latencies (ms)."""
    from jobctl import Jobctl

    proc, reader = start_reader(cmd)
    commits = {}
    with Jobctl(db) as jc:  # db: a SQLite path or a PostgreSQL URL
        time.sleep(0.3)
        for kid in kids:
            t_next = time.perf_counter() + 1 / rate
            jc.set_status([kid], "running")
            committed = time.perf_counter()  # before asking for the id: on PostgreSQL that is a round trip
            commits[jc.last_event_id()] = committed
            time.sleep(max(0.0, t_next - time.perf_counter()))
    time.sleep(0.5)
    stop(proc)
    seen = {}
    for t, line in reader.lines[1:]:
        if floor:
            newest = int(line)
            for eid in commits:
                if eid <= newest and eid not in seen:
                    seen[eid] = t
        else:
            data = json.loads(line)
            if data.get("type") == "event":
                seen.setdefault(data["event"]["id"], t)
    missing = set(commits) - set(seen)
    if missing:
        raise RuntimeError(f"{len(missing)} commits never printed")
    return [(seen[e] - commits[e]) * 1000 for e in commits]


@benchmark
def watch_latency(args, tmp):
    """watch: commit → line printed, p50/p99 at ~20 commits/s, against a bare
    PRAGMA data_version loop polling every 10 ms."""
    from jobctl import Jobctl

    db = str(tmp / "latency.db")
    with Jobctl(db) as jc:
        parent = jc.create("latency")
        kids = jc.spawn(parent, count=args.latency_events + 1)
    rounds = args.rounds
    per = args.latency_events // rounds
    ours, floor = [], []
    for r in range(rounds):
        chunk = kids[r * per : (r + 1) * per]
        half = len(chunk) // 2
        ours += _latency_run(
            db, parent, chunk[:half], [JOBCTL, "--db", db, "watch", parent, "--json"], False, args.rate
        )
        floor += _latency_run(
            db, parent, chunk[half:], [sys.executable, str(HERE / "floor_watch.py"), db], True, args.rate
        )
    return latency_result(ours, floor, 25)


@benchmark
def watch_throughput(args, tmp):
    """watch: events per second it keeps up with on a parent with many children,
    against the writer's own commit rate."""
    from jobctl import Jobctl

    db = str(tmp / "throughput.db")
    n = args.throughput_children
    with Jobctl(db) as jc:
        parent = jc.create("throughput")
        kids = jc.spawn(parent, count=n)
    proc, reader = start_reader([JOBCTL, "--db", db, "watch", parent, "--json"])
    batch = 500
    with Jobctl(db) as jc:
        t0 = time.perf_counter()
        for status in ("running", "completed"):
            for i in range(0, n, batch):
                jc.set_status(kids[i : i + batch], status)
        t_written = time.perf_counter()
    proc.wait(timeout=600)
    reader.join(timeout=60)
    events = sum(1 for _, line in reader.lines if '"type": "event"' in line)
    t_last = reader.lines[-1][0]
    # What watch itself can process, with no writer to wait for: the same history replayed.
    t = time.perf_counter()
    subprocess.run(
        [JOBCTL, "--db", db, "watch", parent, "--json", "--from-start"], stdout=subprocess.DEVNULL, check=True
    )
    replay = time.perf_counter() - t
    return {
        "metric": "events/s",
        "children": n,
        "events": events,
        "jobctl": events / (t_last - t0),
        "baseline": events / (t_written - t0),
        "ratio": (t_written - t0) / (t_last - t0),
        "lag_after_last_commit_s": t_last - t_written,
        "replay_events_per_s": (events + n + 1) / replay,
        "bar": "≥ 5,000 events/s",
        "met": events / (t_last - t0) >= 5000,
    }


# ------------------------------------------------------------------ serve
def serve_cmd(db, port):
    return [JOBCTL, "--db", str(db), "serve", "--port", str(port)]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(port, path):
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class SseClients(threading.Thread):
    """`n` clients of /api/stream on raw sockets, all read by this one thread
    (one selector), which stamps with perf_counter() when each client first
    receives a message of each event id."""

    def __init__(self, port, n):
        import selectors
        import socket

        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        self.seen: list[dict[int, float]] = [{} for _ in range(n)]
        self.started = [False] * n
        self.stop_flag = False
        self.socks = []
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            s.setblocking(False)
            self.selector.register(s, selectors.EVENT_READ, (i, bytearray()))
            self.socks.append(s)

    def run(self):
        import re

        event_id = re.compile(rb'"event_id":(\d+)')
        while not self.stop_flag:
            for key, _ in self.selector.select(timeout=0.1):
                t = time.perf_counter()
                i, buf = key.data
                chunk = key.fileobj.recv(65536)
                if not chunk:
                    self.selector.unregister(key.fileobj)
                    continue
                buf += chunk
                end = buf.rfind(b"\n\n")
                if end < 0:
                    continue
                complete = bytes(buf[:end])
                del buf[: end + 2]
                self.started[i] = self.started[i] or b"\nid: " in complete or complete.startswith(b"id: ")
                for m in event_id.finditer(complete):
                    self.seen[i].setdefault(int(m.group(1)), t)

    def close(self):
        self.stop_flag = True
        self.join(timeout=5)
        for s in self.socks:
            s.close()


@benchmark
def serve_latency(args, tmp):
    """serve: commit → message received by a client of /api/stream, p50/p99 at ~20
    commits/s, with 1 and with 50 clients connected, against `jobctl watch --json`
    following the same commits in the same run."""
    from jobctl import Jobctl

    db = str(tmp / "serve.db")
    n_events = args.latency_events
    with Jobctl(db) as jc:
        parent = jc.create("latency")
        kids = jc.spawn(parent, count=2 * n_events + 2)
    port = _free_port()
    server = subprocess.Popen(serve_cmd(db, port), stderr=subprocess.DEVNULL)
    out = {"metric": "commit→message latency (ms)"}
    try:
        deadline = time.time() + 30
        while not _http_ok(port, "/api/health"):
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError("jobctl serve did not start")
            time.sleep(0.05)
        watch_all = []
        for n, chunk in ((1, kids[:n_events]), (50, kids[n_events : 2 * n_events])):
            clients = SseClients(port, n)
            clients.start()
            watch, reader = start_reader([JOBCTL, "--db", db, "watch", parent, "--json"])
            deadline = time.time() + 30
            while not all(clients.started) and time.time() < deadline:
                time.sleep(0.01)
            commits = {}
            with Jobctl(db) as jc:
                time.sleep(0.3)
                for kid in chunk:
                    t_next = time.perf_counter() + 1 / args.rate
                    jc.set_status([kid], "running")
                    committed = time.perf_counter()
                    commits[jc.last_event_id()] = committed
                    time.sleep(max(0.0, t_next - time.perf_counter()))
            last = max(commits)
            deadline = time.time() + 30
            while time.time() < deadline and not (
                all(last in s for s in clients.seen) and any(f'"id": {last},' in line for _, line in reader.lines)
            ):
                time.sleep(0.05)
            clients.close()
            stop(watch)
            missing = sum(e not in s for s in clients.seen for e in commits)
            if missing:
                raise RuntimeError(f"{missing} (client, commit) messages never arrived")
            ours = [(s[e] - t) * 1000 for s in clients.seen for e, t in commits.items()]
            watched = {}
            for t, line in reader.lines[1:]:
                data = json.loads(line)
                if data.get("type") == "event":
                    watched.setdefault(data["event"]["id"], t)
            watch_all += [(watched[e] - t) * 1000 for e, t in commits.items() if e in watched]
            out[f"serve_{n}_p50"], out[f"serve_{n}_p99"] = percentile(ours, 50), percentile(ours, 99)
            out[f"serve_{n}_samples"] = len(ours)
    finally:
        stop(server)
    out["watch_p50"], out["watch_p99"] = percentile(watch_all, 50), percentile(watch_all, 99)
    worst = max(out["serve_1_p99"], out["serve_50_p99"])
    out.update(
        {
            "ratio_p99": worst / out["watch_p99"],
            "events": 2 * n_events,
            "bar": "p99 ≤ 25 ms (1 and 50 clients)",
            "met": worst <= 25,
        }
    )
    return out


def _cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@benchmark
def watch_idle(args, tmp):
    """watch: CPU use while nothing happens, against the 10 ms data_version loop."""
    from jobctl import Jobctl

    db = str(tmp / "idle.db")
    with Jobctl(db) as jc:
        job = jc.create("idle")
    out = {}
    for name, cmd in (
        ("jobctl", [JOBCTL, "--db", db, "watch", job, "--json"]),
        ("baseline", [sys.executable, str(HERE / "floor_watch.py"), db]),
    ):
        proc, _ = start_reader(cmd)
        time.sleep(0.5)
        c0 = _cpu_seconds(proc.pid)
        time.sleep(args.idle_seconds)
        out[name] = 100 * (_cpu_seconds(proc.pid) - c0) / args.idle_seconds
        stop(proc)
    return {"metric": "CPU % while idle", **out, "seconds": args.idle_seconds}


# ------------------------------------------------------- writes and reads
def _template(tmp, name, children):
    """A database with one parent and `children` pending children, checkpointed."""
    import sqlite3

    from jobctl import Jobctl

    db = tmp / f"{name}.db"
    with Jobctl(db) as jc:
        parent = jc.create(name, id="p")
        kids = jc.spawn(parent, count=children) if children else []
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db, parent, kids


def _fresh(template, tmp, i):
    import shutil

    db = tmp / f"run{i}.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(template, db)
    return db


def _timed(cmd, stdin=None):
    started = time.perf_counter()
    subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, check=True, text=True)
    return time.perf_counter() - started


def _ratio_result(metric, ours, base, bar, limit, **extra):
    mo, mb = statistics.median(ours), statistics.median(base)
    return {
        "metric": metric,
        "jobctl_median_ms": mo * 1000,
        "baseline_median_ms": mb * 1000,
        "ratio": mo / mb,
        "runs": len(ours),
        "bar": bar,
        "met": mo / mb <= limit,
        **extra,
    }


@benchmark
def status_set_call(args, tmp):
    """`jobctl status set JOB running`, one process per call, against a bare sqlite3
    script doing the same UPDATE + INSERT event in BEGIN IMMEDIATE."""
    runs = args.calls
    db, parent, kids = _template(tmp, "calls", 2 * runs)
    ours, base = [], []
    for i in range(runs):
        ours.append(_timed([JOBCTL, "--db", str(db), "status", "set", kids[2 * i], "running"]))
        base.append(_timed([sys.executable, str(HERE / "baselines.py"), "status-set", str(db), kids[2 * i + 1]]))
    return _ratio_result("wall time per call", ours, base, "ratio ≤ 4 (ultimately ≤ 2)", 4)


@benchmark
def status_set_stdin(args, tmp):
    """`jobctl status set --stdin running` with many ids in one transaction, against a
    raw sqlite3 loop doing the same writes."""
    template, parent, kids = _template(tmp, "batch", args.batch_ids)
    ids = "\n".join(kids) + "\n"
    ours, base = [], []
    for i in range(args.rounds * 3):
        db = _fresh(template, tmp, i)
        ours.append(_timed([JOBCTL, "--db", str(db), "status", "set", "--stdin", "running"], ids))
        db = _fresh(template, tmp, i)
        base.append(_timed([sys.executable, str(HERE / "baselines.py"), "batch", str(db)], ids))
    return _ratio_result("wall time", ours, base, "ratio ≤ 2", 2, ids=args.batch_ids)


@benchmark
def spawn(args, tmp):
    """`jobctl spawn PARENT --count N` (rows and events) against raw executemany of the same rows."""
    template, parent, _ = _template(tmp, "spawn", 0)
    ours, base = [], []
    for i in range(args.rounds * 3):
        db = _fresh(template, tmp, i)
        ours.append(_timed([JOBCTL, "--db", str(db), "spawn", parent, "--count", str(args.spawn_children)]))
        db = _fresh(template, tmp, i)
        base.append(
            _timed([sys.executable, str(HERE / "baselines.py"), "spawn", str(db), parent, str(args.spawn_children)])
        )
    return _ratio_result("wall time", ours, base, "ratio ≤ 2", 2, children=args.spawn_children)


def _million(args, tmp):
    from jobctl import Jobctl

    db = tmp / "million.db"
    with Jobctl(db) as jc:
        parent = jc.create("million", id="m")
        left = args.progress_children
        while left:
            jc.spawn(parent, count=min(left, 250_000))
            left -= min(left, 250_000)
        kids_for_rss = [f"{parent}.{i}" for i in range(1, 1001)]
    return db, parent, kids_for_rss


@benchmark
def progress_million(args, tmp):
    """`progress` of a parent with a million children: the kept counts (one row) against
    the GROUP BY count over the children with the (parent_id, status) index; then watch's
    peak RSS on that parent while 1,000 events go by."""
    from jobctl import Jobctl

    db, parent, kids = _million(args, tmp)
    ours, base = [], []
    with Jobctl(db) as jc:
        conn = jc._store.conn
        for _ in range(args.rounds * 10):
            t = time.perf_counter()
            jc.progress(parent)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            conn.execute("SELECT status, count(*) FROM jobs WHERE parent_id = ? GROUP BY status", (parent,)).fetchall()
            base.append(time.perf_counter() - t)
    cli = statistics.median(_timed([JOBCTL, "--db", str(db), "progress", parent, "--json"]) for _ in range(5))
    proc, reader = start_reader([JOBCTL, "--db", str(db), "watch", parent, "--json"])
    with Jobctl(db) as jc:
        for k in kids:
            jc.set_status([k], "running")
    deadline = time.time() + 60
    while sum('"type": "event"' in line for _, line in reader.lines) < len(kids) and time.time() < deadline:
        time.sleep(0.05)
    rss_mb = (
        next(
            int(line.split()[1])
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM")
        )
        / 1024
    )
    stop(proc)
    mo, mb = statistics.median(ours), statistics.median(base)
    return {
        "metric": "query time (ms)",
        "children": args.progress_children,
        "jobctl_median_ms": mo * 1000,
        "baseline_median_ms": mb * 1000,
        "ratio": mo / mb,
        "cli_progress_json_ms": cli * 1000,
        "watch_peak_rss_mb": rss_mb,
        "bar": "≤ 5 ms query; watch RSS ≤ 100 MB",
        "met": mo * 1000 <= 5 and rss_mb <= 100,
    }


@benchmark
def concurrent_writers(args, tmp):
    """8 processes writing status changes at once through the Python API, commits/s,
    against raw sqlite3 processes with the same pattern (SELECT, UPDATE, INSERT event,
    UPDATE counts, one transaction each)."""
    template, parent, kids = _template(tmp, "writers", 8 * 10)
    n = args.writer_commits

    def one(script):
        db = _fresh(template, tmp, script.stem)
        start = time.time() + 1.0
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), str(db), str(start), str(n), ",".join(kids[w::8])],
                stdout=subprocess.PIPE,
                text=True,
            )
            for w in range(8)
        ]
        ends = [float(p.communicate(timeout=600)[0].split()[-1]) for p in procs]
        return 8 * n / (max(ends) - start)

    ours, base = [], []
    for i in range(2 * args.rounds + 1):  # an odd number of pairs: the median is one of them
        if i % 2:  # who goes first alternates, so neither always has the warmer machine
            base.append(one(HERE / "baseline_writer.py"))
            ours.append(one(HERE / "api_writer.py"))
        else:
            ours.append(one(HERE / "api_writer.py"))
            base.append(one(HERE / "baseline_writer.py"))
    # each round's pair ran back to back: the median of their ratios is steadier
    # than the ratio of medians when the machine's speed drifts between rounds
    ratios = sorted(o / b for o, b in zip(ours, base))
    ratio = statistics.median(ratios)
    return {
        "metric": "commits/s",
        "writers": 8,
        "commits_each": n,
        "jobctl": statistics.median(ours),
        "baseline": statistics.median(base),
        "ratio": ratio,
        "ratios": [round(x, 3) for x in ratios],
        "bar": "ratio ≥ 0.7",
        "met": ratio >= 0.7,
    }


# ------------------------------------------------------------- PostgreSQL
PG_BENCHMARKS: set = set()


def pg_benchmark(fn):
    """A benchmark that needs the PostgreSQL server (PG.server)."""
    PG_BENCHMARKS.add(fn.__name__)
    return benchmark(fn)


class PgBench:
    """The one PostgreSQL server of a bench run: tests/throwaway_pg.py's
    throwaway server (initdb'd under /tmp, fsync and synchronous_commit off),
    or an existing one (--pg-url). `skip` says why there is none."""

    def __init__(self):
        self.server = None
        self.skip: str | None = None
        self.count = 0

    def start(self, url=None):
        sys.path.insert(0, str(HERE.parent / "tests"))
        try:
            import throwaway_pg
        except ImportError as exc:  # pytest (imported there) or psycopg2 missing
            self.skip = f"cannot load tests/throwaway_pg.py: {exc}"
            return
        finally:
            sys.path.pop(0)
        if url is None:
            ok, why = throwaway_pg.is_available()
            if not ok:
                self.skip = why.replace("set JOBCTL_TEST_PG_URL", "pass --pg-url URL")
                return
        server = throwaway_pg.PgServer(url=url)
        try:
            server.start()
            server.connect().close()
        except Exception as exc:  # noqa: BLE001 - any reason, said in the report
            server.stop()
            self.skip = f"could not start/reach PostgreSQL: {str(exc).strip().splitlines()[0]}"
            return
        self.server = server

    def stop(self):
        if self.server is not None:
            self.server.stop()  # only a throwaway server is stopped; an --pg-url one is left alone
            self.server = None

    def info(self):
        if self.server is None:
            return {"skipped": self.skip}
        with self.server.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'server_version')"
            )
            settings = dict(cur.fetchall())
        conn.close()
        return {"throwaway": self.server.managed, **settings}

    def database(self, stem, template=None):
        """A new database (a copy of `template`'s when given): (name, url)."""
        from psycopg2 import errors, sql

        self.count += 1
        name = f"bench_{stem}_{self.count}"
        conn = self.server.connect()
        try:
            with conn.cursor() as cur:
                query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if template:
                    query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
                for attempt in range(50):  # an autovacuum worker may be visiting the template
                    try:
                        cur.execute(query)
                        break
                    except errors.ObjectInUse:
                        if attempt == 49:
                            raise
                        time.sleep(0.1)
        finally:
            conn.close()
        return name, self.server.database_url(name)

    def drop(self, name):
        self.server.drop_database(name)

    def psql(self, name, sql_text):
        conn = self.server.connect(name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql_text)
        finally:
            conn.close()


PG = PgBench()
PG_BASELINES = str(HERE / "pg_baselines.py")


def _pg_template(stem, children):
    """A database with one parent `p` and `children` pending children: (name, url, parent, kids)."""
    from jobctl import Jobctl

    name, url = PG.database(stem)
    with Jobctl(url) as jc:
        parent = jc.create(stem, id="p")
        kids = jc.spawn(parent, count=children) if children else []
    PG.psql(name, "VACUUM ANALYZE")
    return name, url, parent, kids


@pg_benchmark
def pg_status_set_call(args, tmp):
    """`jobctl --db URL status set JOB running`, one process per call, against a bare
    script doing BEGIN; SELECT job; UPDATE jobctl.jobs; INSERT the event (id = max + 1);
    COMMIT, once with psycopg2 and once with psycopg 3; the faster is the baseline."""
    runs = args.calls
    name, url, parent, kids = _pg_template("calls", 3 * runs)
    ours, pg2, pg3 = [], [], []
    # psycopg 3 is not a dependency (jobctl uses psycopg2); compared when installed
    have_psycopg3 = importlib.util.find_spec("psycopg") is not None
    try:
        for i in range(runs):
            ours.append(_timed([JOBCTL, "--db", url, "status", "set", kids[3 * i], "running"]))
            pg2.append(_timed([sys.executable, PG_BASELINES, "status-set", "psycopg2", url, kids[3 * i + 1]]))
            if have_psycopg3:
                pg3.append(_timed([sys.executable, PG_BASELINES, "status-set", "psycopg", url, kids[3 * i + 2]]))
    finally:
        PG.drop(name)
    m2, m3 = statistics.median(pg2), statistics.median(pg3) if pg3 else float("inf")
    base, driver = (pg2, "psycopg2") if m2 <= m3 else (pg3, "psycopg")
    return _ratio_result(
        "wall time per call",
        ours,
        base,
        "ratio ≤ 1.5",
        1.5,
        baseline_driver=driver,
        psycopg2_median_ms=m2 * 1000,
        psycopg3_median_ms=m3 * 1000,
    )


@pg_benchmark
def pg_concurrent_writers(args, tmp):
    """8 processes writing status changes at once through the Python API (bench/api_writer.py
    with the URL), commits/s, against raw psycopg2 processes with the same pattern
    (advisory lock at BEGIN, SELECT, UPDATE, INSERT event with id = max + 1, UPDATE counts,
    one transaction each)."""
    template, _, parent, kids = _pg_template("writers", 8 * 10)
    n = max(1, args.writer_commits // 4)  # ~1,000 commits/s here: a run of ~4 s, as SQLite's

    def one(cmd):
        name, url = PG.database("writers", template)
        try:
            start = time.time() + 2.0  # eight interpreters importing a driver on a small machine
            procs = [
                subprocess.Popen(
                    [*cmd, url, str(start), str(n), ",".join(kids[w::8])], stdout=subprocess.PIPE, text=True
                )
                for w in range(8)
            ]
            ends = [float(p.communicate(timeout=600)[0].split()[-1]) for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError(f"a writer failed: {cmd}")
            return 8 * n / (max(ends) - start)
        finally:
            PG.drop(name)

    ours, base = [], []
    try:
        for _ in range(args.rounds):
            ours.append(one([sys.executable, str(HERE / "api_writer.py")]))
            base.append(one([sys.executable, PG_BASELINES, "writer"]))
    finally:
        PG.drop(template)
    mo, mb = statistics.median(ours), statistics.median(base)
    return {
        "metric": "commits/s",
        "writers": 8,
        "commits_each": n,
        "jobctl": mo,
        "baseline": mb,
        "ratio": mo / mb,
        "bar": "ratio ≥ 0.5",
        "met": mo / mb >= 0.5,
    }


def _distance_cell(mode, url, writers, seconds, jobs_of):
    """`writers` processes of bench/pg_distance_writer.py on `url`, started together:
    changes committed per second, all writers together."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "pg_distance_writer.py"), mode, url, str(seconds), ",".join(jobs_of(w))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    try:
        for p in procs:  # every interpreter started, connected and read its jobs
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a {mode} writer did not start")
        start = time.time() + 0.2
        for p in procs:
            p.stdin.write(f"{start}\n")
            p.stdin.flush()
        done = [int(p.communicate(timeout=600)[0].split()[-1]) for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a {mode} writer failed")
        return sum(done) / seconds
    finally:
        for p in procs:
            stop(p)


@pg_benchmark
def pg_distance(args, tmp):
    """PostgreSQL writes at a distance: 1, 8 and 32 writer processes (status
    changes through the Python API, one per transaction) at RTT 0 (loopback), 2
    and 10 ms (bench/tcp_proxy.py delaying each direction by RTT/2), in two
    shapes: `own` (each writer toggles the children of a parent of its own) and
    `fanin` (all writers toggle children of one shared parent, whose counts row
    each change updates). Reported per cell: changes/s; `vs_network`, against the
    network's limit for the shape, writers / (round trips per change x RTT), with
    jobctl's 2 round trips (read, then the COMMIT batch); `vs_raw`, against raw
    psycopg2 transactions of the same statements without the global lock (event
    ids from a sequence), run in the same cell. Bars (issue 19): 32 writers >= 1
    writer at every RTT and shape; 32 writers >= 800/s at RTT 10 ms, >= 1,000/s
    at 2 ms and on loopback."""
    import importlib.util as iu

    spec = iu.spec_from_file_location("tcp_proxy", HERE / "tcp_proxy.py")
    tcp_proxy = iu.module_from_spec(spec)
    spec.loader.exec_module(tcp_proxy)
    from jobctl import Jobctl

    writers_list = [int(x) for x in args.distance_writers.split(",")]
    rtts = [float(x) for x in args.distance_rtts.split(",")]
    most = max(writers_list)
    name, url = PG.database("distance")
    with Jobctl(url) as jc:
        own = [jc.create(f"own {w}", id=f"own{w}") for w in range(most)]
        own_kids = [jc.spawn(p, count=4) for p in own]
        fanin = jc.create("fan-in", id="fanin")
        fanin_kids = jc.spawn(fanin, count=4 * most)
    PG.psql(
        name,
        "CREATE TABLE jobctl.raw_events (LIKE jobctl.events INCLUDING DEFAULTS);"
        " CREATE SEQUENCE jobctl.raw_ids OWNED BY jobctl.raw_events.id;"
        " ALTER TABLE jobctl.raw_events ALTER id SET DEFAULT nextval('jobctl.raw_ids'),"
        " ADD PRIMARY KEY (id)",
    )
    PG.psql(name, "VACUUM ANALYZE")
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    cells, result = [], {"metric": "changes/s", "seconds_per_cell": args.distance_seconds}
    try:
        for rtt in rtts:
            proxy = tcp_proxy.Proxy(host, port, delay=rtt / 2000).start() if rtt else None
            cell_url = url.replace(f":{port}/", f":{proxy.port}/") if proxy else url
            try:
                for shape in ("own", "fanin"):
                    for writers in writers_list:

                        def jobs_of(w, shape=shape, writers=writers):
                            return own_kids[w] if shape == "own" else fanin_kids[w::writers]

                        ours = _distance_cell("jobctl", cell_url, writers, args.distance_seconds, jobs_of)
                        raw = _distance_cell("raw", cell_url, writers, args.distance_seconds, jobs_of)
                        limit = writers / (2 * rtt / 1000) if rtt else None
                        cell = {
                            "rtt_ms": rtt,
                            "shape": shape,
                            "writers": writers,
                            "jobctl": round(ours, 1),
                            "raw": round(raw, 1),
                            "vs_raw": round(ours / raw, 3),
                            "vs_network": round(ours / limit, 3) if limit else None,
                        }
                        cells.append(cell)
                        print(
                            f"  pg_distance rtt={rtt:g}ms {shape:5} writers={writers:2}: jobctl {ours:7.1f}/s,"
                            f" raw {raw:7.1f}/s ({ours / raw:.2f}), vs network limit "
                            + (f"{ours / limit:.2f}" if limit else "-"),
                            flush=True,
                        )
            finally:
                if proxy:
                    proxy.close()
    finally:
        PG.drop(name)

    def at(rtt, shape, writers):
        return next(c["jobctl"] for c in cells if (c["rtt_ms"], c["shape"], c["writers"]) == (rtt, shape, writers))

    grows = all(at(r, s, most) >= at(r, s, min(writers_list)) for r in rtts for s in ("own", "fanin"))
    floors = {0.0: 1000, 2.0: 1000, 10.0: 800}
    fast = all(at(r, "own", most) >= floors[r] for r in rtts if r in floors) if most >= 32 else None
    result.update(
        cells=cells,
        grows_with_writers=grows,
        fast_enough=fast,
        bar="32 writers ≥ 1 writer (every RTT, both shapes); 32 writers, own parents:"
        " ≥ 1,000/s at RTT 0 and 2 ms, ≥ 800/s at 10 ms",
        met=grows and fast is not False,
    )
    return result


@pg_benchmark
def pg_distance_run(args, tmp):
    """`jobctl run` at a distance: N `jobctl run KID --heartbeat 1` processes through
    bench/tcp_proxy.py at RTT 10 ms (in a process of its own: proxy_process), each
    command printing 20 lines/s for S seconds, and a `watch --json` of their
    parent through the proxy too. Reports whether
    every line was stored, the most jobs found stale at --stale-after 3s (sampled
    every half second), and the watch's latency from commit to line printed, for
    a probe child toggled ~10 times a second over loopback (its commit times are
    known; the watch is through the proxy): p50 and p99 from the first change after
    every run is running (`start_seconds` after the start: N interpreters starting
    at once saturate a small machine, which is not the watch's latency), and the
    p99 over every change including that start. Issue 19's bar: 32 processes, 30 s:
    every line stored, none stale, watch p99 ≤ 50 ms."""
    from urllib.parse import urlsplit

    from jobctl import Jobctl

    n, seconds, rtt = args.run_processes, args.run_seconds, 10.0
    name, url = PG.database("distance_run")
    with Jobctl(url) as jc:
        parent = jc.create("runs")
        kids = jc.spawn(parent, count=n)
        probe = jc.spawn(parent, names=["probe"])[0]  # toggled from here: commit times known
    host, port = urlsplit(url).hostname, urlsplit(url).port
    script = (
        f"import time\nt = time.time()\nfor i in range({int(seconds * 20)}):\n"
        "    print('line', i, flush=True)\n    time.sleep(max(0.0, t + (i + 1) / 20 - time.time()))\n"
    )
    stale_seen, stop_sampling = [0], threading.Event()
    watcher = None
    try:
        with proxy_process(host, port, delay=rtt / 2000) as proxy_port:
            far = url.replace(f":{port}/", f":{proxy_port}/")
            watcher, reader = start_reader([JOBCTL, "--db", far, "watch", parent, "--json", "--timeout", "600"])

            commits, steady_from = [], [None]

            def sample():  # on loopback: the stale count, and the probe's changes at ~10/s
                with Jobctl(url) as jc:
                    k = 0
                    while not stop_sampling.wait(0.1):
                        jc.set_status([probe], "pending" if k % 2 else "running", force=True)
                        commits.append(time.time())
                        if steady_from[0] is None:  # every run running (the probe is, after an even k)
                            if jc.progress(parent)["running_children"] - (k % 2 == 0) >= n:
                                steady_from[0] = len(commits)
                        k += 1
                        if k % 5 == 0:
                            stale_seen[0] = max(stale_seen[0], len(jc.stale_children(parent, 3.0)))
                    jc.set_status([probe], "completed", force=True)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            runs = [
                subprocess.Popen(
                    [JOBCTL, "--db", far, "run", kid, "--heartbeat", "1", "--", sys.executable, "-c", script],
                    stdout=subprocess.DEVNULL,
                )
                for kid in kids
            ]
            codes = [p.wait(timeout=seconds * 10 + 120) for p in runs]
            stop_sampling.set()
            sampler.join(10)
            watcher.wait(timeout=120)
            reader.join(timeout=30)
    finally:
        if watcher is not None:
            stop(watcher)
    to_wall = time.time() - time.perf_counter()
    printed = {}
    for t, line in reader.lines[1:]:
        event = json.loads(line).get("event")
        if event:
            printed.setdefault(event["id"], t + to_wall)
    with Jobctl(url) as jc:
        stored = [sum(1 for e in jc.events(job=k) if e["kind"] == "log") for k in kids]
        probe_ids = [e["id"] for e in jc.events(job=probe) if e["kind"] == "status"][: len(commits)]
    # (k, latency) of each probe change the watch printed: k numbers the commits
    timed = [(k, (printed[i] - c) * 1000) for k, (i, c) in enumerate(zip(probe_ids, commits)) if i in printed]
    latencies = [ms for _, ms in timed]
    PG.drop(name)
    want = int(seconds * 20)
    # the bar is the watch's while the runs print: from the first change after every run
    # was running; before it, N interpreters starting on the machine's cores (reported too)
    first = steady_from[0]
    steady = [ms for k, ms in timed if k >= first] if first is not None else []
    p99 = percentile(steady, 99) if steady else float("inf")
    met = (
        all(c == 0 for c in codes)
        and all(x == want for x in stored)
        and stale_seen[0] == 0
        and p99 <= 50
        and len(latencies) == len(commits)
    )
    return {
        "metric": "run at RTT 10 ms",
        "processes": n,
        "run_seconds": seconds,
        "exit_codes_ok": all(c == 0 for c in codes),
        "lines_stored_min": min(stored),
        "lines_wanted": want,
        "most_stale_at_3s": stale_seen[0],
        "watch_p50_ms": percentile(steady, 50) if steady else None,
        "watch_p99_ms": p99,
        "watch_p99_with_start_ms": percentile(latencies, 99),
        "start_seconds": round(commits[min(first, len(commits) - 1)] - commits[0], 1) if first is not None else None,
        "probe_changes": len(commits),
        "probe_changes_printed": len(latencies),
        "bar": "32 processes, 30 s: every line stored, none stale at 3 s, watch p99 ≤ 50 ms",
        "met": met,
    }


@pg_benchmark
def pg_spawn(args, tmp):
    """`jobctl --db URL spawn PARENT --count N` against one psycopg2 transaction that
    COPYs the same N job rows and N event rows (ids max + 1 ...) and upserts the counts."""
    template, _, parent, _ = _pg_template("spawn", 0)
    n = args.spawn_children
    ours, base = [], []

    def fresh_timed(cmd):
        name, url = PG.database("spawn", template)
        try:
            return _timed([c.replace("{URL}", url) for c in cmd])
        finally:
            PG.drop(name)

    try:
        for _ in range(args.rounds * 3):
            ours.append(fresh_timed([JOBCTL, "--db", "{URL}", "spawn", parent, "--count", str(n)]))
            base.append(fresh_timed([sys.executable, PG_BASELINES, "spawn", "{URL}", parent, str(n)]))
    finally:
        PG.drop(template)
    return _ratio_result("wall time", ours, base, "ratio ≤ 2", 2, children=n, baseline_method="COPY (text)")


@pg_benchmark
def pg_watch_latency(args, tmp):
    """`jobctl --db URL watch PARENT --json`: commit → line printed, p50/p99 at ~20
    commits/s, against a bare psycopg2 LISTEN loop that prints max(event id) after
    each notification."""
    from jobctl import Jobctl

    name, url = PG.database("latency")
    try:
        with Jobctl(url) as jc:
            parent = jc.create("latency")
            kids = jc.spawn(parent, count=args.latency_events + 1)
        rounds = args.rounds
        per = args.latency_events // rounds
        ours, floor = [], []
        for r in range(rounds):
            chunk = kids[r * per : (r + 1) * per]
            half = len(chunk) // 2
            ours += _latency_run(
                url, parent, chunk[:half], [JOBCTL, "--db", url, "watch", parent, "--json"], False, args.rate
            )
            floor += _latency_run(
                url, parent, chunk[half:], [sys.executable, PG_BASELINES, "listen", url], True, args.rate
            )
    finally:
        PG.drop(name)
    return latency_result(ours, floor, 10)


@pg_benchmark
def pg_progress_million(args, tmp):
    """Jobctl(url).progress(parent) with a million children (the kept counts: one
    row) against the GROUP BY count over the children on the same connection
    (index on (parent_id, status, seq), after VACUUM ANALYZE); then the CLI's
    `progress --json` and watch's peak RSS while 1,000 events go by."""
    from jobctl import Jobctl

    name, url = PG.database("million")
    try:
        t0 = time.perf_counter()
        with Jobctl(url) as jc:
            parent = jc.create("million", id="m")
            left = args.progress_children
            while left:
                jc.spawn(parent, count=min(left, 250_000))
                left -= min(left, 250_000)
        PG.psql(name, "VACUUM ANALYZE")
        build = time.perf_counter() - t0
        kids = [f"{parent}.{i}" for i in range(1, min(1000, args.progress_children) + 1)]
        ours, base = [], []
        with Jobctl(url) as jc:
            cur = jc._store.conn.cursor()
            for _ in range(args.rounds * 10):
                t = time.perf_counter()
                jc.progress(parent)
                ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                cur.execute("SELECT status, count(*) FROM jobctl.jobs WHERE parent_id = %s GROUP BY status", (parent,))
                cur.fetchall()
                base.append(time.perf_counter() - t)
        cli = statistics.median(_timed([JOBCTL, "--db", url, "progress", parent, "--json"]) for _ in range(5))
        proc, reader = start_reader([JOBCTL, "--db", url, "watch", parent, "--json"])
        with Jobctl(url) as jc:
            for k in kids:
                jc.set_status([k], "running")
        deadline = time.time() + 60
        while sum('"type": "event"' in line for _, line in reader.lines) < len(kids) and time.time() < deadline:
            time.sleep(0.05)
        rss_mb = (
            next(
                int(line.split()[1])
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                if line.startswith("VmHWM")
            )
            / 1024
        )
        stop(proc)
    finally:
        PG.drop(name)
    mo, mb = statistics.median(ours), statistics.median(base)
    return {
        "metric": "query time (ms)",
        "children": args.progress_children,
        "jobctl_median_ms": mo * 1000,
        "baseline_median_ms": mb * 1000,
        "ratio": mo / mb,
        "cli_progress_json_ms": cli * 1000,
        "watch_peak_rss_mb": rss_mb,
        "build_s": round(build, 1),
        "bar": "≤ 5 ms query",
        "met": mo * 1000 <= 5,
    }


# The scale, worker-command and run benchmarks (bench/more.py).
sys.path.insert(0, str(HERE))
from more import BENCHMARKS_MORE  # noqa: E402

BENCHMARKS.update(BENCHMARKS_MORE)


# ------------------------------------------------------------------- main
def machine():
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of jobctl and baseline")
    parser.add_argument("--latency-events", type=int, default=500)
    parser.add_argument("--rate", type=float, default=20.0, help="commits per second for the latency run")
    parser.add_argument("--throughput-children", type=int, default=100_000)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=30, help="status set calls per side")
    parser.add_argument("--batch-ids", type=int, default=10_000)
    parser.add_argument("--spawn-children", type=int, default=100_000)
    parser.add_argument("--progress-children", type=int, default=1_000_000)
    parser.add_argument("--writer-commits", type=int, default=2000, help="per writer (each run ~2 s)")
    parser.add_argument("--distance-writers", default="1,8,32", help="pg_distance: writer processes per cell")
    parser.add_argument("--distance-rtts", default="0,2,10", help="pg_distance: round-trip times (ms)")
    parser.add_argument("--distance-seconds", type=float, default=2.0, help="pg_distance: seconds per cell")
    parser.add_argument(
        "--run-processes", type=int, default=8, help="pg_distance_run: jobctl run processes (the issue's bar: 32)"
    )
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=5.0,
        help="pg_distance_run: seconds each command prints 20 lines/s (the issue's bar: 30)",
    )
    parser.add_argument(
        "--pg-url",
        help="run the pg_* benchmarks on this PostgreSQL server instead of a"
        " throwaway one (postgresql://user@host:port/db; the user needs CREATEDB)",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.rounds, args.latency_events, args.rate = 1, 10, 50.0
        args.throughput_children, args.idle_seconds = 200, 0.5
        args.calls, args.batch_ids, args.spawn_children = 3, 200, 1000
        args.progress_children, args.writer_commits = 2000, 20
        args.distance_writers, args.distance_rtts, args.distance_seconds = "1,2", "0,2", 0.3
        args.run_processes, args.run_seconds = 2, 1.0
    # Measure what users run: bytecode cached. (Some shells export PYTHONDONTWRITEBYTECODE,
    # which would make every jobctl process compile its modules again.)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import compileall

    import jobctl

    compileall.compile_dir(str(Path(jobctl.__file__).parent), quiet=1)
    results = {"machine": machine(), "args": vars(args), "benchmarks": {}}
    selected = list(dict.fromkeys(args.only or BENCHMARKS))
    try:
        if PG_BENCHMARKS & set(selected):  # one server for every pg_* benchmark of this run
            import signal

            # SIGTERM (a CI timeout, `kill`) unwinds through the finally below, which stops the server
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
            started = time.perf_counter()
            PG.start(args.pg_url)
            results["postgresql"] = {**PG.info(), "start_s": round(time.perf_counter() - started, 1)}
            if PG.skip:
                print(f"PostgreSQL benchmarks skipped: {PG.skip}", file=sys.stderr, flush=True)
        for name in selected:
            if name in PG_BENCHMARKS and PG.server is None:
                result = {"skipped": PG.skip}
            else:
                with tempfile.TemporaryDirectory(prefix=f"jobctl-bench-{name}-") as tmp:
                    started = time.perf_counter()
                    result = BENCHMARKS[name](args, Path(tmp))
                    result["seconds"] = round(time.perf_counter() - started, 1)
            results["benchmarks"][name] = result
            print(
                f"{name}: "
                + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()),
                flush=True,
            )
    finally:
        PG.stop()  # even when a benchmark failed or the run was interrupted
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
