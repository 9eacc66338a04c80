"""`jobctl serve [--host 127.0.0.1] [--port 8765] [--token TOKEN]`: the body of
the command. It checks the options (one-line errors, the CLI's exit codes),
binds the socket itself (so a port in use is an error, not a traceback) and
runs uvicorn. Starlette and uvicorn are imported here only when the server
runs: importing this module costs the CLI nothing.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from jobctl.api import Jobctl
from jobctl.console import info
from jobctl.model import EXIT_DATABASE, EXIT_INTERRUPTED, JobctlError, UsageError
from jobctl.store import resolve_db_path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_ENV = "JOBCTL_SERVE_TOKEN"
QUEUE_ENV = "JOBCTL_SERVE_QUEUE_EVENTS"  # how far a stream client may fall behind before catching up from the db
SEND_TIMEOUT_ENV = "JOBCTL_SERVE_SEND_TIMEOUT"  # seconds a stream client may read nothing before it is dropped
MIN_TOKEN = 16
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; a host name other than localhost is not trusted to be."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_options(host: str, port: int, token: str | None) -> str | None:
    """Validate the options; returns the token in force (--token, else $JOBCTL_SERVE_TOKEN)."""
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if not host or not host.strip() or any(c.isspace() for c in host):
        raise UsageError(f"--host must be an address or host name, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UsageError(f"--port must be a whole number from 1 to 65535, not {port!r}")
    if token is not None:
        if len(token) < MIN_TOKEN or not all("!" <= c <= "~" for c in token):
            raise UsageError(
                f"--token must be at least {MIN_TOKEN} printable ASCII characters without spaces"
                " (make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
    elif not is_loopback(host):
        raise UsageError(
            f"serving on {host} (not a loopback address) needs --token TOKEN (or ${TOKEN_ENV}):"
            " every request and the stream must then carry it"
        )
    return token


def queue_events_from_env() -> int | None:
    raw = os.environ.get(QUEUE_ENV)
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError(f"{QUEUE_ENV} must be a positive whole number, not {raw!r}")
    return int(raw)


def send_timeout_from_env() -> float | None:
    raw = os.environ.get(SEND_TIMEOUT_ENV)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise UsageError(f"{SEND_TIMEOUT_ENV} must be a number of seconds from 0 to 3600, not {raw!r}")
    return value


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (uvicorn listens on it)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(host: str, port: int) -> str:
    name = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{name}:{port}/"


def main(db: str | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None) -> int:
    """Serve the database `db` (--db, $JOBCTL_DB or the default) until Ctrl-C
    (exit 130) or SIGTERM. Raises JobctlError for bad options (2) or a
    database that cannot be read (5)."""
    token = check_options(host, port, token)
    queue_events = queue_events_from_env()
    send_timeout = send_timeout_from_env()
    path = resolve_db_path(db)
    with Jobctl(path, create=False) as jc:  # an unusable database is exit 5 now, not a failing page later
        name = jc.name
    try:
        import uvicorn

        from jobctl.serve import web
    except ImportError as exc:
        raise UsageError(f"jobctl serve needs the web extra: pip install 'jobctl[web]' ({exc})") from None
    sock = bind(host, port)
    allowed = None if token is not None else LOOPBACK_NAMES | {host.lower(), f"[{host.strip('[]').lower()}]"}
    options: dict = {} if queue_events is None else {"queue_events": queue_events}
    if send_timeout is not None:
        options["send_timeout"] = send_timeout
    asgi, app = web.create_app(path, token=token, allowed_hosts=allowed, **options)
    config = uvicorn.Config(
        asgi,
        log_level="warning",
        access_log=False,  # a ?token= in a URL must not end up in a log
        lifespan="on",
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=3,
    )
    server = web.Server(config, app)
    where = url_of(host, port) + ("?token=YOUR_TOKEN" if token else "")
    info(f"serving {name} read-only at {where} (Ctrl-C stops)")
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # uvicorn gives up this way when the app cannot start
        if exc.code:
            raise JobctlError("the web server could not start (see above)", EXIT_DATABASE) from None
    finally:
        sock.close()
    return 0
