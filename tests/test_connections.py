"""Connection exhaustion, with real sockets against a real ``python -m web serve``.

The server starts with a soft open-files limit of 256 (its hard limit stays);
attackers use other loopback addresses (127.0.0.x) than the legitimate clients
(127.0.0.1), so the per-IP cap applies to them only.
"""
from __future__ import annotations

import select
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import socketio
import websocket

from tests.support import wait_for

pytestmark = pytest.mark.slow
CAP = 20


@pytest.fixture(scope="module")
def guarded_web(procs, env):
    from devstack import free_port

    strict = {**env, "UNAUTH_CONNECTIONS_PER_IP": str(CAP), "HTTP_HEADER_TIMEOUT": "2",
              "SOCKETIO_CONNECT_TIMEOUT": "2", "CONNECTIONS_PER_USER": "20"}
    # A low soft limit, as many hosts start processes with: `serve` raises it to the hard one.
    argv = ["sh", "-c", 'ulimit -Sn 256 && exec "$0" -m web serve', sys.executable]
    proc = procs.start_web("web-guarded", strict, free_port(), argv=argv)
    yield proc
    proc.stop()


def open_from(ip: str, port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind((ip, 0))
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        out.append(s)
    return out


def state(s: socket.socket) -> str:
    """``open`` (nothing received), ``refused`` (a 429, then closed) or ``closed``."""
    if not select.select([s], [], [], 0)[0]:
        return "open"
    try:
        data = s.recv(4096, socket.MSG_PEEK)
    except (ConnectionResetError, BlockingIOError):
        return "closed"
    if data.startswith(b"HTTP/1.1 429"):
        return "refused"
    return "closed" if not data else "open"


def port_of(proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def test_idle_connections_cannot_exhaust_the_server(guarded_web, users):
    port = port_of(guarded_web)
    u = users("conn-legit")
    # 30 addresses x 20 idle connections = 600, more than the soft limit it started with.
    idle = [s for i in range(30) for s in open_from(f"127.0.0.{i + 2}", port, CAP)]
    flood = open_from("127.0.0.99", port, 100)  # one address beyond its cap
    try:
        wait_for(lambda: sum(state(s) == "refused" for s in flood) == 100 - CAP, 15,
                 what="the connections past the per-IP cap to be refused")
        # A legitimate client still gets in, over HTTP and Socket.IO.
        assert requests.get(f"{guarded_web.url}/healthz", timeout=10).ok
        client = socketio.Client(reconnection=False)
        client.connect(guarded_web.url, auth={"token": u["token"]}, transports=["websocket"],
                       wait_timeout=10)
        assert client.connected
        client.disconnect()
        # Idle connections that never send a request are closed by the header timeout.
        wait_for(lambda: all(state(s) != "open" for s in idle + flood), 30, interval=0.2,
                 what="the idle connections to be closed")
    finally:
        for s in idle + flood:
            s.close()
    assert "Too many open files" not in guarded_web.log()


def test_a_slow_header_sender_is_cut_off(guarded_web):
    s = socket.create_connection(("127.0.0.1", port_of(guarded_web)))
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400  # headers never end
    ended = False
    for byte in request:  # one byte every 0.1 s: 43 s to send it all
        if select.select([s], [], [], 0)[0]:  # the server answered or closed
            ended = True
            break
        try:
            s.sendall(bytes([byte]))
        except OSError:
            ended = True
            break
        time.sleep(0.1)
    try:
        answer = s.recv(4096) if ended else b"(still open)"
    except ConnectionResetError:
        answer = b""
    s.close()
    assert ended, "the server waited for the whole trickle"
    assert answer.startswith(b"HTTP/1.1 400") or answer == b"", answer[:100]


def test_engineio_sessions_must_connect_socketio_in_time(guarded_web, users):
    u = users("conn-handshake")
    url = guarded_web.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    raw = websocket.create_connection(url, timeout=5)
    assert raw.recv().startswith("0{")  # Engine.IO open; we never send the Socket.IO connect
    raw.settimeout(None)
    legit = socketio.Client(reconnection=False)
    legit.connect(guarded_web.url, auth={"token": u["token"]}, transports=["websocket"],
                  wait_timeout=10)
    closed = threading.Event()

    def keep_answering_pings() -> None:  # so only the handshake deadline can end it
        try:
            while True:
                message = raw.recv()
                if message == "2":
                    raw.send("3")
                elif not message:
                    break
        except (websocket.WebSocketException, OSError):
            pass
        closed.set()
    threading.Thread(target=keep_answering_pings, daemon=True).start()
    try:
        assert closed.wait(30), "the server kept an Engine.IO session that never connected"
        assert "no Socket.IO connect in time" in guarded_web.log()
        assert legit.connected  # a connected client is not affected
        assert legit.call("get_task_status", {"task_id": "6f1c1f64-6a6b-4f7e-9f55-2f0b2f3b6a51"},
                          timeout=10)["error"]["code"] == "not_found"
    finally:
        legit.disconnect()
        raw.close()


def test_authenticated_connections_do_not_count_as_anonymous(guarded_web, users):
    a, b = users("conn-many-a"), users("conn-many-b")
    clients = []
    try:
        for i in range(CAP + 10):  # from one address, more than the anonymous cap
            c = socketio.Client(reconnection=False)
            c.connect(guarded_web.url, auth={"token": (a if i % 2 else b)["token"]},
                      transports=["websocket"], wait_timeout=10)
            clients.append(c)
        assert all(c.connected for c in clients)
        assert requests.get(f"{guarded_web.url}/healthz", timeout=10).ok
    finally:
        with ThreadPoolExecutor(8) as pool:  # each disconnect waits for the server's close
            list(pool.map(lambda c: c.disconnect(), clients))
