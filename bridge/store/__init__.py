"""The read side of what the bridge keeps in Redis: task records and cluster state here,
the explorer's index in :mod:`bridge.store.explorer`.

Every process reads through this package (the web process for snapshots, the
admin API, the explorer and ``/metrics``; a restarted bridge for its memory).
The layout is ``protocol.py``'s; the bridge's writes are in ``bridge/records.py``.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import redis

import protocol
from protocol import Record


def _ids(raw: Iterable[bytes | str]) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else i for i in raw]


class SnapshotStore:
    """Task records by id, the newest first, and the ids of open tasks."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def get(self, task_id: str) -> Record | None:
        return protocol.decode_record(self.client.get(protocol.task_key(task_id)))

    def get_many(self, task_ids: Iterable[str], chunk: int = 1000) -> dict[str, Record]:
        """Records by id (``MGET`` in chunks, so no single reply is huge)."""
        ids = list(task_ids)
        found: dict[str, Record] = {}
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            for task_id, raw in zip(part, self.client.mget([protocol.task_key(t) for t in part])):
                if (record := protocol.decode_record(raw)) is not None:
                    found[task_id] = record
        return found

    def recent(self, limit: int = 100, offset: int = 0) -> list[Record]:
        """Records newest first (by last update)."""
        ids = _ids(self.client.zrevrange(protocol.INDEX_KEY, offset, offset + limit - 1))
        found = self.get_many(ids)
        return [found[i] for i in ids if i in found]

    def open_ids(self) -> list[str]:
        return _ids(self.client.smembers(protocol.OPEN_KEY))


def _json(raw: bytes | str | None, kind: type) -> Any:
    if not raw:
        return kind()
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return kind()
    return value if isinstance(value, kind) else kind()


def read_metrics(client: redis.Redis, watchers: int | None = None) -> dict[str, Any]:
    """The cluster metrics the bridge last published (zeros before it ever did)."""
    metrics: dict[str, Any] = {name: 0 for name in protocol.METRIC_NAMES}
    metrics["system_load"] = []
    stored = _json(client.get(protocol.METRICS_KEY), dict)
    metrics.update({k: v for k, v in stored.items() if k in metrics})
    if watchers is not None:
        metrics["watchers"] = watchers
    return metrics


def read_cluster(client: redis.Redis) -> dict[str, Any]:
    """All stored cluster state in one round trip: metrics, workers, stats, history, alerts."""
    raws = client.mget(list(protocol.CLUSTER_KEYS))
    return {"metrics": _json(raws[0], dict), "workers": _json(raws[1], list),
            "stats": _json(raws[2], dict), "history": _json(raws[3], list),
            "alerts": _json(raws[4], list)}


def read_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """Workers as the bridge last stored them (``online`` as of that tick)."""
    return [w for w in _json(client.get(protocol.WORKERS_KEY), list) if isinstance(w, dict)]


def read_stats(client: redis.Redis) -> dict[str, Any]:
    """The bridge's counters for Prometheus (empty before the bridge ever ran)."""
    return _json(client.get(protocol.STATS_KEY), dict)


def watcher_reports(client: redis.Redis) -> dict[str, tuple[int, float] | None]:
    """Every web process's watcher report (None: malformed)."""
    reports = client.hgetall(protocol.WATCHERS_KEY)
    return {name: protocol.parse_watcher_report(raw)
            for name, raw in zip(_ids(reports), reports.values())}


def read_watchers(client: redis.Redis, now: float, exclude: str | None = None) -> int:
    """Clients connected to every web process (fresh reports only; ``exclude``: one process)."""
    return sum(report[0] for name, report in watcher_reports(client).items()
               if report is not None and now - report[1] <= protocol.WATCHERS_FRESH
               and name != exclude)
