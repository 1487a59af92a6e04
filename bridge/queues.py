"""Broker queue lengths for the operator view (I/O, polled by the bridge every few seconds).

One code path for every broker kombu speaks: a passive ``queue_declare``
returns the message count (kombu's Redis transport answers it with ``LLEN``
over the priority lists; RabbitMQ with the server's count). A queue that does
not exist yet (the Redis list is absent while empty) counts 0.
"""
from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

MAX_QUEUES = 20   # queue names probed at most (they are label values in /metrics)


def queue_names(app: Celery) -> list[str]:
    """The default queue plus any configured ``task_queues`` (bounded)."""
    names = [app.conf.task_default_queue or "celery"]
    for queue in app.conf.task_queues or ():
        name = getattr(queue, "name", None) or (queue if isinstance(queue, str) else None)
        if name and name not in names:
            names.append(name)
    return names[:MAX_QUEUES]


class QueueProbe:
    """Reads queue lengths over one broker connection, reopened after a failure."""

    def __init__(self, app: Celery, names: list[str] | None = None) -> None:
        self.app = app
        self.names = names or queue_names(app)
        self._conn = None

    def lengths(self) -> dict[str, int] | None:
        """``{queue: messages waiting}``, or None when the broker cannot be read."""
        conn = self._conn
        try:
            if conn is None:
                conn = self._conn = self.app.connection_for_read()
                conn.ensure_connection(max_retries=1)
            out: dict[str, int] = {}
            for name in self.names:
                channel = conn.channel()
                try:
                    out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except conn.channel_errors:
                    out[name] = 0  # no such queue yet: nothing waits in it
                finally:
                    _close(channel, conn)
            return out
        except (OperationalError, OSError, *(conn.connection_errors if conn else ())) as exc:  # noqa: B030
            log.warning("cannot read broker queue lengths: %s", exc)
            self.close()
            return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.release()
            except (OperationalError, OSError, *conn.connection_errors) as exc:
                log.debug("closing the probe connection: %s", exc)


def _close(channel, conn) -> None:
    try:
        channel.close()
    except (OSError, *conn.channel_errors, *conn.connection_errors) as exc:
        log.debug("closing a probe channel: %s", exc)
