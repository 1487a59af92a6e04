"""Event consumers under test, one per process: ``python -m bench.consumers KIND``.

KIND:

- ``bridge``: the real :class:`bridge.service.Bridge` (receiver thread, processor,
  state machine, coalescer, Lua publish of snapshots and Socket.IO messages),
  exactly what ``python -m bridge`` runs (a subclass counts at its public
  ``step`` and ``publish``). An event counts once the publish of its batch returned.
- ``flower``: Flower 2.2.0's own consumer: ``flower.events.Events`` (a Celery
  ``EventReceiver`` thread handing each event to the tornado IOLoop, which
  applies it to ``EventsState``: Celery's ``events.state.State`` plus Flower's
  Prometheus metrics and search index). An event counts once applied.
- ``redis-raw``: a bare redis-py ``PSUBSCRIBE`` loop that only receives (the
  ceiling); events = messages x ``--per-msg``.
- ``redis-decode``: the same plus decoding each message to event dicts.

Prints one JSON line when it stops: after ``--expect`` events, or when no
event came for ``--idle`` seconds after the first, or after ``--timeout``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import threading
import time

from settings import load_settings


class Stats:
    def __init__(self, want_lag: bool) -> None:
        self.count = 0
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.cpu_first = self.cpu_last = 0.0  # process CPU seconds at the first and last count
        self.want_lag = want_lag
        self.lags: list[float] = []
        self.lock = threading.Lock()

    def first(self, t: float) -> None:
        """The first event counted (only the first call counts)."""
        if self.t_first is None:
            self.t_first, self.cpu_first = t, time.process_time()

    def last(self, t: float) -> None:
        """The latest event counted."""
        self.t_last, self.cpu_last = t, time.process_time()

    def report(self, kind: str, **extra) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        span = (self.t_last - self.t_first) if self.t_first and self.t_last else None
        out = {"kind": kind, "count": self.count, "t_first": self.t_first, "t_last": self.t_last,
               "span": span, "rate": (self.count / span) if span else None,
               "cpu": ru.ru_utime + ru.ru_stime,
               "cpu_span": self.cpu_last - self.cpu_first, "maxrss_kib": ru.ru_maxrss, **extra}
        if self.want_lag:
            from bench.common import summary

            out["lag_ms"] = summary(self.lags, 1000.0)
            step = max(1, len(self.lags) // 400)  # a lag-over-time trace, thinned
            out["lag_trace"] = [round(x, 4) for x in self.lags[::step]]
        return out


def run_bridge(args, stats: Stats) -> dict:
    from bridge import service
    from bridge.processor import Events

    class Counted(service.Bridge):
        """The bridge; an event counts once the publish of its step returned."""

        receivers: list = []
        pending: list[float] = []
        applied = 0

        def step(self, batch, metas, now, gauges):
            if stats.t_first is None and any(isinstance(i, Events) for i in batch):
                stats.first(time.time())
            out = super().step(batch, metas, now, gauges)
            self.applied += out.events
            if stats.want_lag:
                self.pending += [e.get("timestamp") or 0.0 for i in batch if isinstance(i, Events)
                                 for e in i.events]
            return out

        def publish(self, out):
            super().publish(out)
            if self.applied != stats.count:
                t = time.time()
                stats.count = self.applied
                stats.last(t)
                stats.lags.extend(t - ts for ts in self.pending)
                self.pending = []

    make = service.event_reader

    def recorded(*a, **kw):  # keep the reader the bridge makes, for its reconnect count
        reader = make(*a, **kw)
        Counted.receivers.append(reader)
        return reader
    service.event_reader = recorded
    bridge = Counted(load_settings())
    thread = threading.Thread(target=bridge.run, name="bridge", daemon=True)
    thread.start()
    wait_done(args, stats)
    bridge.stop()
    thread.join(5)
    return {"reconnects": sum(r.reconnects for r in Counted.receivers),
            "reader": type(Counted.receivers[0]).__name__ if Counted.receivers else None,
            "applied": bridge.processor.events_applied,
            "ignored": bridge.processor.board.ignored}


def run_flower(args, stats: Stats) -> dict:
    from flower.events import Events
    from tornado.ioloop import IOLoop, PeriodicCallback

    from tasks.app import make_celery

    app = make_celery(load_settings())
    loop = IOLoop.current()
    events = Events(app, loop, enable_events=False, max_tasks_in_memory=args.max_tasks)
    if args.preload:
        preload_flower(events.state, args.preload)
    orig = events.state.event

    def event(e: dict) -> None:
        orig(e)
        t = time.time()
        stats.first(t)
        stats.count += 1
        stats.last(t)
        if stats.want_lag:
            stats.lags.append(t - (e.get("timestamp") or t))

    events.state.event = event
    events.start()
    done = threading.Event()
    threading.Thread(target=lambda: (wait_done(args, stats), done.set(), loop.add_callback(loop.stop)),
                     daemon=True).start()
    PeriodicCallback(lambda: None, 200).start()
    loop.start()
    return {"tasks": len(events.state.tasks)}


def preload_flower(state, n: int) -> None:
    """``n`` ended jobs already in Flower's state (sent, received, started, succeeded)."""
    from bench import stream

    clock = 0
    keep = {"task-sent", "task-received", "task-started", "task-succeeded"}
    for type_, fields in stream.interleaved(stream.new_ids(n), 3, concurrent=50):
        if type_ not in keep:
            continue
        clock += 1
        now = time.time()
        state.event({"hostname": "bench-worker@localhost", "utcoffset": 0, "pid": 4242,
                     "clock": clock, **fields, "timestamp": now, "type": type_,
                     "local_received": now})


def run_redis(args, stats: Stats, decode: bool) -> dict:
    import redis

    from tasks import wire

    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url)
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.psubscribe(wire.pattern(settings.broker_url))
    stop = threading.Event()
    per = args.per_msg

    def loop() -> None:
        n = 0
        for msg in sub.listen():
            if msg["type"] != "pmessage":
                continue
            t = time.time()
            stats.first(t)
            if decode:
                evs = wire.decode(msg["data"])
                n += len(evs)
                if stats.want_lag:
                    stats.lags.extend(t - e["timestamp"] for e in evs)
            else:
                n += per
            stats.count = n
            stats.last(t)
            if stop.is_set():
                return
    threading.Thread(target=loop, daemon=True).start()
    wait_done(args, stats)
    stop.set()
    return {}


_replayed: list[float] = []  # when the driver said the whole stream was sent


def _watch_stdin() -> None:
    for line in sys.stdin:
        if line.strip() == "replayed":
            _replayed.append(time.monotonic())


def wait_done(args, stats: Stats) -> None:
    """Until --expect events, --idle s without news after the first, nothing at all
    --idle s after the driver's "replayed", or --timeout."""
    threading.Thread(target=_watch_stdin, daemon=True).start()
    start = time.monotonic()
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() - start < args.timeout:
        time.sleep(0.05)
        if args.expect and stats.count >= args.expect:
            return
        if stats.count != last_count:
            last_count, last_change = stats.count, time.monotonic()
        elif stats.count and time.monotonic() - last_change > args.idle:
            return
        if not stats.count and _replayed and time.monotonic() - _replayed[0] > args.idle:
            return


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["bridge", "flower", "redis-raw", "redis-decode"])
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--per-msg", type=int, default=1)
    parser.add_argument("--max-tasks", type=int, default=100_000)
    parser.add_argument("--lag", action="store_true")
    parser.add_argument("--preload", type=int, default=0, help="flower: ended jobs already held")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    stats = Stats(args.lag)
    if args.kind == "bridge":
        extra = run_bridge(args, stats)
    elif args.kind == "flower":
        extra = run_flower(args, stats)
    else:
        extra = run_redis(args, stats, decode=args.kind == "redis-decode")
    print(json.dumps(stats.report(args.kind, pid=os.getpid(), **extra)), flush=True)
    sys.stdout.flush()
    os._exit(0)  # daemon threads may sit in blocking reads


if __name__ == "__main__":
    sys.exit(main())
