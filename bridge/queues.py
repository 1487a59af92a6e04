"""Broker queue lengths for the operator view (I/O, polled by the bridge every few seconds).

One code path for every broker kombu speaks: a passive ``queue_declare``
returns the message count (kombu's Redis transport answers it with ``LLEN``
over the priority lists; RabbitMQ with the server's count). A queue that does
not exist yet (the Redis list is absent while empty) counts 0.

One connection and one channel serve every probe, for as long as they work:
a kombu channel is a cycle of objects (channel, pools, clients), so a channel
per probe would be garbage that only the collector frees, and the bridge's GC
policy (gcpolicy.py) keeps such garbage for up to a quarter of an hour
(tests/test_queues.py counts it).

Which queues: the configured ones, plus every queue an online worker consumes
(a worker started with ``-Q reports``, a consumer added by an operator). The
bridge learns those by asking the workers themselves (:func:`consumed_names`,
Celery's ``active_queues``) from its gauges thread whenever the set of online
workers changes and every :data:`DISCOVER_SECONDS`: worker events do not name
queues, and a key written by the web would only be as fresh as the last
operator page. A queue once seen stays probed (bounded by :data:`MAX_QUEUES`),
so a queue whose consumers all died still raises the backlog alert.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError, OperationalError

log = logging.getLogger(__name__)

MAX_QUEUES = 100        # queue names probed at most (they are label values in /metrics)
DISCOVER_SECONDS = 30.0  # s between asking the workers which queues they consume
DISCOVER_TIMEOUT = 1.0   # s such a question waits for the online workers' replies


def consumed_names(app: Celery, expect: int | None, timeout: float = DISCOVER_TIMEOUT) -> set[str]:
    """Queues the workers that answer consume (``expect``: how many are online, so the
    question ends at their last reply); empty when none answer or the broker is away."""
    try:
        replies = app.control.inspect(timeout=timeout, limit=expect).active_queues() or {}
    except (KombuError, OSError) as exc:
        log.warning("cannot ask workers for their queues: %s", exc)
        return set()
    return {q["name"] for queues in replies.values() if isinstance(queues, list)
            for q in queues if isinstance(q, dict) and isinstance(q.get("name"), str)}


def queue_names(app: Celery) -> list[str]:
    """The default queue plus any configured ``task_queues`` (bounded)."""
    names = [app.conf.task_default_queue or "celery"]
    for queue in app.conf.task_queues or ():
        name = getattr(queue, "name", None) or (queue if isinstance(queue, str) else None)
        if name and name not in names:
            names.append(name)
    return names[:MAX_QUEUES]


class QueueProbe:
    """Reads queue lengths over one broker connection and channel, reopened after a failure."""

    def __init__(self, app: Celery, names: list[str] | None = None) -> None:
        self.app = app
        self.names = names or queue_names(app)
        self._conn: Any = None
        self._channel: Any = None

    def add_names(self, names: set[str]) -> list[str]:
        """Probe ``names`` too from now on (up to :data:`MAX_QUEUES` in all); the new ones."""
        added = [n for n in sorted(names - set(self.names))][:max(0, MAX_QUEUES - len(self.names))]
        self.names.extend(added)
        return added

    def lengths(self) -> dict[str, int] | None:
        """``{queue: messages waiting}``, or None when the broker cannot be read."""
        try:
            if self._channel is None:
                self._conn = self.app.connection_for_read()
                self._conn.ensure_connection(max_retries=1)
                self._channel = self._conn.channel()
            return {name: self._length(name) for name in self.names}
        except (OperationalError, OSError, *self._errors()) as exc:  # noqa: B030
            log.warning("cannot read broker queue lengths: %s", exc)
            self.close()
            return None

    def _length(self, name: str) -> int:
        try:
            return int(self._channel.queue_declare(queue=name, passive=True).message_count)
        except self._conn.channel_errors:
            # No such queue yet: nothing waits in it. On AMQP that error also closed
            # the channel (kombu's Redis channel stays open): then take a fresh one.
            if getattr(self._channel, "closed", False) or not getattr(self._channel, "is_open", True):
                self._close(self._channel)
                self._channel = self._conn.channel()
            return 0

    def _errors(self) -> tuple[type[BaseException], ...]:
        conn = self._conn
        return tuple(conn.connection_errors) + tuple(conn.channel_errors) if conn else ()

    def close(self) -> None:
        self._close(self._channel)
        conn, self._channel, self._conn = self._conn, None, None
        if conn is not None:
            try:
                conn.release()
            except (OperationalError, OSError, *conn.connection_errors) as exc:
                log.debug("closing the probe connection: %s", exc)

    def _close(self, channel: Any) -> None:
        if channel is None or self._conn is None:
            return
        try:
            channel.close()
        except (OSError, *self._errors()) as exc:
            log.debug("closing a probe channel: %s", exc)
