"""Prometheus series (``skald_*``); labels stay low-cardinality.

Two sources, one page (``GET /metrics``, rendered by :func:`render`):

- this web process's own series: Socket.IO refusals by reason, watchers
  connected here (module-level metrics in the default registry);
- the cluster's series, which the bridge computes and stores in Redis each
  metrics tick (``protocol.STATS_KEY``); :class:`ClusterCollector` renders
  that blob at scrape time. Labels: task state, task name (capped by the
  bridge, extra names fold into ``other``), event type, queue name, alert
  kind. Never a task id or a worker host name.

Watcher counts: every web process writes its own count to Redis every
:data:`REPORT_EVERY` seconds (:func:`start_watcher_reporter`); the bridge sums
the fresh ones into ``system_metrics_update``.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

import protocol
from bridge import store

log = logging.getLogger(__name__)

SOCKET_REJECTED = Counter("skald_socket_events_rejected_total",
                          "Socket.IO connections and events refused, by reason", ["reason"])
WATCHERS = Gauge("skald_watchers_connected", "Socket.IO clients connected to this web process")

REPORT_EVERY = 5.0   # s between watcher-count reports (protocol.WATCHERS_FRESH is 3x this)
CHECK_EVERY = 1.0    # s between looks at the count: a change is reported at once
STALE_AFTER = 30.0   # s after which the bridge's numbers count as stale (skald_bridge_up 0)
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}"


class ClusterCollector(Collector):
    """The bridge's stored counters as Prometheus families (read at scrape time)."""

    def __init__(self, read: Callable[[], dict[str, Any]],
                 clock: Callable[[], float] = time.time) -> None:
        self.read = read
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self.read()
        except redis.RedisError as exc:
            log.warning("cannot read the bridge's stats for /metrics: %s", exc)
            stats = {}
        updated = _num(stats.get("updated_at"))
        up = GaugeMetricFamily("skald_bridge_up",
                               "1 when the bridge stored its numbers within the last 30 s")
        up.add_metric([], 1.0 if updated and self.clock() - updated < STALE_AFTER else 0.0)
        yield up
        if not stats:
            return
        yield _gauge("skald_bridge_last_update_timestamp_seconds",
                     "When the bridge last stored its numbers (Unix time)", updated or 0.0)
        yield _gauge("skald_bridge_lag_seconds",
                     "Age of the latest Celery event when the bridge applied it", stats.get("lag"))
        yield _gauge("skald_bridge_backlog_events", "Events waiting inside the bridge",
                     stats.get("backlog"))
        yield _gauge("skald_workers_online", "Celery workers with a recent heartbeat",
                     stats.get("workers_online"))
        yield _gauge("skald_workers_known", "Celery workers the bridge remembers",
                     stats.get("workers_known"))
        yield _gauge("skald_watchers_cluster",
                     "Socket.IO clients connected to all web processes (as the bridge summed them)",
                     stats.get("watchers"))

        events = CounterMetricFamily("skald_events_consumed",
                                     "Celery events the bridge consumed, by type", labels=["type"])
        for kind, n in _items(stats.get("events")):
            events.add_metric([kind], n)
        yield events

        totals = CounterMetricFamily("skald_tasks", "Tasks that reached a state, by state and name",
                                     labels=["state", "name"])
        for state, name, n in _triples(stats.get("tasks_total")):
            totals.add_metric([state, name], n)
        yield totals

        current = GaugeMetricFamily("skald_tasks_open", "Tasks not ended, by state and name",
                                    labels=["state", "name"])
        for state, name, n in _triples(stats.get("tasks_open")):
            current.add_metric([state, name], n)
        yield current

        queues = GaugeMetricFamily("skald_queue_length", "Messages waiting in a broker queue",
                                   labels=["queue"])
        for name, n in _items(stats.get("queues")):
            queues.add_metric([name], n)
        yield queues

        alerts = CounterMetricFamily("skald_alerts", "Operator alerts raised, by kind",
                                     labels=["kind"])
        for kind, n in _items(stats.get("alerts")):
            alerts.add_metric([kind], n)
        yield alerts

        yield from _runtime_histogram(stats)


def _runtime_histogram(stats: dict) -> Iterator[Metric]:
    hist = HistogramMetricFamily("skald_task_runtime_seconds",
                                 "Runtime of tasks that ended (success or failure), by name",
                                 labels=["name"])
    bounds = stats.get("runtime_buckets")
    runtimes = stats.get("runtimes")
    if isinstance(bounds, list) and isinstance(runtimes, dict):
        for name, entry in runtimes.items():
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], list)
                    and len(entry[0]) == len(bounds) + 1):
                continue
            cumulative, buckets = 0.0, []
            for bound, count in zip([*map(str, map(float, bounds)), "+Inf"], entry[0]):
                cumulative += _num(count) or 0.0
                buckets.append((bound, cumulative))
            hist.add_metric([str(name)], buckets, _num(entry[1]) or 0.0)
    yield hist


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], _num(value) or 0.0)
    return family


def _items(value: Any) -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for key, n in value.items():
            if isinstance(key, str) and _num(n) is not None:
                yield key, float(n)


def _triples(value: Any) -> Iterator[tuple[str, str, float]]:
    for item in value if isinstance(value, list) else []:
        if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], str) and _num(item[2]) is not None):
            yield item[0], item[1], float(item[2])


def cluster_registry(client: redis.Redis) -> CollectorRegistry:
    """A registry holding the bridge's series (one per app; the default one holds ours)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(lambda: store.read_stats(client)))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text page: this process's series, then the cluster's."""
    return generate_latest(REGISTRY) + generate_latest(registry)


# -- watcher counts -----------------------------------------------------------------------
def report_id() -> str:
    """Who reports: host, pid and a random part (several apps may share a process)."""
    return f"{PROCESS_ID}:{secrets.token_hex(3)}"


def watchers_total(client: redis.Redis, own_id: str, own_count: int) -> int:
    """Clients on every web process: the others' fresh reports plus ours, exact."""
    return store.read_watchers(client, time.time(), exclude=own_id) + own_count


def start_watcher_reporter(socketio: Any, client: redis.Redis, own_id: str,
                           connections: Any) -> None:
    """Report ``len(connections)`` when it changes (looked at every :data:`CHECK_EVERY`
    s) and at least every :data:`REPORT_EVERY` s, until the app is gone.

    Holds the connections weakly, so a discarded app (tests build many) ends
    its reporter at the next round and its report expires with it.
    """
    ref = weakref.ref(connections)
    del connections

    def loop() -> None:
        reported: tuple[int, float] | None = None
        while True:
            conns = ref()
            if conns is None:
                return
            count = len(conns)
            del conns
            now = time.time()
            if reported is None or reported[0] != count or now - reported[1] >= REPORT_EVERY:
                try:
                    client.hset(protocol.WATCHERS_KEY, own_id, protocol.watcher_report(count, now))
                    reported = (count, now)
                except redis.RedisError as exc:
                    log.debug("cannot report the watcher count: %s", exc)
            socketio.sleep(CHECK_EVERY)

    socketio.start_background_task(loop)
