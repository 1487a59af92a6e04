"""``python -m bench.bridge_timed``: ``python -m bridge`` with timers around its steps.

The same ``bridge.__main__.main()`` and ``Bridge`` class; only wrappers are
added (a few ``perf_counter`` calls per event), to say where an event's time
goes between the broker and the Socket.IO channel:

- ``receive``: the event's send timestamp -> the receiver thread hands it over
  (Redis pub/sub, kombu, decoding, waiting for the GIL);
- ``queue``: handed over -> the processor applies it (waiting behind the batch);
- ``apply``: ``_apply_event`` (the state machine);
- ``results_read``: the result-backend read for the caption jobs a batch ends;
- ``publish``: the batch's Lua script (store writes + Socket.IO messages);
- per iteration: ``reconcile``, ``tick``, GC pauses (``gc.callbacks``).

``SIGUSR1`` writes the numbers so far to ``$BENCH_BRIDGE_STATS`` (JSON) and starts
afresh; the driver does that after each level.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time

from bridge import service
from bridge.service import Bridge
from tasks import events as ev

clock = time.perf_counter
_lock = threading.Lock()


def fresh() -> dict:
    return {"receive": [], "queue": [], "apply": [], "results_read": [], "publish": [],
            "publish_terminal_wait": [], "reconcile": [], "tick": [], "batch": [],
            "gc": [], "terminal_total": [], "t0": time.time()}


S = fresh()


def _stamp(event) -> None:
    if isinstance(event, dict):
        event["_bench_enq"] = clock()
        ts = event.get("timestamp")
        if isinstance(ts, (int, float)):
            S["receive"].append(time.time() - ts)


def _enqueue(orig):
    """Wraps ``_enqueue_events(list)``: each event is stamped as the receiver hands it over."""
    def wrapped(self, events, *a, **kw):
        for event in events:
            _stamp(event)
        return orig(self, events, *a, **kw)
    return wrapped


_pending_terminal: list[tuple[float, float]] = []  # (applied perf time, event timestamp)
_batch = [0]


def _apply(orig):
    def wrapped(self, event, *a, **kw):
        t = clock()
        enq = event.pop("_bench_enq", None) if isinstance(event, dict) else None
        if enq is not None:
            S["queue"].append(t - enq)
        out = orig(self, event, *a, **kw)
        S["apply"].append(clock() - t)
        _batch[0] += 1
        if isinstance(event, dict) and event.get("type") in (ev.TASK_SUCCEEDED, ev.TASK_FAILED,
                                                             ev.TASK_REVOKED, ev.TASK_CANCELLED):
            _pending_terminal.append((clock(), event.get("timestamp") or 0.0))
        return out
    return wrapped


def _results(orig):
    def wrapped(*a, **kw):
        t = clock()
        try:
            return orig(*a, **kw)
        finally:
            S["results_read"].append(clock() - t)
    return wrapped


def _publish(orig):
    def wrapped(self, *a, **kw):
        t = clock()
        out = orig(self, *a, **kw)
        end = clock()
        S["publish"].append(end - t)
        if _batch[0]:
            S["batch"].append(_batch[0])
            _batch[0] = 0
        if _pending_terminal:
            wall = time.time()
            for applied, ts in _pending_terminal:
                S["publish_terminal_wait"].append(end - applied)
                S["terminal_total"].append(wall - ts)
            _pending_terminal.clear()
        return out
    return wrapped


def _timed(key, orig):
    def wrapped(self, *a, **kw):
        t = clock()
        try:
            return orig(self, *a, **kw)
        finally:
            S[key].append(clock() - t)
    return wrapped


class _Gc:
    t = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self.t = clock()
        else:
            S["gc"].append(clock() - self.t)


def dump(*_args) -> None:
    global S
    from bench.common import summary

    old, S = S, fresh()
    out = {k: summary(v, 1000.0) for k, v in old.items() if isinstance(v, list) and k != "batch"}
    out["batch"] = summary(old["batch"], 1.0)
    out["secs"] = time.time() - old["t0"]
    path = os.environ.get("BENCH_BRIDGE_STATS")
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(out, fh)
        os.replace(tmp, path)


def install() -> None:
    Bridge._enqueue_events = _enqueue(Bridge._enqueue_events)
    Bridge._apply_event = _apply(Bridge._apply_event)
    Bridge._publish = _publish(Bridge._publish)
    Bridge._reconcile = _timed("reconcile", Bridge._reconcile)
    Bridge._tick = _timed("tick", Bridge._tick)
    service.reconcile.caption_results = _results(service.reconcile.caption_results)
    gc.callbacks.append(_Gc())
    signal.signal(signal.SIGUSR1, dump)


if __name__ == "__main__":
    install()
    from bridge.__main__ import main

    sys.exit(main())
