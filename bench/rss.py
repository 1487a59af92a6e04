"""Memory over time: does a bridge's RSS stay flat, idle and busy? (issue 16, item 11)

Two real bridges (``python -m bridge``, the GC policy it ships with) run side
by side, each on a private Redis, for ``minutes`` (10; ``--quick`` 1.5):

- ``idle``: nothing but its own work (lease, queue-length probe every 3 s,
  watcher counts every second, the metrics tick every second): garbage made
  by this periodic work would show here (bench/LEVERS.md, lever 10);
- ``busy``: fed a steady stream of caption jobs' events (``RATE`` events/s,
  pipelined in the wire format of tasks/wire.py from a thread of this
  process), with ``BRIDGE_MAX_TASKS`` lowered so the board reaches its bound
  early: from then on memory should be flat too.

RSS is sampled every few seconds; the slope (MiB per minute, least squares)
is taken over the second half of the run, after warm-up (the board filling,
the first full freezes of ``gcpolicy``). Flat within noise: the target is
below 0.25 MiB/min for both.
"""
from __future__ import annotations

import threading
import time

from bench import common, stream
from bench.common import Stack
from bench.wire import Wire

RATE = 200            # events per second fed to the busy bridge
BUSY_MAX_TASKS = 500  # the busy bridge's task bound (reached after ~30 s)
TARGET_SLOPE = 0.25   # MiB per minute, both bridges


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 60.0 * sum((t - mx) * (v - my) for t, v in points) / var if var else None


def feed(stack: Stack, stop: threading.Event) -> dict:
    """Caption jobs' events at RATE per second until ``stop`` (new jobs all the time)."""
    client = stack.client(0)
    wire = Wire()
    sent, t0 = 0, time.monotonic()
    events = iter(())
    while not stop.is_set():
        due = int((time.monotonic() - t0) * RATE) - sent
        if due <= 0:
            time.sleep(0.01)
            continue
        pipe = client.pipeline(transaction=False)
        for _ in range(due):
            item = next(events, None)
            if item is None:
                events = stream.interleaved(stream.new_ids(200), 10, concurrent=20)
                item = next(events)
            pipe.publish(*wire.one(*item))
        pipe.execute()
        sent += due
    return {"sent": sent, "rate": round(sent / max(1e-9, time.monotonic() - t0))}


def run(quick: bool = False) -> dict:
    minutes = 1.5 if quick else 10.0
    every = 3.0 if quick else 10.0
    with Stack() as idle_stack, Stack() as busy_stack:
        idle = idle_stack.start_bridge("bridge-idle")
        busy = busy_stack.start_bridge("bridge-busy", env={"BRIDGE_MAX_TASKS": str(BUSY_MAX_TASKS)})
        stop = threading.Event()
        fed: dict = {}
        feeder = threading.Thread(target=lambda: fed.update(feed(busy_stack, stop)), daemon=True)
        feeder.start()
        samples: dict[str, list[tuple[float, float]]] = {"idle": [], "busy": []}
        t0 = time.monotonic()
        try:
            while (now := time.monotonic() - t0) < minutes * 60:
                for name, proc in (("idle", idle), ("busy", busy)):
                    samples[name].append((round(now, 1), round(common.rss_bytes(proc.popen.pid) / 2**20, 2)))
                time.sleep(every)
        finally:
            stop.set()
            feeder.join(10)
        out = {}
        for name, points in samples.items():
            late = [p for p in points if p[0] >= minutes * 30]
            out[name] = {"slope_mib_per_min": _round(slope(late)),
                         "first_mib": points[0][1] if points else None,
                         "last_mib": points[-1][1] if points else None,
                         "max_mib": max((v for _, v in points), default=None),
                         "samples": points}
            print(f"  rss {name}: {out[name]['first_mib']} -> {out[name]['last_mib']} MiB, slope over "
                  f"the second half {out[name]['slope_mib_per_min']} MiB/min", flush=True)
        alive = {"idle": idle.alive(), "busy": busy.alive()}
        return {"minutes": minutes, "every_s": every, "rate": RATE, "busy_max_tasks": BUSY_MAX_TASKS,
                "fed": fed, "bridges": out, "alive": alive, "target_slope": TARGET_SLOPE,
                "machine": common.machine_info(idle_stack.url)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def section(x: dict) -> str:
    """This benchmark's part of bench/RESULTS.md (bench/report.py's per-module hook)."""
    from bench.report import dated, f

    L = dated("Bridge memory over time (idle and busy)", x)
    L.append(f"Two real bridges side by side for {x['minutes']} min, RSS every {x['every_s']} s; "
             f"busy = {x['rate']} events/s of caption jobs (sent {f((x.get('fed') or {}).get('sent'))}) "
             f"with the board bounded at {x['busy_max_tasks']} tasks; slope = least squares over "
             f"the second half of the run.")
    L.append("")
    L.append("| bridge | RSS first MiB | last MiB | max MiB | slope, second half (MiB/min) | verdict |")
    L.append("|---|---|---|---|---|---|")
    for name, b in x["bridges"].items():
        ok = b["slope_mib_per_min"] is not None and b["slope_mib_per_min"] < x["target_slope"]
        L.append(f"| {name} | {f(b['first_mib'])} | {f(b['last_mib'])} | {f(b['max_mib'])} | "
                 f"{f(b['slope_mib_per_min'], 3)} | {'flat' if ok else '**growing**'} "
                 f"(target < {x['target_slope']}) |")
    return "\n".join(L)


def targets(x: dict) -> list[tuple[str, str, bool | None]]:
    """Rows for the report's summary table: (target, measured, met)."""
    rows = []
    for name, b in x["bridges"].items():
        s = b["slope_mib_per_min"]
        rows.append((f"{name.capitalize()} bridge RSS flat (< {x['target_slope']} MiB/min)",
                     f"{s} MiB/min over the second half of {x['minutes']} min "
                     f"({b['first_mib']} -> {b['last_mib']} MiB)",
                     None if s is None else s < x["target_slope"]))
    return rows
