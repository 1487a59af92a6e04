"""``python -m bench.bridge_timed``: ``python -m bridge`` with timers around its steps.

The same ``bridge.__main__.main()``, run with :class:`TimedBridge`, a subclass
of ``bridge.service.Bridge`` that times its public steps (a few
``perf_counter`` calls per batch), to say where an event's time goes between
the broker and the Socket.IO channel:

- ``receive``: the event's send timestamp -> the receiver thread hands it over
  (Redis pub/sub, decoding, waiting for the GIL);
- ``queue``: handed over -> the processor's step takes it (waiting behind the batch);
- ``step``: the processor's pure step (state machine, operator view, coalescer);
- ``results_read``: the result-backend read a batch needs (caption jobs' returns);
- ``publish``: the batch's Lua script (store writes + Socket.IO messages);
- ``publish_terminal_wait``: a batch with an ending, from its step's start to
  the end of its publish; ``terminal_total``: the ending event's send -> then;
- ``batch``: events per step; ``gc``: pauses (``gc.callbacks``).

``SIGUSR1`` writes the numbers so far to ``$BENCH_BRIDGE_STATS`` (JSON) and starts
afresh; the driver does that after each level.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time

from bridge.processor import ENDING_EVENTS, Events, Output
from bridge.service import Bridge

clock = time.perf_counter
KEYS = ("receive", "queue", "step", "results_read", "publish", "publish_terminal_wait",
        "terminal_total", "batch", "gc")


def fresh() -> dict:
    return {**{k: [] for k in KEYS}, "t0": time.time()}


S = fresh()


class TimedBridge(Bridge):
    """The bridge, timing each of its steps into ``S``."""

    _step_started = 0.0
    _endings: list[float] = []  # send timestamps of the ending events of the current batch

    def enqueue_events(self, events: list[dict]) -> None:
        now = time.time()
        S["receive"].extend(now - e["timestamp"] for e in events
                            if isinstance(e, dict) and isinstance(e.get("timestamp"), (int, float)))
        super().enqueue_events(events)

    def step(self, batch, metas, now, gauges) -> Output:
        started, taken = clock(), time.monotonic()
        events = [item for item in batch if isinstance(item, Events)]
        for item in events:
            S["queue"].extend([taken - item.at] * len(item.events))
        out = super().step(batch, metas, now, gauges)
        S["step"].append(clock() - started)
        if out.events:
            S["batch"].append(out.events)
        self._step_started = started
        self._endings = [e.get("timestamp") or 0.0 for item in events for e in item.events
                         if isinstance(e, dict) and e.get("type") in ENDING_EVENTS]
        return out

    def look_up(self, ids: set[str]) -> dict[str, dict] | None:
        started = clock()
        try:
            return super().look_up(ids)
        finally:
            if ids:
                S["results_read"].append(clock() - started)

    def publish(self, out: Output) -> None:
        started = clock()
        super().publish(out)
        end = clock()
        S["publish"].append(end - started)
        if self._endings and any(u.terminal for u in out.updates):
            wall = time.time()
            S["publish_terminal_wait"].extend([end - self._step_started] * len(self._endings))
            S["terminal_total"].extend(wall - ts for ts in self._endings)
        self._endings = []


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
    out = {k: summary(old[k], 1000.0) for k in KEYS if k != "batch"}
    out["batch"] = summary(old["batch"], 1.0)
    out["secs"] = time.time() - old["t0"]
    path = os.environ.get("BENCH_BRIDGE_STATS")
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(out, fh)
        os.replace(tmp, path)


if __name__ == "__main__":
    gc.callbacks.append(_Gc())
    signal.signal(signal.SIGUSR1, dump)
    from bridge.__main__ import main

    sys.exit(main(TimedBridge))
