"""Task snapshots in Redis, written by the bridge and read by the web process.

Layout (all JSON, all bounded):

- ``skald:task:<id>``: ``{"snapshot": {...}, "ending": {"event", "payload"} | null,
  "detail": {...}}`` with a TTL (default 7 days).
- ``skald:tasks``: sorted set of task ids by last update, trimmed to the bridge's
  task limit: the admin task list and the bridge's restart memory.
- ``skald:tasks:open``: set of task ids not yet ended, which reconciliation walks.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import orjson
import redis

from bridge.payloads import TERMINAL_STATES

TASK_KEY_PREFIX = "skald:task:"
INDEX_KEY = "skald:tasks"
OPEN_KEY = "skald:tasks:open"

Record = dict[str, Any]


def task_key(task_id: str) -> str:
    return f"{TASK_KEY_PREFIX}{task_id}"


def _decode(raw: bytes | str | None) -> Record | None:
    if raw is None:
        return None
    try:
        record = orjson.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "snapshot" in record else None


class SnapshotStore:
    """Read side for every process; the write helpers are used by the bridge only."""

    def __init__(self, client: redis.Redis, ttl_seconds: int = 7 * 24 * 3600,
                 max_tasks: int = 100_000) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self.max_tasks = max_tasks

    # -- read side -----------------------------------------------------------
    def get(self, task_id: str) -> Record | None:
        return _decode(self.client.get(task_key(task_id)))

    def get_many(self, task_ids: Iterable[str], chunk: int = 1000) -> dict[str, Record]:
        """Records by id (``MGET`` in chunks, so no single reply is huge)."""
        ids = list(task_ids)
        found: dict[str, Record] = {}
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            for task_id, raw in zip(part, self.client.mget([task_key(t) for t in part])):
                if (record := _decode(raw)) is not None:
                    found[task_id] = record
        return found

    def recent(self, limit: int = 100, offset: int = 0) -> list[Record]:
        """Records newest first (by last update)."""
        ids = [i.decode() if isinstance(i, bytes) else i
               for i in self.client.zrevrange(INDEX_KEY, offset, offset + limit - 1)]
        found = self.get_many(ids)
        return [found[i] for i in ids if i in found]

    def open_ids(self) -> list[str]:
        return [i.decode() if isinstance(i, bytes) else i for i in self.client.smembers(OPEN_KEY)]

    # -- write side (bridge) ---------------------------------------------------
    def queue_put(self, pipe: Any, record: Record) -> None:
        """Add the commands that store ``record`` to a pipeline."""
        snap = record["snapshot"]
        task_id = snap["task_id"]
        pipe.set(task_key(task_id), orjson.dumps(record), ex=self.ttl)
        pipe.zadd(INDEX_KEY, {task_id: snap.get("updated_at") or 0})
        if snap.get("state") in TERMINAL_STATES:
            pipe.srem(OPEN_KEY, task_id)
        else:
            pipe.sadd(OPEN_KEY, task_id)

    def queue_trim(self, pipe: Any) -> None:
        """Keep the index within ``max_tasks`` (oldest updates dropped)."""
        pipe.zremrangebyrank(INDEX_KEY, 0, -self.max_tasks - 1)


# -- cluster state (written by the bridge each metrics tick, read by web and a restarted bridge)
METRICS_KEY = "skald:cluster:metrics"
WORKERS_KEY = "skald:cluster:workers"
STATS_KEY = "skald:cluster:stats"
HISTORY_KEY = "skald:cluster:history"
ALERTS_KEY = "skald:cluster:alerts"
CLUSTER_TTL = 7 * 24 * 3600   # a bridge gone this long leaves nothing stale behind
# Per web process: {process id: "count:unix time"}; the bridge sums the fresh fields.
WATCHERS_KEY = "skald:watchers"
WATCHERS_FRESH = 15.0         # s a web process's count stays valid (it writes every 5 s)
METRIC_NAMES = ("active_jobs", "queued", "completed_today", "failed_today", "workers_online",
                "events_per_second", "watchers", "system_load")


def read_metrics(client: redis.Redis, watchers: int | None = None) -> dict[str, Any]:
    """The cluster metrics the bridge last published (zeros before it ever did)."""
    metrics: dict[str, Any] = {name: 0 for name in METRIC_NAMES}
    metrics["system_load"] = []
    raw = client.get(METRICS_KEY)
    if raw:
        try:
            stored = json.loads(raw)
        except ValueError:
            stored = {}
        if isinstance(stored, dict):
            metrics.update({k: v for k, v in stored.items() if k in metrics})
    if watchers is not None:
        metrics["watchers"] = watchers
    return metrics


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def queue_cluster(ops: Any, *, metrics: dict | None = None, workers: list | None = None,
                  stats: dict | None = None, history: list | None = None,
                  alerts: list | None = None, ttl: int = CLUSTER_TTL) -> None:
    """Add the writes of the cluster state to ``ops`` (an ``emitter.Ops`` or a pipeline)."""
    for key, value in ((METRICS_KEY, metrics), (WORKERS_KEY, workers), (STATS_KEY, stats),
                       (HISTORY_KEY, history), (ALERTS_KEY, alerts)):
        if value is not None:
            ops.set(key, _dumps(value), ex=ttl)


def _json(raw: bytes | str | None, kind: type) -> Any:
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except ValueError:
        return kind()
    return value if isinstance(value, kind) else kind()


def read_cluster(client: redis.Redis) -> dict[str, Any]:
    """All stored cluster state in one round trip: metrics, workers, stats, history, alerts."""
    raws = client.mget([METRICS_KEY, WORKERS_KEY, STATS_KEY, HISTORY_KEY, ALERTS_KEY])
    return {"metrics": _json(raws[0], dict), "workers": _json(raws[1], list),
            "stats": _json(raws[2], dict), "history": _json(raws[3], list),
            "alerts": _json(raws[4], list)}


def read_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """Workers as the bridge last stored them (``online`` as of that tick)."""
    return [w for w in _json(client.get(WORKERS_KEY), list) if isinstance(w, dict)]


def read_stats(client: redis.Redis) -> dict[str, Any]:
    """The bridge's counters for Prometheus (empty before the bridge ever ran)."""
    return _json(client.get(STATS_KEY), dict)


def write_watchers(client: redis.Redis, process_id: str, count: int, now: float) -> None:
    """One web process reports how many Socket.IO clients it holds."""
    client.hset(WATCHERS_KEY, process_id, f"{int(count)}:{now:.3f}")


def forget_watchers(client: redis.Redis, process_id: str) -> None:
    client.hdel(WATCHERS_KEY, process_id)


def read_watchers(client: redis.Redis, now: float, exclude: str | None = None,
                  fresh: float = WATCHERS_FRESH, prune: bool = False) -> int:
    """Clients connected to every web process (fresh reports only).

    ``prune`` (the bridge's reads) removes the reports of web processes that
    stopped reporting, e.g. killed ones."""
    total = 0
    stale = []
    for field, raw in client.hgetall(WATCHERS_KEY).items():
        name = field.decode() if isinstance(field, bytes) else field
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            count, stamp = text.split(":", 1)
            count_n, stamp_f = int(count), float(stamp)
        except ValueError:
            stale.append(name)
            continue
        if now - stamp_f > fresh:
            stale.append(name)
        elif name != exclude:
            total += max(0, count_n)
    if stale and prune:
        client.hdel(WATCHERS_KEY, *stale)
    return total
