"""Sending a job's events from a worker process without slowing the job.

``Task.send_event`` builds a dispatcher (and acquires a producer) per call and
waits for the broker, which costs about as much as captioning a small image.

- On a Redis broker the job's own thread writes kombu's wire format itself
  (:class:`RedisEventWire`): one ``PUBLISH`` on a connection in
  ``CLIENT REPLY OFF`` mode, so a send is one socket write (tens of
  microseconds) and never waits for Redis. A sending thread was tried first:
  handing the GIL back and forth with it cost a job of small images ~15 %
  of its wall time (bench/LEVERS.md, lever 6).
- On other brokers one sending thread per worker process uses one long-lived
  Celery dispatcher; the job only puts the event on a queue.

:meth:`EventSender.flush` (called before a job returns or stops) waits until
everything sent so far was handled by the broker, so a job's events still
precede Celery's ``task-succeeded``. Events are lossy by design: one that
cannot be sent is logged and dropped, and the job goes on.
"""
from __future__ import annotations

import base64
import itertools
import logging
import os
import queue
import threading
import time
import uuid
from urllib.parse import urlsplit

import hiredis
import orjson
import redis
from celery import Celery
from celery.events import EventDispatcher
from celery.utils.time import utcoffset
from kombu.exceptions import KombuError
from redis.connection import Connection

log = logging.getLogger(__name__)

# One quick reconnect, then give up on this event rather than fall behind.
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}
QUEUE_MAX = 10_000  # events waiting beyond this are dropped (the broker is away)


class EventSender:
    """How one worker process sends its jobs' events (see the module docstring)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._queue: queue.Queue[tuple[str, str, str, dict]] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._dispatcher: EventDispatcher | None = None
        self._wire: RedisEventWire | None = None
        self._lock = threading.Lock()

    def send(self, hostname: str, event_type: str, task_id: str, fields: dict) -> None:
        """Send (Redis) or queue (other brokers) an event; never waits for the broker."""
        wire = self._ready()
        if wire is not None:
            wire.publish(hostname, event_type, task_id, fields, self.app.clock.forward())
            return
        try:
            self._queue.put_nowait((hostname, event_type, task_id, fields))
        except queue.Full:
            log.warning("event queue full: dropped %s for %s", event_type, task_id)

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every event sent so far reached the broker; False on timeout."""
        if self._pid != os.getpid():
            return True  # nothing sent from this process yet
        if self._wire is not None:
            return self._wire.barrier()
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        try:
            self._queue.put(("", "", "", {"_flush": done}), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _ready(self) -> RedisEventWire | None:
        """The wire (Redis broker), else make sure the sending thread runs."""
        if self._pid == os.getpid() and (self._wire is not None or self._thread.is_alive()):
            return self._wire
        with self._lock:
            if self._pid != os.getpid() or (self._wire is None and not self._thread.is_alive()):
                # First use in this process (connections and threads do not survive a fork).
                self._queue = queue.Queue(QUEUE_MAX)
                self._dispatcher = None
                self._wire = RedisEventWire.for_broker(self.app.conf.broker_url)
                if self._wire is None:
                    self._thread = threading.Thread(target=self._run, name="skald-events",
                                                    daemon=True)
                    self._thread.start()
                self._pid = os.getpid()
            return self._wire

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
            if self._dispatcher is None or self._dispatcher.hostname != hostname:
                self._close()
                self._dispatcher = self.app.events.Dispatcher(
                    self.app.connection_for_write(), hostname=hostname, enabled=True)
            self._dispatcher.send(event_type, uuid=task_id, retry=True,
                                  retry_policy=RETRY_POLICY, **fields)
        except (OSError, KombuError) as exc:
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
            self._wire = None
            self._pid = 0


class RedisEventWire:
    """Publishes Celery events on a Redis broker exactly as kombu's fanout does.

    ``EventDispatcher.send`` spends about half a millisecond of CPU per event
    in kombu's virtual transport (envelope, a client per publish); this writes
    the same message (``PUBLISH /<db>.celeryev/<type>``, kombu's JSON envelope
    with a base64 JSON body) on one redis-py connection that asked Redis for no
    replies (``CLIENT REPLY OFF``): a publish is one socket write. Redis runs a
    connection's commands in order, so :meth:`barrier` (``CLIENT REPLY ON``
    and its reply) returns once every earlier publish went out.
    ``tests/test_reporting.py`` checks that Celery's own receiver reads these
    events as it reads a dispatcher's.

    A publish that fails drops its event, closes the connection and makes the
    next ones wait ``RETRY_AFTER`` seconds before connecting again, so a
    broker that is away costs a job almost nothing.
    """

    RETRY_AFTER = 1.0
    CLIENT_NAME = "skald-events"  # as CLIENT LIST shows the connection
    REPLY_OFF = ("CLIENT", "REPLY", "OFF")
    REPLY_ON = ("CLIENT", "REPLY", "ON")

    def __init__(self, broker_url: str) -> None:
        self.client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2,
                                           client_name=self.CLIENT_NAME)
        db = (urlsplit(broker_url).path or "/0").strip("/") or "0"
        self.prefix = f"/{db}.celeryev/"
        self._conn: Connection | None = None
        self._replies = False  # True where the server refuses CLIENT REPLY OFF
        self._retry_at = 0.0
        self._lock = threading.Lock()  # a threads pool shares one connection
        self._tag_prefix = f"{uuid.uuid4().hex[:16]}-"  # delivery tags: unique, cheaper than a uuid4 each
        self._tags = itertools.count()
        self._offset, self._offset_until = 0, 0.0
        self.dropped = 0

    @classmethod
    def for_broker(cls, broker_url: str | None) -> RedisEventWire | None:
        if broker_url and urlsplit(broker_url).scheme in ("redis", "rediss"):
            return cls(broker_url)
        return None  # other brokers: Celery's dispatcher

    def publish(self, hostname: str, event_type: str, task_id: str, fields: dict,
                clock: int) -> None:
        """Send one event (never waits for a reply; dropped, and logged, if it cannot go)."""
        body = {"hostname": hostname, "utcoffset": self._utcoffset(), "pid": os.getpid(),
                "clock": clock, "uuid": task_id, **fields, "timestamp": time.time(),
                "type": event_type}
        routing_key = event_type.replace("-", ".")
        envelope = {
            "body": base64.b64encode(orjson.dumps(body)).decode("ascii"),
            "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"hostname": hostname},
            "properties": {"delivery_mode": 1, "priority": 0, "body_encoding": "base64",
                           "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                           "delivery_tag": f"{self._tag_prefix}{next(self._tags):x}"},
        }
        # hiredis packs the command in C (redis-py's own packing encodes each argument in Python).
        command = hiredis.pack_command((b"PUBLISH", self.prefix + routing_key, orjson.dumps(envelope)))
        with self._lock:
            conn = self._connection()
            if conn is None:
                self.dropped += 1
                return
            try:
                conn.send_packed_command([command], check_health=False)
                if self._replies:
                    conn.read_response()
            except (OSError, redis.RedisError) as exc:
                self._lost(f"could not send {event_type} for {task_id}", exc)

    def _utcoffset(self) -> int:
        """Celery's ``utcoffset()``, worked out once a minute (it changes only with DST)."""
        now = time.monotonic()
        if now >= self._offset_until:
            self._offset, self._offset_until = utcoffset(), now + 60.0
        return self._offset

    def barrier(self) -> bool:
        """Wait until Redis handled every event sent before; False if it could not say."""
        with self._lock:
            if self._conn is None or self._replies:
                return True  # nothing sent, or each publish already waited
            conn = self._conn
            try:
                conn.send_command(*self.REPLY_ON, check_health=False)
                conn.read_response()
                conn.send_command(*self.REPLY_OFF, check_health=False)
                return True
            except (OSError, redis.RedisError) as exc:
                self._lost("could not confirm the events sent", exc)
                return False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.disconnect()
                self._conn = None

    def _connection(self) -> Connection | None:
        if self._conn is not None:
            return self._conn
        if time.monotonic() < self._retry_at:
            return None
        conn = self.client.connection_pool.make_connection()
        try:
            conn.connect()
            self._replies = not self._replies_off(conn)
        except (OSError, redis.RedisError) as exc:
            conn.disconnect()
            self._retry_at = time.monotonic() + self.RETRY_AFTER
            log.warning("cannot reach the broker to send events: %s", exc)
            return None
        self._conn = conn
        return conn

    def _replies_off(self, conn: Connection) -> bool:
        """Turn replies off; False (replies stay on) where the server refuses that."""
        # OFF then ON: a server that honours OFF answers only the ON.
        conn.send_command(*self.REPLY_OFF, check_health=False)
        conn.send_command(*self.REPLY_ON, check_health=False)
        try:
            conn.read_response()
        except redis.ResponseError as exc:
            try:
                conn.read_response()  # the ON's refusal too
            except redis.ResponseError:
                pass
            log.warning("the broker refuses %s (%s); each event now waits for its reply",
                        " ".join(self.REPLY_OFF), exc)
            return False
        conn.send_command(*self.REPLY_OFF, check_health=False)
        return True

    def _lost(self, what: str, exc: Exception) -> None:
        log.warning("%s: %s", what, exc)
        self.dropped += 1
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
        self._retry_at = time.monotonic() + self.RETRY_AFTER
