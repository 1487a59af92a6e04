"""Memory per tracked task and the longest GC pause: the bridge's state vs Flower's.

Each (implementation, size) runs in a fresh process (``python -m bench.memory
CHILD IMPL N``) fed the same events in memory, no I/O:

- ``bridge``: the bridge's processor (``bridge.processor.Processor.step``: the
  board, the operator view, the coalescer, the record pass), in batches of
  2 000; each ``task-succeeded`` comes with its job's return value as the
  bridge reads it from the result backend. The process runs the GC policy of
  ``python -m bridge`` (``gcpolicy.keep_pauses_short``).
- ``flower``: ``flower.events.EventsState`` (Celery's ``State`` plus Flower's
  metrics and search index), ``max_tasks_in_memory`` = N, fed the same events.

Each job: sent, received, started, 3 progress (with captions), succeeded.
Memory per task = RSS growth / N after a full collection (tracemalloc's count
of live Python allocations is reported too at the smaller size). GC pauses
come from ``gc.callbacks`` (start/stop of every collection while feeding),
plus one explicit full ``gc.collect()`` at the end.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import time

from bench import common, stream
from bench.common import PY

IMAGES = 3
HOST = "bench-worker@localhost"


class GcTimer:
    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._t))

    def summary(self) -> dict:
        full = [d for g, d in self.pauses if g == 2]
        return {"collections": len(self.pauses), "gen2_collections": len(full),
                "max_pause_ms": round(1000 * max((d for _, d in self.pauses), default=0), 2),
                "max_gen2_pause_ms": round(1000 * max(full, default=0), 2),
                "total_gc_ms": round(1000 * sum(d for _, d in self.pauses), 1)}


def events(n: int, with_results: bool):
    """Celery events as the receiver hands them over (envelope keys added)."""
    clock = 0
    ids = stream.new_ids(n)
    for type_, fields in stream.interleaved(ids, IMAGES, concurrent=50, with_results=with_results):
        clock += 1
        now = time.time()
        yield {"hostname": HOST, "utcoffset": 0, "pid": 4242, "clock": clock, **fields,
               "timestamp": now, "type": type_, "local_received": now}


def child(impl: str, n: int, trace: bool) -> dict:
    import tracemalloc

    import psutil

    proc = psutil.Process()
    if impl == "bridge":
        from gcpolicy import keep_pauses_short

        processor = common.processor(n)
        keep_pauses_short()  # the GC policy `python -m bridge` runs with

        def feed(batch: list[dict]) -> None:
            common.processor_step(processor, batch, time.time())

        def count() -> int:
            return len(processor.board)
    else:
        from flower.events import EventsState

        state = EventsState(max_tasks_in_memory=max(n, 1))

        def feed(batch: list[dict]) -> None:
            for e in batch:
                state.event(e)

        def count() -> int:
            return len(state.tasks)
    gc.collect()
    objects0 = len(gc.get_objects())
    timer = GcTimer()
    if trace:
        tracemalloc.start()
    base_traced = tracemalloc.get_traced_memory()[0] if trace else 0
    rss0 = proc.memory_info().rss
    gc.callbacks.append(timer)
    t0 = time.perf_counter()
    batch: list[dict] = []
    n_events = 0
    for e in events(n, with_results=impl.startswith("bridge")):
        batch.append(e)
        if len(batch) >= 2000:
            feed(batch)
            n_events += len(batch)
            batch = []
    feed(batch)
    n_events += len(batch)
    feed_secs = time.perf_counter() - t0
    gc.callbacks.remove(timer)
    t1 = time.perf_counter()
    gc.collect()
    full_ms = 1000 * (time.perf_counter() - t1)
    rss1 = proc.memory_info().rss
    traced = (tracemalloc.get_traced_memory()[0] - base_traced) if trace else None
    tasks = count()
    return {"impl": impl, "tasks": tasks, "events": n_events, "feed_secs": round(feed_secs, 2),
            "events_per_s": round(n_events / feed_secs),
            "rss_delta_mib": round((rss1 - rss0) / 2**20, 1),
            "kib_per_task_rss": round((rss1 - rss0) / tasks / 1024, 2),
            "kib_per_task_traced": round(traced / tasks / 1024, 2) if traced is not None else None,
            "full_collect_ms": round(full_ms, 1),
            "gc_tracked_per_task": round((len(gc.get_objects()) - objects0) / tasks, 2),
            **timer.summary()}


def restart(sizes: list[int], watch: float) -> dict:
    """A bridge restart with N tasks in the store: load time, and does it keep its lease?

    The real ``python -m bridge`` (default 3 s lease) starts on a store holding N
    ended jobs (written as the bridge writes them) and runs ``watch`` seconds;
    its log says how often it became active and lost the lease.
    """
    from bench import ingest
    from bench.common import Stack
    from bridge.state import Board
    from bridge.store import SnapshotStore

    out = {}
    with Stack() as stack:
        for n in sizes:
            stack.client(0).flushdb()
            records = ingest.warm_records(n)
            ingest.store_records(stack, records)
            del records
            store = SnapshotStore(stack.client(0))
            t0 = time.perf_counter()
            loaded = store.recent(n)
            t1 = time.perf_counter()
            Board(max(n, 1)).load(loaded)
            t2 = time.perf_counter()
            del loaded
            proc = stack.procs.start(f"bridge-{n}", [PY, "-m", "bridge"], stack.env)
            time.sleep(watch)
            log = proc.log()
            proc.stop()
            out[str(n)] = {"read_s": round(t1 - t0, 2), "board_load_s": round(t2 - t1, 2),
                           "lease_ttl_s": stack.settings.leader_ttl_seconds, "watch_s": watch,
                           "became_active": log.count("bridge active"),
                           "lost_lease": max(log.count("lost the leader lease"), log.count("lease taken over"))}
            print(f"  restart with {n} tasks stored: read {out[str(n)]['read_s']} s + load "
                  f"{out[str(n)]['board_load_s']} s; in {watch:.0f} s active x{out[str(n)]['became_active']}, "
                  f"lease lost x{out[str(n)]['lost_lease']}", flush=True)
    return out


def run(quick: bool = False) -> dict:
    sizes = [10_000] if quick else [10_000, 100_000]
    out: dict[str, dict] = {}
    for n in sizes:
        for impl in ("bridge", "flower"):
            res = {}
            for trace in ([False, True] if n == 10_000 and impl == "bridge" else [False]):
                argv = [PY, "-m", "bench.memory", "child", impl, str(n)] + (["--trace"] if trace else [])
                proc = subprocess.run(argv, cwd=common.ROOT, capture_output=True, text=True,
                                      timeout=600)
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr[-2000:])
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                if trace:
                    res["kib_per_task_traced"] = r["kib_per_task_traced"]
                    res["feed_secs_traced"] = r["feed_secs"]
                else:
                    res.update(r)
            out[f"{impl}@{n}"] = res
            print(f"  memory {impl:6s} {n:7d} tasks: {res['kib_per_task_rss']} KiB/task (RSS), "
                  f"max GC pause {res['max_pause_ms']} ms, full collect {res['full_collect_ms']} ms, "
                  f"{res['events_per_s']} ev/s", flush=True)
    rs = restart([10_000] if quick else [100_000], 8.0 if quick else 10.0)
    return {"results": out, "restart": rs, "images_per_job": IMAGES, "machine": common.machine_info()}


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), "--trace" in sys.argv)))
