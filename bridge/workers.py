"""The cluster's workers for the operator view: liveness by heartbeat. No I/O.

A worker is online from its last ``worker-online``/``worker-heartbeat`` until
a ``worker-offline`` event or until no heartbeat came for
``max(offline_after, 2.5 * freq)`` seconds (a dead worker sends nothing).
Liveness uses the bridge's own clock when each event is applied, so worker
clock skew cannot mark a live worker offline. At most ``max_workers`` are
kept (offline ones with the oldest heartbeat evicted first), and a worker offline
for longer than ``forget_after`` seconds (``WORKER_FORGET_AFTER``, default a day)
is dropped from the view (:meth:`Workers.forget`): a host that was replaced
does not stay listed for ever.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bridge.task import HOST_CAP, as_count, as_number, as_text
from tasks import events as ev


@dataclass(slots=True)
class Worker:
    hostname: str
    online: bool = True
    last_heartbeat: float = 0.0
    active: int = 0
    processed: int = 0
    loadavg: list[float] = field(default_factory=list)
    freq: float = 2.0
    sw_ver: str = ""
    offline_reason: str | None = None
    seen_at: float = 0.0   # bridge time liveness counts from (a restart grants a grace)

    def as_dict(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "online": self.online,
                "last_heartbeat": self.last_heartbeat, "active": self.active,
                "processed": self.processed, "loadavg": list(self.loadavg),
                "freq": self.freq, "sw_ver": self.sw_ver, "offline_reason": self.offline_reason}

    @classmethod
    def from_dict(cls, data: dict) -> Worker | None:
        host = as_text(data.get("hostname"), HOST_CAP)
        if host is None:
            return None
        worker = cls(host)
        worker.online = bool(data.get("online"))
        worker.last_heartbeat = worker.seen_at = as_number(data.get("last_heartbeat")) or 0.0
        worker.active = as_count(data.get("active"), 0)
        worker.processed = as_count(data.get("processed"), 0)
        worker.loadavg = loadavg(data.get("loadavg"))
        worker.freq = as_number(data.get("freq")) or 2.0
        worker.sw_ver = str(data.get("sw_ver") or "")[:40]
        reason = data.get("offline_reason")
        worker.offline_reason = reason if isinstance(reason, str) else None
        return worker


def loadavg(value: Any) -> list[float]:
    if not isinstance(value, (list, tuple)):
        return []
    return [round(n, 2) for n in (as_number(v) for v in value[:3]) if n is not None]


class Workers:
    """Every known worker by hostname; ``changed`` says the stored list is stale."""

    def __init__(self, offline_after: float = 10.0, max_workers: int = 1000,
                 forget_after: float = 86400.0) -> None:
        self.offline_after = offline_after
        self.max_workers = max_workers
        self.forget_after = forget_after
        self._by_host: dict[str, Worker] = {}
        self.changed = True

    def __len__(self) -> int:
        return len(self._by_host)

    def __iter__(self) -> Iterator[Worker]:
        return iter(self._by_host.values())

    def online(self) -> int:
        return sum(1 for w in self._by_host.values() if w.online)

    def as_list(self) -> list[dict[str, Any]]:
        """Every known worker, online first, then by hostname."""
        items = sorted(self._by_host.values(), key=lambda w: (not w.online, w.hostname))
        return [w.as_dict() for w in items]

    def apply(self, etype: str, event: dict, now: float) -> str | None:
        """Apply a ``worker-*`` event; returns the hostname of a worker that just went offline."""
        host = as_text(event.get("hostname"), HOST_CAP)
        if host is None:
            return None
        worker = self._by_host.get(host)
        if etype == ev.WORKER_OFFLINE:
            if worker is None or not worker.online:
                return None
            worker.online, worker.offline_reason, worker.active = False, "offline", 0
            self.changed = True
            return host
        if etype not in (ev.WORKER_ONLINE, ev.WORKER_HEARTBEAT):
            return None
        new = worker is None
        if worker is None:
            worker = self._by_host[host] = Worker(host)
        worker.online, worker.offline_reason = True, None
        worker.last_heartbeat = worker.seen_at = now
        worker.active = as_count(event.get("active"), 0)
        worker.processed = as_count(event.get("processed"), worker.processed)
        worker.loadavg = loadavg(event.get("loadavg")) or worker.loadavg
        worker.freq = as_number(event.get("freq")) or worker.freq
        worker.sw_ver = str(event.get("sw_ver") or worker.sw_ver)[:40]
        self.changed = True
        if new:
            self._evict()
        return None

    def expire(self, now: float) -> list[Worker]:
        """Workers whose heartbeats stopped: marked offline, returned once each."""
        gone = [w for w in self._by_host.values()
                if w.online and now - w.seen_at > max(self.offline_after, 2.5 * w.freq)]
        for worker in gone:
            worker.online, worker.offline_reason = False, "heartbeat"
            self.changed = True
        return gone

    def forget(self, now: float) -> list[str]:
        """Drop workers offline for longer than ``forget_after`` (by their last heartbeat,
        on the bridge's clock); their hostnames."""
        gone = [w.hostname for w in self._by_host.values()
                if not w.online and now - w.seen_at > self.forget_after]
        for host in gone:
            del self._by_host[host]
        if gone:
            self.changed = True
        return gone

    def load(self, stored: Iterable[Any], now: float) -> None:
        """Workers a previous bridge stored. One stored as online gets one expiry period from
        now to send a heartbeat: the bridge heard nothing while it was down, which is no
        sign of the worker's death."""
        for data in stored:
            worker = Worker.from_dict(data) if isinstance(data, dict) else None
            if worker is not None:
                worker.seen_at = max(worker.last_heartbeat, now) if worker.online \
                    else worker.last_heartbeat
                self._by_host[worker.hostname] = worker
        self._evict()

    def _evict(self) -> None:
        while len(self._by_host) > self.max_workers:
            victim = min(self._by_host.values(), key=lambda w: (w.online, w.seen_at))
            del self._by_host[victim.hostname]
