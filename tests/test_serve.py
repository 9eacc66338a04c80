"""jobctl serve: the JSON API, the live stream and the page, over real HTTP
against a real server subprocess (uvicorn) on 127.0.0.1, on both backends
where it makes sense; the page in a real browser (Debian's chromium, driven
headless by Playwright). Every server and browser started here is stopped
again by its fixture."""

import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import JOBCTL, ROOT, run, seed_news_crawler, snapshot, wait_for
from jobctl import DatabaseUnusable, Jobctl, UsageError, model
from jobctl.model import CREATE, LOG, STATUS, STATUSES
from jobctl.model import replay as replay_model
from jobctl.progress import done_text, event_text, log_text, percent_done, progress_dict
from jobctl.render import event_json
from jobctl.serve import app as serve_app
from jobctl.serve import stream
from throwaway_pg import connect_to, free_port

# How a server is started: `[*SERVE, "--db", DB, "serve", "--host", ..., "--port", ...]`.
SERVE = [JOBCTL]
SHIM = """
import argparse, sys
from jobctl.console import error
from jobctl.model import JobctlError
from jobctl.serve.app import main
p = argparse.ArgumentParser(prog="jobctl")
p.add_argument("--db")
p.add_argument("command", choices=["serve"])
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=8765)
p.add_argument("--token")
a = p.parse_args()
try:
    sys.exit(main(a.db, a.host, a.port, a.token))
except JobctlError as exc:
    sys.exit(error(exc))
"""
SERVE = [JOBCTL]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EVIL = "<img src=x onerror=alert(1)>"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SCREENSHOT = ROOT / "docs" / "web-view.png"


# ------------------------------------------------------------- the server
class Server:
    """A `jobctl serve` subprocess on a free 127.0.0.1 port, ready when started."""

    def __init__(self, db, tmp_path, *, token=None, env=None, listen="127.0.0.1", args=()):
        self.db, self.token = str(db), token
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.base = f"http://{self.host}"
        self.log = tmp_path / f"serve-{self.port}.log"
        argv = [*SERVE, "--db", self.db, "serve", "--host", listen, "--port", str(self.port), *args]
        if token:
            argv.append(f"--token={token}")  # (a token may start with "-")
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ, **(env or {}))
            )
        self.wait_ready()

    def wait_ready(self, timeout=30):
        """Poll /api/health until it answers (the server has bound, started its watcher, and serves)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"jobctl serve exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                status, _, _ = self.request("GET", "/api/health")
                if status == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"jobctl serve not ready after {timeout} s: {self.log.read_text()}"
            time.sleep(0.02)  # between polls

    def request(self, method, path, headers=None, auth=True):
        """(status, headers, body): JSON decoded when the response is JSON."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            h = dict(headers or {})
            if auth and self.token:
                h.setdefault("Authorization", f"Bearer {self.token}")
            conn.request(method, path, headers=h)
            response = conn.getresponse()
            body = response.read()
            hdrs = {k.lower(): v for k, v in response.getheaders()}
            if hdrs.get("content-type", "").startswith("application/json"):
                body = json.loads(body)
            return response.status, hdrs, body
        finally:
            conn.close()

    def get(self, path, **kw):
        status, _, body = self.request("GET", path, **kw)
        assert status == 200, (path, status, body)
        return body

    def stream(self, **kw):
        return Stream(self, **kw)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"jobctl serve did not stop on {sig!r}") from None
        return self.proc.returncode


@pytest.fixture
def serve(tmp_path):
    """serve(db, token=None, env=None) -> a ready Server; every one is stopped at the end
    (before the `db` fixture drops a PostgreSQL database)."""
    servers = []

    def start(db, **kw):
        servers.append(Server(db, tmp_path, **kw))
        return servers[-1]

    try:
        yield start
    finally:
        for s in servers:
            s.stop()


class Stream:
    """An SSE client on a raw HTTP connection: messages as (id, data) in arrival order."""

    def __init__(self, server, *, since=None, last_event_id=None, token=None, path="/api/stream"):
        # 10 s: less than the server's 15 s keepalive, so a message that never comes
        # fails the test instead of leaving it waiting
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        headers = {}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        query = []
        if since is not None:
            query.append(f"since={since}")
        token = token or server.token
        if token:
            query.append(f"token={token}")
        self.conn.request("GET", path + ("?" + "&".join(query) if query else ""), headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}
        self.last_id = last_event_id  # what EventSource would send back as Last-Event-ID
        self.retry = None

    def next(self):
        """The next message (id, data); None at the end of the stream."""
        mid, data = None, []
        while True:
            line = self.response.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if line == "":
                if data:
                    return mid if mid is not None else self.last_id, json.loads("\n".join(data))
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                self.last_id = mid = value
            elif field == "data":
                data.append(value)
            elif field == "retry":
                self.retry = int(value)

    def start_cursor(self):
        """Read the preamble of a stream opened without a cursor: `id: N`, where it starts."""
        while self.last_id is None:
            line = self.response.readline().decode().rstrip("\n")
            assert line, "the stream ended before saying where it starts"
            if line.startswith("id: "):
                self.last_id = line[4:]
            elif line.startswith("retry: "):
                self.retry = int(line[7:])
        return int(self.last_id)

    def take(self, n):
        out = []
        for _ in range(n):
            m = self.next()
            assert m is not None, f"the stream ended after {len(out)} of {n} messages"
            out.append(m)
        return out

    def until(self, last):
        """Messages up to and including the one with SSE id `last`."""
        out = []

        def reached():
            m = self.next()
            assert m is not None, f"the stream ended before id {last}"
            out.append(m)
            return m[0] == str(last)

        wait_for(reached, f"the message with id {last}", pause=0)
        return out

    def close(self):
        self.conn.close()


# ----------------------------------------------------------------- helpers
def sse_order(ids):
    """SSE ids as sortable keys: N.k before N."""
    keys = []
    for i in ids:
        n, _, k = i.partition(".")
        keys.append((int(n), int(k) if k else 10**9))
    return keys


def tree(jc, n=30):
    """A root with `n` children (one of them a parent of 3), a second root, and a log line."""
    parent = jc.create("News Crawler", type="crawl")
    kids = jc.spawn(parent, count=n)
    grand = jc.spawn(kids[0], count=3)
    jc.set_status([kids[1]], "running")
    jc.log(kids[1], "fetching page 2")
    other = jc.create("nightly backup")
    return parent, kids, grand, other


def line_count(text):
    return len(text.strip().splitlines())


# ============================================================ unit: the fold
def shown_times(job):
    """A job's times as the page is sent them, the plain way (`duration_text` once it ended)."""
    ended = job["started_at"] and job["completed_at"]
    return {
        "started_at": job["started_at"],
        "completed_at": job["completed_at"],
        "duration_text": model.duration_text(model.job_seconds(job)) if ended else None,
    }


def shown_done(counts):
    some = any(counts.values())
    return {"percent_done": percent_done(counts) if some else None, "done_text": done_text(counts) if some else None}


def oracle_messages(events):
    """What the stream must say for `events` (every event from the first),
    computed the plain way: statuses and timestamps replayed from scratch
    (model.enter_status from each job's first event), counts recounted, and
    every text by the CLI's own functions (jobctl.progress, jobctl.model)."""
    jobs, parents, out = {}, {}, []
    for e in events:
        if e["kind"] in (CREATE, STATUS):
            model.enter_status(jobs.setdefault(e["job_id"], {"started_at": None}), e["new_status"], e["at"])
            parents.setdefault(e["job_id"], e["parent_id"])

        def counted(job):
            counts = dict.fromkeys(STATUSES, 0)
            for j, p in parents.items():
                if p == job:
                    counts[jobs[j]["status"]] += 1
            return counts

        def progress(job, e=e):
            counts = counted(job)
            return {
                "type": "parent_job_progress",
                **progress_dict(job, jobs[job]["status"], counts),
                "text": log_text(e, True, counts) if e["job_id"] == job else None,
                **shown_times(jobs[job]),
                **shown_done(counts),
                "timestamp": e["at"],
                "parent_id": parents[job],
                "root_id": e["root_id"],
                "event_id": e["id"],
            }

        if e["kind"] == LOG:
            msgs = [
                {
                    "type": "log",
                    "job_id": e["job_id"],
                    "parent_id": e["parent_id"],
                    "level": e["level"],
                    "message": e["message"],
                    "text": e["message"],
                    "parent_text": f"child {e['job_id']}: {e['message']}" if e["parent_id"] else None,
                    "timestamp": e["at"],
                    "root_id": e["root_id"],
                    "event_id": e["id"],
                }
            ]
        elif e["parent_id"] is None:
            msgs = [progress(e["job_id"])]
        else:
            counts = counted(e["parent_id"])
            msgs = [
                {
                    "type": "child_status_change",
                    "job_id": e["parent_id"],
                    "child_id": e["job_id"],
                    "old_status": e["old_status"],
                    "new_status": e["new_status"],
                    "message": e["message"],
                    "text": log_text(e, True, counts),
                    "parent_text": log_text(e, False, counts),
                    **shown_times(jobs[e["job_id"]]),
                    "timestamp": e["at"],
                    "root_id": e["root_id"],
                    "event_id": e["id"],
                },
                progress(e["parent_id"]),
            ]
        out.append((e["id"], msgs))
    return out


def history(jc):
    """Creates, spawns, changes at two levels, logs, a cancel and a retry."""
    parent, kids, grand, other = tree(jc, n=6)
    jc.set_status(grand[:2], "running")
    jc.set_status([grand[0]], "completed", message="done")
    jc.set_status([grand[1]], "failed")
    jc.set_status([kids[2]], "failed")
    jc.retry(parent, failed_children=True)
    jc.log(parent, "half way", level="warning")
    jc.set_status([other], "running")
    jc.cancel(kids[0])
    jc.set_status(kids[3:], "completed", message="ok")
    late = jc.create("late root")
    jc.spawn(late, count=2)
    return parent


def test_replay_from_every_cursor_matches_a_plain_recount(jc):
    """stream.replay from any cursor gives exactly the messages of a plain fold from
    the start (state_at unfolds correctly at every point), on both backends."""
    history(jc)
    events = jc.events()
    last = events[-1]["id"]
    want = [(i, stream.encode(i, msgs)) for i, msgs in oracle_messages(events)]
    for since in range(0, last + 1):
        got = [x for page in stream.replay(jc, since, last, page=7) for x in page]
        assert got == [w for w in want if w[0] > since], f"replay from {since}"
    # and a stretch in the middle: (since, until]
    got = [x for page in stream.replay(jc, 5, last - 5) for x in page]
    assert got == [w for w in want if 5 < w[0] <= last - 5]


def test_state_at_is_the_state_of_that_moment(jc):
    history(jc)
    events = jc.events()
    ids = sorted({e["job_id"] for e in events})
    for at in range(0, events[-1]["id"] + 1):
        state = stream.state_at(jc, at, ids)
        then = replay_model([e for e in events if e["id"] <= at])
        for job in ids:
            status, counts, _ = state[job]
            want = dict.fromkeys(STATUSES, 0)
            for r in then.values():
                if r["parent_id"] == job:
                    want[r["status"]] += 1
            assert status == (then[job]["status"] if job in then else None), (at, job)
            assert counts == want, (at, job)


def test_cursors():
    assert stream.parse_cursor("12") == (12, None)
    assert stream.parse_cursor("12.0") == (12, 0)
    for bad in ("", "x", "-1", "1.", ".1", "1.x", "1.2.3", "9" * 20, "²", "1.²"):
        with pytest.raises(ValueError):
            stream.parse_cursor(bad)
    assert stream.after((5, None), 6, 0) and not stream.after((5, None), 5, 1)
    assert stream.after((5, 0), 5, 1) and not stream.after((5, 0), 5, 0)
    assert stream.replay_from((5, None)) == 5 and stream.replay_from((5, 0)) == 4


def test_options_are_checked_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("JOBCTL_SERVE_TOKEN", raising=False)
    good = secrets.token_urlsafe(24)
    assert serve_app.check_options("127.0.0.1", 8765, None) is None
    assert serve_app.check_options("localhost", 1, good) == good
    for host in ("0.0.0.0", "192.168.1.5", "example.org", "::"):
        with pytest.raises(UsageError, match="needs --token"):
            serve_app.check_options(host, 8765, None)
        assert serve_app.check_options(host, 8765, good) == good
    for port in (0, -1, 65536, True, "80"):
        with pytest.raises(UsageError, match="--port"):
            serve_app.check_options("127.0.0.1", port, None)
    for token in ("short", "x" * 15, "with a space in it!!", "tab\tinside-this-token"):
        with pytest.raises(UsageError, match="--token"):
            serve_app.check_options("127.0.0.1", 8765, token)
    for host in ("", " ", "a b"):
        with pytest.raises(UsageError, match="--host"):
            serve_app.check_options(host, 8765, None)
    monkeypatch.setenv("JOBCTL_SERVE_TOKEN", good)
    assert serve_app.check_options("0.0.0.0", 8765, None) == good
    assert serve_app.is_loopback("127.0.0.2") and serve_app.is_loopback("::1") and serve_app.is_loopback("[::1]")
    assert not serve_app.is_loopback("0.0.0.0") and not serve_app.is_loopback("localhost.example.org")
    # a database that is not there: exit 5 before binding anything
    monkeypatch.delenv("JOBCTL_SERVE_TOKEN")
    with pytest.raises(DatabaseUnusable, match="no jobctl database"):
        serve_app.main(str(tmp_path / "missing.db"), "127.0.0.1", free_port(), None)
    assert not (tmp_path / "missing.db").exists()


def test_the_cli_hot_path_never_imports_the_web_stack():
    code = (
        "import sys, jobctl, jobctl.cli, jobctl.fastpath, jobctl.commands, jobctl.serve, jobctl.serve.app;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'anyio')"
        " or m in ('jobctl.serve.web', 'jobctl.serve.stream'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ======================================================== the server: errors
@pytest.mark.slow
def test_bad_options_are_one_line_errors_with_the_cli_codes(db_path, tmp_path):
    Jobctl(db_path).close()
    cases = [
        (["--host", "0.0.0.0"], 2, "needs --token"),
        (["--port", "70000"], 2, "--port"),
        (["--token", "short"], 2, "--token"),
    ]
    for args, code, text in cases:
        r = subprocess.run([*SERVE, "--db", str(db_path), "serve", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == code, (args, r.stderr)
        assert line_count(r.stderr) == 1 and r.stderr.startswith("jobctl: error: ") and text in r.stderr, r.stderr
    r = subprocess.run(
        [*SERVE, "--db", str(tmp_path / "nope.db"), "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 5 and line_count(r.stderr) == 1 and "no jobctl database" in r.stderr, r.stderr
    with socket.socket() as taken:  # a port in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [*SERVE, "--db", str(db_path), "serve", "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert r.returncode == 2 and line_count(r.stderr) == 1 and "cannot listen" in r.stderr, r.stderr


# ============================================================ the JSON API
@pytest.mark.slow
def test_jobs_list_show_and_errors(db, serve):
    with Jobctl(db) as jc:
        parent, kids, grand, other = tree(jc)
        done = jc.create(EVIL)
        jc.set_status([done], "completed")
        slash = jc.create("with a slash", id="nightly/42")
        roots = [j["id"] for j in jc.list() if j["parent_id"] is None][::-1]
        want = {r: {**jc.get(r), **stream.job_texts(jc.get(r))} for r in roots}
        cursor = jc.last_event_id()
    server = serve(db)

    data = server.get("/api/jobs")
    assert [j["id"] for j in data["jobs"]] == roots == [slash, done, other, parent]
    assert data["cursor"] == cursor and data["more"] is False
    for j in data["jobs"]:
        assert j == want[j["id"]]  # the `show --json` object (every field, metadata, progress) and the texts
    assert data["jobs"][-1]["progress"]["progress_text"] == "28 pending, 2 running, 0 completed, 0 failed"
    assert data["jobs"][0]["progress"] is None

    assert [j["id"] for j in server.get("/api/jobs?status=running")["jobs"]] == [parent]
    assert [j["id"] for j in server.get("/api/jobs?status=completed&status=pending")["jobs"]] == [slash, done, other]
    two = server.get("/api/jobs?limit=2")
    assert [j["id"] for j in two["jobs"]] == [slash, done] and two["more"] is True

    children = server.get(f"/api/jobs?parent={parent}")
    assert [j["id"] for j in children["jobs"]] == kids[::-1]
    assert children["parent"] == want[parent]
    assert children["jobs"][-1]["progress"]["total_children"] == 3  # kids[0] has children of its own
    assert [j["id"] for j in server.get(f"/api/jobs?parent={parent}&status=running")["jobs"]] == [kids[1], kids[0]]
    assert [j["id"] for j in server.get(f"/api/jobs?parent={kids[0]}")["jobs"]] == grand[::-1]

    assert server.get(f"/api/jobs/{parent}") == want[parent]
    assert server.get("/api/jobs/nightly%2F42") == want[slash]
    assert server.get(f"/api/jobs/{kids[0]}")["progress"]["total_children"] == 3

    errors = [
        ("/api/jobs/nope", 404, 3, "job nope not found"),
        ("/api/jobs?parent=nope", 404, 3, "job nope not found"),
        (
            "/api/jobs?status=done",
            400,
            2,
            "unknown status 'done' (valid: pending, running, completed, failed, cancelled)",
        ),
        ("/api/jobs?status=RUNNING", 400, 2, "unknown status"),
        ("/api/jobs?limit=0", 400, 2, "limit"),
        ("/api/jobs?limit=abc", 400, 2, "limit"),
        ("/api/jobs?limit=10001", 400, 2, "limit"),
        ("/api/jobs?bogus=1", 400, 2, "unknown parameter 'bogus'"),
        (f"/api/jobs?parent={parent}&parent={other}", 400, 2, "more than once"),
        (f"/api/jobs/{parent}?x=1", 400, 2, "unknown parameter"),
        ("/api/nope", 404, 2, "no such endpoint"),
        ("/api/jobs/a/b/c", 404, 2, "no such endpoint"),
        ("/api/jobs/%0Anope", 404, 3, "job '\\nnope' not found"),  # one line, escaped and quoted
    ]
    for path, status, code, text in errors:
        got_status, headers, body = server.request("GET", path)
        assert (got_status, body["exit_code"]) == (status, code), (path, body)
        assert text in body["error"] and "\n" not in body["error"], (path, body)
        assert set(body) == {"error", "exit_code"}
        assert headers["content-type"].startswith("application/json")


@pytest.mark.slow
def test_events_are_paged_with_a_cursor(db, serve):
    with Jobctl(db) as jc:
        parent, kids, grand, other = tree(jc)
        jc.set_status(grand, "running")
        jc.log(grand[0], "deep")
        all_of = {
            j: [{**event_json(e), "text": event_text(e)} for e in jc.events(job=j)] for j in (parent, kids[0], other)
        }
        last = jc.last_event_id()
    server = serve(db)
    for job, want in all_of.items():
        got, since, pages = [], 0, 0
        while True:
            page = server.get(f"/api/jobs/{job}/events?since={since}&limit=7")
            got += page["events"]
            pages += 1
            assert len(page["events"]) <= 7 and pages <= len(want) // 7 + 2, (pages, page)  # full pages, and an end
            if not page["more"]:
                break
            assert page["next"] > since
            since = page["next"]
        assert got == want, job
        assert pages >= len(want) // 7
    everything = server.get(f"/api/jobs/{parent}/events")
    assert everything["events"] == all_of[parent] and everything["more"] is False
    assert everything["next"] >= all_of[parent][-1]["id"]
    tail = server.get(f"/api/jobs/{parent}/events?since={last}")
    assert tail == {"events": [], "next": last, "more": False}
    for query in ("since=-1", "since=abc", "since=%C2%B2", "limit=0", "limit=10001", "since=1&since=2"):
        status, _, body = server.request("GET", f"/api/jobs/{parent}/events?{query}")
        assert status == 400 and body["exit_code"] == 2, (query, body)
    status, _, body = server.request("GET", "/api/jobs/nope/events")
    assert status == 404 and body["exit_code"] == 3


@pytest.mark.slow
def test_logs(db, serve):
    with Jobctl(db) as jc:
        parent, kids, grand, other = tree(jc)
        jc.log(parent, "a line <b>not bold</b>", level="error")
        own, with_children = jc.logs(parent), jc.logs(parent, children=True)
    server = serve(db)
    assert server.get(f"/api/jobs/{parent}/logs") == {"lines": own}
    assert server.get(f"/api/jobs/{parent}/logs?children=true") == {"lines": with_children}
    assert server.get(f"/api/jobs/{parent}/logs?children=1&tail=2") == {"lines": with_children[-2:]}
    for query, status, code in (("children=maybe", 400, 2), ("tail=0", 400, 2)):
        got, _, body = server.request("GET", f"/api/jobs/{parent}/logs?{query}")
        assert (got, body["exit_code"]) == (status, code)
    got, _, body = server.request("GET", "/api/jobs/nope/logs")
    assert (got, body["exit_code"]) == (404, 3)


# ================================================================ security
class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.mark.slow
def test_read_only_with_security_headers_everywhere(db_path, serve):
    with Jobctl(db_path) as jc:
        parent, *_ = tree(jc)
    before = snapshot(str(db_path))
    server = serve(db_path)
    paths = [
        "/",
        "/static/app.js",
        "/static/app.css",
        "/api/health",
        "/api/jobs",
        f"/api/jobs/{parent}",
        f"/api/jobs/{parent}/events",
        f"/api/jobs/{parent}/logs",
        "/api/jobs/nope",
        "/api/nope",
    ]
    for path in paths:
        _, headers, _ = server.request("GET", path)
        assert headers["content-security-policy"] == CSP, path
        assert headers["x-content-type-options"] == "nosniff", path
    stream = server.stream()
    assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["content-security-policy"] == CSP and stream.headers["x-content-type-options"] == "nosniff"
    stream.close()
    # the page: no inline script or style (the CSP would refuse them), scripts by src only
    _, headers, page = server.request("GET", "/")
    assert headers["content-type"].startswith("text/html")
    parser = Tags()
    parser.feed(page.decode())
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts == [{"src": "/static/app.js", "defer": None}]
    assert "<script>" not in page.decode() and "<style" not in page.decode()
    assert not [a for _, attrs in parser.tags for a in attrs if a.startswith("on") or a == "style"]
    _, headers, _ = server.request("GET", "/static/app.js")
    assert headers["content-type"].startswith("text/javascript")
    # read-only: nothing but GET, and the database is untouched
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/api/jobs", f"/api/jobs/{parent}", "/api/stream", "/"):
            status, headers, body = server.request(method, path)
            assert status == 405 and body["exit_code"] == 2 and "read-only" in body["error"], (method, path, body)
            assert headers["content-security-policy"] == CSP
    assert snapshot(str(db_path)) == before
    # no token on loopback: a request for another host name (DNS rebinding) is refused
    status, _, body = server.request("GET", "/api/jobs", headers={"Host": f"evil.example:{server.port}"})
    assert status == 403 and body["exit_code"] == 2
    for host in (f"localhost:{server.port}", server.host):
        assert server.request("GET", "/api/jobs", headers={"Host": host})[0] == 200


@pytest.mark.slow
def test_a_token_is_checked_on_every_request_and_the_stream(db_path, serve):
    with Jobctl(db_path) as jc:
        parent, *_ = tree(jc)
    token = secrets.token_urlsafe(24)
    server = serve(db_path, token=token)
    for path in (
        "/",
        "/static/app.js",
        "/static/app.css",
        "/api/health",
        "/api/jobs",
        f"/api/jobs/{parent}",
        "/api/stream",
    ):
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": token}):
            status, got, body = server.request("GET", path, headers=headers, auth=False)
            assert status == 401 and body["exit_code"] == 2, (path, headers)
            assert got["www-authenticate"] == "Bearer" and got["x-content-type-options"] == "nosniff"
        assert server.request("GET", path + "?token=nope-nope-nope-nope", auth=False)[0] == 401
        if path != "/api/stream":  # (a stream does not end: its own check is below)
            assert server.request("GET", f"{path}?token={token}", auth=False)[0] == 200, path
    assert server.request("GET", "/api/jobs", headers={"Authorization": f"Bearer {token}"}, auth=False)[0] == 200
    # with a token, the host name does not matter
    assert server.request("GET", "/api/jobs", headers={"Host": "jobs.example:80"})[0] == 200
    # the page hands the token to its own assets
    page = server.get(f"/?token={token}", auth=False).decode()
    assert f'src="/static/app.js?token={token}"' in page and f'href="/static/app.css?token={token}"' in page
    stream = Stream(server, token=token)
    assert stream.status == 200 and stream.start_cursor() >= 0
    stream.close()
    refused = Stream(server, token="not-the-token-at-all")
    assert refused.status == 401
    refused.close()


def test_the_page_composes_no_text_itself():
    """Every text the page shows comes rendered from the server (serve/stream.py,
    "Texts"): app.js builds no status change (`→`), attempt, log line or
    count text, and re-implements no status rule (enter_status)."""
    js = (ROOT / "jobctl" / "serve" / "app.js").read_text()
    code = "\n".join(line.split("//")[0] for line in js.splitlines())  # what runs, not what explains
    for made in (
        "→",
        "\\u2192",
        "attempt",
        "status changed",
        "created (",
        "policy set",
        '"child ',
        "finished",
        "completed_children +",
        "enterStatus",
        "completed_at = ",
    ):
        assert made not in code, f"app.js composes {made!r} itself: render it in Python and send it"
    # the one clock it computes is a running job's, in one function
    assert code.count("Date.now()") == 1 and code.count("Date.parse(") == 1


@pytest.mark.slow
def test_rows_and_events_carry_the_texts_the_cli_renders(db, serve):
    """The API's rows and events carry what the page shows, rendered by the CLI's
    functions: durations (model.duration_text), finished children (progress),
    event texts (progress.event_text), on both stores."""
    with Jobctl(db) as jc:
        parent = jc.create("CI")
        kids = jc.spawn(parent, count=3, max_attempts=3)
        jc.set_status(kids[:2], "running")
        jc.set_status([kids[0]], "failed", message="exit code 1")
        jc.set_status([kids[1]], "completed")
    server = serve(db)
    with Jobctl(db) as jc:
        rows = {j["id"]: j for j in server.get(f"/api/jobs?parent={parent}")["jobs"]}
        for job_id in kids:
            want = jc.get(job_id)
            row = rows[job_id]
            assert server.get(f"/api/jobs/{job_id}") == row
            assert (row["started_at"], row["completed_at"]) == (want["started_at"], want["completed_at"])
            ended = want["started_at"] and want["completed_at"]
            assert row["duration_text"] == (model.duration_text(model.job_seconds(want)) if ended else None)
            assert row["percent_done"] is None and row["done_text"] is None  # no children
        assert rows[kids[0]]["duration_text"] is not None and rows[kids[2]]["duration_text"] is None
        top = server.get("/api/jobs")["jobs"][0]
        assert top["id"] == parent and top["duration_text"] is None  # running: the page ticks its clock
        assert (top["percent_done"], top["done_text"]) == (66, "2 of 3 finished")
        events = server.get(f"/api/jobs/{parent}/events")["events"]
        assert [e["text"] for e in events] == [event_text(e) for e in jc.events(job=parent)]
    assert "running → failed (attempt 1/3): exit code 1" in [e["text"] for e in events]


# ================================================================== stream
@pytest.mark.slow
def test_stream_messages_carry_progress_for_each_status_change(db, serve):
    with Jobctl(db) as jc:
        parent = jc.create("News Crawler")
        kids = jc.spawn(parent, count=3)
    server = serve(db)
    stream = server.stream()
    start = stream.start_cursor()
    run("status", "set", kids[0], "running", "-m", "go", db=db, check=True)
    (id1, change), (id2, progress) = stream.take(2)
    with Jobctl(db) as jc:
        e = jc.events(since=start)[0]
        want_progress = jc.progress(parent)
        started = jc.get(parent)["started_at"]
    assert (id1, id2) == (f"{e['id']}.0", str(e["id"]))
    assert change == {
        "type": "child_status_change",
        "job_id": parent,
        "child_id": kids[0],
        "old_status": "pending",
        "new_status": "running",
        "message": "go",
        "text": "status changed: pending → running: go",
        "parent_text": f"child {kids[0]} pending → running: 2 pending, 1 running, 0 completed, 0 failed",
        "started_at": e["at"],
        "completed_at": None,
        "duration_text": None,
        "timestamp": e["at"],
        "root_id": parent,
        "event_id": e["id"],
    }
    assert progress == {
        "type": "parent_job_progress",
        **want_progress,
        "text": None,
        "started_at": started,
        "completed_at": None,
        "duration_text": None,
        "percent_done": 0,
        "done_text": "0 of 3 finished",
        "timestamp": e["at"],
        "parent_id": None,
        "root_id": parent,
        "event_id": e["id"],
    }
    assert progress["progress_text"] == "2 pending, 1 running, 0 completed, 0 failed"
    # the last child: the parent's derived status follows, as its own event
    run("status", "set", *kids, "completed", db=db, check=True)
    messages = [m for _, m in stream.take(3 * 2 + 1)]
    assert [m["type"] for m in messages] == ["child_status_change", "parent_job_progress"] * 3 + ["parent_job_progress"]
    assert [m["progress_text"] for m in messages if m["type"] == "parent_job_progress"] == [
        "2 pending, 0 running, 1 completed, 0 failed",
        "1 pending, 0 running, 2 completed, 0 failed",
        "0 pending, 0 running, 3 completed, 0 failed",
        "0 pending, 0 running, 3 completed, 0 failed",
    ]
    assert [m["status"] for m in messages if m["type"] == "parent_job_progress"] == ["running"] * 3 + ["completed"]
    # a root without children; a log line
    root = run("create", EVIL, db=db, check=True).stdout.strip()
    ((_, created),) = stream.take(1)
    assert created["type"] == "parent_job_progress" and created["job_id"] == root and created["status"] == "pending"
    assert created["total_children"] == 0 and created["parent_id"] is None
    run("log", kids[1], "a <b>line</b>\nand more", "--level", "warning", db=db, check=True)
    ((_, log),) = stream.take(1)
    assert {k: log[k] for k in ("type", "job_id", "parent_id", "level", "message")} == {
        "type": "log",
        "job_id": kids[1],
        "parent_id": parent,
        "level": "warning",
        "message": "a <b>line</b>\nand more",
    }
    stream.close()


@pytest.mark.slow
def test_stream_cursor_errors_and_a_cursor_from_the_future(db_path, serve):
    with Jobctl(db_path) as jc:
        parent, kids, *_ = tree(jc)
    server = serve(db_path)
    for since in ("abc", "-1", "1.x", "1.2.3"):
        status, headers, body = server.request("GET", f"/api/stream?since={since}")
        assert status == 400 and body["exit_code"] == 2 and "since" in body["error"], since
    status, _, body = server.request("GET", "/api/stream", headers={"Last-Event-ID": "yesterday"})
    assert status == 400
    # a header is bytes: a non-ASCII one is echoed as the UTF-8 it was sent as
    status, _, body = server.request("GET", "/api/stream", headers={"Last-Event-ID": "été".encode()})
    assert status == 400 and "'été'" in body["error"], body
    status, _, body = server.request("GET", "/api/stream?since=1&since=2")
    assert status == 400
    # a cursor past the end (another database's, say) starts from the end, not from nowhere
    stream = server.stream(since=10**12)
    run("status", "set", kids[2], "running", db=db_path, check=True)
    (_, change), _ = stream.take(2)
    assert change["child_id"] == kids[2]
    stream.close()


WRITER = """
import sys
from jobctl import Jobctl
db, ids = sys.argv[1], sys.argv[2].split(",")
with Jobctl(db) as jc:
    for i, job in enumerate(ids):
        jc.set_status([job], "running")
        if i % 3 == 0:
            jc.log(job, f"working on {job}")
        jc.set_status([job], "failed" if i % 7 == 3 else "completed", message="done")
"""


@pytest.mark.slow
@pytest.mark.parametrize("queue", [None, "3"], ids=["queue-default", "queue-3-events"])
def test_resuming_anywhere_gives_the_live_messages_exactly(db, serve, queue):
    """One live client, one client that drops its connection every few messages
    and comes back with Last-Event-ID (often half-way through an event's
    messages), and one that replays everything afterwards from its first
    cursor: under four concurrent writers all three get the same messages,
    byte for byte, no gap, no duplicate. With a 3-event queue every client
    keeps falling behind and catching up from the database."""
    with Jobctl(db) as jc:
        parent = jc.create("News Crawler")
        kids = jc.spawn(parent, count=120)
        mid = jc.spawn(kids[0], count=4)
        bulk = jc.spawn(parent, count=10)
    server = serve(db, env={"JOBCTL_SERVE_QUEUE_EVENTS": queue} if queue else None)
    live = server.stream()
    start = live.start_cursor()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(db), ",".join(chunk)])
        for chunk in (kids[1::4], kids[2::4], kids[3::4], kids[4::4] + mid)
    ]
    # and ten changes in one transaction, twice: batches bigger than a 3-event queue
    writers.append(subprocess.Popen([JOBCTL, "--db", str(db), "status", "set", *bulk, "running"]))
    hopper, cursor, hops, got = None, str(start), 0, []
    rng = random.Random(7)

    def hop():
        """A few messages, then the connection drops (also when nothing comes for a moment,
        perhaps half-way through a message: that one is not taken); true once the writers
        have ended and 12 hops were made."""
        nonlocal hopper, cursor, hops
        if not any(w.poll() is None for w in writers) and hops >= 12:
            return True
        hopper = server.stream(last_event_id=cursor)
        hopper.conn.sock.settimeout(0.5)
        try:
            for _ in range(rng.randint(1, 5)):
                m = hopper.next()
                got.append(m)
                cursor = m[0]
        except TimeoutError:
            pass
        hopper.close()
        hops += 1
        return False

    wait_for(hop, "the writers to end, hopping from stream to stream", pause=0)
    for w in writers:
        assert w.wait(timeout=120) == 0
    run("status", "set", *bulk, "completed", db=db, check=True)
    with Jobctl(db) as jc:
        last = jc.last_event_id()
        events = jc.events(since=start)
    hopper = server.stream(last_event_id=cursor)
    if cursor != str(last):
        got += hopper.until(last)
    hopper.close()
    reference = live.until(last)
    replayed = server.stream(since=start).until(last)
    assert got == reference == replayed
    health = server.get("/api/health")
    assert health["replays"] >= 1
    assert (health["catch_ups"] > 0) == (queue is not None)  # only a tiny queue overflows
    ids = [m[0] for m in reference]
    assert sse_order(ids) == sorted(set(sse_order(ids))), "out of order or repeated"
    assert sorted({m["event_id"] for _, m in reference}) == [e["id"] for e in events], "an event is missing"
    with Jobctl(db) as jc:  # the last word on the parent is its real progress
        final = [m for _, m in reference if m["type"] == "parent_job_progress" and m["job_id"] == parent][-1]
        assert {k: final[k] for k in jc.progress(parent)} == jc.progress(parent)
    live.close()


@pytest.mark.slow
def test_the_start_line_is_a_url_to_open_and_keeps_the_token_to_itself(db_path, tmp_path):
    """`--host 0.0.0.0 --token T` says `http://THIS-MACHINE:PORT/`, a URL a person can
    open, not `http://0.0.0.0:PORT/?token=YOUR_TOKEN`; the token is in it only with --show-token."""
    Jobctl(db_path).close()
    token = secrets.token_urlsafe(24)
    for args in ((), ("--show-token",)):
        server = Server(db_path, tmp_path, token=token, listen="0.0.0.0", args=args)
        server.stop()
        line = server.log.read_text().splitlines()[0]
        assert line.startswith("jobctl: serving ") and "0.0.0.0" not in line and "YOUR_TOKEN" not in line, line
        url = f"http://{socket.gethostname()}:{server.port}/"
        assert url + (f"?token={token}" if args else " ") in line, line
        assert (token in line) == bool(args), line


def never_reading(port, path):
    """A raw client with a 4 KiB receive buffer that asks for `path` and never reads a byte."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return sock


@pytest.mark.slow
def test_clients_that_never_read_are_dropped_and_catching_up_goes_on(db_path, serve):
    """As many clients as there are replay slots resume from 0 on a big database
    and never read: each is dropped (its connection reset) once it has taken
    nothing for the send timeout, so a live client that falls behind a burst
    and a client resuming from the start still get every message."""
    from jobctl.serve.web import REPLAYS

    with Jobctl(db_path) as jc:
        parent = jc.create("big")
        kids = jc.spawn(parent, count=20_000)  # ~12 MB of messages: more than the socket buffers hold
    env = {"JOBCTL_SERVE_SEND_TIMEOUT": "1", "JOBCTL_SERVE_QUEUE_EVENTS": "100"}
    server = serve(db_path, env=env)
    live = server.stream()
    start = live.start_cursor()
    hogs = [never_reading(server.port, "/api/stream?since=0") for _ in range(REPLAYS)]
    deadline = time.monotonic() + 30
    while server.get("/api/health")["replays"] < REPLAYS:  # every slot is taken by a client that never reads
        assert time.monotonic() < deadline, "the replays did not start"
        time.sleep(0.02)
    with Jobctl(db_path) as jc:  # a burst: the live client (a 100-event queue) falls behind and catches up
        jc.set_status(kids, "running")
        last = jc.last_event_id()
    got = live.until(last)
    resumed = server.stream(since=start)
    assert resumed.until(last) == got
    assert sorted({m["event_id"] for _, m in got}) == list(range(start + 1, last + 1))
    for sock in hogs:  # reset, not left open with what they never read
        sock.settimeout(30)
        with pytest.raises(ConnectionResetError):
            while sock.recv(1 << 20):
                pass
        sock.close()
    health = server.get("/api/health")
    assert health["dropped"] == REPLAYS and health["catch_ups"] > 0
    live.close()
    resumed.close()


def count_watchers(server, db):
    """How the server watches the database: inotify instances and database connections."""
    if db.startswith("postgresql://"):
        conn = connect_to(db)
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return {"connections": cur.fetchone()[0]}
        finally:
            conn.close()
    fds = Path(f"/proc/{server.proc.pid}/fd")
    links = [os.readlink(p) for p in fds.iterdir() if p.is_symlink()]
    return {
        "inotify": sum("inotify" in link for link in links),
        "connections": sum(link == os.path.realpath(db) for link in links),
    }


@pytest.mark.slow
def test_one_watcher_feeds_every_client(db, serve):
    with Jobctl(db) as jc:
        parent, kids, *_ = tree(jc)
    server = serve(db)
    before = count_watchers(server, db)
    streams = [server.stream() for _ in range(40)]
    starts = {s.start_cursor() for s in streams}
    assert len(starts) == 1
    assert server.get("/api/health")["clients"] == 40
    # forty clients, and still the one watcher: no inotify instance or connection per client
    assert count_watchers(server, db) == before
    if db.startswith("postgresql://"):
        assert before["connections"] <= 3  # the hub's connection and its LISTEN connection (+1 spare)
    else:
        assert before["inotify"] == 1
    run("status", "set", kids[3], "running", db=db, check=True)
    got = [s.take(2) for s in streams]
    assert all(g == got[0] for g in got) and got[0][0][1]["child_id"] == kids[3]
    for s in streams:
        s.close()
    deadline = time.monotonic() + 10
    while server.get("/api/health")["clients"]:
        assert time.monotonic() < deadline, "closed streams are still counted"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_stops_promptly_with_open_streams(db_path, serve, sig, code):
    Jobctl(db_path).close()
    server = serve(db_path)
    streams = [server.stream() for _ in range(3)]
    for s in streams:
        s.start_cursor()
    t = time.monotonic()
    assert server.stop(sig) == code
    assert time.monotonic() - t < 5
    for s in streams:
        assert s.next() is None  # the stream was ended, not cut
        s.close()


# ================================================================ the page
@pytest.fixture
def browser():
    """Debian's chromium, headless, driven by Playwright (never `playwright install`)."""
    if not os.path.exists(CHROMIUM):
        why = f"{CHROMIUM} is missing: apt-get install chromium"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(why + " [CI=true: a missing browser is an error here]", pytrace=False)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def progress_cell(job):
    return f'tr[data-job-id="{job}"] td.progress'


def wait_text(page, selector, text, timeout_ms=1000):
    """Wait (by polling in the page, per animation frame) until `selector`'s text is `text`.
    (Predicates are functions, not expression strings: the page's CSP forbids eval, and
    Playwright evaluates a string predicate with it.)"""
    page.wait_for_function(
        "([s, t]) => { const n = document.querySelector(s); return n && n.textContent === t; }",
        arg=[selector, text],
        timeout=timeout_ms,
    )


@pytest.mark.slow
def test_the_page_updates_in_place_from_the_stream(db, serve, browser, tmp_path):
    with Jobctl(db) as jc:
        parent = seed_news_crawler(jc)
        jc.set_policy(f"{parent}.46", max_attempts=3)
        thumbs = jc.create("thumbnails", type="images")
        pics = jc.spawn(thumbs, count=12)
        jc.set_status(pics[:9], "running")
        jc.set_status(pics[:6], "completed")
        jc.set_status(pics[6:8], "failed", message="corrupt file")
        evil = jc.create(EVIL + "\u202egnp.exe\u200b")  # and invisible characters, shown escaped
        backup = jc.create("nightly backup", type="backup")
        jc.set_status([backup], "running")
        docs = jc.create("deploy docs")
        jc.set_status([docs], "completed")
    token = secrets.token_urlsafe(24)
    server = serve(db, token=token)
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    problems, dialogs = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(f"{server.base}/?token={token}")
        wait_text(page, progress_cell(parent), "66 pending, 1 running, 41 completed, 0 failed", 10_000)
        wait_text(page, "#connection", "live", 10_000)
        page.evaluate("() => { window.__jobctl_marker = 'no reload'; }")
        assert [r.get_attribute("data-job-id") for r in page.locator("#jobs tbody tr").all()] == [
            docs,
            backup,
            evil,
            thumbs,
            parent,
        ]
        assert page.text_content(progress_cell(thumbs)) == "3 pending, 1 running, 6 completed, 2 failed"

        # a child's change from another process: the Progress cell follows within 1 s, without a reload
        run("status", "set", f"{parent}.43", "running", db=db, check=True)
        wait_text(page, progress_cell(parent), "65 pending, 2 running, 41 completed, 0 failed")
        run("status", "set", f"{parent}.42", f"{parent}.43", "completed", db=db, check=True)
        wait_text(page, progress_cell(parent), "65 pending, 0 running, 43 completed, 0 failed")
        run("status", "set", f"{parent}.44", "failed", "-m", "404", db=db, check=True)
        wait_text(page, progress_cell(parent), "64 pending, 0 running, 43 completed, 1 failed")
        assert page.evaluate("() => window.__jobctl_marker") == "no reload"
        row = f'tr[data-job-id="{parent}"]'
        assert page.text_content(f"{row} td.status") == "running"  # the status is a word, not only a colour
        assert page.get_attribute(f"{row} .bar", "aria-label") == "44 of 108 finished"
        assert page.text_content(f"{row} .pct") == "40%"

        # names are text: the evil one is shown as typed, and runs nothing
        assert page.text_content(f'tr[data-job-id="{evil}"] td.name .label') == EVIL + "\\u202egnp.exe\\u200b"
        assert page.locator("img").count() == 0 and dialogs == []

        # a new top-level job appears at the top, live
        late = run("create", "late arrival", db=db, check=True).stdout.strip()
        wait_text(page, f'tr[data-job-id="{late}"] td.status', "pending")
        wait_text(page, f'tr[data-job-id="{late}"] td.name .label', "late arrival")
        assert page.locator("#jobs tbody tr").first.get_attribute("data-job-id") == late

        # by keyboard: rows take the focus, Enter opens the detail
        assert page.get_attribute(row, "tabindex") == "0"
        page.focus(row)
        page.keyboard.press("Enter")
        wait_text(page, "#detail-name", "News Crawler", 5000)
        wait_text(page, "#detail-progress", "64 pending, 0 running, 43 completed, 1 failed", 5000)
        page.wait_for_function("() => document.querySelectorAll('#children tbody tr').length === 108", timeout=5000)
        assert page.evaluate("() => window.__jobctl_marker") == "no reload"
        page.wait_for_function("() => document.querySelectorAll('#events tbody tr').length > 0", timeout=5000)
        run("status", "set", f"{parent}.45", "running", db=db, check=True)
        wait_text(page, f'#children tr[data-job-id="{parent}.45"] td.status', "running")
        wait_text(page, "#detail-progress", "63 pending, 1 running, 43 completed, 1 failed")
        run("log", f"{parent}.45", "fetching https://example.org/<script>", db=db, check=True)
        page.wait_for_function(
            "t => [...document.querySelectorAll('#log .text')].some(n => n.textContent === t)",
            arg=f"child {parent}.45: fetching https://example.org/<script>",
            timeout=1000,
        )
        page.wait_for_function(
            "t => [...document.querySelectorAll('#events td')].some(n => n.textContent === t)",
            arg="[info] fetching https://example.org/<script>",
            timeout=2000,
        )
        # a change with an attempt, as the server renders it (the page composes no text)
        run("status", "set", f"{parent}.46", "running", db=db, check=True)
        run("status", "set", f"{parent}.46", "failed", "-m", "exit code 1", db=db, check=True)
        page.wait_for_function(
            "t => [...document.querySelectorAll('#events td')].some(n => n.textContent === t)",
            arg="running → failed (attempt 1/3): exit code 1",
            timeout=2000,
        )
        page.wait_for_function(
            "t => [...document.querySelectorAll('#log .text')].some(n => n.textContent === t)",
            arg=f"child {parent}.46 running → failed (attempt 1/3): 62 pending, 1 running, 43 completed, 2 failed",
            timeout=1000,
        )
        failed = server.get(f"/api/jobs/{parent}.46")
        assert failed["duration_text"] is not None
        wait_text(page, f'#children tr[data-job-id="{parent}.46"] td.duration', failed["duration_text"])
        page.screenshot(path=str(tmp_path / "web-view-detail.png"))

        page.keyboard.press("Escape")
        page.wait_for_function("() => !document.getElementById('list-view').hidden", timeout=2000)
        assert page.evaluate("() => document.activeElement.dataset.jobId") == parent
        wait_text(page, progress_cell(parent), "62 pending, 1 running, 43 completed, 2 failed")
        assert page.evaluate("() => window.__jobctl_marker") == "no reload"
        shot = tmp_path / "web-view.png"
        box = page.locator("#list-view").bounding_box()
        page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1280, "height": box["y"] + box["height"] + 24})
        assert shot.stat().st_size > 10_000  # a picture of something, not a blank page
        if os.environ.get("JOBCTL_UPDATE_SCREENSHOT") == "1" and not db.startswith("postgresql://"):
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copy(shot, SCREENSHOT)
        assert problems == []
    finally:
        page.close()


@pytest.mark.slow
def test_the_page_follows_what_a_job_waits_on_as_it_changes(db, serve, browser):
    """A pending job's row says `waiting on P.1` while P.1 runs; once P.1 completes
    (from another process), the row and the job's own view stop saying so, without
    a reload: the page asks the server for the texts again, composing none."""
    with Jobctl(db) as jc:
        p = jc.create("release", id="P")
        (a,) = jc.spawn(p, count=1)
        b = jc.create("publish", parent=p, after=[a])
        jc.set_status([a], "running")
    token = secrets.token_urlsafe(24)
    server = serve(db, token=token)
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(f"{server.base}/?token={token}#/job/{p}")
        row = f'#children tr[data-job-id="{b}"] td.progress'
        wait_text(page, row, f"waiting on {a}", 10_000)
        wait_text(page, "#connection", "live", 10_000)
        run("status", "set", a, "completed", db=db, check=True)
        wait_text(page, row, "—", 5000)  # pending, and waiting on nothing
        page.goto(f"{server.base}/?token={token}#/job/{b}")
        wait_text(page, "#detail-after", f"{a} completed", 10_000)
        wait_text(page, "#detail-progress", "no children", 5000)
        assert problems == []
    finally:
        page.close()


def test_the_api_says_what_a_job_waits_on(db, serve):
    """A job created --after others: its rows carry after/waiting_on and the texts the page places."""
    with Jobctl(db) as jc:
        p = jc.create("release", id="P")
        a, b = jc.spawn(p, count=2)
        c = jc.create("publish", parent=p, after=[a], after_any=[b])
        jc.set_status([a], "completed")
    server = serve(db)
    rows = {j["id"]: j for j in server.get(f"/api/jobs?parent={p}")["jobs"]}
    assert rows[c]["waiting_on"] == [b]
    assert rows[c]["waiting_text"] == f"waiting on {b}"
    assert rows[c]["after_text"] == f"{a} completed, {b} pending (any outcome)"
    assert rows[a]["waiting_text"] is None and rows[a]["after_text"] is None
    assert server.get(f"/api/jobs/{c}")["waiting_text"] == f"waiting on {b}"
