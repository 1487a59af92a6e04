"""The Celery event loop: every event of the cluster into a sink, reconnecting forever.

Uses Celery's own ``app.events.Receiver`` on the broker's event exchange.
Reconnects with capped exponential backoff (0.2 s doubling to 5 s); after each
(re)connect ``on_connect`` runs so the bridge can reconcile what it missed. An
event the sink cannot take is logged and skipped.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from celery import Celery

log = logging.getLogger(__name__)

BACKOFF_START = 0.2
BACKOFF_CAP = 5.0


class EventReceiver(threading.Thread):
    def __init__(self, app: Celery, sink: Callable[[dict], None],
                 on_connect: Callable[[], None] = lambda: None) -> None:
        super().__init__(name="event-receiver", daemon=True)
        self.app = app
        self.sink = sink
        self.on_connect = on_connect
        self._stopping = threading.Event()
        self._receiver = None
        self.connected = threading.Event()
        self.reconnects = 0

    def _handle(self, event: dict) -> None:
        try:
            self.sink(event)
        except Exception:  # noqa: BLE001 - one bad event must not stop the stream
            log.exception("skipped an event that could not be handled: %.200r", event)

    def run(self) -> None:
        backoff = BACKOFF_START
        while not self._stopping.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1)
                    receiver = self.app.events.Receiver(conn, handlers={"*": self._handle})
                    ready = receiver.on_consume_ready

                    def consuming(*args, **kwargs) -> None:
                        # Subscribed: from here on nothing is missed, so now
                        # is when the bridge reconciles the gap.
                        ready(*args, **kwargs)
                        self.connected.set()
                        self.on_connect()

                    receiver.on_consume_ready = consuming
                    self._receiver = receiver
                    backoff = BACKOFF_START
                    receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as exc:  # noqa: BLE001 - any broker trouble means reconnect
                if self._stopping.is_set():
                    break
                self.connected.clear()
                self.reconnects += 1
                log.warning("event stream lost (%s: %s); reconnecting in %.1fs",
                            type(exc).__name__, exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
        self.connected.clear()

    def stop(self) -> None:
        self._stopping.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
