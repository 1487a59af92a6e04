"""Serving the web process under gevent, with limits that keep idle or anonymous
connections from exhausting it (``python -m web serve``).

- **File descriptors.** At start the soft ``RLIMIT_NOFILE`` is raised to the hard
  limit, and the server holds at most ``MAX_CONNECTIONS`` connections (default:
  what that limit allows, two descriptors per websocket, a reserve kept); past
  that it stops accepting until one closes, instead of failing with "Too many
  open files".
- **Timeouts.** A connection must send a request line and its headers within
  ``HTTP_HEADER_TIMEOUT`` seconds (the same bound applies to the wait for the
  next request on a keep-alive connection); any single read or write (a body, a
  websocket frame) may wait ``HTTP_IDLE_TIMEOUT`` seconds.
- **Anonymous connections per IP.** A client IP may hold at most
  ``UNAUTH_CONNECTIONS_PER_IP`` connections that have not authenticated; more
  are answered ``429`` and closed at once. A connection stops counting as soon
  as a request on it authenticates or its Socket.IO connect is accepted
  (``environ["skald.connection"]()``), so signed-in users are limited by the
  per-user cap instead. Behind a proxy every connection comes from the proxy:
  set the cap to 0 there and let the proxy limit per client (README, Security).
- Nagle's algorithm is off on each connection: a websocket frame written while
  the previous one is unacknowledged would otherwise wait for the client's
  delayed ACK (40 ms on Linux; bench/LEVERS.md).
"""
from __future__ import annotations

import logging
import resource
import socket
import threading
from typing import Any

from gevent import Timeout, pywsgi
from gevent.pool import Pool

log = logging.getLogger(__name__)

FD_RESERVE = 100   # descriptors kept for Redis, the database, logs and files
REFUSAL = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\n"
           b"Content-Length: 38\r\n\r\ntoo many connections from your address")


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit to %s: %s", target, exc)
    return soft


class AnonymousCap:
    """Connections per client IP that have not authenticated (0: no cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def admit(self, ip: str) -> bool:
        with self._lock:
            held = self.counts.get(ip, 0)
            if self.cap and held >= self.cap:
                return False
            self.counts[ip] = held + 1
            return True

    def release(self, ip: str) -> None:
        with self._lock:
            left = self.counts.get(ip, 0) - 1
            if left > 0:
                self.counts[ip] = left
            else:
                self.counts.pop(ip, None)


class HeaderTimeout(Exception):
    """The request line and headers did not arrive within the header timeout."""


def make_handler(header_timeout: float = 10.0, idle_timeout: float = 60.0,
                 anonymous: AnonymousCap | None = None) -> type[pywsgi.WSGIHandler]:
    """gevent's request handler with the timeouts, the per-IP cap and TCP_NODELAY."""
    cap = anonymous or AnonymousCap(0)

    class Handler(pywsgi.WSGIHandler):
        def __init__(self, sock, address, server, rfile=None) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(idle_timeout)
            self._ip = address[0] if isinstance(address, tuple) else ""
            self._counted = False
            self._timer: Timeout | None = None
            super().__init__(sock, address, server, rfile)

        def handle(self) -> None:
            if not cap.admit(self._ip):
                log.warning("refused a connection from %s: too many anonymous ones", self._ip)
                try:
                    self.socket.sendall(REFUSAL)
                except OSError:
                    pass
                self.socket.close()
                return
            self._counted = True
            try:
                super().handle()
            finally:
                self.promote()

        def promote(self) -> None:
            """This connection authenticated (or closed): it no longer counts as anonymous."""
            if self._counted:
                self._counted = False
                cap.release(self._ip)

        def handle_one_request(self):
            self._timer = Timeout(header_timeout, HeaderTimeout)
            self._timer.start()
            try:
                return super().handle_one_request()
            finally:
                self._timer.close()

        def read_requestline(self) -> str:
            try:
                return super().read_requestline()
            except HeaderTimeout:
                raise TimeoutError("no request line in time") from None  # closes quietly

        def read_request(self, raw_requestline: str) -> Any:
            try:
                return super().read_request(raw_requestline)
            except HeaderTimeout:
                raise ValueError("the request headers did not arrive in time") from None  # 400
            finally:
                self._timer.close()  # the application itself runs without it

        def get_environ(self) -> dict:
            environ = super().get_environ()
            environ["skald.connection"] = self.promote
            return environ

    return Handler


def serve(app: Any, settings: Any) -> None:
    """Run ``app`` on ``WEB_HOST:WEB_PORT`` under gevent until stopped."""
    files = raise_fd_limit()
    limit = settings.max_connections or max(16, (files - FD_RESERVE) // 2)
    handler = make_handler(settings.http_header_timeout, settings.http_idle_timeout,
                           AnonymousCap(settings.unauth_connections_per_ip))
    log.info("serving at most %d connections (open-files limit %d)", limit, files)
    server = pywsgi.WSGIServer((settings.web_host, settings.web_port), app, handler_class=handler,
                               spawn=Pool(limit), log="default")
    server.serve_forever()
