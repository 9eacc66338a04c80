"""bench/tcp_proxy.py against a real echo server: bytes arrive whole, in order,
not before the delay, and a cut lets the server receive the chunk but keeps its
answer from the client."""

import importlib.util
import socket
import socketserver
import threading
import time

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("tcp_proxy", ROOT / "bench" / "tcp_proxy.py")
assert _spec and _spec.loader
tcp_proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tcp_proxy)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.server.received.append(data)  # type: ignore[attr-defined]
            self.request.sendall(data)


@pytest.fixture
def echo():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_bytes_arrive_whole_and_in_order(echo):
    payload = bytes(range(256)) * 4096  # 1 MiB, many chunks
    with tcp_proxy.Proxy("127.0.0.1", echo.server_address[1], delay=0.002) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            assert recv_exactly(sock, len(payload)) == payload
            sender.join()


def test_a_round_trip_takes_at_least_twice_the_delay(echo):
    delay = 0.05
    with tcp_proxy.Proxy("127.0.0.1", echo.server_address[1], delay=delay) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            for k in range(3):
                start = time.monotonic()
                sock.sendall(b"ping %d" % k)
                assert recv_exactly(sock, 6) == b"ping %d" % k
                assert time.monotonic() - start >= 2 * delay


def test_the_delay_is_not_a_bandwidth_cap(echo):
    """Chunks sent in quick succession are each delayed, not queued behind one another's delay."""
    delay = 0.1
    with tcp_proxy.Proxy("127.0.0.1", echo.server_address[1], delay=delay) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.monotonic()
            for k in range(10):
                sock.sendall(b"%d;" % k)
                time.sleep(0.001)
            got = recv_exactly(sock, 20)
            elapsed = time.monotonic() - start
    assert got == b"".join(b"%d;" % k for k in range(10))
    assert 2 * delay <= elapsed < 10 * delay  # ten chunks queued one delay after another would take 10+


def test_a_cut_delivers_the_chunk_to_the_server_but_not_its_answer(echo):
    with tcp_proxy.Proxy("127.0.0.1", echo.server_address[1], delay=0.01) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"BEGIN")
            assert recv_exactly(sock, 5) == b"BEGIN"
            cut = proxy.cut_after_client_sends(b"COMMIT")
            sock.sendall(b"COMMIT")
            assert cut.wait(5)
            try:
                answer = sock.recv(100)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # the connection is gone and the echo never came back
        deadline = time.monotonic() + 5
        while b"COMMIT" not in b"".join(echo.received) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"".join(echo.received) == b"BEGINCOMMIT"
        # one-shot: the next connection passes COMMIT through
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"COMMIT")
            assert recv_exactly(sock, 6) == b"COMMIT"


def test_cut_all_drops_open_connections_and_new_ones_work(echo):
    with tcp_proxy.Proxy("127.0.0.1", echo.server_address[1]) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        proxy.cut_all()
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
        sock.close()
        with socket.create_connection(("127.0.0.1", proxy.port)) as again:
            again.sendall(b"y")
            assert recv_exactly(again, 1) == b"y"
