"""The bridge's lease across a Redis failover that lost its key (bridge/lease.py)."""
from __future__ import annotations

import redis

from bridge.lease import Lease


def test_a_lost_lease_is_taken_again_but_never_from_another_bridge(redis_proc):
    client = redis.Redis.from_url(redis_proc.url)
    key = "skald:test:lease"
    mine, other = Lease(client, 3.0, key), Lease(client, 3.0, key)
    assert mine.try_acquire() and not other.try_acquire()
    client.delete(key)                      # the promoted replica never had it (or it expired)
    assert mine.renew() and mine.holder() == mine.token
    assert 0 < client.pttl(key) <= 3000
    client.set(key, other.token, px=3000)  # a standby took it meanwhile
    assert not mine.renew() and mine.holder() == other.token
    client.delete(key)
