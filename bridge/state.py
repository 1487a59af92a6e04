"""The bridge's task state machine: ``Board.apply(event) -> list[Update]``. No I/O.

Rules (DESIGN.md):

- Our own terminal rule: once SUCCESS, FAILURE or REVOKED, later events of the
  task are ignored, so each task has exactly one ending (Celery's
  ``events.state.State`` ranks a custom PROGRESS above REVOKED; not used).
- Out-of-order and duplicate events never move a task backwards.
- Bounded: at most ``max_tasks`` tasks, ended ones evicted first (LRU).

Events are Celery event dicts (``type``, ``uuid``, ``timestamp``, fields).
Transport code may add ``results`` to a ``task-succeeded`` event (the job's
return value read from the result backend) before applying it.
"""
from __future__ import annotations

import ast
import math
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import protocol
from protocol import ADMIN_ROOM, task_room
from tasks import events as ev

TEXT_CAP = 300  # longest args / result / exception text kept per task

# How far along a task is; events never move a task to a lower rank.
RANK = {"PENDING": 0, "RECEIVED": 1, "STARTED": 2, "PROGRESS": 3, "CANCELLING": 4}
TERMINAL = protocol.TERMINAL_STATES
_EXC_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\((.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Update:
    """One Socket.IO emit: ``event`` with ``payload`` to ``room``."""

    event: str
    room: str
    task_id: str
    payload: dict
    terminal: bool = False


class Task:
    """What the bridge knows of one task (slots: memory per task is measured)."""

    __slots__ = ("task_id", "name", "state", "job_id", "owner", "current", "total", "failed",
                 "step", "eta", "updated_at", "worker", "received_at", "started_at",
                 "runtime", "args", "outcome", "cancel_requested", "terminated", "ending",
                 "compacted")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.name: str | None = None
        self.state = "PENDING"
        self.job_id: int | None = None
        self.owner: str | None = None
        self.current = 0
        self.total = 0
        self.failed = 0
        self.step = ""
        self.eta: float | None = None
        self.updated_at = 0.0
        self.worker: str | None = None
        self.received_at: float | None = None
        self.started_at: float | None = None
        self.runtime: float | None = None
        self.args: str | None = None
        self.outcome: str | None = None  # result or traceback text, trimmed
        self.cancel_requested = False
        self.terminated = False
        self.ending: dict | None = None  # {"event", "payload"} once ended
        self.compacted = False  # ended, stored, and its bulky parts dropped

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    def compact(self) -> None:
        """Forget what only the store needs (an ended task is never written again)."""
        self.ending = self.args = self.outcome = None
        self.step = sys.intern(self.step)
        self.compacted = True

    def snapshot(self) -> dict:
        return protocol.snapshot(self.task_id, job_id=self.job_id, owner=self.owner,
                                 state=self.state, current=self.current, total=self.total,
                                 current_step=self.step, estimated_completion=self.eta,
                                 updated_at=self.updated_at)

    def detail(self) -> dict:
        """Admin fields beyond the snapshot."""
        return {"name": self.name, "worker": self.worker, "runtime": self.runtime,
                "received_at": self.received_at, "started_at": self.started_at,
                "args": self.args, "outcome": self.outcome, "failed": self.failed,
                "cancel_requested": self.cancel_requested, "terminated": self.terminated}

    def record(self) -> dict:
        """What the store keeps for this task."""
        return {"snapshot": self.snapshot(), "ending": self.ending, "detail": self.detail()}

    @classmethod
    def from_record(cls, record: dict) -> Task:
        snap = record["snapshot"]
        task = cls(snap["task_id"])
        task.state = snap.get("state", "PENDING")
        task.job_id = snap.get("job_id")
        task.owner = snap.get("owner")
        task.current = int(snap.get("current") or 0)
        task.total = int(snap.get("total") or 0)
        task.step = snap.get("current_step") or ""
        task.eta = snap.get("estimated_completion")
        task.updated_at = float(snap.get("updated_at") or 0.0)
        detail = record.get("detail") or {}
        for key in ("name", "worker", "runtime", "received_at", "started_at", "args",
                    "outcome", "failed", "cancel_requested", "terminated"):
            if key in detail and detail[key] is not None:
                setattr(task, key, detail[key])
        task.ending = record.get("ending")
        if task.ended:
            task.compact()  # the store already holds its final record
        return task


def _trim(text: Any, keep_end: bool = False) -> str | None:
    """At most ``TEXT_CAP`` characters: the start, or the end (a traceback's useful part)."""
    if text is None:
        return None
    text = str(text)
    if len(text) <= TEXT_CAP:
        return text
    return "\u2026" + text[1 - TEXT_CAP:] if keep_end else text[: TEXT_CAP - 1] + "\u2026"


def parse_exception(text: str | None) -> tuple[str, str]:
    """``"ValueError('bad')"`` -> ``("ValueError", "bad")``."""
    if not text:
        return "Error", "the task failed"
    match = _EXC_RE.match(text)
    if not match:
        return "Error", text
    type_, inner = match.group(1), match.group(2)
    try:
        value = ast.literal_eval(inner) if inner else ""
        message = value if isinstance(value, str) else ", ".join(map(str, value)) \
            if isinstance(value, tuple) else str(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        message = inner
    return type_.rsplit(".", 1)[-1], message


def as_number(value: Any, default: float | None = None) -> float | None:
    """A finite number from an event field, else ``default`` (bools, text, NaN, huge ints)."""
    if isinstance(value, bool):
        return default
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            return default
        return number if math.isfinite(number) else default  # NaN/Infinity: JSON allows them
    return default


class Board:
    """Every task the bridge tracks, and the rules that move them."""

    def __init__(self, max_tasks: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if max_tasks < 1:
            raise ValueError("max_tasks must be at least 1")
        self.max_tasks = max_tasks
        self.clock = clock
        self._open: OrderedDict[str, Task] = OrderedDict()
        self._ended: OrderedDict[str, Task] = OrderedDict()
        self.changed: set[str] = set()  # task ids whose record changed since take_records()
        self.evicted = 0
        self.ignored = 0

    # -- lookups ---------------------------------------------------------------
    def get(self, task_id: str) -> Task | None:
        return self._open.get(task_id) or self._ended.get(task_id)

    def __len__(self) -> int:
        return len(self._open) + len(self._ended)

    def open_tasks(self) -> list[Task]:
        return list(self._open.values())

    def tasks(self) -> Iterable[Task]:
        yield from self._open.values()
        yield from self._ended.values()

    def take_records(self, only: set[str] | None = None) -> list[dict]:
        """Store records of the tasks changed since they were last taken.

        ``only``: take just these tasks (and every ended one); the others stay
        changed for a later call. The bridge passes the tasks whose updates
        it emits, so a task's record is written at most as often as its
        coalesced updates go out, and always with its ending.

        An ended task never changes again, so once its final record is taken
        the bulky parts (ending payload, args, outcome) are dropped from memory:
        the store holds them. This keeps memory per tracked task small.
        """
        records = []
        for task_id in list(self.changed):
            task = self.get(task_id)
            if task is not None and not task.ended and only is not None and task_id not in only:
                continue
            self.changed.discard(task_id)
            if task is None or task.compacted:
                continue
            records.append(task.record())
            if task.ended:
                task.compact()
        return records

    # -- loading -----------------------------------------------------------------
    def load(self, records: Iterable[dict]) -> None:
        """Restore tasks from stored records (oldest first), without emitting."""
        for record in sorted(records, key=lambda r: r["snapshot"].get("updated_at") or 0):
            task = Task.from_record(record)
            (self._ended if task.ended else self._open)[task.task_id] = task
            self._evict()

    # -- the state machine ---------------------------------------------------------
    def apply(self, event: dict) -> list[Update]:
        """Apply one Celery event; returns the emits it causes (maybe none)."""
        if not isinstance(event, dict):
            self.ignored += 1
            return []
        etype = event.get("type")
        task_id = event.get("uuid")
        if not isinstance(etype, str) or not etype.startswith("task-") or not isinstance(task_id, str) \
                or not task_id:
            self.ignored += 1
            return []
        task = self.get(task_id)
        if task is not None and task.ended:
            self.ignored += 1
            return []
        handler = _HANDLERS.get(etype)
        if handler is None:
            self.ignored += 1
            return []
        new = task is None
        if task is None:
            task = self._add(task_id)
        else:
            self._touch(task)
        stamp = as_number(event.get("timestamp"), None) or self.clock()
        out = handler(self, task, event, stamp)
        if out is None:  # nothing changed (or the event was malformed)
            self.ignored += 1
            if new:  # no phantom task for an event that said nothing usable
                self._open.pop(task_id, None)
            return []
        task.updated_at = max(task.updated_at, stamp)
        for update in out:  # the handler built these payloads before updated_at moved
            update.payload["updated_at"] = task.updated_at
        self.changed.add(task_id)
        return out + [self._job_update(task)]

    def cancel(self, task_id: str, by: str = "") -> list[Update]:
        """A cancel request was accepted (flag set, revoke sent).

        A task known to be queued (no worker started it) ends REVOKED at once:
        the flag and the revoke guarantee it will not caption anything. A
        running or unknown one shows CANCELLING until its own ending arrives
        (from the worker, or from reconciliation with the result backend).
        """
        task = self.get(task_id)
        if task is not None and task.ended:
            return []
        known = task is not None
        if task is None:
            task = self._add(task_id)
        task.cancel_requested = True
        task.updated_at = max(task.updated_at, self.clock())
        self.changed.add(task_id)
        if known and task.state in ("PENDING", "RECEIVED"):
            task.step = "cancelled before it started"
            return self._finish(task, "REVOKED", completed=0) + [self._job_update(task)]
        task.state = "CANCELLING"
        task.step = "cancelling"
        return [self._progress(task), self._job_update(task)]

    def track(self, task_id: str, job_id: int | None = None, owner: str | None = None,
              total: int = 0) -> list[Update]:
        """Follow a job the web process submitted or someone watches (no emit to its room)."""
        task = self.get(task_id)
        if task is not None and task.ended:
            return []
        new = task is None
        if task is None:
            task = self._add(task_id)
            task.name = ev.CAPTION_TASK_NAME
            task.updated_at = self.clock()
        before = (task.job_id, task.owner, task.total)
        task.job_id = task.job_id if task.job_id is not None else job_id
        task.owner = task.owner or owner
        task.total = task.total or max(0, int(total or 0))
        if not new and before == (task.job_id, task.owner, task.total):
            return []
        self.changed.add(task_id)
        return [self._job_update(task)]

    def terminated(self, task_id: str) -> list[Update]:
        """The bridge terminated a job that ignored its cancel past the grace period."""
        task = self.get(task_id)
        if task is None or task.ended:
            return []
        task.terminated = True
        task.updated_at = max(task.updated_at, self.clock())
        task.step = "terminated after the cancel grace period"
        self.changed.add(task_id)
        return (self._finish(task, "REVOKED", completed=max(0, task.current - task.failed))
                + [self._job_update(task)])

    # -- handlers ---------------------------------------------------------------------
    def _advance(self, task: Task, state: str) -> bool:
        if task.cancel_requested:
            state = "CANCELLING" if RANK[state] >= RANK["STARTED"] else task.state
        if RANK.get(state, -1) > RANK.get(task.state, -1):
            task.state = state
            return True
        return False

    def _on_sent(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        new = task.updated_at == 0
        return [] if self._describe(task, event) or new else None

    def _on_received(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        described = self._describe(task, event)
        task.received_at = task.received_at or stamp
        if self._advance(task, "RECEIVED"):
            task.step = "queued on a worker"
            return [self._progress(task)]
        return [] if described else None

    def _on_started(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        task.worker = event.get("hostname") or task.worker
        task.started_at = task.started_at or stamp
        if self._advance(task, "STARTED"):
            task.step = "started"
            return [self._progress(task)]
        return None

    def _on_progress(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        current = as_number(event.get("current"))
        total = as_number(event.get("total"))
        if current is None or total is None or current < 0 or total < 0:
            return None
        if int(current) < task.current:  # stale or duplicate
            return None
        task.worker = task.worker or event.get("hostname")
        task.current, task.total = int(current), int(total)
        task.failed = int(as_number(event.get("failed"), task.failed) or 0)
        task.step = _trim(event.get("step")) or task.step
        eta = as_number(event.get("eta"))
        task.eta = round(eta, 1) if eta is not None and eta >= 0 else None
        if isinstance(event.get("job_id"), int) and not isinstance(event["job_id"], bool):
            task.job_id = event["job_id"]
        if isinstance(event.get("owner"), str):
            task.owner = event["owner"]
        self._advance(task, "PROGRESS")
        update = self._progress(task)
        caption = event.get("caption")
        if isinstance(caption, str) and isinstance(event.get("image"), str):
            last = {"image": event["image"], "caption": caption}
            update.payload["last_caption"] = last
            update.payload["recent_captions"] = [last]
        return [update]

    def _on_succeeded(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        task.runtime = as_number(event.get("runtime"), task.runtime)
        results = event.get("results")
        if not isinstance(results, dict):
            results = {"count": 0, "failed": task.failed, "captions": []}
            task.outcome = _trim(event.get("result"))
        else:
            task.failed = int(as_number(results.get("failed"), task.failed) or 0)
            total = as_number(results.get("total"))
            if total is not None:
                task.total = int(total)
            task.outcome = f"{results.get('count', 0)} captions, {task.failed} failed"
        task.current = max(task.current, task.total)
        task.eta = 0.0 if task.total else None
        task.step = "done"
        return self._finish(task, "SUCCESS", results=protocol.caption_results(results))

    def _on_failed(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        exc = event.get("exception")
        type_, message = parse_exception(exc if isinstance(exc, str) else None)
        task.outcome = _trim(event.get("traceback") or exc, keep_end=True)
        task.step = "failed"
        task.eta = None
        return self._finish(task, "FAILURE", error=(type_, message))

    def _on_revoked(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        if event.get("terminated"):
            task.terminated = True
        task.step = "cancelled"
        task.eta = None
        return self._finish(task, "REVOKED", completed=max(0, task.current - task.failed))

    def _on_cancelled(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        completed = as_number(event.get(ev.CANCELLED_MARKER_FIELD))
        if ev.CANCELLED_MARKER_FIELD in event and (completed is None or completed < 0):
            return None  # ours, but malformed
        if completed is None:
            # Celery's own task-cancelled (broker connection lost): the task
            # goes back to the queue, so this is no ending.
            task.step = "requeued after a lost connection"
            return []
        total = as_number(event.get("total"))
        if total is not None:
            task.total = int(total)
        task.step = "cancelled"
        task.eta = None
        return self._finish(task, "REVOKED", completed=int(completed))

    def _on_rejected(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        if event.get("requeue"):
            task.step = "requeued"
            return []
        task.step = "rejected"
        return self._finish(task, "FAILURE", error=("Rejected", "the worker rejected the task"))

    def _on_retried(self, task: Task, event: dict, stamp: float) -> list[Update] | None:
        task.step = "retrying"
        task.outcome = _trim(event.get("exception"))
        return [self._progress(task)]

    # -- helpers ---------------------------------------------------------------------------
    def _describe(self, task: Task, event: dict) -> bool:
        changed = False
        name = event.get("name")
        if isinstance(name, str) and name and task.name != name:
            task.name = sys.intern(name[:200])
            changed = True
        if task.args is None and ("args" in event or "kwargs" in event):
            task.args = _trim(f"{event.get('args', '')} {event.get('kwargs', '')}".strip())
            changed = True
        if task.job_id is None and task.name == ev.CAPTION_TASK_NAME:
            job_id = _first_int_arg(event.get("args"))
            if job_id is not None:
                task.job_id = job_id
                changed = True
        return changed

    def _progress(self, task: Task) -> Update:
        return Update(protocol.PROGRESS_UPDATE, task_room(task.task_id), task.task_id,
                      task.snapshot())

    def _job_update(self, task: Task) -> Update:
        job = protocol.admin_row(task.snapshot(), name=task.name, worker=task.worker,
                                 runtime=task.runtime, terminated=task.terminated)
        return Update(protocol.JOB_UPDATE, ADMIN_ROOM, task.task_id, {"job": job}, terminal=task.ended)

    def _finish(self, task: Task, state: str, *, results: dict | None = None,
                completed: int | None = None, error: tuple[str, str] | None = None) -> list[Update]:
        task.state = state
        extra = {"terminated": task.terminated} if state == "REVOKED" else {}
        task.ending = protocol.ending(task.snapshot(), results=results, completed=completed or 0,
                                      error=error or ("Error", "the task failed"), **extra)
        self._end(task)
        return [Update(task.ending["event"], task_room(task.task_id), task.task_id,
                       task.ending["payload"], terminal=True)]

    def _add(self, task_id: str) -> Task:
        task = Task(task_id)
        self._open[task_id] = task
        self._evict()
        return task

    def _touch(self, task: Task) -> None:
        (self._ended if task.ended else self._open).move_to_end(task.task_id)

    def _end(self, task: Task) -> None:
        if self._open.pop(task.task_id, None) is not None:
            self._ended[task.task_id] = task

    def _evict(self) -> None:
        while len(self) > self.max_tasks:
            victim = self._ended if self._ended else self._open
            task_id, _ = victim.popitem(last=False)
            self.changed.discard(task_id)
            self.evicted += 1


def _first_int_arg(args: Any) -> int | None:
    if isinstance(args, (list, tuple)) and args and isinstance(args[0], int):
        return args[0]
    if isinstance(args, str):
        try:
            value = ast.literal_eval(args)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        return _first_int_arg(value)
    return None


_HANDLERS: dict[str, Callable[[Board, Task, dict, float], list[Update] | None]] = {
    ev.TASK_SENT: Board._on_sent,
    ev.TASK_RECEIVED: Board._on_received,
    ev.TASK_STARTED: Board._on_started,
    ev.TASK_PROGRESS: Board._on_progress,
    ev.TASK_SUCCEEDED: Board._on_succeeded,
    ev.TASK_FAILED: Board._on_failed,
    ev.TASK_REVOKED: Board._on_revoked,
    ev.TASK_CANCELLED: Board._on_cancelled,
    ev.TASK_REJECTED: Board._on_rejected,
    ev.TASK_RETRIED: Board._on_retried,
}
