"""The bridge's processor: one pure step from queue items to what to publish. No I/O.

The bridge (bridge/service.py) runs, over and over::

    batch = items from its queue, cut after one that may end a task (endings wait for nothing)
    ids = processor.needs(batch, now)             # tasks whose result-backend state matters
    metas = the result backend's metas of ids      # I/O; None when it cannot be read
    out = processor.step(batch, metas, now, gauges)
    carry out out.effects, publish out.updates with out.records and out.cluster, ack out.acks

The step feeds events to the board (bridge/state.py) and the board's
transitions to the operator view (bridge/cluster.py), decides cancels and
their deadlines, reconciles endings the stream lost, ticks the operator view,
and coalesces what goes out (bridge/emitter.py). The result backend decides
wherever it knows better than the stream: a caption job's ending carries the
return value stored there, and a cancel of a task the bridge did not see end
never overrides an ending the backend already holds.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bridge import reconcile
from bridge.cluster import Cluster
from bridge.commands import CancelRequest, Request, TrackRequest
from bridge.emitter import Coalescer
from bridge.state import BACKEND, Board, Change, Update
from bridge.watchlist import Watchlist
from settings import Settings
from tasks import events as ev

log = logging.getLogger("bridge")

BATCH = 500                # events in one step at most
RECONCILE_MIN_AGE = 2.0    # s without news before a task is checked against the backend
TERMINATE_WAIT = 10.0      # s after a terminate before the bridge records the end itself
ENDING_EVENTS = frozenset({ev.TASK_SUCCEEDED, ev.TASK_FAILED, ev.TASK_REVOKED,
                           ev.TASK_CANCELLED, ev.TASK_REJECTED})


# -- what goes in ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Events:
    """Events as the receiver handed them over (``at``: ``time.monotonic()`` then)."""

    events: list[dict]
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Connected:
    """The event stream (re)connected: what happened in the gap is looked up."""


@dataclass(frozen=True, slots=True)
class Command:
    """A request from the command stream (``request`` None: malformed)."""

    msg_id: str
    request: Request | None


@dataclass(frozen=True, slots=True)
class Alert:
    """An ``admin_alert`` raised outside the step (the sweeper, bridge/sweeper.py)."""

    level: str
    kind: str
    message: str
    extra: dict = field(default_factory=dict)


Item = Events | Connected | Command | Alert


@dataclass(frozen=True, slots=True)
class Gauges:
    """Read by the bridge's threads: broker queue lengths (None: unknown), watchers
    connected to the web processes, items waiting in the bridge's own queue."""

    queues: dict[str, int] | None = None
    watchers: int = 0
    backlog: int = 0


# -- what comes out ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CancelFlag:
    """Set the cooperative cancel flag and revoke (bridge/commands.py)."""

    request: CancelRequest


@dataclass(frozen=True, slots=True)
class Terminate:
    """Revoke with ``terminate=True``: the job ignored its cancel past the grace period."""

    task_id: str


@dataclass(frozen=True, slots=True)
class MarkRevoked:
    """Record an ending the bridge decided in the result backend (never over a SUCCESS)."""

    task_id: str
    reason: str


Effect = CancelFlag | Terminate | MarkRevoked


@dataclass(slots=True)
class Output:
    updates: list[Update] = field(default_factory=list)   # to emit, in order (coalesced)
    records: list[dict] = field(default_factory=list)     # task records to store with them
    cluster: dict | None = None     # cluster state to store (bridge/records.put_cluster)
    effects: list[Effect] = field(default_factory=list)   # to carry out before publishing
    acks: list[str] = field(default_factory=list)         # command entries done (after publishing)
    unindex: list[tuple[str, tuple]] = field(default_factory=list)  # evicted: leave the index
    wake: float = 0.0               # the next step is due by then at the latest
    events: int = 0                 # events applied


def may_end(item: Item) -> bool:
    """Whether handling ``item`` may end a task (the bridge publishes right after it)."""
    if isinstance(item, Events):
        return any(e.get("type") in ENDING_EVENTS for e in item.events if isinstance(e, dict))
    return isinstance(item, Connected) or isinstance(getattr(item, "request", None), CancelRequest)


def size(item: Item) -> int:
    return len(item.events) if isinstance(item, Events) else 1


class Processor:
    """The bridge's in-memory state (board, operator view, coalescer, cancel deadlines)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        s = settings
        self.clock = clock
        self.board = Board(s.bridge_max_tasks, clock)
        self.cluster = Cluster(offline_after=s.worker_offline_after,
                               forget_after=s.worker_forget_after, failure_burst=s.failure_burst,
                               failure_window=s.failure_window, queue_backlog=s.queue_backlog,
                               lag_alert=s.bridge_lag_alert, backlog_alert=s.bridge_backlog_alert,
                               clock=clock)
        self.coalescer = Coalescer(s.coalesce_ms / 1000.0)
        self.watchlist = Watchlist(s.progress_poll_seconds)  # bridge/watchlist.py
        self._polled: list[str] = []         # the watched ids needs() asked the backend for
        self.grace = s.cancel_grace_seconds
        self.reconcile_every = s.reconcile_seconds
        self.tick_every = s.metrics_interval
        self.deadlines: dict[str, tuple[float, bool]] = {}  # id -> (when, terminate sent)
        now = clock()
        self.next_reconcile = now + self.reconcile_every
        self.next_tick = now
        self._reconcile_all = False          # a reconnect whose gap is not looked up yet
        self._deferred: list[Command] = []   # cancels waiting for the backend to answer
        self.events_applied = 0

    def load(self, records: Iterable[dict], cluster: dict) -> None:
        """What a previous bridge stored: task records, and cluster state
        (``workers``, ``stats``, ``history``, ``alerts``, as bridge/store.read_cluster)."""
        moves = self.board.load(records)
        self.cluster.load(workers=cluster.get("workers") or (), stats=cluster.get("stats"),
                          history=cluster.get("history") or (), alerts=cluster.get("alerts") or ())
        self.cluster.transitions(moves)

    # -- the step ---------------------------------------------------------------------------
    def needs(self, batch: list[Item], now: float) -> set[str]:
        """The tasks whose result-backend state :meth:`step` needs for this batch."""
        ids: set[str] = set()
        for item in [*self._deferred, *batch]:
            if isinstance(item, Events):
                ids.update(e["uuid"] for e in item.events if self._wants_results(e))
            elif isinstance(item, Connected):
                ids.update(t.task_id for t in self.board.open_tasks())
            elif isinstance(item, Alert):
                continue
            elif item.request is not None and not self._ended(item.request.task_id):
                ids.add(item.request.task_id)
        if self._reconcile_all:
            ids.update(t.task_id for t in self.board.open_tasks())
        if now >= self.next_reconcile:
            ids.update(self._quiet(now))
        ids.update(t for t, (when, sent) in self.deadlines.items() if sent and now >= when)
        self._polled = self.watchlist.due(self.board, now)
        ids.update(self._polled)
        return ids

    def step(self, batch: list[Item], metas: dict[str, dict] | None, now: float,
             gauges: Gauges | None = None) -> Output:
        """Handle ``batch`` with the backend's ``metas`` of :meth:`needs`' ids (None: the
        backend could not be read); returns what to carry out, publish and acknowledge."""
        out, change, known = Output(), Change(), metas or {}
        check: set[str] = set()   # tasks whose backend ending, if any, wins now
        pending, self._deferred = self._deferred, []
        for item in [*pending, *batch]:
            if isinstance(item, Events):
                change.updates += self.cluster.observe(item.events)
                self._apply(item.events, known, change)
                out.events += len(item.events)
            elif isinstance(item, Connected):
                self._reconcile_all = True
            elif isinstance(item, Alert):
                change.updates.append(self.cluster.alerts.notice(
                    item.level, item.kind, now, item.message, **item.extra))
            else:
                self._command(item, metas, now, change, out, check)
        if self._reconcile_all and metas is not None:
            check.update(t.task_id for t in self.board.open_tasks())
            self._reconcile_all = False
        if now >= self.next_reconcile:
            check.update(self._quiet(now))
            self.next_reconcile = now + self.reconcile_every
        for task_id in sorted(check):
            self._reconcile(task_id, known.get(task_id), change)
        if self._polled and metas is not None:  # watched tasks' update_state progress
            change += self.watchlist.poll(self.board, self._polled, metas, now)
        self._polled = []
        self._deadlines(now, metas, change, out)
        change.updates += self.cluster.transitions(change.transitions)
        if now >= self.next_tick:
            change.updates += self._tick(now, gauges or Gauges(), out)
        for update in change.updates:
            out.updates += self.coalescer.offer(update, now)
        out.updates += self.coalescer.due(now)
        out.records = self.board.take_records(only={u.task_id for u in out.updates})
        out.unindex = self.board.take_unindexed()
        self.events_applied += out.events
        out.wake = min(filter(None, [self.coalescer.next_due(), self.next_reconcile, self.next_tick,
                                     self.watchlist.wake(),
                                     *(when for when, _ in self.deadlines.values())]))
        return out

    def _apply(self, events: list[dict], known: dict[str, dict], change: Change) -> None:
        """The board takes the events in order (a task-succeeded with its backend value)."""
        apply, watchlist = self.board.apply, self.watchlist
        for event in events:
            if watchlist:
                watchlist.heard(event)
            meta = known.get(event.get("uuid")) if self._wants_results(event) else None
            change += apply(event, reconcile.result_of(meta))

    # -- commands ---------------------------------------------------------------------------
    def _command(self, item: Command, metas: dict | None, now: float, change: Change,
                 out: Output, check: set[str]) -> None:
        request = item.request
        if isinstance(request, TrackRequest):
            change += self.board.track(request.task_id, request.job_id, request.owner, request.total)
            check.add(request.task_id)
            if request.job_id is None and not self._ended(request.task_id):  # any app's task
                self.watchlist.watch(request.task_id, now)
        elif isinstance(request, CancelRequest) and not self._ended(request.task_id):
            if metas is None:  # ask the backend again next step; the entry stays unacknowledged
                self._deferred.append(item)
                return
            self._cancel(request, metas.get(request.task_id), now, change, out)
        elif request is None:
            log.warning("skipped malformed command %s", item.msg_id)
        out.acks.append(item.msg_id)

    def _cancel(self, request: CancelRequest, meta: dict | None, now: float, change: Change,
                out: Output) -> None:
        task_id = request.task_id
        if self._reconcile(task_id, meta, change):
            log.info("cancel %s by %s: it had already ended (%s)", task_id, request.by or "?",
                     meta.get("status"))
            return
        out.effects.append(CancelFlag(request))
        cancelled = self.board.cancel(task_id, request.by, started=reconcile.started(meta))
        change += cancelled
        if cancelled.ended:
            out.effects.append(MarkRevoked(task_id, "cancelled before it started"))
        else:
            self.deadlines[task_id] = (now + self.grace, False)
        log.info("cancel %s by %s", task_id, request.by or "?")

    def _deadlines(self, now: float, metas: dict | None, change: Change, out: Output) -> None:
        """A job that ignores its cancel for the grace period is terminated; one that
        still has not ended ``TERMINATE_WAIT`` s later is recorded REVOKED by the bridge."""
        for task_id, (when, sent) in list(self.deadlines.items()):
            if self._ended(task_id) or self.board.get(task_id) is None:
                del self.deadlines[task_id]
            elif now < when or (sent and metas is None):
                continue
            elif not sent:
                log.warning("job %s ignored its cancel for %.0fs: terminating it", task_id, self.grace)
                out.effects.append(Terminate(task_id))
                self.deadlines[task_id] = (now + TERMINATE_WAIT, True)
            else:
                del self.deadlines[task_id]
                if not self._reconcile(task_id, metas.get(task_id), change):
                    out.effects.append(MarkRevoked(task_id, "terminated after the cancel grace period"))
                    change += self.board.terminated(task_id)

    # -- helpers ------------------------------------------------------------------------------
    def _reconcile(self, task_id: str, meta: dict | None, change: Change) -> bool:
        """Apply the ending the backend holds for an open task; True if it had one."""
        event = reconcile.ending_event(task_id, meta) if meta else None
        if event is None or self._ended(task_id):
            return False
        log.info("the ending of %s comes from the result backend (%s)", task_id, meta.get("status"))
        change += self.board.apply(event, reconcile.result_of(meta), source=BACKEND)
        return True

    def _tick(self, now: float, gauges: Gauges, out: Output) -> list[Update]:
        """The operator view's tick, and its state to store (in the same script)."""
        cluster = self.cluster
        cluster.set_queues(gauges.queues)
        cluster.set_watchers(gauges.watchers)
        cluster.set_backlog(gauges.backlog)
        updates = cluster.tick(now)
        out.cluster = {
            "metrics": updates[-1].payload["metrics"], "stats": cluster.stats(now),
            "workers": cluster.workers.as_list() if cluster.workers.changed else None,
            "history": list(cluster.history) if cluster.history_changed else None,
            "alerts": list(cluster.alerts.recent) if cluster.alerts.changed else None}
        cluster.workers.changed = cluster.history_changed = cluster.alerts.changed = False
        self.next_tick = now + self.tick_every
        return updates

    def _wants_results(self, event: dict) -> bool:
        """A task-succeeded, whose ending carries the task's return value as the result
        backend holds it (the event has only its repr), for a task that has not ended."""
        if not isinstance(event, dict) or event.get("type") != ev.TASK_SUCCEEDED \
                or not isinstance(event.get("uuid"), str):
            return False
        task = self.board.get(event["uuid"])
        return task is None or not task.ended

    def _ended(self, task_id: str) -> bool:
        task = self.board.get(task_id)
        return task is not None and task.ended

    def _quiet(self, now: float) -> list[str]:
        return [t.task_id for t in self.board.open_tasks() if now - t.updated_at >= RECONCILE_MIN_AGE]
