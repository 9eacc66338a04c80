#!/usr/bin/env python3
"""jobctl's benchmark harness: each benchmark measures jobctl and its baseline
in the same run, alternating them, and reports medians and the ratio.
Absolute times on a shared machine are noise; the ratios are what we track.

    python3 dev.py bench                 # every benchmark, default sizes
    python3 dev.py bench --only watch_latency --latency-events 500
    python3 dev.py bench --tiny          # the smoke test's sizes

Results go to stdout as a table and to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1,
                            env=dict(os.environ, **(env or {})))
    reader = LineReader(proc)
    reader.start()
    if not reader.ready.wait(30):
        proc.kill()
        raise RuntimeError(f"{cmd} printed nothing")
    return proc, reader


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
    with Jobctl(db) as jc:
        time.sleep(0.3)
        for kid in kids:
            t_next = time.perf_counter() + 1 / rate
            jc.set_status([kid], "running")
            commits[jc.store.last_event_id()] = time.perf_counter()
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
        chunk = kids[r * per:(r + 1) * per]
        half = len(chunk) // 2
        ours += _latency_run(db, parent, chunk[:half], [JOBCTL, "--db", db, "watch", parent, "--json"], False,
                             args.rate)
        floor += _latency_run(db, parent, chunk[half:], [sys.executable, str(HERE / "floor_watch.py"), db], True,
                              args.rate)
    p99, f99 = percentile(ours, 99), percentile(floor, 99)
    return {"metric": "commit→print latency (ms)", "jobctl_p50": percentile(ours, 50), "jobctl_p99": p99,
            "baseline_p50": percentile(floor, 50), "baseline_p99": f99, "ratio_p99": p99 / f99,
            "events": len(ours) + len(floor), "bar": "p99 ≤ 25 ms", "met": p99 <= 25}


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
                jc.set_status(kids[i:i + batch], status)
        t_written = time.perf_counter()
    proc.wait(timeout=600)
    reader.join(timeout=60)
    events = sum(1 for _, line in reader.lines if '"type": "event"' in line)
    t_last = reader.lines[-1][0]
    # What watch itself can process, with no writer to wait for: the same history replayed.
    t = time.perf_counter()
    subprocess.run([JOBCTL, "--db", db, "watch", parent, "--json", "--from-start"], stdout=subprocess.DEVNULL,
                   check=True)
    replay = time.perf_counter() - t
    return {"metric": "events/s", "children": n, "events": events,
            "jobctl": events / (t_last - t0), "baseline": events / (t_written - t0),
            "ratio": (t_written - t0) / (t_last - t0), "lag_after_last_commit_s": t_last - t_written,
            "replay_events_per_s": (events + n + 1) / replay,
            "bar": "≥ 5,000 events/s", "met": events / (t_last - t0) >= 5000}


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
    for name, cmd in (("jobctl", [JOBCTL, "--db", db, "watch", job, "--json"]),
                      ("baseline", [sys.executable, str(HERE / "floor_watch.py"), db])):
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
    return {"metric": metric, "jobctl_median_ms": mo * 1000, "baseline_median_ms": mb * 1000,
            "ratio": mo / mb, "runs": len(ours), "bar": bar, "met": mo / mb <= limit, **extra}


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
        base.append(_timed([sys.executable, str(HERE / "baselines.py"), "spawn", str(db), parent,
                            str(args.spawn_children)]))
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
        conn = jc.store.conn
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
    rss_mb = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                  if line.startswith("VmHWM")) / 1024
    stop(proc)
    mo, mb = statistics.median(ours), statistics.median(base)
    return {"metric": "query time (ms)", "children": args.progress_children, "jobctl_median_ms": mo * 1000,
            "baseline_median_ms": mb * 1000, "ratio": mo / mb, "cli_progress_json_ms": cli * 1000,
            "watch_peak_rss_mb": rss_mb, "bar": "≤ 5 ms query; watch RSS ≤ 100 MB",
            "met": mo * 1000 <= 5 and rss_mb <= 100}


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
        procs = [subprocess.Popen([sys.executable, str(script), str(db), str(start), str(n),
                                   ",".join(kids[w::8])], stdout=subprocess.PIPE, text=True)
                 for w in range(8)]
        ends = [float(p.communicate(timeout=600)[0].split()[-1]) for p in procs]
        return 8 * n / (max(ends) - start)

    ours, base = [], []
    for _ in range(args.rounds):
        ours.append(one(HERE / "api_writer.py"))
        base.append(one(HERE / "baseline_writer.py"))
    mo, mb = statistics.median(ours), statistics.median(base)
    return {"metric": "commits/s", "writers": 8, "commits_each": n, "jobctl": mo, "baseline": mb,
            "ratio": mo / mb, "bar": "ratio ≥ 0.5", "met": mo / mb >= 0.5}


# ------------------------------------------------------------------- main
def machine():
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


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
    parser.add_argument("--writer-commits", type=int, default=500, help="per writer")
    parser.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.rounds, args.latency_events, args.rate = 1, 10, 50.0
        args.throughput_children, args.idle_seconds = 200, 0.5
        args.calls, args.batch_ids, args.spawn_children = 3, 200, 1000
        args.progress_children, args.writer_commits = 2000, 20
    # Measure what users run: bytecode cached. (Some shells export PYTHONDONTWRITEBYTECODE,
    # which would make every jobctl process compile its modules again.)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import compileall

    import jobctl
    compileall.compile_dir(str(Path(jobctl.__file__).parent), quiet=1)
    results = {"machine": machine(), "args": vars(args), "benchmarks": {}}
    for name in args.only or BENCHMARKS:
        with tempfile.TemporaryDirectory(prefix=f"jobctl-bench-{name}-") as tmp:
            started = time.perf_counter()
            result = BENCHMARKS[name](args, Path(tmp))
            result["seconds"] = round(time.perf_counter() - started, 1)
        results["benchmarks"][name] = result
        print(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in result.items()), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
