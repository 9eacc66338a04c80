"""The web app of `jobctl serve`: Starlette routes over the Python API, the
live stream, and the guard (token, host check, security headers). Imported
only by `jobctl serve` (`jobctl.serve.app.main`), never by the CLI's hot path.

Read-only: every route is GET (HEAD); nothing here writes to the database.

The stream (`/api/stream`, Server-Sent Events): one `stream.Hub` thread follows
the events table and turns each event into its encoded messages once; the
event loop fans every batch out to the clients' queues (`App.deliver`).
A client joins at the hub's cursor H (on the loop, so no batch is half
delivered to it); if it asked to resume from an older cursor C it first gets
the events (C, H] replayed from the database (`stream.replay`, the same bytes
the hub made), then its queue: events > H. Everything it sends is filtered
by its own cursor, message by message, so there is no gap and no duplicate.
A client whose queue grows past `queue_events` (it cannot keep up, or its
replay is long) has its queue dropped and catches up from the database the
same way, from its own cursor: memory stays bounded and nothing is lost.
A client that takes nothing of what is sent to it for `send_timeout` seconds
(its socket buffers full) is dropped, its connection reset: it would hold a
replay slot, and the catching up of everyone else, for ever.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobctl import __version__, model
from jobctl.api import Jobctl
from jobctl.console import plain
from jobctl.model import DatabaseUnusable, JobctlError, UsageError
from jobctl.serve import stream
from jobctl.store import is_url

KEEPALIVE = 15.0  # seconds between comments on an idle stream (finds dead connections, keeps proxies open)
RETRY_MS = 1000  # what EventSource waits before reconnecting
QUEUE_EVENTS = 5_000  # events a stream client may fall behind before it catches up from the database (a few MB)
REPLAYS = 4  # replays from the database at once
SEND_TIMEOUT = 10.0  # seconds a stream client may take nothing before it is dropped
POOL = 8  # database connections for requests (each used by one thread at a time)
LIST_LIMIT, MAX_LIMIT = 1000, 10_000
EVENTS_LIMIT = 500

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
HTTP_STATUS = {model.EXIT_USAGE: 400, model.EXIT_NOT_FOUND: 404, model.EXIT_CONFLICT: 409, model.EXIT_DATABASE: 503}
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def error_response(status: int, message: str, exit_code: int, headers: dict | None = None) -> JSONResponse:
    """The one error shape: {"error": one line, "exit_code": what the CLI would exit with}."""
    return JSONResponse({"error": plain(message), "exit_code": exit_code}, status_code=status, headers=headers)


# ------------------------------------------------------------------ guard
class Guard:
    """Outermost ASGI layer: the token (when set) and the Host check (when
    not: a page on another site must not reach a loopback server through DNS
    rebinding), on every request and the stream alike; and the security
    headers on every response, errors included."""

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: set[str] | None):
        self.app, self.token, self.allowed_hosts = app, token, allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refusal = self.check(scope)
        if refusal is not None:
            await refusal(scope, receive, send_secure)
            return
        # uvicorn's transport: how a stream resets the connection of a client that reads nothing
        scope = {**scope, "jobctl.transport": getattr(getattr(send, "__self__", None), "transport", None)}
        raw = scope.get("raw_path")
        if raw and raw.startswith(b"/api/jobs/"):
            # routed on the path as sent (a job id is one percent-encoded segment, whatever
            # it contains); job_route() decodes it
            scope = {**scope, "path": raw.decode("latin-1")}
        await self.app(scope, receive, send_secure)

    def check(self, scope: Scope) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_hosts is not None:
            host = headers.get("host", "").lower()
            name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
            if name not in self.allowed_hosts:
                return error_response(403, f"host {host!r} is not this server's loopback address", model.EXIT_USAGE)
        if self.token is None:
            return None
        given = None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        else:
            given = next(iter(parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])), None)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            what = "a wrong token" if given is not None else "no token"
            return error_response(
                401,
                f"{what}: this server needs its token (Authorization: Bearer TOKEN, or ?token=TOKEN)",
                model.EXIT_USAGE,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None


# ------------------------------------------------------------- connections
class Pool:
    """Database connections for request threads: at most `size`, each used by
    one thread at a time, kept open between requests."""

    def __init__(self, db: str, size: int = POOL):
        self.db = db
        self.slots = threading.BoundedSemaphore(size)
        self.idle: list[Jobctl] = []
        self.lock = threading.Lock()

    @contextmanager
    def get(self) -> Iterator[Jobctl]:
        with self.slots:
            with self.lock:
                jc = self.idle.pop() if self.idle else None
            if jc is None:
                jc = Jobctl(self.db, create=False)
            healthy = False
            try:
                yield jc
                healthy = True
            except JobctlError as exc:
                healthy = not isinstance(exc, DatabaseUnusable)
                raise
            finally:
                if healthy:
                    with self.lock:
                        self.idle.append(jc)
                else:
                    jc.close()

    def close(self) -> None:
        with self.lock:
            for jc in self.idle:
                jc.close()
            self.idle.clear()


# ------------------------------------------------------------- parameters
def query(request: Request, allowed: dict[str, bool]) -> dict[str, list[str]]:
    """The query parameters, each known (`allowed`: name -> repeatable) and not
    repeated unless it may be; `token` is the guard's."""
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key == "token":
            continue
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise UsageError(f"unknown parameter {key!r} (valid: {valid})")
        out.setdefault(key, []).append(value)
        if len(out[key]) > 1 and not allowed[key]:
            raise UsageError(f"parameter {key!r} given more than once")
    return out


def int_param(params: dict[str, list[str]], name: str, default: int | None, low: int, high: int) -> int | None:
    if name not in params:
        return default
    text = params[name][0]
    digits = text.strip()
    value = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 20 else None
    if value is None or not low <= value <= high:
        raise UsageError(f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return value


def bool_param(params: dict[str, list[str]], name: str) -> bool:
    if name not in params:
        return False
    text = params[name][0].lower()
    if text in ("1", "true", "yes", ""):
        return True
    if text in ("0", "false", "no"):
        return False
    raise UsageError(f"{name} must be true or false, not {params[name][0]!r}")


def job_route(request: Request) -> tuple[str, str]:
    """/api/jobs/ID[/events|/logs] -> (id, what), from the raw path, so that an
    id with a `/` in it (allowed in ids) is one percent-encoded segment."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    parts = raw.decode("latin-1").split("?", 1)[0].split("/")[3:]  # after "", "api", "jobs"
    if len(parts) == 1 and parts[0]:
        return unquote(parts[0]), "job"
    if len(parts) == 2 and parts[0] and parts[1] in ("events", "logs"):
        return unquote(parts[0]), parts[1]
    raise HTTPException(404)


# ------------------------------------------------------------- read routes
def list_jobs(jc: Jobctl, statuses: list[str], parent: str | None, limit: int) -> dict:
    """Top-level jobs (or `parent`'s children), newest first, each with its
    progress when it has children, and the event cursor of the same snapshot:
    a client that starts its stream there misses nothing and repeats nothing.
    With `parent`, the parent itself (with its progress) comes too, as `parent`.
    The store picks the roots and the newest `limit` (+1, to say `more`)."""
    from itertools import islice

    with jc.snapshot():
        cursor = jc.last_event_id()
        listing = jc.list(parent=parent, status=statuses or None, top_level=parent is None, newest_first=True)
        jobs = list(islice(listing, limit + 1))
        listing.close()
        parent_row = jc.get(parent) if parent is not None else None
    out = {"jobs": [shown(j) for j in jobs[:limit]], "cursor": cursor, "more": len(jobs) > limit}
    if parent_row is not None:
        out["parent"] = shown(parent_row)
    return out


def shown(job: dict) -> dict:
    """A job row with the texts the page shows of it (stream.job_texts: rendered here, placed there)."""
    return {**job, **stream.job_texts(job)}


def job_events(jc: Jobctl, job_id: str, since: int, limit: int) -> dict:
    """A page of the events of the job and its descendants after `since`, each
    with its `text` (progress.event_text); `next` is the cursor for the following page."""
    from jobctl.progress import event_text
    from jobctl.render import event_json

    def shown(e: dict) -> dict:
        return {**event_json(e), "text": event_text(e)}

    feed = jc.feed(since, job=job_id, page=max(limit, 500))
    out: list[dict] = []
    for rows in feed.pages():
        for e in rows:
            out.append(e)
            if len(out) == limit:
                return {"events": [shown(x) for x in out], "next": e["id"], "more": True}
    return {"events": [shown(x) for x in out], "next": feed.cursor, "more": False}


class App:
    """The routes, the stream and the fan-out of one server."""

    def __init__(
        self,
        db: str,
        *,
        poll_interval: float = 1.0,
        queue_events: int = QUEUE_EVENTS,
        send_timeout: float = SEND_TIMEOUT,
        asset_query: str = "",
    ):
        """`asset_query`: what the page appends to its assets' URLs (`?token=...`), HTML-escaped."""
        self.db = db
        self.poll_interval = poll_interval
        self.queue_events = queue_events
        self.send_timeout = send_timeout
        self.pool = Pool(db)
        self.clients: set[Client] = set()
        self.cursor = 0  # the last event whose batch went out to the clients (loop side)
        self.hub: stream.Hub | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.replays: asyncio.Semaphore | None = None
        self.replays_done = 0  # streams that were sent events from the database (resumed or caught up)
        self.catch_ups = 0  # of those, after falling `queue_events` behind
        self.dropped = 0  # streams dropped for taking nothing for `send_timeout` seconds
        files = resources.files("jobctl.serve")
        page = files.joinpath("page.html").read_text("utf-8")
        self.page_html = page.replace("__Q__", asset_query).encode()
        self.files = {name: files.joinpath(name).read_bytes() for name in STATIC}

    # ---- life
    @asynccontextmanager
    async def lifespan(self, app: Starlette):
        self.loop = asyncio.get_running_loop()
        self.replays = asyncio.Semaphore(REPLAYS)
        jc = Jobctl(self.db, create=False)
        self.hub = stream.Hub(jc, self.deliver_threadsafe, self.poll_interval)
        self.cursor = self.hub.cursor
        self.hub.start()
        try:
            yield
        finally:
            self.close_streams()
            await anyio.to_thread.run_sync(self.hub.stop)
            self.pool.close()

    def deliver_threadsafe(self, batch: list[stream.Event], cursor: int) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.deliver, batch, cursor)

    def deliver(self, batch: list[stream.Event], cursor: int) -> None:
        """On the loop: one batch from the hub to every client's queue."""
        self.cursor = cursor
        for client in self.clients:
            client.push(batch)

    def join(self, client: Client) -> int:
        """On the loop: (re)register `client`; it gets every batch after the returned cursor."""
        client.reset()
        self.clients.add(client)
        return self.cursor

    def close_streams(self) -> None:
        for client in list(self.clients):
            client.close()

    def close_streams_threadsafe(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.close_streams)

    # ---- routes
    def routes(self) -> list[Route]:
        return [
            Route("/", self.page, methods=["GET"]),
            Route("/static/{name}", self.static, methods=["GET"]),
            Route("/api/health", self.health, methods=["GET"]),
            Route("/api/jobs", self.jobs, methods=["GET"]),
            Route("/api/jobs/{rest:path}", self.job, methods=["GET"]),
            Route("/api/stream", Stream(self), methods=["GET"]),
        ]

    def page(self, request: Request) -> Response:
        return Response(self.page_html, media_type="text/html; charset=utf-8")

    def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise HTTPException(404)
        return Response(self.files[name], media_type=STATIC[name])

    def health(self, request: Request) -> JSONResponse:
        query(request, {})
        return JSONResponse(
            {
                "ok": True,
                "version": __version__,
                "store": "postgresql" if is_url(self.db) else "sqlite",  # no path or URL: any client reads this
                "cursor": self.cursor,
                "clients": len(self.clients),
                "watchers": 1,
                "replays": self.replays_done,
                "catch_ups": self.catch_ups,
                "dropped": self.dropped,
                "wakeups": self.hub.mode if self.hub else None,
            }
        )

    def jobs(self, request: Request) -> JSONResponse:
        params = query(request, {"status": True, "parent": False, "limit": False})
        limit = int_param(params, "limit", LIST_LIMIT, 1, MAX_LIMIT)
        assert limit is not None
        parent = params.get("parent", [None])[0]
        with self.pool.get() as jc:
            return JSONResponse(list_jobs(jc, params.get("status", []), parent, limit))

    def job(self, request: Request) -> JSONResponse:
        job_id, what = job_route(request)
        if what == "job":
            query(request, {})
            with self.pool.get() as jc:
                return JSONResponse(shown(jc.get(job_id)))
        if what == "events":
            params = query(request, {"since": False, "limit": False})
            since = int_param(params, "since", 0, 0, model.MAX_INT)
            limit = int_param(params, "limit", EVENTS_LIMIT, 1, MAX_LIMIT)
            assert since is not None and limit is not None
            with self.pool.get() as jc:
                return JSONResponse(job_events(jc, job_id, since, limit))
        params = query(request, {"children": False, "tail": False})
        tail = int_param(params, "tail", None, 1, model.MAX_INT)
        with self.pool.get() as jc:
            lines = jc.logs(job_id, children=bool_param(params, "children"))
        return JSONResponse({"lines": lines[-tail:] if tail else lines})

    # ---- errors
    @staticmethod
    async def jobctl_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobctlError)
        return error_response(HTTP_STATUS.get(exc.exit_code, 500), str(exc), exc.exit_code)

    @staticmethod
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            text = f"{request.method} is not allowed: this server is read-only (GET only)"
            return error_response(405, text, model.EXIT_USAGE, headers={"Allow": "GET, HEAD"})
        return error_response(exc.status_code, f"no such endpoint: {request.url.path}", model.EXIT_USAGE)

    @staticmethod
    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", 1)


class Client:
    """One stream's queue of batches (on the event loop)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.pending: deque[list[stream.Event]] = deque()
        self.queued = 0
        self.overflow = False
        self.closed = False
        self.wake = asyncio.Event()

    def reset(self) -> None:
        self.pending.clear()
        self.queued = 0
        self.overflow = False

    def push(self, batch: list[stream.Event]) -> None:
        if self.overflow:
            return
        self.queued += len(batch)
        if self.queued > self.limit:  # too far behind: drop the queue, catch up from the database
            self.reset()
            self.overflow = True
        else:
            self.pending.append(batch)
        self.wake.set()

    def take(self) -> list[list[stream.Event]]:
        batches = list(self.pending)
        self.pending.clear()
        self.queued = 0
        return batches

    def close(self) -> None:
        self.closed = True
        self.wake.set()


def reset(transport: Any) -> None:
    """Reset a connection: close it now, dropping what is still unsent (a plain close
    would wait for ever for a client that reads nothing to take it)."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Stalled(Exception):
    """A stream client took nothing of what was sent to it for `send_timeout` seconds."""


def render(batches: list[list[stream.Event]], cursor: stream.Cursor) -> tuple[bytes, stream.Cursor]:
    """The messages of `batches` that come after `cursor`, and the cursor after them."""
    out: list[bytes] = []
    for batch in batches:
        for event_id, messages in batch:
            n, k = cursor
            if event_id < n or (event_id == n and k is None):
                continue
            for i, m in enumerate(messages):
                if stream.after(cursor, event_id, i):
                    out.append(m)
            cursor = (event_id, None)
    return b"".join(out), cursor


class Stream:
    """GET /api/stream[?since=CURSOR]: Server-Sent Events, resumable from
    `Last-Event-ID` (which wins, being newer) or `since`; without either,
    from now."""

    def __init__(self, app: App):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        request = Request(scope, receive)
        try:
            params = query(request, {"since": False})
            header = request.headers.get("last-event-id")  # bytes as latin-1 (Starlette): shown as UTF-8
            text = header.encode("latin-1").decode("utf-8", "backslashreplace") if header else None
            text = text or params.get("since", [None])[0]
            try:
                cursor = stream.parse_cursor(text) if text is not None else None
            except ValueError:
                raise UsageError(f"since must be an event id (N, or N.K from an SSE id), not {text!r}") from None
            if cursor is not None and cursor[0] > app.cursor:
                cursor = await anyio.to_thread.run_sync(self.clamp, cursor)
            if cursor is not None:  # resuming inside pruned history: 503, exit 5, before the stream starts
                await anyio.to_thread.run_sync(self.check_pruned, cursor)
        except JobctlError as exc:
            await (await App.jobctl_error(request, exc))(scope, receive, send)
            return
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        client = Client(app.queue_events)
        disconnect = asyncio.ensure_future(self.watch_disconnect(receive, client))

        async def bounded(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), app.send_timeout)
            except TimeoutError:
                raise Stalled from None

        try:
            await self.run(client, cursor, bounded)
            await bounded({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-write
            pass
        except Stalled:
            app.dropped += 1
            reset(scope.get("jobctl.transport"))
        finally:
            client.close()
            app.clients.discard(client)
            disconnect.cancel()

    def clamp(self, cursor: stream.Cursor) -> stream.Cursor:
        """A cursor past the database's last event (another database's, say) starts from its end."""
        with self.app.pool.get() as jc:
            last = jc.last_event_id()
        return cursor if cursor[0] <= last else (last, None)

    def check_pruned(self, cursor: stream.Cursor) -> None:
        """PrunedHistory if the replay after `cursor` would read across events `prune` removed."""
        with self.app.pool.get() as jc:
            jc.check_cursor(stream.replay_from(cursor))

    @staticmethod
    async def watch_disconnect(receive: Receive, client: Client) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                client.close()
                return

    async def run(self, client: Client, cursor: stream.Cursor | None, send: Send) -> None:
        app = self.app
        start = f"retry: {RETRY_MS}\n".encode()
        while not client.closed:
            if client.overflow:
                app.catch_ups += 1
            joined = app.join(client)
            if cursor is None:  # from now: tell the client where that is
                cursor = (joined, None)
                start += f"id: {joined}\n\n".encode()
            if start:
                await send({"type": "http.response.body", "body": start, "more_body": True})
                start = b""
            if stream.replay_from(cursor) < joined:
                cursor = await self.replay(client, cursor, joined, send)
            while not client.closed and not client.overflow:
                if not client.pending:
                    client.wake.clear()
                    try:
                        await asyncio.wait_for(client.wake.wait(), KEEPALIVE)
                    except TimeoutError:
                        await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                    continue
                body, cursor = render(client.take(), cursor)
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            # overflow: join again and catch up from the database, from our cursor

    async def replay(self, client: Client, cursor: stream.Cursor, until: int, send: Send) -> stream.Cursor:
        """Send the events (cursor, until] from the database, a page at a time,
        on a connection of the replay's own (opened and closed in a worker thread)."""
        app = self.app
        assert app.replays is not None
        async with app.replays:
            app.replays_done += 1
            jc = await anyio.to_thread.run_sync(lambda: Jobctl(app.db, create=False))
            pages = stream.replay(jc, stream.replay_from(cursor), until)
            try:
                while not client.closed:
                    page = await anyio.to_thread.run_sync(next, pages, None)
                    if page is None:
                        break
                    body, cursor = render([page], cursor)
                    if body:
                        await send({"type": "http.response.body", "body": body, "more_body": True})
            finally:
                pages.close()
                await anyio.to_thread.run_sync(jc.close)
        return cursor


# ------------------------------------------------------------------ wiring
class Server(uvicorn.Server):
    """uvicorn's server, ending the open streams as soon as it is asked to stop
    (otherwise it would wait for them, and they never end by themselves)."""

    def __init__(self, config: uvicorn.Config, app: App):
        super().__init__(config)
        self.jobctl_app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self.jobctl_app.close_streams_threadsafe()


def create_app(
    db: str,
    *,
    token: str | None = None,
    allowed_hosts: set[str] | None = None,
    poll_interval: float = 1.0,
    queue_events: int = QUEUE_EVENTS,
    send_timeout: float = SEND_TIMEOUT,
) -> tuple[ASGIApp, App]:
    """The ASGI app serving the database `db`, and its App (for the server)."""
    static_query = "?token=" + html.escape(quote(token, safe=""), quote=True) if token else ""
    app = App(
        db, poll_interval=poll_interval, queue_events=queue_events, send_timeout=send_timeout, asset_query=static_query
    )
    starlette = Starlette(
        routes=app.routes(),
        lifespan=app.lifespan,
        exception_handlers={
            JobctlError: App.jobctl_error,
            HTTPException: App.http_error,
            Exception: App.server_error,
        },
    )
    return Guard(starlette, token, allowed_hosts), app
