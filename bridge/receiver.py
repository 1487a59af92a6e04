"""The Celery event loop: every event of the cluster into a sink, reconnecting forever.

Two readers of the same stream, picked by the broker:

- :class:`RedisEventReader` (Redis broker): subscribes to the event exchange's
  pub/sub channels itself, parses the replies with hiredis and decodes kombu's
  envelope (tasks/wire.py), handing over every event already read in one batch.
  Celery's ``Receiver`` does the same work per message through kombu's virtual
  transport, several times slower (``bench/RESULTS.md``).
- :class:`KombuEventReceiver` (any other broker, e.g. RabbitMQ): Celery's own
  ``app.events.Receiver``.

Both reconnect with capped exponential backoff (0.2 s doubling to 5 s), call
``on_connect`` once subscribed (so the bridge reconciles what the gap hid),
and log and skip a message they cannot decode.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import hiredis
import redis
from celery import Celery
from celery.utils.time import utcoffset
from kombu.exceptions import KombuError

import redisurl
from tasks import wire

log = logging.getLogger(__name__)

BACKOFF_START = 0.2
BACKOFF_CAP = 5.0
BATCH_MAX = 2000  # events handed over at once at most
READ_SIZE = 1 << 20  # bytes read from the socket at once (about 1 000 single events)
IDLE_WAIT = 1.0  # s a read waits before checking for a stop request
PING_AFTER = 5.0  # s of silence before a PING; as long again without a reply: reconnect

Sink = Callable[[list[dict]], None]


class _Reconnecting(threading.Thread):
    """Run :meth:`_session` again and again with capped backoff until stopped."""

    def __init__(self, sink: Sink, on_connect: Callable[[], None]) -> None:
        super().__init__(name="event-receiver", daemon=True)
        self.sink = sink
        self.on_connect = on_connect
        self._stopping = threading.Event()
        self.reconnects = 0
        self.skipped = 0

    def run(self) -> None:
        backoff = BACKOFF_START
        while not self._stopping.is_set():
            try:
                self._session(lambda: self._subscribed())
                backoff = BACKOFF_START
            except Exception as exc:  # noqa: BLE001 - any broker trouble means reconnect
                if self._stopping.is_set():
                    break
                self.reconnects += 1
                log.warning("event stream lost (%s: %s); reconnecting in %.1fs",
                            type(exc).__name__, exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)

    def _subscribed(self) -> None:
        # From here on nothing is missed: now is when the bridge reconciles the gap.
        self.on_connect()

    def _session(self, subscribed: Callable[[], None]) -> None:
        raise NotImplementedError

    def _deliver(self, events: list[dict]) -> None:
        if events:
            self.sink(events)

    def stop(self) -> None:
        self._stopping.set()


class RedisEventReader(_Reconnecting):
    """Celery events straight from the Redis broker's pub/sub channels."""

    def __init__(self, broker_url: str, sink: Sink, on_connect: Callable[[], None] = lambda: None,
                 wakeup: Callable[[], None] = lambda: None) -> None:
        super().__init__(sink, on_connect)
        self.broker_url = broker_url
        self.wakeup = wakeup
        self.pattern = wire.pattern(broker_url)

    def _session(self, subscribed: Callable[[], None]) -> None:
        # redis-py opens the connection (TCP, unix socket or TLS; AUTH, SELECT);
        # from PSUBSCRIBE on, the replies are read straight off the socket with
        # hiredis's parser: redis-py's PubSub spends more per message than the
        # bridge's decoding does (bench/LEVERS.md).
        client = redisurl.client(self.broker_url, health_check_interval=0)
        conn = client.connection_pool.make_connection()
        try:
            conn.connect()
            conn.send_command("PSUBSCRIBE", self.pattern)
            sock = conn._sock
            sock.settimeout(IDLE_WAIT)  # so a stop request is noticed while idle
            parser = hiredis.Reader()
            buffer = bytearray(READ_SIZE)
            heard = time.monotonic()  # when the broker last sent anything
            pinged = False
            while not self._stopping.is_set():
                try:
                    n = sock.recv_into(buffer)
                except TimeoutError:
                    # Silence: ask (PING is allowed while subscribed); no answer either
                    # means a half-open connection (the master's host cut off).
                    quiet = time.monotonic() - heard
                    if quiet > 2 * PING_AFTER:
                        raise ConnectionError(f"the broker has been silent for {quiet:.0f}s") from None
                    if quiet > PING_AFTER and not pinged:
                        conn.send_command("PING")
                        pinged = True
                    continue
                if n == 0:
                    raise ConnectionError("the broker closed the connection")
                heard, pinged = time.monotonic(), False
                parser.feed(buffer, 0, n)
                events: list[dict] = []
                offset = utcoffset()
                while (reply := parser.gets()) is not False:
                    if isinstance(reply, Exception):
                        raise ConnectionError(f"the broker refused: {reply}")
                    kind = reply[0] if isinstance(reply, list) and reply else None
                    if kind == b"pmessage" and len(reply) == 4:
                        self._decode(reply[3], events, offset)
                        if len(events) >= BATCH_MAX:
                            self._deliver(events)
                            events = []
                    elif kind == b"psubscribe":
                        subscribed()
                        self._wake()
                self._deliver(events)
        finally:
            conn.disconnect()
            client.close()

    def _wake(self) -> None:
        """Ask workers for a heartbeat now, so the worker list fills at once."""
        try:
            self.wakeup()
        except (KombuError, redis.RedisError, OSError) as exc:  # only a courtesy
            log.debug("could not wake workers: %s", exc)

    def _decode(self, data: bytes, out: list[dict], here: float) -> None:
        try:
            events = wire.decode(data)
        except wire.WireError as exc:
            self.skipped += 1
            if self.skipped <= 10 or self.skipped % 1000 == 0:
                log.warning("skipped an event message that cannot be decoded (%s); %d so far",
                            exc, self.skipped)
            return
        for event in events:
            wire.localize(event, here)
        out.extend(events)


class KombuEventReceiver(_Reconnecting):
    """Celery's own event receiver (used for brokers other than Redis)."""

    def __init__(self, app: Celery, sink: Sink, on_connect: Callable[[], None] = lambda: None) -> None:
        super().__init__(sink, on_connect)
        self.app = app
        self._receiver = None

    def _session(self, subscribed: Callable[[], None]) -> None:
        with self.app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            receiver = self.app.events.Receiver(conn, handlers={"*": lambda e: self._deliver([e])})
            ready = receiver.on_consume_ready

            def consuming(*args: Any, **kwargs: Any) -> None:
                ready(*args, **kwargs)
                subscribed()

            receiver.on_consume_ready = consuming
            self._receiver = receiver
            receiver.capture(limit=None, timeout=None, wakeup=True)

    def stop(self) -> None:
        super().stop()
        if self._receiver is not None:
            self._receiver.should_stop = True


def event_reader(app: Celery, broker_url: str, sink: Sink,
                 on_connect: Callable[[], None]) -> _Reconnecting:
    """The fastest reader for this broker."""
    if wire.is_redis(broker_url):
        return RedisEventReader(broker_url, sink, on_connect,
                                wakeup=lambda: app.control.broadcast("heartbeat"))
    return KombuEventReceiver(app, sink, on_connect)
