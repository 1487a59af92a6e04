"""Maintenance mode: a flag in Redis every web process reads.

While active, new jobs are refused with ``503 maintenance``; running jobs finish.
"""
from __future__ import annotations

import json
import time
from typing import Any

import redis

KEY = "skald:maintenance"
OFF: dict[str, Any] = {"active": False, "message": "", "until": None}


def maintenance_status(client: redis.Redis) -> dict[str, Any]:
    raw = client.get(KEY)
    if not raw:
        return dict(OFF)
    try:
        status = json.loads(raw)
    except ValueError:
        return dict(OFF)
    until = status.get("until")
    if isinstance(until, (int, float)) and until < time.time():
        return dict(OFF)
    return {"active": bool(status.get("active")), "message": str(status.get("message") or ""),
            "until": until}


def set_maintenance(client: redis.Redis, active: bool, message: str = "",
                    until: float | None = None) -> dict[str, Any]:
    """Switch maintenance on (``until``: Unix time it ends by itself) or off; returns the status.

    With ``until`` the flag also expires in Redis then, so nothing stale stays behind.
    """
    status = {"active": active, "message": message if active else "",
              "until": until if active else None}
    if active:
        left_ms = int((until - time.time()) * 1000) if until is not None else None
        if left_ms is not None and left_ms <= 0:
            client.delete(KEY)
            return dict(OFF)
        client.set(KEY, json.dumps(status), px=left_ms)
    else:
        client.delete(KEY)
    return status


def announce(redis_url: str, status: dict[str, Any]) -> None:
    """Tell every connected client, on every web process, through the message queue."""
    from protocol import MAINTENANCE_STATUS, SOCKETIO_CHANNEL
    from web.messagequeue import MessageQueue

    # Our manager, not Flask-SocketIO's pick by URL (it would take a Sentinel URL for kombu).
    MessageQueue(redis_url, channel=SOCKETIO_CHANNEL, write_only=True).emit(
        MAINTENANCE_STATUS, status, namespace="/")
