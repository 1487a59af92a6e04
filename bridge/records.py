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

_FROM_RECORD = object()


class RecordWriter:
    """Task records with a TTL (default 7 days), the index trimmed to ``max_tasks``."""

    def __init__(self, ttl_seconds: int = 7 * 24 * 3600, max_tasks: int = 100_000) -> None:
        self.ttl = ttl_seconds
        self.max_tasks = max_tasks

    def put(self, ops: Any, record: Record) -> None:
        """Add the commands that store ``record`` (and move it in the explorer's index when the
        board says its entry changed: ``record["_index"]`` = (entry before or None, entry now))."""
        snap = record["snapshot"]
        task_id = snap["task_id"]
        moved = record.pop("_index", _FROM_RECORD)
        ops.set(protocol.task_key(task_id), protocol.encode_record(record), ex=self.ttl)
        if moved is _FROM_RECORD:  # not from the board (a tool, a test): index it as it is
            moved = (None, protocol.index_entry(record))
        if moved is not None:
            index(ops, protocol.member_of(task_id), *moved)
        ops.zadd(protocol.INDEX_KEY, {task_id: snap.get("updated_at") or 0})
        if snap.get("state") in protocol.TERMINAL_STATES:
            ops.srem(protocol.OPEN_KEY, task_id)
        else:
            ops.sadd(protocol.OPEN_KEY, task_id)

    def unindex(self, ops: Any, task_id: str, entry: tuple) -> None:
        """Add the commands that take an evicted task out of the explorer's index."""
        index(ops, protocol.member_of(task_id), entry, None)

    def trim(self, ops: Any) -> None:
        """Keep the index within ``max_tasks`` (oldest updates dropped)."""
        ops.zremrangebyrank(protocol.INDEX_KEY, 0, -self.max_tasks - 1)


def index_ops(member: bytes, was: tuple | None, now: tuple | None) -> list[tuple]:
    """The Redis commands that move ``member`` from index entry ``was`` to ``now`` (either
    None: added, or removed); pure, so the rules are tested without Redis. Entries are
    ``protocol.IndexEntry``: (state, name, worker, received, started, runtime)."""
    cmds: list[tuple] = []
    for i, facet in enumerate(protocol.FACETS):
        old = protocol.facet_key(facet, was[i]) if was is not None else None
        new = protocol.facet_key(facet, now[i]) if now is not None else None
        if old is not None and old != new:
            cmds.append(("ZREM", old, member))
        if new is not None and (new != old or was[3] != now[3]):
            cmds.append(("ZADD", new, now[3], member))
            if facet != "state" and (was is None or was[i] != now[i]):
                cmds.append(("ZADD", protocol.IX_NAMES if facet == "name" else protocol.IX_WORKERS,
                             0, now[i]))
    for i, key in ((4, protocol.IX_STARTED), (5, protocol.IX_RUNTIME)):
        old_v = was[i] if was is not None else None
        new_v = now[i] if now is not None else None
        if new_v is None and old_v is not None:
            cmds.append(("ZREM", key, member))
        elif new_v is not None and new_v != old_v:
            cmds.append(("ZADD", key, new_v, member))
    return cmds


def index(ops: Any, member: bytes, was: tuple | None, now: tuple | None) -> None:
    """Add :func:`index_ops`' commands to ``ops`` (an ``emitter.Ops``, or a redis pipeline)."""
    add = getattr(ops, "raw", None) or ops.execute_command
    for cmd in index_ops(member, was, now):
        add(*cmd)


def backfill(ops: Any, records: list[Record]) -> None:
    """Add the index entries of stored ``records`` (a store written before the index
    existed: a bridge upgraded in place); then mark the index ready."""
    for record in records:
        index(ops, protocol.member_of(record["snapshot"]["task_id"]), None,
              protocol.index_entry(record))


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
