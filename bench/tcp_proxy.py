#!/usr/bin/env python3
"""A TCP proxy that puts distance between a client and a server: every chunk
read from one side is written to the other `delay` seconds after it arrived,
in order, each direction on its own (so the round trip is 2 x delay). It is a
delay, not a bandwidth cap: chunks received 1 ms apart leave 1 ms apart.
No root and no `tc` needed; it listens on 127.0.0.1 on a port of its own.

    with Proxy("127.0.0.1", 5432, delay=0.005) as proxy:   # RTT 10 ms
        connect(port=proxy.port)
        cut = proxy.cut_after_client_sends(b"COMMIT")       # the next COMMIT's reply is lost
        ...
        assert cut.wait(5)

    python bench/tcp_proxy.py --target HOST:PORT --delay 0.005 [--port P]

cut_after_client_sends(pattern): the next client->server chunk containing
`pattern` is forwarded to the server, then the client's side is dropped at
once and the server's is half-closed (it still receives everything it was sent
and may act on it; what it answers is read and thrown away), so no byte the
server sends after that chunk reaches the client. A pattern split across two
chunks is not seen. The event's `port` is then the cut connection's port as the
server sees it (PostgreSQL's pg_stat_activity.client_port). cut_all() drops every open connection (a network cut).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import threading

_EOF = object()  # queued in place of data: the sender half-closed
_CLOSE = object()  # queued in place of data: the sender's connection is gone


class _Pipe:
    """One direction of one connection: a queue of (due time, chunk), written in order when due."""

    def __init__(self, conn: _Conn, to_server: bool):
        self.conn, self.to_server = conn, to_server
        self.queue: collections.deque[tuple[float, object]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.eof_sent = False

    def put(self, data: object) -> None:
        loop = self.conn.proxy.loop
        self.queue.append((loop.time() + self.conn.proxy.delay, data))
        if self.timer is None:
            self.flush()

    def flush(self) -> None:
        self.timer = None
        conn = self.conn
        out = conn.server if self.to_server else conn.client
        if out is None or conn.closed:
            return  # the server side is not connected yet: flushed once it is
        loop = conn.proxy.loop
        now = loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is _CLOSE:
                conn.close()
                return
            if data is _EOF:
                self.eof_sent = True
                try:
                    if out.can_write_eof():
                        out.write_eof()
                except OSError:  # the other side is gone already
                    conn.close()
                    return
                if conn.up.eof_sent and conn.down.eof_sent:
                    conn.close()
                    return
                continue
            assert isinstance(data, bytes)
            out.write(data)
            if self.to_server and conn.proxy.cut_matches(data):
                conn.cut()
                return
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self.flush)


class _Side(asyncio.Protocol):
    def __init__(self, conn: _Conn, is_client: bool):
        self.conn, self.is_client = conn, is_client

    def connection_made(self, transport):  # type: ignore[override]
        self.conn.made(self.is_client, transport)

    def data_received(self, data: bytes) -> None:
        self.conn.received(self.is_client, data)

    def eof_received(self):
        self.conn.received(self.is_client, _EOF)
        return True  # keep our writing half open until the other direction is done too

    def connection_lost(self, exc):
        self.conn.received(self.is_client, _CLOSE)


class _Conn:
    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.up = _Pipe(self, to_server=True)
        self.down = _Pipe(self, to_server=False)
        self.closed = False
        self.discarding = False  # cut: the server's answers are read and dropped

    def made(self, is_client: bool, transport) -> None:
        if is_client:
            self.client = transport
            self.proxy.conns.add(self)
            self.proxy.loop.create_task(self.open_server())
        else:
            self.server = transport
            self.up.flush()

    async def open_server(self) -> None:
        try:
            await self.proxy.loop.create_connection(lambda: _Side(self, False), self.proxy.host, self.proxy.target_port)
        except OSError:
            self.close()

    def received(self, from_client: bool, data: object) -> None:
        if self.closed:
            return
        if self.discarding:
            if not from_client and data is _CLOSE:
                self.close()
            return
        (self.up if from_client else self.down).put(data)

    def cut(self) -> None:
        """The chunk just written is the last the server gets; the client gets nothing more."""
        port = self.server.get_extra_info("sockname")[1] if self.server is not None else None
        self.discarding = True
        self.down.queue.clear()
        if self.client is not None:
            self.client.abort()
        try:
            if self.server is not None and self.server.can_write_eof():
                self.server.write_eof()
        except OSError:
            self.close()
        self.proxy.cut_done(port)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.conns.discard(self)
        for pipe in (self.up, self.down):
            if pipe.timer is not None:
                pipe.timer.cancel()
        for t in (self.client, self.server):
            if t is not None:
                t.close()


class Proxy:
    """See the module's docstring. Runs its own event loop in a daemon thread."""

    def __init__(self, target_host: str, target_port: int, delay: float = 0.0, port: int = 0):
        self.host, self.target_port, self.delay = target_host, target_port, delay
        self.loop = asyncio.new_event_loop()
        self.conns: set[_Conn] = set()
        self._cut_pattern: bytes | None = None
        self._cut_event: threading.Event | None = None
        self._lock = threading.Lock()
        self._listen_port = port
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> Proxy:
        ready = threading.Event()

        async def serve():
            self._server = await self.loop.create_server(
                lambda: _Side(_Conn(self), True), "127.0.0.1", self._listen_port
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.create_task(serve())
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("tcp_proxy: could not listen")
        return self

    def close(self) -> None:
        if self._thread is None:
            return

        def shutdown():
            for conn in list(self.conns):
                conn.close()
            if self._server is not None:
                self._server.close()
            self.loop.call_soon(self.loop.stop)

        self.loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)
        self._thread = None
        self.loop.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def cut_after_client_sends(self, pattern: bytes) -> threading.Event:
        """Arms a one-shot cut (see the module's docstring); the event is set once it happened."""
        with self._lock:
            self._cut_pattern, self._cut_event = pattern, threading.Event()
            return self._cut_event

    def cut_matches(self, data: bytes) -> bool:
        with self._lock:
            return self._cut_pattern is not None and self._cut_pattern in data

    def cut_done(self, port: int | None = None) -> None:
        with self._lock:
            event, self._cut_pattern, self._cut_event = self._cut_event, None, None
        if event is not None:
            event.port = port  # type: ignore[attr-defined]
            event.set()

    def cut_all(self) -> None:
        """Drops every open connection at once, both sides, without delivering what is queued."""
        done = threading.Event()

        def cut():
            for conn in list(self.conns):
                for t in (conn.client, conn.server):
                    if t is not None:
                        t.abort()
                conn.close()
            done.set()

        self.loop.call_soon_threadsafe(cut)
        done.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to each direction")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    proxy = Proxy(host or "127.0.0.1", int(port), args.delay, args.port).start()
    print(
        f"listening on 127.0.0.1:{proxy.port}, forwarding to {args.target} with {args.delay * 2000:g} ms RTT",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        proxy.close()


if __name__ == "__main__":
    main()
