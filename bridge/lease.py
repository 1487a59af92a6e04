"""Active/standby bridges: a leader lease in Redis (``SET NX PX`` plus guarded renew)."""
from __future__ import annotations

import secrets
import socket

import redis

LEASE_KEY = "skald:bridge:leader"

# Renew; or take the lease again when it is gone and nobody else holds it (a Redis failover
# or restart can lose the key, or let it expire while the leader could not reach Redis).
# Emitting stays fenced: the publish script checks the holder on every write.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """Who may emit. ``ttl`` (default 3 s) bounds how long a dead leader blocks a standby."""

    def __init__(self, client: redis.Redis, ttl: float = 3.0, key: str = LEASE_KEY) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(100, int(ttl * 1000))
        self.token = f"{socket.gethostname()}:{secrets.token_hex(8)}"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def try_acquire(self) -> bool:
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """True while this bridge holds the lease; a lease that is gone (lost in a failover,
        or expired while Redis was away) and held by nobody else is taken again."""
        return bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        try:
            self._release(keys=[self.key], args=[self.token])
        except redis.RedisError:
            pass  # it expires by itself

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
