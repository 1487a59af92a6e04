"""Worker inspection and control through Celery's own control API, in one place.

The web process asks workers directly (``app.control``): an operator needs the
answer now (pool, queues, registered tasks, replies to an action). Cancel keeps
its command stream through the bridge (it must survive a bridge restart and
owns the grace period); everything else an operator does goes through here.

Each broadcast waits :data:`TIMEOUT` seconds for replies and is tried
:data:`RETRIES` more times when nobody answered. Inspection answers are cached
for :data:`CACHE_SECONDS` so a page listing 200 workers does not broadcast 200
times.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from celery import Celery

TIMEOUT = 3.0          # s a broadcast waits for replies (the contract's 504 after this)
RETRIES = 1            # one more try when nobody answered
CACHE_SECONDS = 2.0    # how long an inspection answer is reused
SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGUSR1")


class Inspector:
    """Cached ``app.control.inspect()`` calls; one per web process (thread-safe)."""

    def __init__(self, celery: Celery, timeout: float = TIMEOUT, retries: int = RETRIES,
                 cache_seconds: float = CACHE_SECONDS) -> None:
        self.celery = celery
        self.timeout = timeout
        self.retries = retries
        self.cache_seconds = cache_seconds
        self._cache: dict[tuple[str, str | None], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def ask(self, method: str, destination: str | None = None) -> dict[str, Any]:
        """``{hostname: reply}`` for one inspect method (``stats``, ``active_queues``, ...).

        ``destination`` limits the broadcast to one worker; an empty answer means
        nobody replied within the timeout, after the retries.
        """
        key = (method, destination)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.cache_seconds:
                return hit[1]
        reply: dict[str, Any] = {}
        for _attempt in range(1 + self.retries):
            inspect = self.celery.control.inspect(
                destination=[destination] if destination else None, timeout=self.timeout)
            reply = getattr(inspect, method)() or {}
            if reply:
                break
        with self._lock:
            self._cache[key] = (time.monotonic(), reply)
        return reply

    def forget(self) -> None:
        """Drop cached answers (after an action changed what workers would say)."""
        with self._lock:
            self._cache.clear()

    def registered_names(self) -> set[str]:
        """Task names registered on any online worker."""
        names: set[str] = set()
        for tasks in self.ask("registered").values():
            names.update(str(t).split(" ", 1)[0] for t in tasks or ())
        return names


def terminate(celery: Celery, task_id: str, signal: str = "SIGTERM") -> None:
    """Revoke ``task_id`` and signal the process running it now."""
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(SIGNALS)}")
    celery.control.revoke(task_id, terminate=True, signal=signal)
