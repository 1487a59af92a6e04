"""Sending a job's events from a worker process: one long-lived Celery dispatcher.

``Task.send_event`` builds a dispatcher (and acquires a producer from the
pool) per call. :class:`EventSender` keeps one ``EventDispatcher`` per worker
process instead, made on first use (connections do not survive a fork) and
shared by the threads of a threads pool. A send is synchronous: when it
returns the broker has the event, so a job's events precede Celery's own
``task-succeeded``.

What it costs is measured by ``bench/overhead.py`` (bench/RESULTS.md): about
0.2-0.3 ms of the job's thread per event, well under 1 % of a job whose images
take the default captioner's 0.2-1.5 s each (bench/LEVERS.md, lever 6c).

Events are lossy by design: one that cannot be sent is logged and dropped,
and the sender then drops events without trying for ``RETRY_AFTER`` seconds,
so a broker that is away costs a job almost nothing.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from celery import Celery
from celery.events import EventDispatcher
from kombu.exceptions import KombuError

log = logging.getLogger(__name__)

# One quick reconnect, then give up on this event rather than hold the job up.
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}


class EventSender:
    """How one worker process sends its jobs' events (see the module docstring)."""

    RETRY_AFTER = 1.0  # s without tries after a failed send

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._dispatcher: EventDispatcher | None = None
        self._pid = 0
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.dropped = 0

    def send(self, hostname: str, event_type: str, task_id: str, fields: dict) -> None:
        """Send one event now; dropped (and logged) when the broker cannot take it."""
        with self._lock:
            if time.monotonic() < self._retry_at:
                self.dropped += 1
                return
            try:
                self._ready(hostname).send(event_type, uuid=task_id, retry=True,
                                           retry_policy=RETRY_POLICY, **fields)
            except (OSError, KombuError, *self._connection_errors()) as exc:
                log.warning("could not send %s for %s: %s", event_type, task_id, exc)
                self.dropped += 1
                self._retry_at = time.monotonic() + self.RETRY_AFTER
                self._close()

    def _ready(self, hostname: str) -> EventDispatcher:
        if self._pid != os.getpid():  # first use in this process: the parent's is not ours
            self._dispatcher, self._pid = None, os.getpid()
        if self._dispatcher is None or self._dispatcher.hostname != hostname:
            self._close()
            # buffer_while_offline=False: a failed send raises instead of piling up in memory.
            self._dispatcher = self.app.events.Dispatcher(
                self.app.connection_for_write(), hostname=hostname, enabled=True,
                buffer_while_offline=False)
        return self._dispatcher

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        dispatcher = self._dispatcher
        return tuple(dispatcher.connection.connection_errors) if dispatcher is not None else ()

    def _close(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is None:
            return
        try:
            dispatcher.close()
            dispatcher.connection.release()
        except (OSError, KombuError, *tuple(dispatcher.connection.connection_errors)) as exc:
            log.debug("closing an event dispatcher: %s", exc)

    def reset(self) -> None:
        """Forget the parent's dispatcher and connection (after a fork)."""
        with self._lock:
            self._dispatcher = None
            self._pid = 0
            self._retry_at = 0.0
