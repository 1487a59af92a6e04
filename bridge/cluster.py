"""The operator view: workers, task counters, throughput and alerts. No I/O.

``Cluster`` keeps no tasks of its own: the board (bridge/state.py) is the one
table of tasks, and its :class:`~bridge.state.Transition` objects are what is
counted here (open tasks by state and name, tasks that reached each state,
endings per minute, runtimes, failures). It also sees every event the bridge
consumes (:meth:`Cluster.observe`: event counts, lag, ``worker-*`` events) and,
about once a second, :meth:`Cluster.tick`. Both return
:class:`~bridge.state.Update` objects for the ``admin`` room: ``admin_alert``
and ``system_metrics_update`` (PROTOCOL.md). The clock is injected, so
liveness and rates are testable without sleeping.

Bounded memory: at most ``max_names`` distinct task names per counter (others
fold into ``other``), fixed-size ring buffers for rates and history, workers
bounded by bridge/workers.py. Bridge lag is ``now - timestamp`` of the latest
event (worker and bridge clocks are assumed in sync, as NTP does); it drops
to 0 when the bridge is idle with nothing waiting.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from bridge import alerts
from bridge.state import EVENT, STORE, Transition, Update
from bridge.task import as_count, as_number
from bridge.workers import Workers
from protocol import ADMIN_ROOM, SYSTEM_METRICS_UPDATE, TERMINAL_STATES
from tasks import events as ev

OTHER = "other"
UNKNOWN = "unknown"
RUNNING_STATES = ("STARTED", "PROGRESS", "CANCELLING")
WAITING_STATES = ("PENDING", "RECEIVED")
# Histogram bounds of task runtimes, seconds (a +Inf bucket follows).
RUNTIME_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
KNOWN_EVENTS = frozenset({
    ev.TASK_SENT, ev.TASK_RECEIVED, ev.TASK_STARTED, ev.TASK_PROGRESS, ev.TASK_SUCCEEDED,
    ev.TASK_FAILED, ev.TASK_REJECTED, ev.TASK_REVOKED, ev.TASK_RETRIED, ev.TASK_CANCELLED,
    ev.WORKER_ONLINE, ev.WORKER_HEARTBEAT, ev.WORKER_OFFLINE})
HISTORY_STEP = 5.0         # s between history points (charts of the last minutes)
HISTORY_LEN = 180          # points kept: 15 minutes
HISTORY_COLUMNS = ("t", "events_per_second", "tasks_per_minute", "active_jobs", "queued",
                   "failed_per_minute")
RATE_WINDOW = 10           # s over which events_per_second is averaged


class Rate:
    """Counts per second in a ring of ``size`` one-second buckets."""

    __slots__ = ("size", "_counts", "_stamps")

    def __init__(self, size: int = 60) -> None:
        self.size = size
        self._counts = [0] * size
        self._stamps = [-1] * size

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        i = second % self.size
        if self._stamps[i] != second:
            self._stamps[i], self._counts[i] = second, 0
        self._counts[i] += n

    def total(self, now: float, window: int) -> int:
        """Events in the last ``window`` whole seconds (this one included)."""
        second = int(now)
        low = second - min(window, self.size) + 1
        return sum(c for c, s in zip(self._counts, self._stamps) if low <= s <= second)


class Cluster:
    """Workers and task counters of the whole cluster, with alerts.

    Defaults: ``offline_after`` 10 s (Celery heartbeats every 2 s), the alert
    thresholds of bridge/alerts.py, at most 1 000 workers and 100 task names; a
    worker offline for a day (``forget_after``) is forgotten. Every known worker
    rides on each ``system_metrics_update`` (no cap below ``max_workers``).
    """

    def __init__(self, *, offline_after: float = 10.0, max_workers: int = 1000,
                 forget_after: float = 86400.0, max_names: int = 100,
                 clock: Callable[[], float] = time.time, **thresholds: Any) -> None:
        self.clock = clock
        self.max_names = max_names
        self.workers = Workers(offline_after, max_workers, forget_after)
        self.alerts = alerts.Alerts(**thresholds)
        self._names: set[str] = set()
        self.open_counts: dict[tuple[str, str], int] = {}   # (state, name) -> open tasks
        self.task_totals: dict[tuple[str, str], int] = {}   # (state, name) -> tasks that got there
        self.event_totals: dict[str, int] = {}              # event type -> events consumed
        self.runtimes: dict[str, list] = {}                 # name -> [bucket counts, sum, count]
        self.day = -1
        self.completed_today = self.failed_today = self.revoked_today = 0
        self._events, self._ends, self._failures = Rate(60), Rate(60), Rate(60)
        self.queues: dict[str, int] | None = None   # broker queue lengths, None: unknown
        self.watchers = 0
        self.backlog = 0
        self.lag = 0.0
        self._last_event = 0.0
        self.history: deque[list] = deque(maxlen=HISTORY_LEN)
        self._next_sample = 0.0
        self.history_changed = False

    # -- inputs ---------------------------------------------------------------------
    def observe(self, events: list[Any]) -> list[Update]:
        """Events from the stream (any type), in order: counted; ``worker-*`` ones move
        workers. Lag is that of the newest one with a timestamp."""
        now = self.clock()
        self._roll_day(now)
        out: list[Update] = []
        totals, counted, stamp = self.event_totals, 0, None
        for event in events:
            etype = event.get("type") if isinstance(event, dict) else None
            if not isinstance(etype, str):
                continue
            counted += 1
            kind = etype if etype in KNOWN_EVENTS else OTHER
            totals[kind] = totals.get(kind, 0) + 1
            stamp = as_number(event.get("timestamp"), stamp)
            if etype.startswith("worker-"):
                gone = self.workers.apply(etype, event, now)
                if gone:
                    out.append(self.alerts.worker_offline(gone, now))
        if counted:
            self._events.add(now, counted)
            self._last_event = now
        if stamp is not None:
            self.lag = max(0.0, now - stamp)
        return out

    def transitions(self, moves: Iterable[Transition]) -> list[Update]:
        """Count the board's transitions; returns the alerts they raise (a failure burst)."""
        out: list[Update] = []
        now = self.clock()
        self._roll_day(now)
        for move in moves:
            if move.before is not None:
                self._count(self.open_counts, self._bucket(move.before), -1)
            if move.after is None:
                continue
            state, name = self._bucket(move.after)
            if state not in TERMINAL_STATES:
                self._count(self.open_counts, (state, name), 1)
            if move.source == STORE or (move.before is not None and move.before[0] == state):
                continue  # reloaded, or only the name was learnt: nothing new reached
            self._count(self.task_totals, (state, name), 1)
            if state in TERMINAL_STATES:
                out += self._ended(state, name, move, now)
        return out

    def set_queues(self, lengths: dict[str, int] | None) -> None:
        """Broker queue lengths (None when the broker could not be read)."""
        self.queues = dict(lengths) if lengths is not None else None

    def set_watchers(self, count: int) -> None:
        self.watchers = max(0, int(count))

    def set_backlog(self, waiting: int) -> None:
        """Items waiting in the bridge's own queue."""
        self.backlog = max(0, int(waiting))

    # -- the tick -------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[Update]:
        """Liveness expiry, backlog and lag alerts, a history point, and the metrics update."""
        now = self.clock() if now is None else now
        self._roll_day(now)
        out = [self.alerts.worker_silent(w, now) for w in self.workers.expire(now)]
        self.workers.forget(now)
        out += self.alerts.backlog(self.queues, now)
        if self.backlog == 0 and now - self._last_event >= alerts.IDLE_AFTER:
            self.lag = 0.0
        out += self.alerts.lag(self.lag, self.backlog, now)
        metrics = self.metrics(now)
        if now >= self._next_sample:
            self.history.append([round(now, 3)] + [metrics[c] for c in HISTORY_COLUMNS[1:]])
            self._next_sample = now + HISTORY_STEP
            self.history_changed = True
        out.append(Update(SYSTEM_METRICS_UPDATE, ADMIN_ROOM, "metrics",
                          {"metrics": metrics, "workers": self.workers.as_list()}))
        return out

    # -- outputs ------------------------------------------------------------------------------
    def metrics(self, now: float | None = None) -> dict[str, Any]:
        """The ``system_metrics_update`` metrics (PROTOCOL.md) plus extra fields."""
        now = self.clock() if now is None else now
        states = self.states()
        waiting = sum(states.get(s, 0) for s in WAITING_STATES)
        online = [w for w in self.workers if w.online and w.loadavg]
        load: list[float] = []
        if online:
            width = min(len(w.loadavg) for w in online)
            load = [round(sum(w.loadavg[i] for w in online) / len(online), 2) for i in range(width)]
        return {
            "active_jobs": sum(states.get(s, 0) for s in RUNNING_STATES),
            "queued": sum(self.queues.values()) if self.queues is not None else waiting,
            "completed_today": self.completed_today,
            "failed_today": self.failed_today,
            "workers_online": self.workers.online(),
            "events_per_second": round(self._events.total(now, RATE_WINDOW) / RATE_WINDOW, 2),
            "watchers": self.watchers,
            "system_load": load,
            "tasks_per_minute": self._ends.total(now, 60),
            "failed_per_minute": self._failures.total(now, 60),
            "revoked_today": self.revoked_today,
            "workers_known": len(self.workers),
            "states": states,
            "queues": dict(self.queues) if self.queues is not None else None,
            "bridge_lag": round(self.lag, 3),
            "bridge_backlog": self.backlog,
            "updated_at": now,
        }

    def states(self) -> dict[str, int]:
        """Open tasks by state."""
        out: dict[str, int] = {}
        for (state, _name), n in self.open_counts.items():
            out[state] = out.get(state, 0) + n
        return out

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Everything Prometheus shows, and what a restarted bridge needs to continue
        its counters. Labels are bounded: states, capped task names, event types."""
        now = self.clock() if now is None else now
        return {
            "updated_at": now,
            "day": self.day,
            "completed_today": self.completed_today,
            "failed_today": self.failed_today,
            "revoked_today": self.revoked_today,
            "events": dict(self.event_totals),
            "tasks_total": [[s, n, c] for (s, n), c in self.task_totals.items()],
            "tasks_open": [[s, n, c] for (s, n), c in self.open_counts.items() if c],
            "runtime_buckets": list(RUNTIME_BUCKETS),
            "runtimes": {n: [list(b), s, c] for n, (b, s, c) in self.runtimes.items()},
            "alerts": dict(self.alerts.totals),
            "workers_online": self.workers.online(),
            "workers_known": len(self.workers),
            "queues": dict(self.queues) if self.queues is not None else None,
            "lag": self.lag,
            "backlog": self.backlog,
            "watchers": self.watchers,
        }

    def load(self, *, workers: Iterable[dict] = (), stats: dict | None = None,
             history: Iterable[list] = (), alerts: Iterable[dict] = ()) -> None:
        """Restore what a previous bridge stored (workers, counters, history, alerts)."""
        now = self.clock()
        self.workers.load(workers, now)
        self.history.extend(p for p in history if isinstance(p, list)
                            and len(p) == len(HISTORY_COLUMNS))
        self.alerts.load(alerts)
        if isinstance(stats, dict):
            self._load_stats(stats, now)

    # -- counting -----------------------------------------------------------------------------
    def _ended(self, state: str, name: str, move: Transition, now: float) -> list[Update]:
        self._ends.add(now)
        if move.runtime is not None and state in ("SUCCESS", "FAILURE"):
            self._observe_runtime(name, move.runtime)
        if state == "SUCCESS":
            self.completed_today += 1
            return []
        if state == "REVOKED":
            self.revoked_today += 1
            return []
        self.failed_today += 1
        self._failures.add(now)
        return self.alerts.failure(now) if move.source == EVENT else []

    def _bucket(self, bucket: tuple[str, str | None]) -> tuple[str, str]:
        return bucket[0], self._name(bucket[1])

    @staticmethod
    def _count(counts: dict[tuple[str, str], int], key: tuple[str, str], n: int) -> None:
        left = counts.get(key, 0) + n
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)

    def _name(self, name: str | None) -> str:
        if not name:
            return UNKNOWN
        if name in self._names:
            return name
        if len(self._names) < self.max_names:
            self._names.add(name)
            return name
        return OTHER

    def _observe_runtime(self, name: str, seconds: float) -> None:
        entry = self.runtimes.get(name)
        if entry is None:
            entry = self.runtimes[name] = [[0] * (len(RUNTIME_BUCKETS) + 1), 0.0, 0]
        index = next((i for i, bound in enumerate(RUNTIME_BUCKETS) if seconds <= bound),
                     len(RUNTIME_BUCKETS))
        entry[0][index] += 1
        entry[1] += seconds
        entry[2] += 1

    # -- days and restore ------------------------------------------------------------------------------
    def _roll_day(self, now: float) -> None:
        day = int(now // 86400)  # UTC days
        if day != self.day:
            if self.day != -1:
                self.completed_today = self.failed_today = self.revoked_today = 0
            self.day = day

    def _load_stats(self, stats: dict, now: float) -> None:
        for item in stats.get("tasks_total") if isinstance(stats.get("tasks_total"), list) else []:
            if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], str) and as_number(item[2]) is not None):
                self.task_totals[(item[0], self._name(item[1]))] = as_count(item[2])
        for kind, n in _int_items(stats.get("events")):
            self.event_totals[kind if kind in KNOWN_EVENTS else OTHER] = n
        self.alerts.load_totals(dict(_int_items(stats.get("alerts"))))
        runtimes = stats.get("runtimes")
        if isinstance(runtimes, dict) and stats.get("runtime_buckets") == list(RUNTIME_BUCKETS):
            for name, entry in runtimes.items():
                if (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], list)
                        and len(entry[0]) == len(RUNTIME_BUCKETS) + 1):
                    self.runtimes[self._name(name)] = [[as_count(b, 0) for b in entry[0]],
                                                       as_number(entry[1]) or 0.0, as_count(entry[2], 0)]
        self._roll_day(now)
        if stats.get("day") == self.day:
            self.completed_today = as_count(stats.get("completed_today"), 0)
            self.failed_today = as_count(stats.get("failed_today"), 0)
            self.revoked_today = as_count(stats.get("revoked_today"), 0)


def _int_items(value: Any) -> Iterable[tuple[str, int]]:
    if isinstance(value, dict):
        for key, n in value.items():
            if isinstance(key, str) and as_number(n) is not None:
                yield key, as_count(n)
