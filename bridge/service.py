"""The bridge process: leadership, the event and command loops, and the processor.

Threads:

- ``event-receiver`` (receiver.py) and ``commands`` put items on one queue;
- the processor (this module's :meth:`Bridge._process`) is the only thread that
  touches the state machine, the cluster view, the coalescer and the store, so
  none of them needs a lock. It drains the queue in batches and publishes each
  batch in one atomic Redis script (emitter.py);
- ``gauges`` reads the broker's queue lengths and the web processes' watcher
  counts every few seconds and hands them over as one tuple (an atomic swap).

Every ``metrics_interval`` (default 1 s) the processor ticks the cluster view
(bridge/cluster.py): ``system_metrics_update`` and alerts go to room ``admin``,
and workers, metrics and counters are stored in Redis in the same script, so a
restarted bridge (and the web's ``/api/workers`` and ``/metrics``) continue
from them.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from bridge import reconcile, records
from bridge import store as cluster_store
from bridge.cluster import Cluster
from bridge.commands import CancelRequest, Command, CommandReader, TrackRequest, handle_cancel
from bridge.emitter import Coalescer, LeaseLost, Ops, Publisher
from bridge.lease import Lease
from bridge.queues import QueueProbe
from bridge.receiver import event_reader
from bridge.records import RecordWriter
from bridge.state import Board, Update
from bridge.store import SnapshotStore
from settings import Settings
from tasks import events as ev
from tasks.app import make_celery

log = logging.getLogger("bridge")

BATCH = 500                # events applied per publish at most
QUEUE_MAX = 200_000        # back-pressure beyond this: Redis then drops us, we reconcile
RECONCILE_MIN_AGE = 2.0    # s without news before a task is checked against the backend
TERMINATE_WAIT = 10.0      # s after a terminate before the bridge records the end itself


class Bridge:
    def __init__(self, settings: Settings, app: Celery | None = None,
                 client: redis.Redis | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        self.client = client or redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=5,
            health_check_interval=10, retry_on_timeout=True)
        self.clock = clock
        self.store = SnapshotStore(self.client)
        self.writer = RecordWriter(settings.snapshot_ttl_seconds, settings.bridge_max_tasks)
        self.lease = Lease(self.client, settings.leader_ttl_seconds)
        self.stop_event = threading.Event()
        self.events_applied = 0
        self._reset_state()

    def _reset_state(self) -> None:
        """Fresh in-memory state: at start, and each time this bridge becomes active."""
        s = self.settings
        self.board = Board(s.bridge_max_tasks, self.clock)
        self.cluster = Cluster(offline_after=s.worker_offline_after, failure_burst=s.failure_burst,
                               failure_window=s.failure_window, queue_backlog=s.queue_backlog,
                               lag_alert=s.bridge_lag_alert, backlog_alert=s.bridge_backlog_alert,
                               max_open=s.bridge_max_tasks, clock=self.clock)
        self.coalescer = Coalescer(s.coalesce_ms / 1000.0)
        self.queue: queue.Queue[tuple[Any, ...]] = queue.Queue(QUEUE_MAX)
        # (queue lengths or None, watchers) from the gauges thread; swapped whole.
        self.gauges: tuple[dict[str, int] | None, int] | None = None
        self.deadlines: dict[str, tuple[float, bool]] = {}
        self.to_reconcile: set[str] = set()

    # -- leadership ------------------------------------------------------------
    def run(self) -> None:
        """Wait for the lease, then work until stopped or the lease is lost; repeat."""
        announced = False
        while not self.stop_event.is_set():
            try:
                acquired = self.lease.try_acquire()
            except redis.RedisError as exc:
                log.warning("cannot reach Redis for the lease: %s", exc)
                acquired = False
            if not acquired:
                if not announced:
                    log.info("bridge standby (leader: %s)", self._holder())
                    announced = True
                self.stop_event.wait(min(0.5, self.settings.leader_ttl_seconds / 3))
                continue
            announced = False
            try:
                self._run_active()
            except LeaseLost:
                log.warning("lost the leader lease; back to standby")
            except Exception:  # noqa: BLE001 - never die: log, step down, try again
                log.exception("bridge failed; stepping down and retrying")
                self.stop_event.wait(1.0)
            finally:
                self.lease.release()

    def _holder(self) -> str | None:
        try:
            return self.lease.holder()
        except redis.RedisError:
            return None

    def stop(self) -> None:
        self.stop_event.set()

    # -- active ------------------------------------------------------------------
    def _run_active(self) -> None:
        self._reset_state()
        self.publisher = Publisher(self.client, self.writer, self.lease.key, self.lease.token)
        self.reader = CommandReader(self.client, self.lease.token)
        lost = threading.Event()
        # Renew from the start: loading 100 000 stored tasks takes longer than the lease.
        renewer = threading.Thread(target=self._renew, args=(lost,), name="lease", daemon=True)
        renewer.start()
        self._load_state()
        if lost.is_set():
            raise LeaseLost("lease lost while loading state")
        receiver = event_reader(self.app, self.settings.broker_url, self._enqueue_events,
                                self._on_stream_connected)
        commands = threading.Thread(target=self._commands, args=(lost,), name="commands", daemon=True)
        gauges = threading.Thread(target=self._poll_gauges, args=(lost,), name="gauges", daemon=True)
        receiver.start()
        commands.start()
        gauges.start()
        log.info("bridge active (lease %s, %d tasks loaded)", self.lease.token, len(self.board))
        try:
            self._process(lost)
        finally:
            lost.set()
            receiver.stop()
            receiver.join(3)
            commands.join(3)
            renewer.join(3)
            gauges.join(3)

    def _load_state(self) -> None:
        """Tasks from the store: open ones plus the most recent (bounded)."""
        while not self.stop_event.is_set():
            try:
                records = self.store.recent(self.settings.bridge_max_tasks)
                open_ids = set(self.store.open_ids()) - {r["snapshot"]["task_id"] for r in records}
                records += list(self.store.get_many(open_ids).values())
                self.board.load(records)
                self._load_cluster()
                return
            except redis.RedisError as exc:
                log.warning("cannot load state from Redis (%s); retrying", exc)
                self.stop_event.wait(1.0)

    def _load_cluster(self) -> None:
        """Workers, counters, history and alerts of the previous bridge; open tasks from the board."""
        stored = cluster_store.read_cluster(self.client)
        self.cluster.load(workers=stored["workers"], stats=stored["stats"],
                          history=stored["history"], alerts=stored["alerts"])
        self.cluster.load_open((t.task_id, t.state, t.name, t.started_at)
                               for t in self.board.open_tasks())

    def _poll_gauges(self, lost: threading.Event) -> None:
        """Watcher counts every second; broker queue lengths every ``queue_poll_seconds``."""
        probe = QueueProbe(self.app)
        lengths: dict[str, int] | None = None
        next_probe = 0.0
        try:
            while not lost.is_set() and not self.stop_event.is_set():
                now = time.monotonic()
                if now >= next_probe:
                    lengths = probe.lengths()
                    next_probe = now + self.settings.queue_poll_seconds
                try:
                    now_s = time.time()
                    records.prune_watchers(self.client, now_s)
                    watchers = cluster_store.read_watchers(self.client, now_s)
                except redis.RedisError as exc:
                    log.warning("cannot read watcher counts: %s", exc)
                    watchers = self.cluster.watchers
                self.gauges = (lengths, watchers)
                lost.wait(1.0)
        finally:
            probe.close()

    def _renew(self, lost: threading.Event) -> None:
        interval = self.settings.leader_ttl_seconds / 3
        while not lost.wait(interval) and not self.stop_event.is_set():
            try:
                if not self.lease.renew():
                    log.warning("leader lease taken over")
                    lost.set()
            except redis.RedisError as exc:
                log.warning("cannot renew the lease: %s", exc)

    def _on_stream_connected(self) -> None:
        log.info("event stream connected; reconciling open tasks")
        self.queue.put(("reconcile", True))

    def _enqueue_events(self, events: list[dict]) -> None:
        self.queue.put(("events", events))

    def _commands(self, lost: threading.Event) -> None:
        backoff = 0.2
        while not lost.is_set() and not self.stop_event.is_set():
            try:
                self.reader.ensure_group()
                for msg_id, request in self.reader.read(block_ms=500):
                    self.queue.put(("command", msg_id, request))
                backoff = 0.2
            except redis.RedisError as exc:
                log.warning("command stream unavailable (%s); retrying in %.1fs", exc, backoff)
                lost.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    # -- the processor -------------------------------------------------------------
    def _process(self, lost: threading.Event) -> None:
        next_reconcile = self.clock() + self.settings.reconcile_seconds
        next_tick = self.clock()
        while not self.stop_event.is_set() and not lost.is_set():
            now = self.clock()
            wake = min(filter(None, [self.coalescer.next_due(), next_reconcile, next_tick,
                                     *[d for d, _ in self.deadlines.values()]]), default=now + 0.5)
            try:
                item = self.queue.get(timeout=max(0.0, min(0.5, wake - now)))
            except queue.Empty:
                item = None
            updates: list[Update] = []
            acks: list[str] = []
            handled = 0
            while item is not None:
                start = len(updates)
                handled += self._handle(item, updates, acks)
                # Publish at once when something ended (endings are never
                # delayed), else after a batch's worth of events.
                if handled >= BATCH or any(u.terminal for u in updates[start:]):
                    break
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    item = None
            if self.to_reconcile:
                updates += self._reconcile(ids=self.to_reconcile)
                self.to_reconcile = set()
            now = self.clock()
            if now >= next_reconcile:
                updates += self._reconcile(all_open=False)
                next_reconcile = now + self.settings.reconcile_seconds
            updates += self._check_deadlines(now)
            extra = None
            if now >= next_tick:
                tick_updates, extra = self._tick(now)
                updates += tick_updates
                next_tick = now + self.settings.metrics_interval
            self._publish(updates, now, extra)
            for msg_id in acks:  # only once handled and published
                self.reader.ack(msg_id)

    def _handle(self, item: tuple, updates: list[Update], acks: list[str]) -> int:
        """Apply one queue item; returns how many events (or commands) it held."""
        kind = item[0]
        if kind == "events":
            results = self._caption_results(item[1])
            for event in item[1]:
                updates += self._apply_event(event, results)
            return len(item[1])
        if kind == "command":
            updates += self._command(item[1], item[2])
            acks.append(item[1])
        elif kind == "reconcile":
            updates += self._reconcile(all_open=True)
        return 1

    def _tick(self, now: float) -> tuple[list[Update], Ops]:
        """The cluster view's tick, and its state to store (in the same script)."""
        cluster = self.cluster
        if self.gauges is not None:
            lengths, watchers = self.gauges
            cluster.set_queues(lengths)
            cluster.set_watchers(watchers)
        cluster.set_backlog(self.queue.qsize())
        updates = cluster.tick(now)
        ops = Ops()
        records.put_cluster(
            ops, metrics=updates[-1].payload["metrics"], stats=cluster.stats(now),
            workers=cluster.workers() if cluster.workers_changed else None,
            history=list(cluster.history) if cluster.history_changed else None,
            alerts=list(cluster.alerts) if cluster.alerts_changed else None)
        cluster.workers_changed = cluster.history_changed = cluster.alerts_changed = False
        return updates, ops

    def _publish(self, updates: list[Update], now: float, extra: Ops | None = None) -> None:
        out: list[Update] = []
        for update in updates:
            out += self.coalescer.offer(update, now)
        out += self.coalescer.due(now)
        records = self.board.take_records(only={u.task_id for u in out})
        if not out and not records and extra is None:
            return
        while True:
            try:
                self.publisher.send(out, records, extra=extra)
                return
            except LeaseLost:
                raise
            except redis.RedisError as exc:
                log.warning("cannot publish (%s); retrying", exc)
                if self.stop_event.wait(0.5):
                    return

    def _caption_results(self, events: list[dict]) -> dict[str, dict]:
        """The return values of the caption jobs these events end, in one read.

        The ending's payload carries the captions; the event only has their
        repr, so they come from the result backend (one ``MGET`` per batch).
        """
        ids = []
        for event in events:
            if event.get("type") == ev.TASK_SUCCEEDED and "results" not in event:
                task = self.board.get(event.get("uuid", ""))
                if task is None or (task.name == ev.CAPTION_TASK_NAME and not task.ended):
                    ids.append(event.get("uuid"))
        if not ids:
            return {}
        try:
            return reconcile.caption_results(self.app, ids)
        except Exception as exc:  # noqa: BLE001 - the endings go out regardless
            log.warning("cannot read the results of %d jobs: %s", len(ids), exc)
            return {}

    def _apply_event(self, event: dict, results: dict[str, dict] | None = None) -> list[Update]:
        self.events_applied += 1
        if results and event.get("type") == ev.TASK_SUCCEEDED and "results" not in event:
            task = self.board.get(event.get("uuid", ""))
            found = results.get(event.get("uuid"))
            if found is not None and task is not None and task.name == ev.CAPTION_TASK_NAME:
                event = {**event, "results": found}
        return self._apply(event)

    def _apply(self, event: dict) -> list[Update]:
        """Feed one event to the task state machine and the cluster view."""
        try:
            updates = self.board.apply(event)
        except Exception:  # noqa: BLE001 - one bad event must not stop the bridge
            log.exception("skipped an event the state machine could not apply: %.300r", event)
            updates = []
        try:
            return updates + self.cluster.apply(event)
        except Exception:  # noqa: BLE001 - the operator view must not stop the bridge either
            log.exception("skipped an event the cluster view could not apply: %.300r", event)
            return updates

    def _command(self, msg_id: str, request: Command | None) -> list[Update]:
        if request is None:
            log.warning("skipped malformed command %s", msg_id)
            return []
        if isinstance(request, TrackRequest):
            self.to_reconcile.add(request.task_id)
            return self.board.track(request.task_id, request.job_id, request.owner, request.total)
        return self._cancel(request)

    def _cancel(self, request: CancelRequest) -> list[Update]:
        task = self.board.get(request.task_id)
        if task is not None and task.ended:
            return []
        try:
            handle_cancel(self.client, request, lambda tid: self.app.control.revoke(tid))
        except Exception as exc:  # noqa: BLE001 - the flag alone still stops the job
            log.warning("revoke of %s failed: %s", request.task_id, exc)
        updates = self.board.cancel(request.task_id, request.by)
        if any(u.terminal for u in updates):
            self._mark_revoked(request.task_id, "cancelled before it started")
            updates += self.cluster.task_ended(request.task_id, "REVOKED")
        else:
            self.deadlines[request.task_id] = (self.clock() + self.settings.cancel_grace_seconds, False)
        log.info("cancel %s by %s", request.task_id, request.by or "?")
        return updates

    def _check_deadlines(self, now: float) -> list[Update]:
        updates: list[Update] = []
        for task_id, (deadline, terminated) in list(self.deadlines.items()):
            task = self.board.get(task_id)
            if task is None or task.ended:
                del self.deadlines[task_id]
                continue
            if now < deadline:
                continue
            if not terminated:
                log.warning("job %s ignored its cancel for %.0fs: terminating it",
                            task_id, self.settings.cancel_grace_seconds)
                try:
                    self.app.control.revoke(task_id, terminate=True, signal="SIGTERM")
                except Exception as exc:  # noqa: BLE001
                    log.warning("terminate of %s failed: %s", task_id, exc)
                self.deadlines[task_id] = (now + TERMINATE_WAIT, True)
            else:
                del self.deadlines[task_id]
                self._mark_revoked(task_id, "terminated after the cancel grace period")
                updates += self.board.terminated(task_id)
                updates += self.cluster.task_ended(task_id, "REVOKED")
        return updates

    def _mark_revoked(self, task_id: str, reason: str) -> None:
        try:
            self.app.backend.mark_as_revoked(task_id, reason)
        except Exception as exc:  # noqa: BLE001 - reconciliation uses the store meanwhile
            log.warning("cannot record %s as revoked in the result backend: %s", task_id, exc)

    def _reconcile(self, all_open: bool = False, ids: set[str] | None = None) -> list[Update]:
        """Endings the result backend knows and the event stream did not bring.

        ``ids``: just these (newly tracked) tasks; ``all_open``: every open
        task (after a (re)connect); otherwise open tasks quiet for a while.
        """
        now = self.clock()
        if ids is not None:
            candidates = [i for i in ids if (t := self.board.get(i)) is not None and not t.ended]
        else:
            candidates = [t.task_id for t in self.board.open_tasks()
                          if all_open or now - t.updated_at >= RECONCILE_MIN_AGE]
        if not candidates:
            return []
        try:
            metas = reconcile.backend_metas(self.app, candidates)
        except Exception as exc:  # noqa: BLE001 - try again next round
            log.warning("reconciliation failed: %s", exc)
            return []
        updates: list[Update] = []
        for task_id, meta in metas.items():
            event = reconcile.ending_event(task_id, meta)
            if event is not None:
                log.info("reconciled the ending of %s from the result backend (%s)",
                         task_id, meta.get("status"))
                updates += self._apply(event)
        return updates
