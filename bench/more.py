"""More benchmarks for jobctl (SQLite), with the signature of bench/run.py's:
`name(args, tmp) -> dict`, collected in BENCHMARKS_MORE (run.py registers them;
bench/more_main.py runs them on their own).

1. Worker commands, one process per call (fast path), each against a bare
   `python3` + sqlite3 script doing the same query or write
   (bench/baselines_more.py): call_* (bar ≤ 1.5×), and fast_path_typer (which
   of them import typer: none should).
2. Scale, a parent with a million children (--tiny: 2,000): spawn_million,
   cancel_million, verify_million, tree_head_million, events_leaf_million,
   logs_children_head_million, list_all_million, and events_json (~280k events
   against the sqlite3 shell's -json).
3. `jobctl run`: run_one (one `run J -- true` against a shell wrapper making the
   two status calls) and run_each (`run --parent P --each --jobs 8` against
   `spawn` + `xargs -P 8` of the wrapper).

Peak RSS is each process's own, from /usr/bin/time -f %M (not RUSAGE_CHILDREN,
a maximum over every child so far, nor wait4() on a child of this interpreter:
Linux keeps ru_maxrss across exec, so it would report at least our own RSS). Every result has
`bar` and `met`; nothing is asserted about timing.

Sizes come from args where run.py or more_main.py sets them, else from
`args.tiny`: see size().
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
JOBCTL = str(Path(sys.executable).parent / "jobctl")  # as run.py has it


# run.py's helpers, imported when first used (not at the top: run.py may import
# this module at its own top to register BENCHMARKS_MORE, and a cycle would fail).
def _template(*args):
    import run

    return run._template(*args)


def _fresh(*args):
    import run

    return run._fresh(*args)


def _timed(*args):
    import run

    return run._timed(*args)


BASE = str(HERE / "baselines_more.py")
WRAPPER = str(HERE / "run_wrapper.sh")
BENCHMARKS_MORE: dict = {}

# name: (default, --tiny); an attribute of args with the name wins when set.
SIZES = {
    "calls": (30, 3),  # one-process calls per side (run.py has --calls too)
    "rounds": (2, 1),  # alternations of jobctl and baseline (run.py has --rounds too)
    "million_children": (1_000_000, 2_000),
    "events_children": (93_333, 700),  # 3 events each (create, running, completed): ~280k events
    "run_calls": (20, 3),  # `jobctl run J -- true` per side
    "each_inputs": (1_000, 16),  # `run --each` inputs
}


def size(args, name):
    value = getattr(args, name, None)
    if value is None:
        value = SIZES[name][1 if getattr(args, "tiny", False) else 0]
    return value


def more(fn):
    BENCHMARKS_MORE[fn.__name__] = fn
    return fn


# ------------------------------------------------------------------ helpers
TIME = "/usr/bin/time"  # GNU time: its child's own peak RSS


def _rss_popen(cmd, rss_file, **kwargs):
    """Popen `cmd` under /usr/bin/time, which writes the command's peak RSS (KiB) to
    `rss_file`. Not wait4()'s rusage of our own child: Linux carries ru_maxrss over
    exec, so a child forked from this (big) interpreter reports at least our RSS."""
    return subprocess.Popen([TIME, "-f", "%M", "-o", str(rss_file), *cmd], **kwargs)


def _rss_mb(rss_file):
    return int(Path(rss_file).read_text().split()[-1]) / 1024


def _measured(cmd, stdin_path=None, ok=(0,)):
    """Run `cmd` (stdin from a file, stdout discarded): (seconds, peak RSS MB)."""
    with tempfile.NamedTemporaryFile(prefix="rss-") as rss_file:
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        try:
            t = time.perf_counter()
            proc = _rss_popen(cmd, rss_file.name, stdin=stdin, stdout=subprocess.DEVNULL)
            code = proc.wait()
            seconds = time.perf_counter() - t
        finally:
            if stdin_path:
                stdin.close()
        if code not in ok:
            raise RuntimeError(f"{cmd} exited {code}")
        return seconds, _rss_mb(rss_file.name)


def _piped_to_head(cmd, lines):
    """`cmd | head -LINES`, as a shell runs it: (seconds until head printed its
    lines and exited, seconds until the whole pipeline ended, cmd's peak RSS MB)."""
    with tempfile.NamedTemporaryFile(prefix="rss-") as rss_file:
        t = time.perf_counter()
        producer = _rss_popen(cmd, rss_file.name, stdout=subprocess.PIPE)
        head = subprocess.Popen(["head", f"-{lines}"], stdin=producer.stdout, stdout=subprocess.PIPE)
        producer.stdout.close()
        out = head.stdout.read()
        head.wait()
        t_head = time.perf_counter() - t
        code = producer.wait()
        t_done = time.perf_counter() - t
        if code not in (0, 141) or len(out.splitlines()) != lines:
            raise RuntimeError(f"{cmd} | head exited {code}, printed {out!r}")
        return t_head, t_done, _rss_mb(rss_file.name)


def _first_line(cmd):
    """(seconds to the first line of output, seconds to the end, peak RSS MB, lines)."""
    with tempfile.NamedTemporaryFile(prefix="rss-") as rss_file:
        t = time.perf_counter()
        proc = _rss_popen(cmd, rss_file.name, stdout=subprocess.PIPE)
        proc.stdout.readline()
        t_first = time.perf_counter() - t
        lines = 1
        for chunk in iter(lambda: proc.stdout.read(1 << 16), b""):
            lines += chunk.count(b"\n")
        proc.stdout.close()
        if proc.wait():
            raise RuntimeError(f"{cmd} exited {proc.returncode}")
        return t_first, time.perf_counter() - t, _rss_mb(rss_file.name), lines


def _checkpoint(db):
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _last_event_id(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    finally:
        conn.close()


def _med(values):
    return statistics.median(values)


def _ratio(metric, ours, base, bar, limit, **extra):
    mo, mb = _med(ours), _med(base)
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


def imports_of(argv, env=None):
    """(typer imported?, import time in ms of everything, of jobctl's own modules) for
    `python -X importtime -m jobctl ARGV`."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jobctl", *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
    )
    typer, total, own = False, 0, 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line[len("import time:") :].split("|")
        name = name.strip()
        total += int(self_us)
        own += int(self_us) if name.startswith("jobctl") else 0
        typer = typer or name == "typer"
    return typer, total / 1000, own / 1000


# ----------------------------------------------------- 1. worker commands
CALLS = {
    # name: (jobctl argv after --db DB, baseline argv after DB); {P} the parent,
    # {J} a leaf, {K} the next pending child for this side, {N} the events cursor
    "claim": (["claim", "{P}"], ["claim", "{P}"]),
    "status_get": (["status", "get", "{J}"], ["status-get", "{J}"]),
    "progress": (["progress", "{P}"], ["progress", "{P}"]),
    "create": (["create", "crawl"], ["create", "crawl"]),
    "spawn10": (["spawn", "{P}", "--count", "10"], ["spawn", "{P}", "10"]),
    "heartbeat": (["heartbeat", "{J}"], ["heartbeat", "{J}"]),
    "log": (["log", "{J}", "fetched 200 OK"], ["log", "{J}", "fetched 200 OK"]),
    "events_tail": (["events", "--since", "{N}"], ["events", "{N}"]),
    "version": (["--version"], None),  # baseline: python3 -c 'import sqlite3'
}
TAIL = 20  # events --since: this many events after the cursor
WORKER_CHILDREN = 1_000


def _worker_db(tmp, name, runs):
    """A worker's database: parent p with WORKER_CHILDREN children (enough to claim
    from), one of them already claimed (p is running: the steady state), a log."""
    from jobctl import Jobctl

    db, parent, kids = _template(tmp, f"worker_{name}", max(WORKER_CHILDREN, 2 * runs + 10))
    with Jobctl(db) as jc:
        jc.claim(parent)
        jc.log(kids[0], "started")
    _checkpoint(db)
    return db, parent, kids


def _fill(argv, db, parent, leaf, cursor):
    return [a.format(P=parent, J=leaf, N=cursor) for a in argv]


def _call_benchmark(name):
    ours_argv, base_argv = CALLS[name]

    def bench(args, tmp):
        runs = size(args, "calls")
        template, parent, kids = _worker_db(tmp, name, runs)
        db = str(_fresh(template, tmp, name))
        cursor = max(0, _last_event_id(db) - TAIL)
        leaf = kids[0]
        ours_cmd = [JOBCTL, "--db", db, *_fill(ours_argv, db, parent, leaf, cursor)]
        base_cmd = (
            [sys.executable, BASE, base_argv[0], db, *_fill(base_argv[1:], db, parent, leaf, cursor)]
            if base_argv
            else [sys.executable, "-c", "import sqlite3"]
        )
        ours, base = [], []
        for _ in range(runs):
            ours.append(_timed(ours_cmd))
            base.append(_timed(base_cmd))
        what = "python3 -c 'import sqlite3'" if base_argv is None else f"baselines_more.py {base_argv[0]}"
        return _ratio(
            "wall time per call", ours, base, "ratio ≤ 1.5", 1.5, command=" ".join(ours_cmd[3:]), baseline=what
        )

    bench.__name__ = f"call_{name}"
    bench.__doc__ = f"`jobctl {' '.join(ours_argv)}`, one process per call, against a bare sqlite3 script."
    return more(bench)


for _name in CALLS:
    _call_benchmark(_name)


@more
def claim_with_limit(args, tmp):
    """`jobctl claim P` on a parent with --max-running (a limit it stays under, so
    every claim takes one and checks it), against today's `jobctl claim P` on a
    parent without one, in the same run (issue 21: no more than 1.5x)."""
    from jobctl import Jobctl

    runs = size(args, "calls")
    template, parent, _ = _worker_db(tmp, "claim_plain", runs)
    plain = str(_fresh(template, tmp, "claim_plain"))
    limited = str(_fresh(template, tmp, "claim_limited"))
    with Jobctl(limited) as jc:
        jc.set_policy(parent, max_running=10 * runs + 10)
    _checkpoint(limited)
    return _claims_against_plain(
        runs, (limited, parent), (plain, parent), "claim P (P --max-running N)", "jobctl claim P (no limit)"
    )


def _claims_against_plain(runs: int, ours_at, plain_at, command: str, baseline: str) -> dict:
    """`jobctl claim` timed `runs` times on (database, parent) `ours_at`, alternating with
    today's plain claim on `plain_at`: the ratio against issue 21's bar of 1.5."""
    ours, base = [], []
    for _ in range(runs):
        ours.append(_timed([JOBCTL, "--db", ours_at[0], "claim", ours_at[1]]))
        base.append(_timed([JOBCTL, "--db", plain_at[0], "claim", plain_at[1]]))
    return _ratio("wall time per call", ours, base, "ratio ≤ 1.5", 1.5, command=command, baseline=baseline)


@more
def claim_with_deps_and_limit(args, tmp):
    """`jobctl claim P` on a parent with --max-running whose children wait on
    other jobs (--after): every other one on a job that completed (claimable),
    the rest on one still pending (skipped), so each claim checks both kinds,
    against today's `jobctl claim P` (no limit, no dependencies) on a parent with
    as many children, in the same run (issue 21: no more than 1.5x)."""
    from jobctl import Jobctl

    runs = size(args, "calls")
    template, parent, kids = _worker_db(tmp, "claim_plain", runs)
    plain = str(_fresh(template, tmp, "claim_plain"))
    waiting = str(tmp / "claim_deps.db")
    with Jobctl(waiting) as jc:
        p = jc.create("p", max_running=10 * runs + 10)
        done, gate = jc.create("upstream"), jc.create("gate")
        jc.set_status([done], "completed")
        for i in range(len(kids)):
            jc.spawn(p, count=1, after=[done if i % 2 == 0 else gate])
        jc.claim(p)
    _checkpoint(waiting)
    return _claims_against_plain(
        runs,
        (waiting, p),
        (plain, parent),
        "claim P (P --max-running N, its children --after a job, half of them waiting)",
        "jobctl claim P (no limit, no dependencies)",
    )


@more
def fast_path_typer(args, tmp):
    """Which worker commands import typer (`python -X importtime -m jobctl ...`), and
    their import time (all modules, and jobctl's own)."""
    db, parent, kids = _worker_db(tmp, "imports", 10)
    db = str(db)
    cursor = max(0, _last_event_id(db) - TAIL)
    out = {}
    with_typer = []
    for name, (argv, _) in CALLS.items():
        typer, total, own = imports_of(["--db", db, *_fill(argv, db, parent, kids[1], cursor)])
        out[f"{name}_import_ms"] = round(total, 1)
        out[f"{name}_jobctl_modules_ms"] = round(own, 1)
        if typer:
            with_typer.append(name)
    return {
        "metric": "commands importing typer",
        "jobctl": len(with_typer),
        "commands": len(CALLS),
        "importing_typer": ",".join(with_typer) or "none",
        **out,
        "bar": "none imports typer",
        "met": not with_typer,
    }


# ------------------------------------------------------------- 2. scale
_CACHE: dict = {}


def _cache_dir():
    if "dir" not in _CACHE:
        import atexit

        _CACHE["dir"] = Path(tempfile.mkdtemp(prefix="jobctl-bench-more-"))
        atexit.register(shutil.rmtree, _CACHE["dir"], True)
    return _CACHE["dir"]


LEAF_NUMBER = 0.5  # the leaf `events --job` reads: halfway down the million


def _million(args):
    """A database with parent m and N pending children (built through the API once
    per process and shared; copy it before writing). One leaf halfway has a few
    events of its own (running, a log line, completed). (db, parent, leaf)."""
    from jobctl import Jobctl

    n = size(args, "million_children")
    key = ("million", n)
    if key not in _CACHE:
        db = _cache_dir() / f"million-{n}.db"
        with Jobctl(db) as jc:
            parent = jc.create("million", id="m")
            left = n
            while left:
                jc.spawn(parent, count=min(left, 250_000))
                left -= min(left, 250_000)
            leaf = f"{parent}.{max(1, int(n * LEAF_NUMBER))}"
            jc.set_status([leaf], "running")
            jc.log(leaf, "working")
            jc.set_status([leaf], "completed")
        _checkpoint(db)
        _CACHE[key] = (db, parent, leaf)
    return _CACHE[key]


@more
def spawn_million(args, tmp):
    """`jobctl spawn P --count N` (N = a million) against baselines.py's raw executemany
    of the same rows and events; wall time and peak RSS."""
    template, parent, _ = _template(tmp, "spawn_million", 0)
    n = size(args, "million_children")
    ours, base, ours_rss, base_rss = [], [], [], []
    for i in range(size(args, "rounds")):
        db = _fresh(template, tmp, i)
        t, rss = _measured([JOBCTL, "--db", str(db), "spawn", parent, "--count", str(n)])
        ours.append(t)
        ours_rss.append(rss)
        db = _fresh(template, tmp, i)
        t, rss = _measured([sys.executable, str(HERE / "baselines.py"), "spawn", str(db), parent, str(n)])
        base.append(t)
        base_rss.append(rss)
    r = _ratio(
        "wall time",
        ours,
        base,
        "ratio ≤ 2, RSS ≤ 200 MB",
        2,
        children=n,
        jobctl_peak_rss_mb=max(ours_rss),
        baseline_peak_rss_mb=max(base_rss),
    )
    r["met"] = r["met"] and r["jobctl_peak_rss_mb"] <= 200
    return r


@more
def cancel_million(args, tmp):
    """`jobctl cancel P` of a parent with a million pending children against one raw
    transaction: INSERT INTO events ... SELECT, UPDATE jobs, the counts, the parent."""
    template, parent, _ = _million(args)
    ours, base, ours_rss, base_rss = [], [], [], []
    for i in range(size(args, "rounds")):
        db = _fresh(template, tmp, i)
        t, rss = _measured([JOBCTL, "--db", str(db), "cancel", parent])
        ours.append(t)
        ours_rss.append(rss)
        db = _fresh(template, tmp, i)
        t, rss = _measured([sys.executable, BASE, "cancel", str(db), parent])
        base.append(t)
        base_rss.append(rss)
    r = _ratio(
        "wall time",
        ours,
        base,
        "ratio ≤ 2, RSS ≤ 200 MB",
        2,
        children=size(args, "million_children"),
        jobctl_peak_rss_mb=max(ours_rss),
        baseline_peak_rss_mb=max(base_rss),
    )
    r["met"] = r["met"] and r["jobctl_peak_rss_mb"] <= 200
    return r


@more
def verify_million(args, tmp):
    """`jobctl verify` of the million: peak RSS (and wall time, with `PRAGMA
    integrity_check` in the sqlite3 shell for scale)."""
    db, _, _ = _million(args)
    ours, rss_all, base = [], [], []
    for _ in range(size(args, "rounds")):
        t, rss = _measured([JOBCTL, "--db", str(db), "verify"])
        ours.append(t)
        rss_all.append(rss)
        base.append(_measured(["sqlite3", str(db), "PRAGMA integrity_check"])[0])
    rss = max(rss_all)
    return {
        "metric": "peak RSS (MB)",
        "children": size(args, "million_children"),
        "jobctl_peak_rss_mb": rss,
        "jobctl_median_ms": _med(ours) * 1000,
        "integrity_check_median_ms": _med(base) * 1000,
        "bar": "RSS ≤ 200 MB",
        "met": rss <= 200,
    }


@more
def tree_head_million(args, tmp):
    """`jobctl tree P | head -3` over the million: wall time of the pipeline."""
    db, parent, _ = _million(args)
    heads, dones, rss_all = [], [], []
    for _ in range(size(args, "rounds")):
        t_head, t_done, rss = _piped_to_head([JOBCTL, "--db", str(db), "tree", parent], 3)
        heads.append(t_head)
        dones.append(t_done)
        rss_all.append(rss)
    done = _med(dones)
    return {
        "metric": "wall time (ms)",
        "children": size(args, "million_children"),
        "jobctl_median_ms": done * 1000,
        "head_done_median_ms": _med(heads) * 1000,
        "jobctl_peak_rss_mb": max(rss_all),
        "bar": "≤ 1 s",
        "met": done <= 1.0,
    }


@more
def events_leaf_million(args, tmp):
    """`jobctl events --job LEAF` for a leaf among the million: the whole process, and
    Jobctl.events(job=LEAF) in-process (the query alone), against the bare indexed
    SELECT on the same connection."""
    from jobctl import Jobctl

    db, parent, leaf = _million(args)
    procs = [_timed([JOBCTL, "--db", str(db), "events", "--job", leaf]) for _ in range(5 * size(args, "rounds"))]
    ours, base = [], []
    with Jobctl(db, create=False) as jc:
        conn = jc._store.conn
        for _ in range(10 * size(args, "rounds")):
            t = time.perf_counter()
            got = jc.events(job=leaf)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            conn.execute("SELECT * FROM events WHERE job_id = ? ORDER BY id", (leaf,)).fetchall()
            base.append(time.perf_counter() - t)
    q, p = _med(ours), _med(procs)
    return {
        "metric": "query time (ms)",
        "children": size(args, "million_children"),
        "events": len(got),
        "jobctl_median_ms": q * 1000,
        "bare_select_median_ms": _med(base) * 1000,
        "process_median_ms": p * 1000,
        "bar": "≤ 50 ms (query)",
        "met": q <= 0.05,
        "process_within_50ms": p <= 0.05,
    }


@more
def logs_children_head_million(args, tmp):
    """`jobctl logs P --children | head -2` over the million: wall time of the pipeline."""
    db, parent, _ = _million(args)
    heads, dones, rss_all = [], [], []
    for _ in range(size(args, "rounds")):
        t_head, t_done, rss = _piped_to_head([JOBCTL, "--db", str(db), "logs", parent, "--children"], 2)
        heads.append(t_head)
        dones.append(t_done)
        rss_all.append(rss)
    done = _med(dones)
    return {
        "metric": "wall time (ms)",
        "children": size(args, "million_children"),
        "jobctl_median_ms": done * 1000,
        "head_done_median_ms": _med(heads) * 1000,
        "jobctl_peak_rss_mb": max(rss_all),
        "bar": "none given",
        "met": None,
        "within_1s_as_tree": done <= 1.0,
    }


@more
def list_all_million(args, tmp):
    """`jobctl list --all` over the million (into a pipe): time to the first line, to
    the end, and peak RSS."""
    db, _, _ = _million(args)
    firsts, ends, rss_all = [], [], []
    for _ in range(size(args, "rounds")):
        t_first, t_end, rss, lines = _first_line([JOBCTL, "--db", str(db), "list", "--all"])
        firsts.append(t_first)
        ends.append(t_end)
        rss_all.append(rss)
    first, rss = _med(firsts), max(rss_all)
    return {
        "metric": "time to first line (ms)",
        "rows": lines,
        "jobctl_median_ms": first * 1000,
        "to_end_median_ms": _med(ends) * 1000,
        "jobctl_peak_rss_mb": rss,
        "bar": "first line ≤ 1 s, RSS ≤ 100 MB",
        "met": first <= 1.0 and rss <= 100,
    }


def _events_db(args):
    """Parent e with K children, each created, run and completed (3K + 3 events)."""
    from jobctl import Jobctl

    k = size(args, "events_children")
    key = ("events", k)
    if key not in _CACHE:
        db = _cache_dir() / f"events-{k}.db"
        with Jobctl(db) as jc:
            parent = jc.create("events", id="e")
            kids = jc.spawn(parent, count=k)
            for status in ("running", "completed"):
                for i in range(0, k, 500):
                    jc.set_status(kids[i : i + 500], status)
        _checkpoint(db)
        _CACHE[key] = db
    return _CACHE[key]


EVENTS_JSON_SQL = (
    "SELECT e.id, e.job_id, e.parent_id, e.kind, e.old_status, e.new_status, e.at,"
    " coalesce(l.message, e.message) AS message, l.level AS level"
    " FROM events e LEFT JOIN logs l ON l.id = e.log_id ORDER BY e.id"
)


@more
def events_json(args, tmp):
    """`jobctl events --json` over every event (~280k) against `sqlite3 -json DB
    'SELECT the same columns FROM events ...'`."""
    db = str(_events_db(args))
    ours, base, ours_rss, base_rss = [], [], [], []
    for _ in range(2 * size(args, "rounds")):
        t, rss = _measured([JOBCTL, "--db", db, "events", "--json"])
        ours.append(t)
        ours_rss.append(rss)
        t, rss = _measured(["sqlite3", "-json", db, EVENTS_JSON_SQL])
        base.append(t)
        base_rss.append(rss)
    return _ratio(
        "wall time",
        ours,
        base,
        "ratio ≤ 3",
        3,
        events=_last_event_id(db),
        jobctl_peak_rss_mb=max(ours_rss),
        baseline_peak_rss_mb=max(base_rss),
        baseline="sqlite3 -json",
    )


# --------------------------------------------------------------- 3. run
@more
def run_one(args, tmp):
    """`jobctl run J -- true` (one process) against sh bench/run_wrapper.sh: `jobctl
    status set J running`, /bin/true, `jobctl status set J completed`."""
    runs = size(args, "run_calls")
    template, parent, kids = _worker_db(tmp, "run_one", 2 * runs + 10)
    db = str(_fresh(template, tmp, "run_one"))
    pending = iter(kids[1:])
    ours, base = [], []
    for _ in range(runs):
        ours.append(_timed([JOBCTL, "--db", db, "run", next(pending), "--", "true"]))
        base.append(_timed(["sh", WRAPPER, JOBCTL, db, next(pending)]))
    typer, total, own = imports_of(["--db", db, "run", next(pending), "--", "true"])
    return _ratio("wall time per job", ours, base, "ratio ≤ 1.2", 1.2, imports_typer=typer, import_ms=round(total, 1))


@more
def run_each(args, tmp):
    """`jobctl run --parent P --each --jobs 8 -- true` over N inputs against `jobctl
    spawn P --names-from -` piped into `xargs -P 8` of bench/run_wrapper.sh."""
    n = size(args, "each_inputs")
    template, parent, _ = _template(tmp, "run_each", 0)
    inputs = tmp / "inputs.txt"
    inputs.write_text("".join(f"https://example.com/page/{i}\n" for i in range(1, n + 1)))
    ours, base = [], []
    for i in range(size(args, "rounds")):
        db = str(_fresh(template, tmp, i))
        ours.append(
            _measured(
                [JOBCTL, "--db", db, "run", "--parent", parent, "--each", "--jobs", "8", "--", "true", "{}"],
                stdin_path=inputs,
            )[0]
        )
        db = str(_fresh(template, tmp, i))
        script = '"$0" --db "$1" spawn "$2" --names-from - | xargs -P 8 -n 1 sh "$3" "$0" "$1"'
        base.append(_measured(["sh", "-c", script, JOBCTL, db, parent, WRAPPER], stdin_path=inputs)[0])
        conn = sqlite3.connect(db)
        done = conn.execute(
            "SELECT count(*) FROM jobs WHERE status = 'completed' AND parent_id = ?", (parent,)
        ).fetchone()[0]
        conn.close()
        if done != n:
            raise RuntimeError(f"baseline completed {done} of {n} children")
    return _ratio("wall time", ours, base, "ratio ≤ 1", 1, inputs=n, jobs=8)
