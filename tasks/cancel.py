"""The cooperative cancel flag: ``skald:cancel:<task_id>`` in Redis.

The bridge sets it (``bridge/commands.py``); a running job checks it between
images and while streaming a caption. A flag outlives a revoke sent while no
worker was online, so a job that starts later still stops at once.
"""
from __future__ import annotations

import functools

import redis

import redisurl

CANCEL_KEY_PREFIX = "skald:cancel:"
CANCEL_FLAG_TTL = 7 * 24 * 3600


def cancel_key(task_id: str) -> str:
    return f"{CANCEL_KEY_PREFIX}{task_id}"


def set_cancel_flag(client: redis.Redis, task_id: str, by: str = "") -> None:
    client.set(cancel_key(task_id), by or "1", ex=CANCEL_FLAG_TTL)


def is_cancel_requested(client: redis.Redis, task_id: str) -> bool:
    return bool(client.exists(cancel_key(task_id)))


@functools.lru_cache(maxsize=8)
def redis_client(url: str) -> redis.Redis:
    """One client (and connection pool) per URL per process; any form of ``REDIS_URL``
    (redisurl.py: TLS, Sentinel), retried with capped backoff across a failover."""
    return redisurl.client(url)
