"""Operator alerts (``admin_alert``, PROTOCOL.md): when to raise each, once. No I/O.

Kinds: ``worker_offline`` (an offline event, or heartbeats that stopped),
``failure_burst`` (``failure_burst`` failures within ``failure_window`` s,
one alert per window), ``queue_backlog`` (the broker holds ``queue_backlog``
messages or more; again only after it fell below), ``bridge_lag`` (the bridge
is more than ``lag_alert`` s behind the stream or holds more than
``backlog_alert`` events; again only after both halved).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from bridge.state import Update
from bridge.workers import Worker
from protocol import ADMIN_ALERT, ADMIN_ROOM

ALERTS_KEPT = 50    # recent alerts kept for the page
IDLE_AFTER = 2.0    # s without events (and nothing waiting) before lag reads 0


class Alerts:
    """Raises alerts and keeps the recent ones. Defaults: a burst is 5 failures within
    60 s; a backlog 100 queued messages; lag 10 s or 10 000 events waiting in the bridge."""

    def __init__(self, *, failure_burst: int = 5, failure_window: float = 60.0,
                 queue_backlog: int = 100, lag_alert: float = 10.0,
                 backlog_alert: int = 10_000) -> None:
        self.failure_burst = max(1, failure_burst)
        self.failure_window = failure_window
        self.queue_backlog = queue_backlog
        self.lag_alert = lag_alert
        self.backlog_alert = backlog_alert
        self.recent: deque[dict] = deque(maxlen=ALERTS_KEPT)
        self.totals: dict[str, int] = {}
        self.changed = False
        self._seq = 0
        self._failures: deque[float] = deque(maxlen=self.failure_burst)
        self._burst_until = 0.0
        self._raised: set[str] = set()  # kinds raised and not cleared since

    def worker_offline(self, host: str, now: float) -> Update:
        return self._alert("warning", "worker_offline", now, f"worker {host} went offline",
                           hostname=host)

    def worker_silent(self, worker: Worker, now: float) -> Update:
        return self._alert("critical", "worker_offline", now,
                           f"worker {worker.hostname} missed its heartbeats for "
                           f"{now - worker.last_heartbeat:.0f}s", hostname=worker.hostname)

    def failure(self, now: float) -> list[Update]:
        """A task failed (live, not reconciled): a burst alert once per window."""
        self._failures.append(now)
        if (len(self._failures) < self.failure_burst or now < self._burst_until
                or now - self._failures[0] > self.failure_window):
            return []
        self._burst_until = now + self.failure_window
        return [self._alert("critical", "failure_burst", now,
                            f"{self.failure_burst} tasks failed within "
                            f"{now - self._failures[0]:.0f}s", count=self.failure_burst,
                            window=self.failure_window)]

    def backlog(self, queues: dict[str, int] | None, now: float) -> list[Update]:
        if queues is None or self.queue_backlog <= 0:
            return []
        queued = sum(queues.values())
        if not self._edge("queue_backlog", queued >= self.queue_backlog, queued < self.queue_backlog):
            return []
        return [self._alert("warning", "queue_backlog", now,
                            f"{queued} tasks wait in the broker (threshold {self.queue_backlog})",
                            queued=queued, queues=dict(queues))]

    def lag(self, lag: float, waiting: int, now: float) -> list[Update]:
        behind = lag > self.lag_alert or waiting > self.backlog_alert
        caught_up = lag <= self.lag_alert / 2 and waiting <= self.backlog_alert / 2
        if not self._edge("bridge_lag", behind, caught_up):
            return []
        return [self._alert("warning", "bridge_lag", now,
                            f"the bridge is {lag:.1f}s behind the event stream "
                            f"({waiting} events waiting)", lag=round(lag, 3), backlog=waiting)]

    def notice(self, level: str, kind: str, now: float, message: str, **extra: Any) -> Update:
        """An alert decided elsewhere (the sweeper: ``job_resubmitted``, ``job_lost``)."""
        return self._alert(level, kind, now, message, **extra)

    def _edge(self, kind: str, over: bool, cleared: bool) -> bool:
        """True the first time ``over`` holds, and again only after ``cleared`` held."""
        if not over:
            if cleared:
                self._raised.discard(kind)
            return False
        if kind in self._raised:
            return False
        self._raised.add(kind)
        return True

    def load(self, stored: Iterable[Any]) -> None:
        self.recent.extend(a for a in stored if isinstance(a, dict))

    def load_totals(self, totals: dict[str, int]) -> None:
        self.totals.update({kind[:40]: n for kind, n in totals.items()})

    def _alert(self, level: str, kind: str, now: float, message: str, **extra: Any) -> Update:
        payload = {"level": level, "kind": kind, "message": message, "at": now, **extra}
        self.recent.append(payload)
        self.changed = True
        self.totals[kind] = self.totals.get(kind, 0) + 1
        self._seq += 1
        # A key of its own per alert: the coalescer never folds two alerts together.
        return Update(ADMIN_ALERT, ADMIN_ROOM, f"alert:{self._seq}", payload)
