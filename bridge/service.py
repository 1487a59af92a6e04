"""The bridge process: the leader lease, its threads, and the I/O around the processor.

While this bridge holds the lease (bridge/lease.py), its threads are:

- ``event-receiver`` (bridge/receiver.py) and ``commands`` put items on one queue;
- ``gauges`` reads the broker's queue lengths and the web processes' watcher
  counts every few seconds and hands them over whole (an atomic swap);
- ``lease`` renews the lease; a bridge that loses it steps down;
- ``alert-webhook`` (bridge/webhook.py, with ``ALERT_WEBHOOK_URL``) POSTs every
  ``admin_alert`` once it is published, from a bounded queue: a slow or failing
  endpoint never delays this loop;
- this one (:meth:`Bridge.loop`) takes the queued items in batches, reads from
  the result backend what the processor's step needs, runs the pure step
  (bridge/processor.py), carries out its effects (cancel flags, revokes,
  result-backend writes), publishes its updates with the task records and
  cluster state in one lease-checked script (bridge/emitter.py), and only then
  acknowledges the commands it handled.

Only this thread touches the processor, so none of its state needs a lock.
A bridge that becomes active starts from what the store holds.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import redis
from celery import Celery
from celery.exceptions import BackendError
from kombu.exceptions import KombuError

import protocol
import redisurl
from bridge import reconcile, records, store
from bridge.commands import CommandReader, handle_cancel
from bridge.emitter import LeaseLost, Ops, Publisher
from bridge.lease import Lease
from bridge.processor import (
    BATCH,
    Alert,
    CancelFlag,
    Command,
    Connected,
    Effect,
    Events,
    Gauges,
    Item,
    MarkRevoked,
    Output,
    Processor,
    Terminate,
    may_end,
    size,
)
from bridge.queues import DISCOVER_SECONDS, QueueProbe, consumed_names
from bridge.receiver import event_reader
from bridge.records import RecordWriter
from bridge.sweeper import Sweeper
from bridge.webhook import Webhook
from protocol import ADMIN_ALERT
from settings import Settings
from tasks.app import make_celery

log = logging.getLogger("bridge")

QUEUE_MAX = 200_000   # back-pressure beyond this: Redis then drops us, we reconcile
RETRY_WAIT = 0.5      # s before trying Redis again when a lookup or publish failed
BROKER_ERRORS = (redis.RedisError, KombuError, BackendError, OSError)


class Bridge:
    def __init__(self, settings: Settings, app: Celery | None = None,
                 client: redis.Redis | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        self.client = client or redisurl.client(settings.redis_url, socket_timeout=10)
        self.clock = clock
        self.store = store.SnapshotStore(self.client)
        self.writer = RecordWriter(settings.snapshot_ttl_seconds, settings.bridge_max_tasks)
        self.lease = Lease(self.client, settings.leader_ttl_seconds)
        self.stop_event = threading.Event()
        self.processor = Processor(settings, clock)
        self.queue: queue.Queue[Item] = queue.Queue(QUEUE_MAX)
        self.gauges: tuple[dict[str, int] | None, int] | None = None  # swapped whole
        self.webhook: Webhook | None = None
        if settings.alert_webhook_url:
            self.webhook = Webhook(settings.alert_webhook_url, settings.alert_webhook_timeout).start()

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
            except Exception:  # noqa: BLE001 - the loop's one guard: log, step down, try again
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
        if self.webhook is not None:
            self.webhook.stop()

    # -- active ------------------------------------------------------------------
    def _run_active(self) -> None:
        self.processor = Processor(self.settings, self.clock)  # the store has the truth now
        self.queue = queue.Queue(QUEUE_MAX)
        self.gauges = None
        self.publisher = Publisher(self.client, self.writer, self.lease.key, self.lease.token)
        self.reader = CommandReader(self.client, self.lease.token)
        lost = threading.Event()
        # Renew from the start: loading 100 000 stored tasks takes longer than the lease.
        threads = [threading.Thread(target=self._renew, args=(lost,), name="lease", daemon=True)]
        threads[0].start()
        self._load_state()
        if lost.is_set():
            raise LeaseLost("lease lost while loading state")
        receiver = event_reader(self.app, self.settings.broker_url, self.enqueue_events,
                                self._on_stream_connected)
        # The sweeper (bridge/sweeper.py) has one owner: the bridge holding the lease.
        sweeper = Sweeper(self.settings, self.app, self.client, self._alert)
        threads += [threading.Thread(target=self._commands, args=(lost,), name="commands", daemon=True),
                    threading.Thread(target=self._poll_gauges, args=(lost,), name="gauges", daemon=True),
                    threading.Thread(target=sweeper.run, args=(lost,), name="sweeper", daemon=True)]
        receiver.start()
        for thread in threads[1:]:
            thread.start()
        log.info("bridge active (lease %s, %d tasks loaded)", self.lease.token,
                 len(self.processor.board))
        try:
            self.loop(lost)
        finally:
            lost.set()
            receiver.stop()
            receiver.join(3)
            for thread in threads:
                thread.join(3)

    def _load_state(self) -> None:
        """Tasks from the store (open ones plus the most recent, bounded) and cluster state."""
        while not self.stop_event.is_set():
            try:
                stored = self.store.recent(self.settings.bridge_max_tasks)
                open_ids = set(self.store.open_ids()) - {r["snapshot"]["task_id"] for r in stored}
                stored += list(self.store.get_many(open_ids).values())
                self.processor.load(stored, store.read_cluster(self.client))
                if self.client.get(protocol.IX_READY) != protocol.IX_VERSION.encode():
                    self._backfill(stored)
                return
            except redis.RedisError as exc:
                log.warning("cannot load state from Redis (%s); retrying", exc)
                self.stop_event.wait(1.0)

    def _backfill(self, stored: list[dict], chunk: int = 2000) -> None:
        """Index the stored records once: a store from before the explorer's index, or with
        another layout version (its ``skald:ix:*`` keys are dropped first)."""
        old = list(self.client.scan_iter(f"{protocol.IX_PREFIX}*", count=1000))
        for start in range(0, len(old), 500):
            ops = Ops()
            ops.raw("DEL", *old[start:start + 500])
            self.publisher.run(ops)
        for start in range(0, len(stored), chunk):
            ops = Ops()
            records.backfill(ops, stored[start:start + chunk])
            self.publisher.run(ops)
        ops = Ops()
        ops.set(protocol.IX_READY, protocol.IX_VERSION)
        self.publisher.run(ops)
        log.info("indexed %d stored tasks for the explorer", len(stored))

    # -- the threads -----------------------------------------------------------------
    def enqueue_events(self, events: list[dict]) -> None:
        """The receiver's sink (blocks when the queue is full: Redis then drops us)."""
        self.queue.put(Events(events, time.monotonic()))

    def _alert(self, level: str, kind: str, message: str, extra: dict) -> None:
        """The sweeper's alerts, raised by the loop like every other (bridge/alerts.py)."""
        self.queue.put(Alert(level, kind, message, extra))

    def _on_stream_connected(self) -> None:
        log.info("event stream connected; reconciling open tasks")
        self.queue.put(Connected())

    def _commands(self, lost: threading.Event) -> None:
        backoff = 0.2
        while not lost.is_set() and not self.stop_event.is_set():
            try:
                self.reader.ensure_group()
                for msg_id, request in self.reader.read(block_ms=500):
                    self.queue.put(Command(msg_id, request))
                backoff = 0.2
            except redis.RedisError as exc:
                log.warning("command stream unavailable (%s); retrying in %.1fs", exc, backoff)
                lost.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _poll_gauges(self, lost: threading.Event) -> None:
        """Watcher counts every second; broker queue lengths every ``queue_poll_seconds``,
        over the configured queues and those the online workers consume (bridge/queues.py)."""
        probe = QueueProbe(self.app)
        lengths: dict[str, int] | None = None
        next_probe = next_discover = 0.0
        online: tuple[str, ...] = ()
        try:
            while not lost.is_set() and not self.stop_event.is_set():
                now = time.monotonic()
                if now >= next_probe:
                    hosts = self._online_hosts()
                    if hosts and (hosts != online or now >= next_discover):
                        added = probe.add_names(consumed_names(self.app, len(hosts)))
                        if added:
                            log.info("probing the queues workers consume: %s", ", ".join(added))
                        online, next_discover = hosts, time.monotonic() + DISCOVER_SECONDS
                    lengths = probe.lengths()
                    next_probe = now + self.settings.queue_poll_seconds
                watchers = self.gauges[1] if self.gauges else 0
                try:
                    now_s = time.time()
                    records.prune_watchers(self.client, now_s)
                    watchers = store.read_watchers(self.client, now_s)
                except redis.RedisError as exc:
                    log.warning("cannot read watcher counts: %s", exc)
                self.gauges = (lengths, watchers)
                lost.wait(1.0)
        finally:
            probe.close()

    def _online_hosts(self) -> tuple[str, ...]:
        """Hostnames of the workers stored as online (empty when Redis cannot be read)."""
        try:
            return tuple(sorted(w["hostname"] for w in store.read_workers(self.client)
                                if w.get("online") and isinstance(w.get("hostname"), str)))
        except redis.RedisError as exc:
            log.warning("cannot read the stored workers: %s", exc)
            return ()

    def _renew(self, lost: threading.Event) -> None:
        interval = self.settings.leader_ttl_seconds / 3
        while not lost.wait(interval) and not self.stop_event.is_set():
            try:
                if not self.lease.renew():
                    log.warning("leader lease taken over")
                    lost.set()
            except redis.RedisError as exc:
                log.warning("cannot renew the lease: %s", exc)

    # -- the loop ---------------------------------------------------------------------
    def loop(self, lost: threading.Event) -> None:
        """Collect, look up, step, carry out, publish, acknowledge; until stopped or deposed."""
        wake = self.clock()
        while not self.stop_event.is_set() and not lost.is_set():
            batch = self.collect(max(0.0, min(0.5, wake - self.clock())))
            now = self.clock()
            metas = self.look_up(self.processor.needs(batch, now))
            lengths, watchers = self.gauges or (None, 0)
            out = self.step(batch, metas, now, Gauges(lengths, watchers, self.queue.qsize()))
            self.carry_out(out.effects)
            self.publish(out)
            for msg_id in out.acks:  # only once handled and published
                self.reader.ack(msg_id)
            wake = out.wake
            if metas is None:
                self.stop_event.wait(RETRY_WAIT)

    def collect(self, timeout: float) -> list[Item]:
        """Queued items: the first within ``timeout``, then what is there, up to a batch and
        never past an item that may end a task (endings are never delayed)."""
        try:
            batch = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        count = size(batch[0])
        while count < BATCH and not may_end(batch[-1]):
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
            count += size(batch[-1])
        return batch

    def step(self, batch: list[Item], metas: dict[str, dict] | None, now: float,
             gauges: Gauges) -> Output:
        return self.processor.step(batch, metas, now, gauges)

    def look_up(self, ids: set[str]) -> dict[str, dict] | None:
        """The result backend's metas of ``ids`` (absent: unknown to it); None if unreadable."""
        if not ids:
            return {}
        try:
            return reconcile.backend_metas(self.app, ids)
        except BROKER_ERRORS as exc:
            log.warning("cannot read the result backend for %d tasks: %s", len(ids), exc)
            return None

    def carry_out(self, effects: list[Effect]) -> None:
        """Cancel flags, revokes and result-backend writes; each failure only logged (the
        flag alone still stops a job; a missing backend write is reconciled from the store)."""
        for effect in effects:
            try:
                if isinstance(effect, CancelFlag):
                    handle_cancel(self.client, effect.request, lambda tid: self.app.control.revoke(tid))
                elif isinstance(effect, Terminate):
                    self.app.control.revoke(effect.task_id, terminate=True, signal="SIGTERM")
                elif isinstance(effect, MarkRevoked):
                    # Celery's store refuses to write over a stored SUCCESS.
                    self.app.backend.mark_as_revoked(effect.task_id, effect.reason)
            except BROKER_ERRORS as exc:
                log.warning("could not carry out %s: %s", effect, exc)

    def publish(self, out: Output) -> None:
        """Updates, records and cluster state in the lease-checked script; retried while
        Redis is away (a deposed bridge raises :class:`LeaseLost`)."""
        extra = None
        if out.cluster is not None or out.unindex:
            extra = Ops()
            if out.cluster is not None:
                records.put_cluster(extra, **out.cluster)
            for task_id, entry in out.unindex:  # evicted tasks leave the explorer's index
                self.writer.unindex(extra, task_id, entry)
        if not out.updates and not out.records and extra is None:
            return
        while True:
            try:
                self.publisher.send(out.updates, out.records, extra=extra)
                break
            except redis.RedisError as exc:
                log.warning("cannot publish (%s); retrying", exc)
                if self.stop_event.wait(RETRY_WAIT):
                    return
        if self.webhook is not None:
            for update in out.updates:
                if update.event == ADMIN_ALERT:
                    self.webhook.send(update.payload)
