"""A fast producer of Celery task events, in the wire format of tasks/wire.py.

:class:`Wire` builds the bytes a Celery ``EventDispatcher`` on Redis would
publish, so a producer can go faster than ``Dispatcher.send`` (kombu builds a
redis-py client per publish); :func:`self_check` compares its output with a
real Dispatcher's at the start of a run, so the stream stays faithful
(``tests/test_wire.py`` checks the format itself).
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable

from tasks import wire


class Wire:
    """Encodes events as one Celery ``EventDispatcher`` on Redis would."""

    def __init__(self, hostname: str = "bench-worker@localhost", db: int = 0,
                 pid: int | None = None) -> None:
        self.hostname = hostname
        self.pid = pid if pid is not None else os.getpid()
        self.prefix = wire.channel_prefix(f"redis://localhost/{db}")
        self.clock = 0

    def body(self, type_: str, fields: dict, timestamp: float | None = None) -> dict:
        self.clock += 1
        return wire.event_body(type_, fields, hostname=self.hostname, pid=self.pid,
                               clock=self.clock, timestamp=timestamp)

    def _message(self, payload: dict | list[dict], rk: str) -> tuple[str, bytes]:
        return self.prefix + rk, wire.encode(payload, rk, hostname=self.hostname,
                                             delivery_tag=str(uuid.uuid4()))

    def one(self, type_: str, fields: dict, timestamp: float | None = None) -> tuple[str, bytes]:
        """``(channel, message)`` of one event (``Dispatcher.send``)."""
        return self._message(self.body(type_, fields, timestamp), wire.routing_key(type_))

    def multi(self, events: Iterable[tuple[str, dict]], timestamp: float | None = None,
              group: str = "task") -> tuple[str, bytes]:
        """``(channel, message)`` of a buffered group flush (``buffer_group``: ``task.multi``)."""
        return self._message([self.body(t, f, timestamp) for t, f in events], f"{group}.multi")


def self_check(redis_url: str) -> dict:
    """Send one event with Celery's own Dispatcher and with :class:`Wire`; compare.

    Returns ``{"ok": bool, ...}`` (channel and the event's keys).
    """
    import redis

    from settings import load_settings
    from tasks.app import make_celery

    settings = load_settings(env={}).with_overrides(redis_url=redis_url, broker_url=redis_url)
    app = make_celery(settings)
    client = redis.Redis.from_url(redis_url)
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.psubscribe(wire.pattern(redis_url))
    sub.get_message(timeout=1)
    fields = {"uuid": str(uuid.uuid4()), "current": 1, "total": 3, "step": "x"}
    with app.connection_for_write() as conn:
        with app.events.Dispatcher(conn, hostname="check@localhost") as disp:
            disp.send("task-progress", **fields)
    got = None
    deadline = time.monotonic() + 5
    while got is None and time.monotonic() < deadline:
        got = sub.get_message(timeout=0.5)
    sub.close()
    if got is None:
        return {"ok": False, "why": "no message from the Celery dispatcher"}
    channel, data = Wire("check@localhost").one("task-progress", fields)
    real, mine = wire.decode(got["data"])[0], wire.decode(data)[0]
    ok = (got["channel"].decode() == channel and list(real) == list(mine)
          and all(real[k] == mine[k] for k in fields))
    return {"ok": ok, "channel": channel, "celery_keys": list(real), "wire_keys": list(mine)}
