"""Worker inspection and control through Celery's own control API, in one place.

The web process asks workers directly (``app.control``): an operator needs the
answer now (pool, queues, registered tasks, replies to an action). Cancel keeps
its command stream through the bridge (it must survive a bridge restart and
owns the grace period); everything else an operator does goes through here,
the broker's queue lengths included.

Each broadcast waits :data:`TIMEOUT` seconds for replies and is tried
:data:`RETRIES` more times when nobody answered. A broadcast to named workers
stops as soon as each has answered (``limit``), so asking one worker costs a
round trip, not the whole timeout. Inspection answers are cached for
:data:`CACHE_SECONDS` so a page listing 200 workers does not broadcast 200
times; an action forgets the cache (its effect shows at once).
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.utils.time import rate
from kombu.exceptions import OperationalError

TIMEOUT = 3.0          # s a broadcast waits for replies (the contract's 504 after this)
RETRIES = 1            # one more try when nobody answered
CACHE_SECONDS = 2.0    # how long an inspection answer is reused
SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGUSR1")
MASK = "********"
# Keys whose values are secrets wherever they appear in a worker's conf (Celery masks
# some itself; this is the web's own guard, applied to nested options too).
SECRET_KEY_RE = re.compile(r"pass|secret|token|(?<!routing_)key|auth|credential|signature|cert|dburi",
                           re.IGNORECASE)
URL_PASSWORD_RE = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?P<at>@)",
                             re.IGNORECASE)
QUEUE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")
RATE_RE = re.compile(r"^\d{1,9}(\.\d{1,6})?(/[smh])?$")
MAX_POOL_STEP = 100    # processes added or removed by one pool_grow / pool_shrink at most
MAX_AUTOSCALE = 1000   # largest autoscale max accepted
MAX_TIME_LIMIT = 7 * 24 * 3600.0


class NoReply(Exception):
    """No worker answered within the timeout (after the retries): ``504 timeout``."""


class Refused(Exception):
    """The worker answered with an error (e.g. autoscale not enabled): ``409 conflict``."""

    def __init__(self, message: str, reply: dict[str, Any]) -> None:
        super().__init__(message)
        self.reply = reply


class Inspector:
    """Cached ``app.control.inspect()`` calls and control broadcasts; one per web process
    (thread-safe)."""

    def __init__(self, celery: Celery, timeout: float = TIMEOUT, retries: int = RETRIES,
                 cache_seconds: float = CACHE_SECONDS) -> None:
        self.celery = celery
        self.timeout = timeout
        self.retries = retries
        self.cache_seconds = cache_seconds
        self._cache: dict[tuple, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def ask(self, method: str, destination: str | None = None, expect: int | None = None,
            retries: int | None = None, **arguments: Any) -> dict[str, Any]:
        """``{hostname: reply}`` for one inspect method (``stats``, ``active_queues``, ...).

        ``destination`` limits the broadcast to one worker (and ends it at its reply);
        ``expect`` ends a broadcast to all once that many replied (the online workers).
        An empty answer means nobody replied within the timeout, after the retries
        (``retries``: instead of the default, e.g. 0 for a worker nobody has heard of).
        """
        key = (method, destination, expect, tuple(sorted(arguments.items())))
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.cache_seconds:
                return hit[1]
        limit = 1 if destination else (expect or None)
        reply: dict[str, Any] = {}
        for _attempt in range(1 + (self.retries if retries is None else retries)):
            inspect = self.celery.control.inspect(
                destination=[destination] if destination else None, timeout=self.timeout,
                limit=limit)
            reply = getattr(inspect, method)(**arguments) or {}
            if reply:
                break
        with self._lock:
            self._cache[key] = (time.monotonic(), reply)
        return reply

    def forget(self) -> None:
        """Drop cached answers (after an action changed what workers would say)."""
        with self._lock:
            self._cache.clear()

    def registered_names(self, expect: int | None = None) -> set[str]:
        """Task names registered on any online worker (``expect``: how many are online)."""
        names: set[str] = set()
        for tasks in self.ask("registered", expect=expect).values():
            names.update(str(t).split(" ", 1)[0] for t in tasks or ())
        return names

    def broadcast(self, command: str, arguments: dict[str, Any], destination: str | None = None,
                  expect: int | None = None, retries: int | None = None) -> dict[str, Any]:
        """Send a control ``command``; ``{hostname: reply}`` (empty: nobody answered)."""
        replies: list[dict[str, Any]] = []
        for _attempt in range(1 + (self.retries if retries is None else retries)):
            replies = self.celery.control.broadcast(
                command, arguments=arguments, destination=[destination] if destination else None,
                reply=True, timeout=self.timeout,
                limit=1 if destination else (expect or None)) or []
            if replies:
                break
        self.forget()
        return {host: answer for item in replies if isinstance(item, dict)
                for host, answer in item.items()}


# -- worker actions -------------------------------------------------------------------------------
def _count(body: dict, name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}")
    return value


def _queue(body: dict) -> str:
    queue = body.get("queue")
    if not isinstance(queue, str) or not QUEUE_RE.match(queue):
        raise ValueError("queue must be a queue name (1..200 of A-Z a-z 0-9 _ . : @ -)")
    return queue


def action_arguments(body: Any) -> tuple[str, dict[str, Any]]:
    """``(action, Celery control arguments)`` of a ``POST .../control`` body; ValueError
    names what is wrong (an unknown action, a missing or bad argument, an unknown field)."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    action = body.get("action")
    allowed: dict[str, tuple[str, ...]] = {
        "shutdown": (), "pool_restart": (), "pool_grow": ("n",), "pool_shrink": ("n",),
        "autoscale": ("max", "min"), "add_consumer": ("queue",), "cancel_consumer": ("queue",)}
    if not isinstance(action, str) or action not in allowed:
        raise ValueError(f"action must be one of {', '.join(allowed)}")
    unknown = set(body) - {"action", *allowed[action]}
    if unknown:
        raise ValueError(f"unknown field(s) for {action}: {', '.join(sorted(map(str, unknown)))[:200]}")
    if action in ("pool_grow", "pool_shrink"):
        return action, {"n": _count(body, "n", 1, MAX_POOL_STEP)}
    if action == "autoscale":
        high = _count(body, "max", 1, MAX_AUTOSCALE)
        low = _count(body, "min", 0, high)
        return action, {"max": high, "min": low}
    if action in ("add_consumer", "cancel_consumer"):
        return action, {"queue": _queue(body)}
    if action == "pool_restart":
        return action, {"modules": None, "reload": False, "reloader": None}
    return action, {}


def _outcome(reply: Any) -> Any:
    """A worker's reply, or :class:`Refused` when it says ``{"error": ...}``."""
    if isinstance(reply, dict) and "error" in reply:
        raise Refused(str(reply["error"])[:500], reply)
    return reply


def control(inspector: Inspector, hostname: str, action: str, arguments: dict[str, Any],
            retries: int | None = None) -> Any:
    """Carry out ``action`` on one worker; its reply (``{"ok": text}``).

    The worker is pinged first (with the retries): an action is sent once only, never
    retried, since a late reply would otherwise grow a pool twice. ``shutdown`` gets
    no reply from Celery (the worker exits while answering).
    """
    if hostname not in inspector.broadcast("ping", {}, destination=hostname, retries=retries):
        raise NoReply(hostname)
    if action == "shutdown":
        inspector.celery.control.broadcast("shutdown", destination=[hostname], reply=False)
        inspector.forget()
        return {"ok": "shutdown requested"}
    replies = inspector.broadcast(action, arguments, destination=hostname, retries=0)
    if hostname not in replies:
        raise NoReply(hostname)
    return _outcome(replies[hostname])


# -- limits per task type -----------------------------------------------------------------------
def rate_limit_value(value: Any) -> str | None:
    """A rate Celery accepts (``"10/m"``, ``"0.5/s"``, ``"100"``), or None / ``""`` for
    no limit; ValueError for anything else (Celery's worker would refuse it, or crash on
    an unknown unit)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not RATE_RE.match(value.strip()):
        raise ValueError('rate_limit must look like "10/m", "0.5/s", "100/h" or "5" (per second)')
    rate(value.strip())
    return value.strip()


def time_limit_values(body: Any) -> dict[str, float | None]:
    """``{"soft", "hard"}`` in seconds (None: no limit); ValueError when not numbers in
    0..7 days, both absent, or soft above hard. An absent one is cleared, as Celery does."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(body) - {"soft", "hard"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    if not body:
        raise ValueError("give soft, hard or both (seconds)")
    limits: dict[str, float | None] = {}
    for name in ("soft", "hard"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value <= MAX_TIME_LIMIT):
            raise ValueError(f"{name} must be seconds in (0, {MAX_TIME_LIMIT:.0f}], or null")
        limits[name] = float(value) if value is not None else None
    if limits["soft"] is not None and limits["hard"] is not None and limits["soft"] > limits["hard"]:
        raise ValueError("soft must not exceed hard")
    return limits


def limit_task(inspector: Inspector, command: str, arguments: dict[str, Any],
               expect: int | None) -> dict[str, Any]:
    """``rate_limit`` / ``time_limit`` sent to every worker; ``{hostname: reply}``."""
    replies = inspector.broadcast(command, arguments, expect=expect)
    if not replies:
        raise NoReply("no worker answered")
    return replies


# -- what a worker says about itself ------------------------------------------------------------
def mask(value: Any, key: str = "") -> Any:
    """``value`` with secrets hidden: values under secret-looking keys, and the
    password of every URL (``redis://:pw@host`` -> ``redis://:********@host``)."""
    if key and SECRET_KEY_RE.search(key) and value not in (None, "", [], {}) \
            and not isinstance(value, (bool, int, float)):
        return MASK
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask(v) for v in value]
    if isinstance(value, str):
        return URL_PASSWORD_RE.sub(lambda m: m["head"] + MASK + m["at"], value)
    return value


def pool_of(stats: dict[str, Any]) -> dict[str, Any]:
    """``{"implementation", "max_concurrency", "processes": [pids]}`` of a ``stats`` reply."""
    pool = stats.get("pool") if isinstance(stats.get("pool"), dict) else {}
    processes = pool.get("processes")
    return {"implementation": pool.get("implementation"),
            "max_concurrency": pool.get("max-concurrency"),
            "processes": list(processes) if isinstance(processes, list) else []}


def queues_of(active_queues: Iterable[Any]) -> list[dict[str, Any]]:
    """``[{"name", "exchange", "routing_key"}]`` of an ``active_queues`` reply."""
    out = []
    for queue in active_queues or ():
        if not isinstance(queue, dict) or not isinstance(queue.get("name"), str):
            continue
        exchange = queue.get("exchange")
        out.append({"name": queue["name"],
                    "exchange": exchange.get("name") if isinstance(exchange, dict) else exchange,
                    "routing_key": queue.get("routing_key")})
    return out


def inspect_worker(inspector: Inspector, hostname: str, retries: int | None = None) -> dict[str, Any]:
    """pool, queues, registered, stats and conf of one worker (:class:`NoReply` if silent)."""
    stats = inspector.ask("stats", hostname, retries=retries).get(hostname)
    if not isinstance(stats, dict):
        raise NoReply(hostname)
    queues = inspector.ask("active_queues", hostname).get(hostname) or []
    registered = inspector.ask("registered", hostname).get(hostname) or []
    conf = inspector.ask("conf", hostname, with_defaults=False).get(hostname) or {}
    return {"pool": pool_of(stats), "queues": queues_of(queues),
            "registered": sorted(str(t).split(" ", 1)[0] for t in registered),
            "stats": mask(stats), "conf": mask(conf if isinstance(conf, dict) else {})}


def consumed_queues(inspector: Inspector, expect: int | None,
                    retries: int | None = None) -> dict[str, list[str]]:
    """``{queue: [hostnames consuming it]}`` over every worker that answers."""
    found: dict[str, list[str]] = {}
    for host, queues in sorted(inspector.ask("active_queues", expect=expect, retries=retries).items()):
        for queue in queues_of(queues if isinstance(queues, list) else []):
            found.setdefault(queue["name"], []).append(host)
    return found


# -- the broker's queue lengths -------------------------------------------------------------------
def queue_lengths(celery: Celery, names: Iterable[str]) -> dict[str, int | None]:
    """Messages waiting in each queue: a passive ``queue_declare`` (kombu's Redis transport
    sums ``LLEN`` over the queue's priority lists; RabbitMQ answers the server's count).
    An absent queue counts 0; None when the broker cannot be read."""
    names = list(names)
    try:
        with celery.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            try:
                out: dict[str, int | None] = {}
                for name in names:
                    try:
                        out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                    except conn.channel_errors:
                        out[name] = 0  # no such queue yet: nothing waits in it
                        if getattr(channel, "closed", False) or not getattr(channel, "is_open", True):
                            channel = conn.channel()  # AMQP closed it; Redis keeps it open
                return out
            finally:
                channel.close()
    except (OperationalError, OSError):
        return {name: None for name in names}


def terminate(celery: Celery, task_id: str, signal: str = "SIGTERM") -> None:
    """Revoke ``task_id`` and signal the process running it now."""
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(SIGNALS)}")
    celery.control.revoke(task_id, terminate=True, signal=signal)
