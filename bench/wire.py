"""Celery task events exactly as they travel on the Redis broker.

A Celery ``EventDispatcher`` on the Redis transport (``fanout_prefix`` and
``fanout_patterns`` on, JSON serializer) publishes each event with
``PUBLISH /<db>.celeryev/<routing key>`` and a kombu envelope whose ``body`` is
the base64 of the JSON event (a JSON list of events for a worker's buffered
``task.multi`` messages). :class:`Wire` builds those bytes directly so a
producer can go faster than ``Dispatcher.send`` (kombu builds a new redis-py
client per publish: about 0.5 ms per event here), and :func:`self_check`
compares its output with a real Dispatcher's, so the stream stays faithful.
"""
from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

EXCHANGE = "celeryev"
_dumps = json.dumps  # kombu's json: default separators, insertion order


def event_body(type_: str, fields: dict, *, hostname: str, pid: int, clock: int,
               timestamp: float | None = None, utcoffset: float = 0.0) -> dict:
    """The event dict in the key order of ``celery.events.event.Event``."""
    body = {"hostname": hostname, "utcoffset": utcoffset, "pid": pid, "clock": clock}
    body.update(fields)
    body["timestamp"] = time.time() if timestamp is None else timestamp
    body["type"] = type_
    return body


class Wire:
    """Encodes events as one Celery ``EventDispatcher`` on Redis would."""

    def __init__(self, hostname: str = "bench-worker@localhost", db: int = 0,
                 pid: int | None = None) -> None:
        self.hostname = hostname
        self.pid = pid if pid is not None else os.getpid()
        self.prefix = f"/{db}.{EXCHANGE}/"
        self.clock = 0

    def _envelope(self, payload: Any, routing_key: str) -> bytes:
        body = base64.b64encode(_dumps(payload).encode("utf-8")).decode("ascii")
        return _dumps({
            "body": body, "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"hostname": self.hostname},
            "properties": {"delivery_mode": 1,
                           "delivery_info": {"exchange": EXCHANGE, "routing_key": routing_key},
                           "priority": 0, "body_encoding": "base64",
                           "delivery_tag": str(uuid.uuid4())}}).encode("utf-8")

    def body(self, type_: str, fields: dict, timestamp: float | None = None) -> dict:
        self.clock += 1
        return event_body(type_, fields, hostname=self.hostname, pid=self.pid,
                          clock=self.clock, timestamp=timestamp)

    def one(self, type_: str, fields: dict, timestamp: float | None = None) -> tuple[str, bytes]:
        """``(channel, message)`` of one event (``Dispatcher.send``)."""
        rk = type_.replace("-", ".")
        return self.prefix + rk, self._envelope(self.body(type_, fields, timestamp), rk)

    def multi(self, events: Iterable[tuple[str, dict]], timestamp: float | None = None,
              group: str = "task") -> tuple[str, bytes]:
        """``(channel, message)`` of a buffered group flush (``buffer_group``: ``task.multi``)."""
        bodies = [self.body(t, f, timestamp) for t, f in events]
        rk = f"{group}.multi"
        return self.prefix + rk, self._envelope(bodies, rk)


def decode(message: bytes) -> list[dict]:
    """The events in one wire message (what a receiver gets)."""
    env = json.loads(message)
    body = json.loads(base64.b64decode(env["body"]))
    return body if isinstance(body, list) else [body]


def self_check(redis_url: str) -> dict:
    """Send one event with Celery's own Dispatcher and with :class:`Wire`; compare.

    Returns ``{"ok": bool, "celery": ..., "wire": ...}`` (channels and key sets).
    """
    import redis

    from settings import load_settings
    from tasks.app import make_celery

    settings = load_settings(env={}).with_overrides(redis_url=redis_url, broker_url=redis_url)
    app = make_celery(settings)
    client = redis.Redis.from_url(redis_url)
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.psubscribe(f"/0.{EXCHANGE}/*")
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
    wire = Wire("check@localhost")
    channel, data = wire.one("task-progress", fields)
    if got is None:
        return {"ok": False, "why": "no message from the Celery dispatcher"}
    real_env, mine_env = json.loads(got["data"]), json.loads(data)
    real_body, mine_body = decode(got["data"])[0], decode(data)[0]

    def shape(env: dict) -> dict:
        props = dict(env["properties"])
        props.pop("delivery_tag", None)
        return {**{k: v for k, v in env.items() if k != "body"}, "properties": props}

    ok = (got["channel"].decode() == channel and shape(real_env) == shape(mine_env)
          and list(real_body) == list(mine_body)
          and all(real_body[k] == mine_body[k] for k in fields))
    return {"ok": ok, "channel": channel, "celery_keys": list(real_body), "wire_keys": list(mine_body)}
