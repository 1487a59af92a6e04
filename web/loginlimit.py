"""Failed-login limits per client IP and per user name, with exponential backoff.

Each key (the client's IP, and the user name tried, known or not) counts its
failed logins. The first ``free`` failures cost nothing; after that each one
locks the key for 1, 2, 4 ... seconds, up to ``LOGIN_BACKOFF_MAX``. While either
key is locked, a login is answered ``429`` at once, without hashing anything,
so a locked-out guesser costs the server almost nothing. A key's failures are
forgotten ``LOGIN_FAILURE_WINDOW`` seconds after its last lock ends; a
successful login clears its user name's count (not the IP's).

The counts live in Redis, shared by every web process. When Redis is away they
live in this process's memory with the same rules, so an outage never lifts the
limit (each process then counts on its own).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

PREFIX = "skald:login:"
MEMORY_CAP = 50_000  # keys kept in memory at most while Redis is away


@dataclass(frozen=True)
class Policy:
    """``free`` failures, then a lock of ``base * 2**k`` s (at most ``cap``) after each one."""

    free: int
    cap: float
    window: float
    base: float = 1.0

    def delay(self, failures: int) -> float:
        over = failures - self.free
        if over <= 0:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(over - 1, 40))


class _Memory:
    """The counts in this process (while Redis is away): key -> [failures, until, expires]."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, list[float]] = {}

    def until(self, key: str, now: float) -> float:
        with self._lock:
            entry = self._keys.get(key)
            return entry[1] if entry and entry[2] > now else 0.0

    def fail(self, key: str, policy: Policy, now: float) -> float:
        with self._lock:
            entry = self._keys.get(key)
            if entry is None or entry[2] <= now:
                entry = [0.0, 0.0, 0.0]
                self._make_room(now)
                self._keys[key] = entry
            entry[0] += 1
            entry[1] = now + policy.delay(int(entry[0]))
            entry[2] = entry[1] + policy.window
            return entry[1]

    def clear(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def _make_room(self, now: float) -> None:
        if len(self._keys) < MEMORY_CAP:
            return
        self._keys = {k: e for k, e in self._keys.items() if e[2] > now}
        while len(self._keys) >= MEMORY_CAP:  # still full: forget the oldest
            self._keys.pop(next(iter(self._keys)))


class LoginLimiter:
    """``retry_after`` before checking a password; ``failed`` / ``succeeded`` after."""

    def __init__(self, client: redis.Redis, by_ip: Policy, by_name: Policy,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.policies = (by_ip, by_name)
        self.clock = clock
        self.memory = _Memory()

    @staticmethod
    def keys(ip: str, name: str) -> tuple[str, str]:
        digest = hashlib.sha256(name.strip().lower().encode("utf-8", "replace")).hexdigest()[:40]
        return f"{PREFIX}ip:{ip[:64]}", f"{PREFIX}user:{digest}"

    def retry_after(self, ip: str, name: str) -> float:
        """Seconds until a login for ``name`` from ``ip`` may be tried (0: now)."""
        now = self.clock()
        keys = self.keys(ip, name)
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "until")
            stored = [float(v) if v else 0.0 for v in pipe.execute()]
        except (redis.RedisError, ValueError) as exc:
            log.debug("login limits from memory: %s", exc)
            stored = []
        untils = stored + [self.memory.until(key, now) for key in keys]
        return max(0.0, max(untils) - now)

    def failed(self, ip: str, name: str) -> float:
        """Count a failed login; returns the seconds until the next may be tried."""
        now = self.clock()
        keys = self.keys(ip, name)
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, policy in zip(keys, self.policies):
                pipe.hincrby(key, "failures", 1)
                pipe.expire(key, int(policy.cap + policy.window) + 1)  # never stays forever
            counts = pipe.execute()[::2]
            delays = [policy.delay(int(n)) for n, policy in zip(counts, self.policies)]
            pipe = self.client.pipeline(transaction=False)
            for key, delay, policy in zip(keys, delays, self.policies):
                pipe.hset(key, "until", f"{now + delay:.3f}")
                pipe.expire(key, int(delay + policy.window) + 1)
            pipe.execute()
            untils = [now + delay for delay in delays]
        except redis.RedisError as exc:
            log.warning("login limits kept in memory (Redis: %s)", exc)
            untils = [self.memory.fail(key, policy, now) for key, policy in zip(keys, self.policies)]
        return max(0.0, max(untils) - now)

    def succeeded(self, ip: str, name: str) -> None:
        """A correct password: the user name's failures are forgotten."""
        key = self.keys(ip, name)[1]
        self.memory.clear(key)
        try:
            self.client.delete(key)
        except redis.RedisError as exc:
            log.debug("could not clear the login failures of a user: %s", exc)
