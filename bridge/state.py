"""The bridge's one table of tasks and the rules that move them: ``Board``. No I/O.

``Board.apply(event) -> Change``: the Socket.IO updates the event causes and
the transitions of tasks between (state, name) buckets, which are what the
operator view (bridge/cluster.py) counts; it keeps no copy of the tasks.

Rules (DESIGN.md):

- Our own terminal rule: once SUCCESS, FAILURE or REVOKED, later events of the
  task are ignored, so each task has exactly one ending (Celery's
  ``events.state.State`` ranks a custom PROGRESS above REVOKED; not used).
- Out-of-order and duplicate events never move a task backwards.
- Bounded: at most ``max_tasks`` tasks, ended ones evicted first (LRU).
- Every field is checked (bridge/task.py): numbers clamped, texts trimmed.

Events are Celery event dicts (``type``, ``uuid``, ``timestamp``, fields). A
``task-succeeded`` (of any task) may come with ``results``: the task's return
value, read from the result backend by the bridge (the event has only its repr).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import protocol
from bridge import rules
from bridge.task import Task, as_count, as_id, as_label, as_number
from protocol import ADMIN_ROOM, task_room
from tasks import events as ev

# Where a transition came from: the live event stream, the result backend
# (reconciled), the bridge's own decision (a cancel or terminate), or the store
# (a restarted bridge reloading its tasks: not new, only counted as open).
EVENT, BACKEND, BRIDGE, STORE = "event", "backend", "bridge", "store"


@dataclass(frozen=True, slots=True)
class Update:
    """One Socket.IO emit: ``event`` with ``payload`` to ``room``."""

    event: str
    room: str
    task_id: str
    payload: dict
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    """A task moved between (state, name) buckets: ``before`` None when it is new to the
    board, ``after`` None when the board dropped it (evicted while open)."""

    task_id: str
    before: tuple[str, str | None] | None
    after: tuple[str, str | None] | None
    at: float
    source: str = EVENT
    runtime: float | None = None  # of an ending, when known


@dataclass(slots=True)
class Change:
    """What one call did: the emits it causes and the transitions it made."""

    updates: list[Update] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)

    def __iadd__(self, other: Change) -> Change:
        self.updates += other.updates
        self.transitions += other.transitions
        return self

    @property
    def ended(self) -> bool:
        return any(u.terminal for u in self.updates)


class Board:
    """Every task the bridge tracks, and the rules that move them."""

    def __init__(self, max_tasks: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if max_tasks < 1:
            raise ValueError("max_tasks must be at least 1")
        self.max_tasks = max_tasks
        self.clock = clock
        self._open: OrderedDict[str, Task] = OrderedDict()
        self._ended: OrderedDict[str, Task] = OrderedDict()
        # Task ids whose record changed since take_records(), in the order they first changed
        # (about the order they were received: the index's chunks take those at their end).
        self.changed: dict[str, None] = {}
        self.ignored = 0
        self._dropped: list[Transition] = []  # open tasks evicted during the current call
        self.unindexed: list[tuple[str, tuple]] = []  # evicted: (task id, its index entry)

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
            del self.changed[task_id]
            if task is None or task.compacted:
                continue
            record = task.record()
            entry = task.index_entry()
            # The store's index moves with it (bridge/records.py); None: it stays put.
            record["_index"] = (task.indexed, entry) if entry != task.indexed else None
            task.indexed = entry
            records.append(record)
            if task.ended:
                task.compact()
                task.indexed = None  # an ended task never moves again: index_entry() says it
        return records

    def take_unindexed(self) -> list[tuple[str, tuple]]:
        """Tasks evicted since the last call, with the index entries to remove."""
        gone, self.unindexed = self.unindexed, []
        return gone

    # -- loading -----------------------------------------------------------------
    def load(self, records: Iterable[dict]) -> list[Transition]:
        """Restore tasks from stored records (oldest first), without emitting; returns the
        open ones as transitions from the store (what the operator view counts as open)."""
        for record in sorted(records, key=lambda r: as_number(r["snapshot"].get("updated_at"), 0.0)):
            task = Task.from_record(record)
            (self._ended if task.ended else self._open)[task.task_id] = task
            self._evict()
        self._dropped = []
        for task in self._ended.values():
            task.indexed = None  # derivable (index_entry), never moving again
        return [Transition(t.task_id, None, t.bucket, t.updated_at, STORE) for t in self._open.values()]

    # -- the state machine ---------------------------------------------------------
    def apply(self, event: dict, results: Any = None, source: str = EVENT) -> Change:
        """Apply one Celery event (``results``: the task's return value as the result
        backend holds it, for its ``task-succeeded``); returns the emits and transitions
        it causes (maybe none)."""
        if not isinstance(event, dict):
            self.ignored += 1
            return Change()
        etype, task_id = event.get("type"), event.get("uuid")
        task = self.get(task_id) if isinstance(task_id, str) and task_id else None
        if etype not in rules.KNOWN or not isinstance(task_id, str) or not task_id \
                or (task is not None and task.ended):
            self.ignored += 1
            return Change()
        new = task is None
        task = self._add(task_id) if new else self._touch(task)
        before = None if new else task.bucket
        stamp = as_number(event.get("timestamp"), None) or self.clock()
        if etype == ev.TASK_SUCCEEDED:
            move = rules.on_succeeded(task, event, results)
        else:
            move = rules.RULES[etype](task, event, stamp)
        if move is None:  # nothing changed (or the event was malformed)
            self.ignored += 1
            if new:  # no phantom task for an event that said nothing usable
                self._open.pop(task_id, None)
            return Change(transitions=self._take_dropped())
        task.updated_at = max(task.updated_at, stamp)
        snap = task.snapshot() if move.kind == "progress" else None  # for the update and the row
        return self._changed(task, before, self._emits(task, move, snap), stamp, source, snap)

    def cancel(self, task_id: str, by: str = "", started: bool = False) -> Change:
        """A cancel request was accepted (flag set, revoke sent).

        A task known to be queued (no worker started it; ``started``: the result
        backend says one did) ends REVOKED at once: the flag and the revoke
        guarantee it will not caption anything. A running or unknown one shows
        CANCELLING until its own ending arrives (from the worker, or from
        reconciliation with the result backend).
        """
        task = self.get(task_id)
        if task is not None and task.ended:
            return Change()
        known = task is not None
        task = self._touch(task) if known else self._add(task_id)
        before = task.bucket if known else None
        task.cancel_requested = True
        now = self.clock()
        task.updated_at = max(task.updated_at, now)
        if known and not started and task.state in ("PENDING", "RECEIVED"):
            task.step = "cancelled before it started"
            return self._changed(task, before, self._finish(task, "REVOKED", completed=0), now, BRIDGE)
        task.state = "CANCELLING"
        task.step = "cancelling"
        return self._changed(task, before, [self._progress(task)], now, BRIDGE)

    def track(self, task_id: str, job_id: int | None = None, owner: str | None = None,
              total: int = 0) -> Change:
        """Follow a job the web process submitted or someone watches (no emit to its room);
        without ``job_id``, a task of any application that someone watches."""
        task = self.get(task_id)
        if task is not None and task.ended:
            return Change()
        new = task is None
        if task is None:
            task = self._add(task_id)
            task.name = ev.CAPTION_TASK_NAME if job_id is not None else None  # else any task
            task.updated_at = self.clock()
        was = (task.job_id, task.owner, task.total)
        task.job_id = task.job_id if task.job_id is not None else as_id(job_id)
        task.owner = task.owner or as_label(owner)
        task.total = task.total or as_count(total, 0)
        if not new and was == (task.job_id, task.owner, task.total):
            return Change()
        return self._changed(task, None if new else task.bucket, [], task.updated_at, BRIDGE)

    def terminated(self, task_id: str) -> Change:
        """The bridge terminated a job that ignored its cancel past the grace period."""
        task = self.get(task_id)
        if task is None or task.ended:
            return Change()
        before = task.bucket
        task.terminated = True
        now = self.clock()
        task.updated_at = max(task.updated_at, now)
        task.step = "terminated after the cancel grace period"
        out = self._finish(task, "REVOKED", completed=max(0, task.current - task.failed))
        return self._changed(task, before, out, now, BRIDGE)

    # -- helpers ---------------------------------------------------------------------------
    def _emits(self, task: Task, move: rules.Move, snap: dict | None) -> list[Update]:
        if move.kind == "end":
            return self._finish(task, move.state, results=move.results, completed=move.completed,
                                error=move.error)
        if move.kind == "quiet":
            return []
        if move.caption is not None:  # the row is made from the bare snapshot
            snap = {**snap, "last_caption": move.caption, "recent_captions": [move.caption]}
        return [self._progress(task, snap)]

    def _changed(self, task: Task, before: tuple[str, str | None] | None, out: list[Update],
                 at: float, source: str, snap: dict | None = None) -> Change:
        """The change of one call: its updates, the admin row (from ``snap``, the task's
        snapshot when the caller made one after the change), and the task's transition."""
        self.changed.setdefault(task.task_id)
        if task.seen_at is None:
            task.seen_at = at
        moves = self._take_dropped()
        if task.bucket != before:
            runtime = None
            if task.ended:
                runtime = task.runtime if task.runtime is not None else (
                    max(0.0, at - task.started_at) if task.started_at is not None else None)
            moves.append(Transition(task.task_id, before, task.bucket, at, source, runtime))
        return Change(out + [self._job_update(task, snap)], moves)

    def _take_dropped(self) -> list[Transition]:
        dropped, self._dropped = self._dropped, []
        return dropped

    def _progress(self, task: Task, payload: dict | None = None) -> Update:
        return Update(protocol.PROGRESS_UPDATE, task_room(task.task_id), task.task_id,
                      payload or task.snapshot())

    def _job_update(self, task: Task, snap: dict | None = None) -> Update:
        return Update(protocol.JOB_UPDATE, ADMIN_ROOM, task.task_id, {"job": task.row(snap)},
                      terminal=task.ended)

    def _finish(self, task: Task, state: str, *, results: dict | None = None,
                completed: int | None = None, error: tuple[str, str] | None = None) -> list[Update]:
        task.state = state
        extra = {"terminated": task.terminated} if state == "REVOKED" else {}
        task.ending = protocol.ending(task.snapshot(), results=results, completed=completed or 0,
                                      error=error or ("Error", "the task failed"), **extra)
        if self._open.pop(task.task_id, None) is not None:
            self._ended[task.task_id] = task
        return [Update(task.ending["event"], task_room(task.task_id), task.task_id,
                       task.ending["payload"], terminal=True)]

    def _add(self, task_id: str) -> Task:
        task = Task(task_id)
        self._open[task_id] = task
        self._evict()  # the oldest go: never this one, the newest
        return task

    def _touch(self, task: Task) -> Task:
        (self._ended if task.ended else self._open).move_to_end(task.task_id)
        return task

    def _evict(self) -> None:
        while len(self) > self.max_tasks:
            victims = self._ended if self._ended else self._open
            task_id, task = victims.popitem(last=False)
            self.changed.pop(task_id, None)
            self.unindexed.append((task_id, task.indexed or task.index_entry()))
            if not task.ended:
                self._dropped.append(Transition(task_id, task.bucket, None, task.updated_at))
