"""`jobctl demo`: a "News Crawler" parent fanned out to real worker processes,
watched live. Workers use the same Python API users do (`Jobctl.claim`,
`log`, `heartbeat`, `set_status`), concurrently, each in its own process.

    python -m jobctl.demo worker DB PARENT [--fail-rate F] [--speed S] [--seed N]
runs one worker on its own.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from jobctl import model, render
from jobctl.api import Jobctl
from jobctl.model import UsageError

SECTIONS = ["world", "politics", "business", "tech", "science", "health", "sport", "culture", "travel"]
SITES = ["daily-planet.example", "globe.example", "herald.example", "courier.example", "gazette.example"]
ERRORS = [
    "HTTP 503 Service Unavailable",
    "connection reset by peer",
    "TLS handshake timed out",
    "HTTP 429 Too Many Requests",
    "robots.txt disallows this path",
]


def page_names(n: int, rng: random.Random) -> list[str]:
    return [f"https://{rng.choice(SITES)}/{rng.choice(SECTIONS)}/{rng.randrange(10**5, 10**6)}" for _ in range(n)]


def worker(db: str, parent: str, fail_rate: float, speed: float, seed: int | None) -> int:
    """Claim pending children of `parent` until none is left, crawling each one."""
    rng = random.Random(seed)
    with Jobctl(db) as jc:
        while True:
            job = jc.claim(parent, message=f"worker {os.getpid()}")
            if job is None:
                return 0
            name = jc.get(job)["name"]
            jc.log(job, f"fetching {name}")
            time.sleep(rng.uniform(0.2, 0.6) / speed)
            jc.heartbeat(job)
            if rng.random() < fail_rate:
                error = rng.choice(ERRORS)
                jc.log(job, error, level="error")
                jc.set_status([job], model.FAILED, message=error)
                continue
            articles = rng.randrange(3, 40)
            if rng.random() < 0.15:
                jc.log(job, f"slow response, {rng.randrange(2, 9)}s", level="warning")
            time.sleep(rng.uniform(0.1, 0.5) / speed)
            jc.set_status([job], model.COMPLETED, message=f"{articles} articles")


def run(
    *,
    children: int = 108,
    workers: int = 4,
    fail_rate: float = 0.05,
    speed: float = 1.0,
    db: str | None = None,
    seed: int | None = None,
) -> int:
    """Set the demo up, start the workers, watch until the parent ends."""
    from jobctl import watch

    if children < 1 or workers < 1:
        raise UsageError("--children and --workers must be at least 1")
    if not 0 <= fail_rate <= 1:
        raise UsageError(f"--fail-rate must be between 0 and 1, not {fail_rate}")
    if not speed > 0:
        raise UsageError(f"--speed must be more than 0, not {speed}")
    tmp = None
    if db is None:
        tmp = tempfile.mkdtemp(prefix="jobctl-demo-")
        db = os.path.join(tmp, "demo.db")
    rng = random.Random(seed)
    procs: list[subprocess.Popen] = []
    try:
        # The reaper writes through its own connection, so the watch sees its commits.
        with Jobctl(db) as jc, Jobctl(db) as reaper:
            parent = jc.create("News Crawler", type="crawl", meta={"demo": "true"})
            jc.spawn(parent, names=page_names(children, rng), type="page")
            start = jc.last_event_id()  # the watch shows every change from here: none is "earlier"
            for i in range(workers):
                cmd = [
                    sys.executable,
                    "-m",
                    "jobctl.demo",
                    "worker",
                    db,
                    parent,
                    "--fail-rate",
                    str(fail_rate),
                    "--speed",
                    str(speed),
                ] + (["--seed", str(seed * 1000 + i)] if seed is not None else [])
                procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
            sink = render.LiveWatch() if render.is_terminal() else render.PlainWatch()
            # Workers beat once a page; if one dies, its page would stay running and
            # the parent with it: the demo reaps pages silent for 10 s, as a user would.
            code = watch.run_watch(
                jc,
                parent,
                sink,
                since=start,
                poll_interval=0.5,
                stale_after=10 / speed + 2,
                on_stale=lambda ids: reaper.reap(10 / speed + 2, parent=parent),
            )
            progress = jc.progress(parent)
        sys.stderr.write(f"jobctl demo: {parent} {progress['status']}: {progress['progress_text']}\n")
        if tmp is None:
            sys.stderr.write(f"jobctl demo: explore it with: jobctl --db {db} tree {parent}\n")
        return code
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobctl.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run one demo worker")
    w.add_argument("db")
    w.add_argument("parent")
    w.add_argument("--fail-rate", type=float, default=0.05)
    w.add_argument("--speed", type=float, default=1.0)
    w.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        return worker(args.db, args.parent, args.fail_rate, args.speed, args.seed)
    except KeyboardInterrupt:
        return model.EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
