"""Socket.IO connections of this web process: who they are, which endings they got,
whether their credentials still hold, and Engine.IO sessions that never connect.

- :class:`Connections` maps each Socket.IO sid to its :class:`Conn` (the
  principal it authenticated as, its event bucket, and the tasks whose ending it
  already received, so no client ever gets a job's ending twice: see
  :meth:`Connections.claim_ending`).
- :class:`Guard` re-checks credentials: per event when the last check is older
  than ``AUTH_RECHECK_SECONDS``, for one user at once when a credential change
  is announced (``web/accounts.announce``), and for every connection every
  ``AUTH_SWEEP_SECONDS`` (the backstop when an announcement was lost). A
  connection whose credentials no longer hold is disconnected.
- Engine.IO sessions that have not completed a Socket.IO connect within
  ``SOCKETIO_CONNECT_TIMEOUT`` are closed (they would otherwise stay forever,
  outside the per-user cap).
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from web.accounts import Principal
from web.ratelimit import TokenBucket
from web.sessions import still_current

log = logging.getLogger(__name__)

TICK = 1.0  # s between looks at pending handshakes (and sweep due times)


@dataclass
class Conn:
    user: Principal
    bucket: TokenBucket
    checked: float = field(default_factory=time.monotonic)  # last credential check
    ended: set[str] = field(default_factory=set)  # task ids whose ending it received


class Connections:
    """Who is connected to this web process (per-process, thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_sid: dict[str, Conn] = {}
        self.per_user: dict[int, int] = {}

    def add(self, sid: str, conn: Conn, cap: int) -> bool:
        with self._lock:
            if self.per_user.get(conn.user.id, 0) >= cap:
                return False
            self.by_sid[sid] = conn
            self.per_user[conn.user.id] = self.per_user.get(conn.user.id, 0) + 1
            return True

    def remove(self, sid: str) -> None:
        with self._lock:
            conn = self.by_sid.pop(sid, None)
            if conn is not None:
                left = self.per_user.get(conn.user.id, 1) - 1
                if left > 0:
                    self.per_user[conn.user.id] = left
                else:
                    self.per_user.pop(conn.user.id, None)

    def get(self, sid: str) -> Conn | None:
        return self.by_sid.get(sid)

    def items(self, user_id: int | None = None) -> list[tuple[str, Conn]]:
        with self._lock:
            return [(sid, c) for sid, c in self.by_sid.items()
                    if user_id is None or c.user.id == user_id]

    def claim_ending(self, sid: str, task_id: str) -> bool:
        """True once per (connection, task): the caller then sends that ending."""
        with self._lock:
            conn = self.by_sid.get(sid)
            if conn is None or task_id in conn.ended:
                return False
            conn.ended.add(task_id)
            return True

    def has_ending(self, sid: str, task_id: str) -> bool:
        conn = self.by_sid.get(sid)
        return conn is not None and task_id in conn.ended

    def forget_task(self, sid: str, task_id: str) -> None:
        with self._lock:
            conn = self.by_sid.get(sid)
            if conn is not None:
                conn.ended.discard(task_id)

    def __len__(self) -> int:
        return len(self.by_sid)


class Guard:
    """Credential re-checks and handshake deadlines for one app's connections."""

    def __init__(self, conns: Connections, db: Callable[[], Any], settings: Any,
                 disconnect: Callable[[str], None]) -> None:
        self.conns = conns
        self.db = db
        self.max_age = settings.session_max_age
        self.recheck = settings.auth_recheck_seconds
        self.sweep_every = settings.auth_sweep_seconds
        self.handshake = settings.socketio_connect_timeout
        self.disconnect = disconnect
        self._pending: dict[str, float] = {}  # Engine.IO sid -> deadline of its Socket.IO connect
        self._lock = threading.Lock()

    # -- credentials ------------------------------------------------------------------------
    def current(self, sid: str, conn: Conn) -> bool:
        """Whether ``conn`` may act now (re-checked when the last check is too old)."""
        if time.monotonic() - conn.checked < self.recheck:
            return True
        return not self._drop_stale([(sid, conn)])

    def recheck_user(self, user_id: int) -> int:
        """Re-check every connection of ``user_id`` now; returns how many were dropped."""
        return len(self._drop_stale(self.conns.items(user_id)))

    def sweep(self) -> int:
        return len(self._drop_stale(self.conns.items()))

    def _drop_stale(self, items: list[tuple[str, Conn]]) -> list[str]:
        # A watch token's connection has no user to re-check: its token is checked per event.
        items = [(sid, c) for sid, c in items if c.user.is_authenticated]
        if not items:
            return []
        try:
            with self.db() as db:
                verdicts = still_current(db, [c.user for _, c in items], self.max_age)
        except SQLAlchemyError as exc:
            log.warning("cannot re-check connection credentials: %s", exc)
            return []
        now = time.monotonic()
        stale = []
        for (sid, conn), ok in zip(items, verdicts):
            if ok:
                conn.checked = now
            else:
                stale.append(sid)
        for sid in stale:
            log.info("disconnecting %s: its credentials changed", sid)
            self.disconnect(sid)
        return stale

    # -- handshakes -------------------------------------------------------------------------------
    def opened(self, eio_sid: str) -> None:
        with self._lock:
            self._pending[eio_sid] = time.monotonic() + self.handshake

    def connected(self, eio_sid: str | None) -> None:
        with self._lock:
            self._pending.pop(eio_sid, None)

    def overdue(self, alive: Callable[[str], bool]) -> list[str]:
        """Engine.IO sessions past their deadline that are still open (and forgets them)."""
        now = time.monotonic()
        with self._lock:
            due = [s for s, deadline in self._pending.items() if deadline <= now]
            for s in due:
                del self._pending[s]
        return [s for s in due if alive(s)]


def install(socketio: Any, guard: Guard) -> None:
    """Hook the Engine.IO connect (handshake deadlines) and start the guard's loop:
    every :data:`TICK` s overdue handshakes are closed, every ``AUTH_SWEEP_SECONDS``
    every connection is re-checked. The loop holds the guard weakly and ends with the app."""
    eio = socketio.server.eio
    original = eio.handlers["connect"]
    ref = weakref.ref(guard)
    del guard

    def on_eio_connect(eio_sid: str, environ: dict, *args: Any) -> Any:
        if (g := ref()) is not None:
            g.opened(eio_sid)
        return original(eio_sid, environ, *args)
    eio.on("connect", on_eio_connect)

    def loop() -> None:
        next_sweep = time.monotonic()
        while (g := ref()) is not None:
            try:
                for eio_sid in g.overdue(lambda s: s in eio.sockets):
                    log.info("closing Engine.IO session %s: no Socket.IO connect in time", eio_sid)
                    eio.disconnect(eio_sid)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + g.sweep_every
                    g.sweep()
            except Exception:  # noqa: BLE001 - the guard must outlive any one bad round
                log.exception("connection guard round failed")
            del g
            socketio.sleep(TICK)

    socketio.start_background_task(loop)
