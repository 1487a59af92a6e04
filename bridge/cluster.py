"""Cluster state for the operator view: workers, task counters, throughput, alerts. No I/O.

``Cluster`` is fed the same Celery event dicts as :class:`bridge.state.Board`
(``worker-*`` and every ``task-*`` of every task type) and, about once a
second, :meth:`Cluster.tick`. Both return :class:`bridge.state.Update` objects
for the ``admin`` room: ``admin_alert`` and ``system_metrics_update``
(PROTOCOL.md). The clock is injected, so liveness and rates are testable
without sleeping.

Rules:

- A worker is online from its last ``worker-online``/``worker-heartbeat`` until
  a ``worker-offline`` event or until no heartbeat came for
  ``max(offline_after, 2.5 * freq)`` seconds (a dead worker sends nothing).
  Liveness uses the bridge's own clock when each event is applied, so worker
  clock skew cannot mark a live worker offline.
- Task state counts follow our own terminal rule (as ``Board``): once a task
  ended, later events of it are not counted again.
- Bounded memory: at most ``max_workers`` workers (offline ones with the
  oldest heartbeat evicted first), ``max_open`` open tasks (oldest evicted),
  ``max_names`` distinct task names per counter (others fold into ``other``),
  fixed-size ring buffers for rates and history.
- Bridge lag is ``now - timestamp`` of the latest applied event (worker and
  bridge clocks are assumed in sync, as NTP does); it drops to 0 when the
  bridge is idle with nothing waiting.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bridge.state import RANK, Update, as_number
from protocol import ADMIN_ALERT, ADMIN_ROOM, SYSTEM_METRICS_UPDATE
from tasks import events as ev

OTHER = "other"
UNKNOWN = "unknown"
RUNNING_STATES = ("STARTED", "PROGRESS", "CANCELLING")
WAITING_STATES = ("PENDING", "RECEIVED")
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
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
ALERTS_KEPT = 50           # recent alerts kept for the page
WORKERS_PUSHED = 200       # workers carried by each system_metrics_update
RATE_WINDOW = 10           # s over which events_per_second is averaged
IDLE_AFTER = 2.0           # s without events (and nothing waiting) before lag reads 0
ENDED_KEPT = 10_000        # ended task ids remembered to ignore duplicate endings


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


@dataclass(slots=True)
class Worker:
    hostname: str
    online: bool = True
    last_heartbeat: float = 0.0
    active: int = 0
    processed: int = 0
    loadavg: list[float] = field(default_factory=list)
    freq: float = 2.0
    sw_ver: str = ""
    offline_reason: str | None = None
    seen_at: float = 0.0   # bridge time liveness counts from (a restart grants a grace)

    def as_dict(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "online": self.online,
                "last_heartbeat": self.last_heartbeat, "active": self.active,
                "processed": self.processed, "loadavg": list(self.loadavg),
                "freq": self.freq, "sw_ver": self.sw_ver, "offline_reason": self.offline_reason}

    @classmethod
    def from_dict(cls, data: dict) -> Worker | None:
        host = data.get("hostname")
        if not isinstance(host, str) or not host:
            return None
        worker = cls(host[:255])
        worker.online = bool(data.get("online"))
        worker.last_heartbeat = worker.seen_at = as_number(data.get("last_heartbeat")) or 0.0
        worker.active = int(as_number(data.get("active")) or 0)
        worker.processed = int(as_number(data.get("processed")) or 0)
        worker.loadavg = _loadavg(data.get("loadavg"))
        worker.freq = as_number(data.get("freq")) or 2.0
        worker.sw_ver = str(data.get("sw_ver") or "")[:40]
        reason = data.get("offline_reason")
        worker.offline_reason = reason if isinstance(reason, str) else None
        return worker


def _loadavg(value: Any) -> list[float]:
    if not isinstance(value, (list, tuple)):
        return []
    return [round(n, 2) for n in (as_number(v) for v in value[:3]) if n is not None]


class Cluster:
    """Workers and task counters of the whole cluster, with alerts.

    Defaults: ``offline_after`` 10 s (Celery heartbeats every 2 s),
    ``failure_burst`` 5 failures within ``failure_window`` 60 s,
    ``queue_backlog`` 100 messages, ``lag_alert`` 10 s or ``backlog_alert``
    10 000 events waiting in the bridge.
    """

    def __init__(self, *, offline_after: float = 10.0, failure_burst: int = 5,
                 failure_window: float = 60.0, queue_backlog: int = 100,
                 lag_alert: float = 10.0, backlog_alert: int = 10_000,
                 max_workers: int = 1000, max_open: int = 100_000, max_names: int = 100,
                 clock: Callable[[], float] = time.time) -> None:
        self.offline_after = offline_after
        self.failure_burst = max(1, failure_burst)
        self.failure_window = failure_window
        self.queue_backlog = queue_backlog
        self.lag_alert = lag_alert
        self.backlog_alert = backlog_alert
        self.max_workers = max_workers
        self.max_open = max_open
        self.max_names = max_names
        self.clock = clock
        self._workers: dict[str, Worker] = {}
        self._open: OrderedDict[str, list] = OrderedDict()  # id -> [state, name, started_at]
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._names: set[str] = set()
        self.open_counts: dict[tuple[str, str], int] = {}   # (state, name) -> open tasks
        self.task_totals: dict[tuple[str, str], int] = {}   # (state, name) -> tasks that got there
        self.event_totals: dict[str, int] = {}              # event type -> events consumed
        self.alert_totals: dict[str, int] = {}
        self.runtimes: dict[str, list] = {}                 # name -> [bucket counts, sum, count]
        self.day = -1
        self.completed_today = 0
        self.failed_today = 0
        self.revoked_today = 0
        self._events = Rate(60)
        self._ends = Rate(60)
        self._failures_rate = Rate(60)
        self._failures: deque[float] = deque(maxlen=self.failure_burst)
        self._burst_until = 0.0
        self.queues: dict[str, int] | None = None   # broker queue lengths, None: unknown
        self.watchers = 0
        self.backlog = 0
        self.lag = 0.0
        self._last_applied = 0.0
        self._backlog_alerted = False
        self._lag_alerted = False
        self.history: deque[list] = deque(maxlen=HISTORY_LEN)
        self._next_sample = 0.0
        self.alerts: deque[dict] = deque(maxlen=ALERTS_KEPT)
        self._seq = 0
        self.workers_changed = True
        self.history_changed = False
        self.alerts_changed = False

    # -- inputs ---------------------------------------------------------------------
    def apply(self, event: Any) -> list[Update]:
        """Apply one Celery event; returns the alerts it raises (maybe none)."""
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return []
        etype = event["type"]
        now = self.clock()
        self._roll_day(now)
        reconciled = bool(event.get("reconciled"))
        if not reconciled:
            kind = etype if etype in KNOWN_EVENTS else OTHER
            self.event_totals[kind] = self.event_totals.get(kind, 0) + 1
            self._events.add(now)
            stamp = as_number(event.get("timestamp"))
            if stamp is not None:
                self.lag = max(0.0, now - stamp)
            self._last_applied = now
        if etype.startswith("worker-"):
            return self._on_worker(etype, event, now)
        if etype.startswith("task-"):
            return self._on_task(etype, event, now, reconciled)
        return []

    def task_ended(self, task_id: str, state: str) -> list[Update]:
        """An ending the bridge itself decided (a cancel before start, a terminate)."""
        now = self.clock()
        self._roll_day(now)
        return self._transition(task_id, state, None, now, None, burst=False)

    def load_open(self, tasks: Iterable[tuple[str, str, str | None, float | None]]) -> None:
        """Open tasks the bridge restored from the store: (task_id, state, name, started_at)."""
        for task_id, state, name, started in tasks:
            if state in TERMINAL or task_id in self._open:
                continue
            self._track(task_id, state, self._name(name), started)

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
        out: list[Update] = []
        for worker in self._workers.values():
            if worker.online and now - worker.seen_at > self._expiry(worker):
                worker.online = False
                worker.offline_reason = "heartbeat"
                self.workers_changed = True
                out.append(self._alert(
                    "critical", "worker_offline", now,
                    f"worker {worker.hostname} missed its heartbeats for "
                    f"{now - worker.last_heartbeat:.0f}s", hostname=worker.hostname))
        out += self._check_backlog(now)
        out += self._check_lag(now)
        metrics = self.metrics(now)
        if now >= self._next_sample:
            self.history.append([round(now, 3)] + [metrics[c] for c in HISTORY_COLUMNS[1:]])
            self._next_sample = now + HISTORY_STEP
            self.history_changed = True
        out.append(Update(SYSTEM_METRICS_UPDATE, ADMIN_ROOM, "metrics",
                          {"metrics": metrics, "workers": self.workers()[:WORKERS_PUSHED]}))
        return out

    # -- outputs ------------------------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        """Every known worker, online first, then by hostname."""
        items = sorted(self._workers.values(), key=lambda w: (not w.online, w.hostname))
        return [w.as_dict() for w in items]

    def workers_online(self) -> int:
        return sum(1 for w in self._workers.values() if w.online)

    def metrics(self, now: float | None = None) -> dict[str, Any]:
        """The ``system_metrics_update`` metrics (PROTOCOL.md) plus extra fields."""
        now = self.clock() if now is None else now
        states = self.states()
        active = sum(states.get(s, 0) for s in RUNNING_STATES)
        waiting = sum(states.get(s, 0) for s in WAITING_STATES)
        queued = sum(self.queues.values()) if self.queues is not None else waiting
        online = [w for w in self._workers.values() if w.online and w.loadavg]
        load: list[float] = []
        if online:
            width = min(len(w.loadavg) for w in online)
            load = [round(sum(w.loadavg[i] for w in online) / len(online), 2) for i in range(width)]
        return {
            "active_jobs": active,
            "queued": queued,
            "completed_today": self.completed_today,
            "failed_today": self.failed_today,
            "workers_online": self.workers_online(),
            "events_per_second": round(self._events.total(now, RATE_WINDOW) / RATE_WINDOW, 2),
            "watchers": self.watchers,
            "system_load": load,
            "tasks_per_minute": self._ends.total(now, 60),
            "failed_per_minute": self._failures_rate.total(now, 60),
            "revoked_today": self.revoked_today,
            "workers_known": len(self._workers),
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
            "alerts": dict(self.alert_totals),
            "workers_online": self.workers_online(),
            "workers_known": len(self._workers),
            "queues": dict(self.queues) if self.queues is not None else None,
            "lag": self.lag,
            "backlog": self.backlog,
            "watchers": self.watchers,
        }

    def load(self, *, workers: Iterable[dict] = (), stats: dict | None = None,
             history: Iterable[list] = (), alerts: Iterable[dict] = ()) -> None:
        """Restore what a previous bridge stored (workers, counters, history, alerts).

        A worker stored as online gets one expiry period from now to send a
        heartbeat: the bridge heard nothing while it was down, which is no
        sign of the worker's death.
        """
        now = self.clock()
        for data in workers:
            worker = Worker.from_dict(data) if isinstance(data, dict) else None
            if worker is not None:
                worker.seen_at = max(worker.last_heartbeat, now) if worker.online \
                    else worker.last_heartbeat
                self._workers[worker.hostname] = worker
        self._evict_workers()
        self.history.extend(p for p in history if isinstance(p, list)
                            and len(p) == len(HISTORY_COLUMNS))
        self.alerts.extend(a for a in alerts if isinstance(a, dict))
        if isinstance(stats, dict):
            self._load_stats(stats)

    # -- workers -----------------------------------------------------------------------------------
    def _on_worker(self, etype: str, event: dict, now: float) -> list[Update]:
        host = event.get("hostname")
        if not isinstance(host, str) or not host:
            return []
        host = host[:255]
        worker = self._workers.get(host)
        if etype == ev.WORKER_OFFLINE:
            if worker is None or not worker.online:
                return []
            worker.online = False
            worker.offline_reason = "offline"
            worker.active = 0
            self.workers_changed = True
            return [self._alert("warning", "worker_offline", now,
                                f"worker {host} went offline", hostname=host)]
        if etype not in (ev.WORKER_ONLINE, ev.WORKER_HEARTBEAT):
            return []
        new = worker is None
        if worker is None:
            worker = self._workers[host] = Worker(host)
        worker.online = True
        worker.offline_reason = None
        worker.last_heartbeat = worker.seen_at = now
        worker.active = int(as_number(event.get("active")) or 0)
        worker.processed = int(as_number(event.get("processed")) or worker.processed)
        worker.loadavg = _loadavg(event.get("loadavg")) or worker.loadavg
        worker.freq = as_number(event.get("freq")) or worker.freq
        worker.sw_ver = str(event.get("sw_ver") or worker.sw_ver)[:40]
        self.workers_changed = True
        if new:
            self._evict_workers()
        return []

    def _expiry(self, worker: Worker) -> float:
        return max(self.offline_after, 2.5 * worker.freq)

    def _evict_workers(self) -> None:
        while len(self._workers) > self.max_workers:
            victim = min(self._workers.values(), key=lambda w: (w.online, w.seen_at))
            del self._workers[victim.hostname]

    # -- tasks -------------------------------------------------------------------------------------
    def _on_task(self, etype: str, event: dict, now: float, reconciled: bool) -> list[Update]:
        task_id = event.get("uuid")
        if not isinstance(task_id, str) or not task_id or task_id in self._ended:
            return []
        name = event.get("name") if isinstance(event.get("name"), str) else None
        stamp = as_number(event.get("timestamp")) or now
        if etype == ev.TASK_REJECTED and event.get("requeue"):
            return []
        if etype == ev.TASK_CANCELLED and as_number(event.get(ev.CANCELLED_MARKER_FIELD)) is None:
            return []  # Celery's own: the task goes back to the queue
        state = _EVENT_STATE.get(etype)
        if state is None:
            return []
        runtime = as_number(event.get("runtime")) if etype == ev.TASK_SUCCEEDED else None
        started = stamp if etype == ev.TASK_STARTED else None
        return self._transition(task_id, state, name, now, runtime, burst=not reconciled,
                                started=started, stamp=stamp)

    def _transition(self, task_id: str, state: str, name: str | None, now: float,
                    runtime: float | None, *, burst: bool, started: float | None = None,
                    stamp: float | None = None) -> list[Update]:
        if task_id in self._ended:
            return []
        record = self._open.get(task_id)
        if record is None:
            record = self._track(task_id, "PENDING", self._name(name), None)
            self._count_total("PENDING", record[1])
            if state == "PENDING":
                return []
        elif name and record[1] == UNKNOWN:
            self._move(record, record[0], self._name(name))
        if started is not None and record[2] is None:
            record[2] = started
        old = record[0]
        if state not in TERMINAL:
            if RANK.get(state, -1) > RANK.get(old, -1):
                self._move(record, state, record[1])
                self._count_total(state, record[1])
            return []
        self._move(record, None, record[1])
        del self._open[task_id]
        self._ended[task_id] = None
        if len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)
        task_name = record[1]
        self._count_total(state, task_name)
        self._ends.add(now)
        if runtime is None and record[2] is not None and stamp is not None:
            runtime = max(0.0, stamp - record[2])
        if runtime is not None and state in ("SUCCESS", "FAILURE"):
            self._observe_runtime(task_name, runtime)
        if state == "SUCCESS":
            self.completed_today += 1
            return []
        if state == "REVOKED":
            self.revoked_today += 1
            return []
        self.failed_today += 1
        self._failures_rate.add(now)
        return self._check_burst(now) if burst else []

    def _track(self, task_id: str, state: str, name: str, started: float | None) -> list:
        record = [None, name, started]
        self._open[task_id] = record
        self._move(record, state, name)
        while len(self._open) > self.max_open:
            _tid, old = self._open.popitem(last=False)
            self._move(old, None, old[1])
        return record

    def _move(self, record: list, state: str | None, name: str) -> None:
        """Re-count ``record`` under (state, name); state None removes it."""
        if record[0] is not None:
            key = (record[0], record[1])
            left = self.open_counts.get(key, 0) - 1
            if left > 0:
                self.open_counts[key] = left
            else:
                self.open_counts.pop(key, None)
        record[0], record[1] = state, name
        if state is not None:
            key = (state, name)
            self.open_counts[key] = self.open_counts.get(key, 0) + 1

    def _count_total(self, state: str, name: str) -> None:
        key = (state, name)
        self.task_totals[key] = self.task_totals.get(key, 0) + 1

    def _name(self, name: str | None) -> str:
        if not name:
            return UNKNOWN
        name = name[:200]
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

    # -- alerts --------------------------------------------------------------------------------------
    def _alert(self, level: str, kind: str, now: float, message: str, **extra: Any) -> Update:
        payload = {"level": level, "kind": kind, "message": message, "at": now, **extra}
        self.alerts.append(payload)
        self.alerts_changed = True
        self.alert_totals[kind] = self.alert_totals.get(kind, 0) + 1
        self._seq += 1
        # A key of its own per alert: the coalescer never folds two alerts together.
        return Update(ADMIN_ALERT, ADMIN_ROOM, f"alert:{self._seq}", payload)

    def _check_burst(self, now: float) -> list[Update]:
        self._failures.append(now)
        if (len(self._failures) < self.failure_burst or now < self._burst_until
                or now - self._failures[0] > self.failure_window):
            return []
        self._burst_until = now + self.failure_window  # one alert per window
        return [self._alert("critical", "failure_burst", now,
                            f"{self.failure_burst} tasks failed within "
                            f"{now - self._failures[0]:.0f}s", count=self.failure_burst,
                            window=self.failure_window)]

    def _check_backlog(self, now: float) -> list[Update]:
        if self.queues is None or self.queue_backlog <= 0:
            return []
        queued = sum(self.queues.values())
        if queued < self.queue_backlog:
            self._backlog_alerted = False
            return []
        if self._backlog_alerted:
            return []
        self._backlog_alerted = True
        return [self._alert("warning", "queue_backlog", now,
                            f"{queued} tasks wait in the broker (threshold {self.queue_backlog})",
                            queued=queued, queues=dict(self.queues))]

    def _check_lag(self, now: float) -> list[Update]:
        if self.backlog == 0 and now - self._last_applied >= IDLE_AFTER:
            self.lag = 0.0
        behind = self.lag > self.lag_alert or self.backlog > self.backlog_alert
        if not behind:
            if self.lag <= self.lag_alert / 2 and self.backlog <= self.backlog_alert / 2:
                self._lag_alerted = False
            return []
        if self._lag_alerted:
            return []
        self._lag_alerted = True
        return [self._alert("warning", "bridge_lag", now,
                            f"the bridge is {self.lag:.1f}s behind the event stream "
                            f"({self.backlog} events waiting)", lag=round(self.lag, 3),
                            backlog=self.backlog)]

    # -- days and restore ------------------------------------------------------------------------------
    def _roll_day(self, now: float) -> None:
        day = int(now // 86400)  # UTC days
        if day != self.day:
            if self.day != -1:
                self.completed_today = self.failed_today = self.revoked_today = 0
            self.day = day

    def _load_stats(self, stats: dict) -> None:
        def counts(items: Any) -> Iterable[tuple[str, str, int]]:
            for item in items if isinstance(items, list) else []:
                if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                        and isinstance(item[1], str) and as_number(item[2]) is not None):
                    yield item[0], item[1], int(item[2])

        for state, name, n in counts(stats.get("tasks_total")):
            self.task_totals[(state, self._name(name))] = n
        for kind, n in _int_items(stats.get("events")):
            self.event_totals[kind if kind in KNOWN_EVENTS else OTHER] = n
        for kind, n in _int_items(stats.get("alerts")):
            self.alert_totals[kind[:40]] = n
        runtimes = stats.get("runtimes")
        if isinstance(runtimes, dict) and stats.get("runtime_buckets") == list(RUNTIME_BUCKETS):
            for name, entry in runtimes.items():
                if (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], list)
                        and len(entry[0]) == len(RUNTIME_BUCKETS) + 1):
                    self.runtimes[self._name(name)] = [[int(as_number(b) or 0) for b in entry[0]],
                                                       as_number(entry[1]) or 0.0, int(as_number(entry[2]) or 0)]
        now = self.clock()
        self._roll_day(now)
        if stats.get("day") == self.day:
            self.completed_today = int(as_number(stats.get("completed_today")) or 0)
            self.failed_today = int(as_number(stats.get("failed_today")) or 0)
            self.revoked_today = int(as_number(stats.get("revoked_today")) or 0)


def _int_items(value: Any) -> Iterable[tuple[str, int]]:
    if isinstance(value, dict):
        for key, n in value.items():
            if isinstance(key, str) and as_number(n) is not None:
                yield key, int(n)


_EVENT_STATE = {
    ev.TASK_SENT: "PENDING",
    ev.TASK_RECEIVED: "RECEIVED",
    ev.TASK_STARTED: "STARTED",
    ev.TASK_PROGRESS: "PROGRESS",
    ev.TASK_RETRIED: "PENDING",   # counted, never moves a task back
    ev.TASK_SUCCEEDED: "SUCCESS",
    ev.TASK_FAILED: "FAILURE",
    ev.TASK_REJECTED: "FAILURE",
    ev.TASK_REVOKED: "REVOKED",
    ev.TASK_CANCELLED: "REVOKED",
}
