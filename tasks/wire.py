"""Celery task events as they travel on a Redis broker: kombu's fanout envelope.

A Celery ``EventDispatcher`` on kombu's Redis transport (``fanout_prefix`` and
``fanout_patterns`` on, as celeryconfig.py sets them; JSON serializer)
publishes each event with ``PUBLISH /<db>.celeryev/<routing key>``, the
routing key being the event type with dots (``task.progress``). The message
is kombu's JSON envelope whose ``body`` is the base64 of the JSON event, or of
a JSON list of events for a worker's buffered ``<group>.multi`` messages.

This is the one module that reads or writes that format: the bridge decodes
it (bridge/receiver.py, faster than kombu's virtual transport), and the
benchmarks encode it to produce streams faster than a dispatcher can.
``tests/test_wire.py`` checks both directions against Celery's own
``EventDispatcher`` and ``EventReceiver``. Pure functions, no I/O.
"""
from __future__ import annotations

import binascii
import json
import time
from typing import Any

import orjson

import redisurl

EXCHANGE = "celeryev"
CONTENT_TYPE = "application/json"


class WireError(ValueError):
    """A message on the event channels that is not a JSON Celery event message."""


def is_redis(broker_url: str | None) -> bool:
    """Whether events on this broker travel in this format (else: Celery's own receiver):
    Redis over TCP or TLS, directly or through Sentinel (redisurl.py's forms)."""
    return redisurl.is_redis(broker_url) and not (broker_url or "").startswith("unix:")


def _db(broker_url: str) -> str:
    return str(redisurl.parse(broker_url).db)


def channel_prefix(broker_url: str) -> str:
    """``/<db>.celeryev/``: kombu's fanout prefix for this broker's database."""
    return f"/{_db(broker_url)}.{EXCHANGE}/"


def pattern(broker_url: str) -> str:
    """The pub/sub pattern every event of the cluster is published under."""
    return channel_prefix(broker_url) + "*"


def routing_key(event_type: str) -> str:
    return event_type.replace("-", ".")


def event_body(event_type: str, fields: dict, *, hostname: str, pid: int, clock: int,
               timestamp: float | None = None, utcoffset: float = 0) -> dict:
    """An event dict in the key order of ``celery.events.event.Event``."""
    body = {"hostname": hostname, "utcoffset": utcoffset, "pid": pid, "clock": clock}
    body.update(fields)
    body["timestamp"] = time.time() if timestamp is None else timestamp
    body["type"] = event_type
    return body


def encode(payload: dict | list[dict], routing_key: str, *, hostname: str,
           delivery_tag: str) -> bytes:
    """One message as kombu writes it (kombu's json: default separators, insertion order)."""
    body = binascii.b2a_base64(json.dumps(payload).encode("utf-8"), newline=False).decode("ascii")
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": CONTENT_TYPE,
        "headers": {"hostname": hostname},
        "properties": {"delivery_mode": 1,
                       "delivery_info": {"exchange": EXCHANGE, "routing_key": routing_key},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": delivery_tag}}).encode("utf-8")


def decode(message: bytes | str) -> list[dict]:
    """The events in one message, in order; :class:`WireError` when it is not one.

    Refuses any content type but JSON (no pickle from the wire).
    """
    try:
        envelope = orjson.loads(message)
        if envelope.get("content-type") != CONTENT_TYPE:
            raise WireError(f"content type {envelope.get('content-type')!r} refused")
        body: Any = envelope["body"]
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            body = binascii.a2b_base64(body)  # base64.b64decode minus its Python wrapper
        payload = orjson.loads(body)
    except WireError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"{type(exc).__name__}: {exc}") from None
    return [e for e in (payload if isinstance(payload, list) else (payload,)) if isinstance(e, dict)]


def localize(event: dict, here: float) -> None:
    """What Celery's ``EventReceiver`` does to an event's timestamp: from the sender's
    UTC offset to ours (``here``, in hours; ``celery.utils.time.utcoffset()``)."""
    try:
        event["timestamp"] = event["timestamp"] - (event["utcoffset"] - here) * 3600
    except (KeyError, TypeError):
        pass
