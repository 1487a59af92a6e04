"""Sending a job's events from a worker process, off the job's own thread.

``Task.send_event`` builds a dispatcher (and acquires a producer) per call and
waits for the broker, which costs about as much as captioning a small image.
Here each worker process has one sending thread: the job only puts the event
on a queue. On a Redis broker the thread publishes kombu's wire format itself
(:class:`RedisEventWire`, one redis-py call per event); on other brokers it
uses one long-lived Celery dispatcher. :meth:`EventSender.flush` (called
before a job returns or stops) waits until everything queued went out, so a
job's events still precede Celery's ``task-succeeded``. Events are lossy by
design: one that cannot be sent is logged and dropped, and the job goes on.
"""
from __future__ import annotations

import base64
import logging
import os
import queue
import threading
import time
import uuid
from urllib.parse import urlsplit

import orjson
import redis

from celery import Celery
from celery.events import EventDispatcher
from celery.utils.time import utcoffset
from kombu.exceptions import KombuError

log = logging.getLogger(__name__)

# One quick reconnect, then give up on this event rather than fall behind.
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}
QUEUE_MAX = 10_000  # events waiting beyond this are dropped (the broker is away)


class EventSender:
    """One dispatcher and one sending thread per worker process."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._queue: queue.Queue[tuple[str, str, str, dict]] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._dispatcher: EventDispatcher | None = None
        self._wire: RedisEventWire | None = None
        self._lock = threading.Lock()

    def send(self, hostname: str, event_type: str, task_id: str, fields: dict) -> None:
        """Queue an event for sending (never blocks the job)."""
        self._ensure_thread()
        try:
            self._queue.put_nowait((hostname, event_type, task_id, fields))
        except queue.Full:
            log.warning("event queue full: dropped %s for %s", event_type, task_id)

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every queued event was sent (or dropped); False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        try:
            self._queue.put(("", "", "", {"_flush": done}), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            # First use in this process (threads do not survive a fork).
            self._queue = queue.Queue(QUEUE_MAX)
            self._dispatcher = None
            self._wire = RedisEventWire.for_broker(self.app.conf.broker_url)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="skald-events", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            hostname, event_type, task_id, fields = self._queue.get()
            marker = fields.get("_flush") if not event_type else None
            if marker is not None:
                marker.set()
                continue
            self._publish(hostname, event_type, task_id, fields)

    def _publish(self, hostname: str, event_type: str, task_id: str, fields: dict) -> None:
        try:
            if self._wire is not None:
                self._wire.publish(hostname, event_type, task_id, fields, self.app.clock.forward())
                return
            if self._dispatcher is None or self._dispatcher.hostname != hostname:
                self._close()
                self._dispatcher = self.app.events.Dispatcher(
                    self.app.connection_for_write(), hostname=hostname, enabled=True)
            self._dispatcher.send(event_type, uuid=task_id, retry=True,
                                  retry_policy=RETRY_POLICY, **fields)
        except (OSError, KombuError, redis.RedisError) as exc:
            log.warning("could not send %s for %s: %s", event_type, task_id, exc)
            self._close()

    def _close(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            try:
                dispatcher.close()
                dispatcher.connection.release()
            except Exception:  # noqa: BLE001 - it is being thrown away
                log.debug("error closing an event dispatcher", exc_info=True)

    def reset(self) -> None:
        """Forget the parent's thread and connection (after a fork)."""
        with self._lock:
            self._thread = None
            self._dispatcher = None
            self._pid = 0


class RedisEventWire:
    """Publishes Celery events on a Redis broker exactly as kombu's fanout does.

    ``EventDispatcher.send`` spends about half a millisecond of CPU per event
    in kombu's virtual transport (envelope, a client per publish); this writes
    the same message (``PUBLISH /<db>.celeryev/<type>``, kombu's JSON envelope
    with a base64 JSON body) with one redis-py call. ``tests/test_reporting.py``
    checks that Celery's own receiver reads it as it reads a dispatcher's.
    """

    def __init__(self, broker_url: str) -> None:
        self.client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
        db = (urlsplit(broker_url).path or "/0").strip("/") or "0"
        self.prefix = f"/{db}.celeryev/"

    @classmethod
    def for_broker(cls, broker_url: str | None) -> "RedisEventWire | None":
        if broker_url and urlsplit(broker_url).scheme in ("redis", "rediss"):
            return cls(broker_url)
        return None  # other brokers: Celery's dispatcher

    def publish(self, hostname: str, event_type: str, task_id: str, fields: dict,
                clock: int) -> None:
        body = {"hostname": hostname, "utcoffset": utcoffset(), "pid": os.getpid(),
                "clock": clock, "uuid": task_id, **fields, "timestamp": time.time(),
                "type": event_type}
        routing_key = event_type.replace("-", ".")
        envelope = {
            "body": base64.b64encode(orjson.dumps(body)).decode("ascii"),
            "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"hostname": hostname},
            "properties": {"delivery_mode": 1, "priority": 0, "body_encoding": "base64",
                           "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                           "delivery_tag": str(uuid.uuid4())},
        }
        self.client.publish(self.prefix + routing_key, orjson.dumps(envelope))
