"""Emitting to Socket.IO rooms: coalescing (pure) and the atomic publisher (I/O).

Coalescing: at most one ``progress_update`` (and ``job_update``) per task per
window (default 100 ms); the first goes at once, later ones wait and the
newest replaces the waiting one; a terminal update first flushes what waits for
its task, then goes out at once. Terminal updates are never delayed or dropped.

Publishing: the messages go to Flask-SocketIO's Redis message-queue channel in
the format python-socketio's ``RedisManager`` writes, together with the store
writes, in one Lua script that first checks the leader lease. So an ending is
stored and emitted together or not at all (exactly once across a bridge
crash), and a bridge that lost its lease can emit nothing. Each record and
message is encoded on its own: one that cannot be (the state machine clamps
numbers, so this is a last line) is logged and left out, and costs the others
nothing.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
import redis

from bridge.records import SCRIPT, RecordWriter
from bridge.state import Update
from protocol import SOCKETIO_CHANNEL

log = logging.getLogger(__name__)
RECENT_CAPTIONS_CAP = 50


class Coalescer:
    def __init__(self, window: float = 0.1) -> None:
        self.window = window
        self._last: dict[tuple[str, str, str], float] = {}
        self._pending: dict[tuple[str, str, str], Update] = {}
        self._events: dict[str, None] = {}  # the (few) event names coalesced so far, in order

    def offer(self, update: Update, now: float) -> list[Update]:
        """What to send now for ``update`` (maybe nothing: it waits)."""
        key = (update.event, update.room, update.task_id)
        if update.terminal:
            # The task's waiting updates in this room go first; its windows are forgotten
            # (nothing follows an ending), so what is remembered stays bounded by open tasks.
            out = []
            for event in self._events:
                mine = (event, update.room, update.task_id)
                self._last.pop(mine, None)
                waiting = self._pending.pop(mine, None)
                if waiting is not None:
                    out.append(waiting)
            self._last.pop(key, None)
            out.append(update)
            return out
        self._events.setdefault(update.event)
        last = self._last.get(key)
        if last is None or now - last >= self.window:
            self._last[key] = now
            return [update]
        waiting = self._pending.get(key)
        self._pending[key] = _merge(waiting, update) if waiting else update
        return []

    def due(self, now: float) -> list[Update]:
        """Waiting updates whose window has passed."""
        out: list[Update] = []
        for key, update in list(self._pending.items()):
            if now - self._last.get(key, 0.0) >= self.window:
                del self._pending[key]
                self._last[key] = now
                out.append(update)
        if len(self._last) > 10_000:
            self._last = {k: t for k, t in self._last.items() if now - t < self.window}
        return out

    def next_due(self) -> float | None:
        if not self._pending:
            return None
        return min(self._last.get(k, 0.0) for k in self._pending) + self.window

    def __len__(self) -> int:
        return len(self._pending)


def _merge(older: Update, newer: Update) -> Update:
    """Keep the captions of a replaced progress update (the page lists each one)."""
    old = older.payload.get("recent_captions")
    if not old:
        return newer
    captions = (old + newer.payload.get("recent_captions", []))[-RECENT_CAPTIONS_CAP:]
    return Update(newer.event, newer.room, newer.task_id,
                  {**newer.payload, "recent_captions": captions}, newer.terminal)


def socketio_message(event: str, payload: dict, room: str, host_id: str) -> bytes:
    """One message for Flask-SocketIO's Redis message queue, as python-socketio's
    ``PubSubManager.emit`` writes it (JSON; no binary attachments, no callback).

    Built directly (with orjson) instead of through a write-only manager, which
    walks every payload looking for binary data and encodes with the standard
    json module: the larger part of the bridge's cost per emit.
    ``tests/test_emitter.py`` checks it against python-socketio's own encoding.
    """
    return orjson.dumps({"method": "emit", "event": event, "data": [payload], "binary": False,
                         "namespace": "/", "room": room, "skip_sid": None, "callback": None,
                         "host_id": host_id})


class Ops:
    """Redis commands collected for one script call (mirrors the redis-py methods used)."""

    def __init__(self) -> None:
        self.args: list[Any] = []
        self.count = 0

    def _add(self, *cmd: Any) -> None:
        self.args.extend((cmd[0], len(cmd) - 1, *cmd[1:]))
        self.count += 1

    def set(self, key: str, value: str, ex: int | None = None) -> None:
        self._add("SET", key, value, "EX", ex) if ex else self._add("SET", key, value)

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        for member, score in mapping.items():
            self._add("ZADD", key, score, member)

    def sadd(self, key: str, member: str) -> None:
        self._add("SADD", key, member)

    def srem(self, key: str, member: str) -> None:
        self._add("SREM", key, member)

    def zremrangebyrank(self, key: str, start: int, end: int) -> None:
        self._add("ZREMRANGEBYRANK", key, start, end)

    def raw(self, *cmd: Any) -> None:
        """Any other command, as (name, arg, ...) (the explorer's index: bridge/records.py)."""
        self._add(*cmd)

    def publish(self, channel: str, message: str) -> None:
        self._add("PUBLISH", channel, message)


class LeaseLost(Exception):
    """The script refused to write: another bridge holds the lease."""


class Publisher:
    """Stores records and emits updates together, only while holding the lease."""

    def __init__(self, client: redis.Redis, store: RecordWriter, lease_key: str = "",
                 lease_token: str = "", channel: str = SOCKETIO_CHANNEL,
                 chunk: int = 500) -> None:
        self.client = client
        self.store = store
        self.lease_key = lease_key
        self.lease_token = lease_token
        self.channel = channel
        self.chunk = chunk
        self.host_id = uuid.uuid4().hex
        self._script = client.register_script(SCRIPT)
        self.skipped = 0

    def encode(self, update: Update) -> bytes:
        return socketio_message(update.event, update.payload, update.room, self.host_id)

    def _put(self, ops: Ops, record: dict) -> None:
        try:
            self.store.put(ops, record)
        except orjson.JSONEncodeError as exc:
            self._skip("record", record["snapshot"].get("task_id"), exc)

    def _publish(self, ops: Ops, update: Update) -> None:
        try:
            ops.publish(self.channel, self.encode(update))
        except orjson.JSONEncodeError as exc:
            self._skip(update.event, update.task_id, exc)

    def _skip(self, what: str, task_id: object, exc: Exception) -> None:
        self.skipped += 1
        log.error("left out a %s of %.64r that cannot be encoded: %s", what, task_id, exc)

    def send(self, updates: list[Update], records: Iterable[dict], extra: Ops | None = None) -> None:
        """Write ``records`` and emit ``updates`` (in order), atomically per chunk.

        A terminal update and its task's record always travel in one script.
        """
        by_task = {r["snapshot"]["task_id"]: r for r in records}
        start = 0
        while True:
            part = updates[start:start + self.chunk]
            last = start + self.chunk >= len(updates)
            ops = Ops()
            if extra is not None and start == 0:
                ops.args.extend(extra.args)
                ops.count += extra.count
            for u in part:
                record = by_task.pop(u.task_id, None)
                if record is not None:
                    self._put(ops, record)
            if last:
                for record in by_task.values():
                    self._put(ops, record)
                if by_task:
                    self.store.trim(ops)
            for u in part:
                self._publish(ops, u)
            if ops.count:
                self._run(ops)
            if last:
                return
            start += self.chunk

    def run(self, ops: Ops) -> None:
        """Run collected commands alone, lease-checked (e.g. an index backfill)."""
        if ops.count:
            self._run(ops)

    def _run(self, ops: Ops) -> None:
        result = self._script(keys=[self.lease_key], args=[self.lease_token, ops.count, *ops.args])
        if result == -1:
            raise LeaseLost("another bridge holds the lease")
