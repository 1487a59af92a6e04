"""Requests from web to the bridge: the format of each lives here only.

- ``cancel``: a user asked to stop a job (flag + revoke, see :func:`handle_cancel`).
- ``track``: a job the bridge must follow even if it missed all its events
  (sent when a job is submitted, and when someone watches a job the store does
  not know): the bridge reconciles it against the result backend.

Requests travel on the Redis stream ``skald:commands`` read by the consumer
group ``bridge``; an entry is acknowledged only after it was handled, so a
request made while the bridge is down (or that it crashed on) is handled once
it is back.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from tasks.cancel import set_cancel_flag

log = logging.getLogger(__name__)

STREAM = "skald:commands"
GROUP = "bridge"
STREAM_MAXLEN = 100_000
CANCEL = "cancel"
TRACK = "track"


@dataclass(frozen=True)
class CancelRequest:
    task_id: str
    by: str
    at: float


@dataclass(frozen=True)
class TrackRequest:
    task_id: str
    job_id: int | None
    owner: str | None
    total: int


Request = CancelRequest | TrackRequest


def send_cancel(client: redis.Redis, task_id: str, by: str) -> str:
    """Queue a cancel request for the bridge; returns the stream entry id."""
    entry = {"type": CANCEL, "task_id": task_id, "by": by, "at": f"{time.time():.6f}"}
    msg_id = client.xadd(STREAM, entry, maxlen=STREAM_MAXLEN, approximate=True)
    return msg_id.decode() if isinstance(msg_id, bytes) else msg_id


def send_track(client: redis.Redis, task_id: str, job_id: int | None, owner: str | None,
               total: int) -> str:
    """Ask the bridge to follow a caption job from now on (``job_id`` None: a watched task
    of any application, which the bridge also polls for ``update_state`` progress)."""
    entry = {"type": TRACK, "task_id": task_id, "job_id": "" if job_id is None else str(job_id),
             "owner": owner or "", "total": str(total)}
    msg_id = client.xadd(STREAM, entry, maxlen=STREAM_MAXLEN, approximate=True)
    return msg_id.decode() if isinstance(msg_id, bytes) else msg_id


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def parse(fields: dict[Any, Any]) -> Request | None:
    """A request from a stream entry, or None when the entry is malformed."""
    try:
        f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in fields.items()}
    except UnicodeDecodeError:
        return None
    task_id = f.get("task_id")
    if not task_id or len(task_id) > 64:
        return None
    if f.get("type") == CANCEL:
        try:
            at = float(f.get("at") or 0)
        except ValueError:
            at = 0.0
        return CancelRequest(task_id=task_id, by=f.get("by", ""), at=at)
    if f.get("type") == TRACK:
        return TrackRequest(task_id=task_id, job_id=_int(f.get("job_id")),
                            owner=f.get("owner") or None, total=_int(f.get("total")) or 0)
    return None


class CommandReader:
    """Reads the command stream as one consumer of the ``bridge`` group."""

    def __init__(self, client: redis.Redis, consumer: str) -> None:
        self.client = client
        self.consumer = consumer
        self._pending_first = True

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, block_ms: int = 1000, count: int = 100) -> list[tuple[str, Request | None]]:
        """Entries to handle: first any left pending (by us or a dead consumer), then new ones."""
        if self._pending_first:
            self._pending_first = False
            claimed = self.client.xautoclaim(STREAM, GROUP, self.consumer, min_idle_time=0,
                                             start_id="0-0", count=1000)
            entries = claimed[1] if claimed else []
            if entries:
                return [(_id(m), parse(f)) for m, f in entries if f is not None]
        resp = self.client.xreadgroup(GROUP, self.consumer, {STREAM: ">"}, count=count, block=block_ms)
        out: list[tuple[str, Request | None]] = []
        for _stream, entries in resp or []:
            out.extend((_id(m), parse(f)) for m, f in entries)
        return out

    def ack(self, msg_id: str) -> None:
        self.client.xack(STREAM, GROUP, msg_id)


def _id(msg_id: bytes | str) -> str:
    return msg_id.decode() if isinstance(msg_id, bytes) else msg_id


def handle_cancel(client: redis.Redis, request: CancelRequest,
                  revoke: Callable[[str], None]) -> None:
    """Set the cooperative flag, then revoke (drops queued and prefetched copies)."""
    set_cancel_flag(client, request.task_id, request.by)
    revoke(request.task_id)
