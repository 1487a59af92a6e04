"""The bridge's writes to Redis: task records, cluster state, stale watcher reports.

Records and cluster state are added to an ``emitter.Ops`` so they travel in
the publisher's one lease-checked script with the emits they belong to
(``bridge/emitter.py``). Layouts are ``protocol.py``'s.
"""
from __future__ import annotations

from typing import Any

import orjson
import redis

import protocol
from bridge.store import watcher_reports
from protocol import Record


class RecordWriter:
    """Task records with a TTL (default 7 days), the index trimmed to ``max_tasks``."""

    def __init__(self, ttl_seconds: int = 7 * 24 * 3600, max_tasks: int = 100_000) -> None:
        self.ttl = ttl_seconds
        self.max_tasks = max_tasks

    def put(self, ops: Any, record: Record) -> None:
        """Add the commands that store ``record``."""
        snap = record["snapshot"]
        task_id = snap["task_id"]
        ops.set(protocol.task_key(task_id), protocol.encode_record(record), ex=self.ttl)
        ops.zadd(protocol.INDEX_KEY, {task_id: snap.get("updated_at") or 0})
        if snap.get("state") in protocol.TERMINAL_STATES:
            ops.srem(protocol.OPEN_KEY, task_id)
        else:
            ops.sadd(protocol.OPEN_KEY, task_id)

    def trim(self, ops: Any) -> None:
        """Keep the index within ``max_tasks`` (oldest updates dropped)."""
        ops.zremrangebyrank(protocol.INDEX_KEY, 0, -self.max_tasks - 1)


def put_cluster(ops: Any, *, metrics: dict | None = None, workers: list | None = None,
                stats: dict | None = None, history: list | None = None,
                alerts: list | None = None, ttl: int = protocol.CLUSTER_TTL) -> None:
    """Add the writes of the cluster state (the parts given)."""
    for key, value in zip(protocol.CLUSTER_KEYS, (metrics, workers, stats, history, alerts)):
        if value is not None:
            ops.set(key, orjson.dumps(value), ex=ttl)


def prune_watchers(client: redis.Redis, now: float) -> None:
    """Drop the reports of web processes that stopped reporting (e.g. killed ones)."""
    stale = [name for name, report in watcher_reports(client).items()
             if report is None or now - report[1] > protocol.WATCHERS_FRESH]
    if stale:
        client.hdel(protocol.WATCHERS_KEY, *stale)
