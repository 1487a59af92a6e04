"""Short garbage-collector pauses for long-running processes with big heaps.

A full collection walks every container object: with 5 000 websocket
connections (web) or 100 000 tracked tasks (bridge) that is a pause of
hundreds of milliseconds during which nothing is delivered (bench/RESULTS.md).
Every ``freeze_every`` seconds the objects alive so far move to the permanent
generation (``gc.freeze``), so later collections walk only what is new.
Frozen objects are still freed by reference counting; only cyclic garbage
among them waits for the unfreeze and full collection every ``full_every``
seconds (one long pause per quarter hour instead of one every few seconds).
"""
from __future__ import annotations

import gc
import logging
import threading
import time

log = logging.getLogger(__name__)


def keep_pauses_short(freeze_every: float = 5.0, full_every: float = 900.0) -> threading.Thread:
    """Start the background freezer (a thread; a greenlet under gevent's patching)."""
    def loop() -> None:
        next_full = time.monotonic() + full_every
        while True:
            time.sleep(freeze_every)
            if time.monotonic() >= next_full:
                gc.unfreeze()
                started = time.perf_counter()
                gc.collect()
                log.info("full garbage collection took %.0f ms",
                         (time.perf_counter() - started) * 1000)
                next_full = time.monotonic() + full_every
            gc.freeze()

    gc.collect()
    gc.freeze()
    thread = threading.Thread(target=loop, name="gc-freezer", daemon=True)
    thread.start()
    return thread
