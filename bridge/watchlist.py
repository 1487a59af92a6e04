"""Watched tasks whose progress may live only in the result backend. No I/O.

A task of another application may report progress the way celery-progress
does, with ``self.update_state(state="PROGRESS", meta={"current", "total",
"description", ...})``: that writes the result backend and sends no event. So
the bridge reads the backend for such tasks, but only for tasks someone
watches (the web process sends a ``track`` command without a job id when a
watcher joins a task of any application), and only while they are open. All
of them are read together, one ``MGET`` every ``PROGRESS_POLL_SECONDS`` (0.5 s:
celery-progress's own client polls every 500 ms, so such a task is shown no
later than there, and one read serves every watcher of every watched task).
Once a task sends a ``task-progress`` event of its own, events carry its
progress (milliseconds after it happens) and the poll only looks for its
ending (a worker without ``-E`` sends no ``task-succeeded``).

Bounded: at most :data:`CAP` tasks (the oldest watch goes first), a watch lasts
:data:`TTL` seconds after its last request, and a task that ends or is evicted
from the board is forgotten.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import orjson

from bridge import reconcile
from bridge.state import BACKEND, Board, Change
from bridge.task import PROGRESS_FIELDS
from tasks import events as ev

log = logging.getLogger("bridge")

CAP = 2000           # watched tasks polled at most
TTL = 6 * 3600.0     # s a watch lasts after the last request to watch the task
# Backend states that say nothing about progress (terminal ones are endings instead).
QUIET_STATES = frozenset({"PENDING", "RECEIVED", "RETRY", "REJECTED", "IGNORED"})
META_KEYS = frozenset({"current", "total", "percent", "pending", "description"})


class Watchlist:
    """Tasks to poll in the result backend, and what each last showed there."""

    def __init__(self, every: float = 0.5, cap: int = CAP, ttl: float = TTL) -> None:
        self.every = every
        self.cap = cap
        self.ttl = ttl
        self._until: OrderedDict[str, float] = OrderedDict()  # task id -> watch expiry
        self._seen: dict[str, bytes] = {}                     # task id -> last meta polled
        self._evented: set[str] = set()                       # ids that sent task-progress
        self.next_poll = 0.0

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._until

    def watch(self, task_id: str, now: float) -> None:
        """Someone watches ``task_id``: poll it from now on (until it ends, or :data:`TTL`)."""
        self._until[task_id] = now + self.ttl
        self._until.move_to_end(task_id)
        while len(self._until) > self.cap:
            self.forget(next(iter(self._until)))

    def heard(self, event: dict) -> None:
        """An event came: a task that sends its own progress is polled for its ending only."""
        if event.get("type") == ev.TASK_PROGRESS and event.get("uuid") in self._until:
            self._evented.add(event["uuid"])

    def forget(self, task_id: str) -> None:
        self._until.pop(task_id, None)
        self._seen.pop(task_id, None)
        self._evented.discard(task_id)

    def due(self, board: Board, now: float) -> list[str]:
        """The ids to read now (none before the next poll is due); forgets the tasks that
        ended, left the board or were not asked for within :data:`TTL`."""
        if not self._until or now < self.next_poll:
            return []
        out = []
        for task_id, until in list(self._until.items()):
            task = board.get(task_id)
            if task is None or task.ended or now > until:
                self.forget(task_id)
            else:
                out.append(task_id)
        return out

    def wake(self) -> float | None:
        """When the next poll is due (None: nothing is watched)."""
        return self.next_poll if self._until else None

    def poll(self, board: Board, ids: list[str], metas: dict[str, dict], now: float) -> Change:
        """Apply what the backend holds for the polled ``ids``: an ending, or a progress
        (or start) the board has not seen; a meta unchanged since the last poll is skipped."""
        change = Change()
        self.next_poll = now + self.every
        for task_id in ids:
            meta = metas.get(task_id)
            if not isinstance(meta, dict):
                continue
            ending = reconcile.ending_event(task_id, meta)
            if ending is not None:
                log.info("the ending of %s comes from the result backend (%s)", task_id,
                         meta.get("status"))
                change += board.apply(ending, reconcile.result_of(meta), source=BACKEND)
                self.forget(task_id)
                continue
            if task_id in self._evented:
                continue
            try:
                seen = orjson.dumps([meta.get("status"), meta.get("result")])
            except (orjson.JSONEncodeError, TypeError):
                continue
            if self._seen.get(task_id) == seen:
                continue
            self._seen[task_id] = seen
            event = progress_event(task_id, meta, now)
            if event is not None:
                change += board.apply(event, source=BACKEND)
        return change


def progress_event(task_id: str, meta: dict, now: float) -> dict | None:
    """The Celery event a non-terminal backend ``meta`` stands for, or None.

    ``STARTED`` (``task_track_started``) is a ``task-started``; any other custom state
    whose meta has numbers ``current`` and ``total`` (celery-progress's ``PROGRESS``:
    ``{"pending", "current", "total", "percent", "description"}``) is a
    ``task-progress`` whose step is the ``description`` and whose extra fields are
    the meta's other keys (kept small by the board, like an event's).
    """
    status, info = meta.get("status"), meta.get("result")
    base: dict[str, Any] = {"uuid": task_id, "timestamp": now}
    if status == "STARTED":
        hostname = info.get("hostname") if isinstance(info, dict) else None
        return {"type": ev.TASK_STARTED, **base, "hostname": hostname}
    if status in QUIET_STATES or not isinstance(info, dict):
        return None
    current, total = info.get("current"), info.get("total")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (current, total)):
        return None
    description = info.get("description")
    extra = {k: v for k, v in info.items() if k not in META_KEYS and k not in PROGRESS_FIELDS}
    return {"type": ev.TASK_PROGRESS, **base, **extra, "current": current, "total": total,
            "step": description if isinstance(description, str) else ""}
