"""Ingest: events per second applied without loss; bridge vs Flower vs bare redis-py.

The stream is caption jobs' events (bench/stream.py) encoded exactly as a
Celery dispatcher on Redis sends them (bench/wire.py, checked against a real
Dispatcher at the start), in two shapes:

- ``single``: one event per message (``Dispatcher.send``, what ``task.send_event``
  in a pool process does);
- ``batched``: lists of 24 events per ``task.multi`` message (a worker's
  ``buffer_group=['task']`` dispatcher with Celery's default ``buffer_limit``).

The messages are stored once in Redis (db 1) and replayed by a Lua script
(``PUBLISH`` each, 1 000 per call), so the producer costs no Python time and
always runs ahead of the consumer; the pub/sub output buffer limit is lifted
so nothing is dropped. Each consumer (bench/consumers.py) runs alone in its own
process; rounds alternate the order. Rate = events applied / (last - first
application), loss = sent - applied.

Overload: a paced producer sends fresh events at twice the bridge's measured
rate with Redis's default pub/sub limits (32 MB hard, 8 MB for 60 s), to show
loss and lag when the producer outruns the consumer.
"""
from __future__ import annotations

import time
from pathlib import Path

from bench import common, stream
from bench.common import PY, Stack
from bench.wire import Wire, self_check

REPLAY = """
local a = tonumber(ARGV[1])
local b = tonumber(ARGV[2])
local items = redis.call('LRANGE', KEYS[1], a * 2, b * 2 - 1)
for i = 1, #items, 2 do redis.call('PUBLISH', items[i], items[i + 1]) end
return #items / 2
"""
CONSUMERS = ["bridge", "flower", "redis-raw", "redis-decode"]
BATCH = 24
WARM_TASKS = 50_000  # ended jobs already held by the consumer in the warm variant


def build_streams(stack: Stack, n_tasks: int, n_images: int) -> dict:
    """Encode both shapes into db 1; returns {shape: {"key", "messages", "events"}}."""
    events = list(stream.interleaved(stream.new_ids(n_tasks), n_images, concurrent=50))
    store = stack.client(1)
    out = {}
    wire = Wire()
    single = [wire.one(t, f) for t, f in events]
    batched = [wire.multi(events[i:i + BATCH]) for i in range(0, len(events), BATCH)]
    for shape, msgs in (("single", single), ("batched", batched)):
        key = f"bench:stream:{shape}"
        store.delete(key)
        pipe = store.pipeline(transaction=False)
        for i in range(0, len(msgs), 2000):
            flat = [x for ch, data in msgs[i:i + 2000] for x in (ch, data)]
            pipe.rpush(key, *flat)
        pipe.execute()
        out[shape] = {"key": key, "messages": len(msgs), "events": len(events),
                      "per_msg": len(events) / len(msgs),
                      "bytes_per_msg": round(sum(len(d) for _, d in msgs) / len(msgs))}
    return out


def replay(stack: Stack, key: str, n_messages: int, chunk: int = 1000) -> tuple[float, float]:
    client = stack.client(1)
    script = client.register_script(REPLAY)
    t0 = time.time()
    for a in range(0, n_messages, chunk):
        script(keys=[key], args=[a, min(a + chunk, n_messages)])
    return t0, time.time()


def warm_records(n: int) -> list[dict]:
    """Store records of ``n`` ended jobs, as the bridge writes them."""
    from bridge.state import Board

    board = Board(max_tasks=n + 1)
    keep = {"task-sent", "task-received", "task-started", "task-succeeded"}
    clock = 0
    for type_, fields in stream.interleaved(stream.new_ids(n), 3, concurrent=50, with_results=True):
        if type_ in keep:
            clock += 1
            board.apply({"hostname": "bench-worker@localhost", "clock": clock, **fields,
                         "timestamp": time.time(), "type": type_}, fields.get("results"))
    return board.take_records()


def store_records(stack: Stack, records: list[dict]) -> None:
    from bridge.records import RecordWriter

    client = stack.client(0)
    writer = RecordWriter()
    for i in range(0, len(records), 5000):
        pipe = client.pipeline(transaction=False)
        for rec in records[i:i + 5000]:
            writer.put(pipe, rec)
        pipe.execute()


def trial(stack: Stack, kind: str, shape: dict, **kw) -> dict:
    """One consumer run; when it applied nothing, the consumer's warnings are kept with it."""
    res = _trial(stack, kind, shape, **kw)
    if res["count"] < shape["events"]:
        log = stack.dir / f"child-{len(stack._children) - 1}.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        warnings = [ln[:300] for ln in lines if "WARNING" in ln or "ERROR" in ln]
        if warnings:
            res["warnings"] = warnings[-5:]
            res["warning_count"] = len(warnings)
        if res["count"] == 0:
            print(f"  ingest {kind}: nothing applied: {warnings[-1:] or 'no log'}", flush=True)
    return res


def _trial(stack: Stack, kind: str, shape: dict, *, profile: Path | None = None,
           profile_secs: float = 5.0, timeout: float | None = None,
           warm: list[dict] | None = None, extra_args: list[str] | None = None) -> dict:
    if timeout is None:  # generous for >= 1 000 events/s, short when nothing arrives
        timeout = 15.0 + shape["events"] / 1000.0
    db0 = stack.client(0)
    db0.flushdb()
    common.wait_for(lambda: db0.pubsub_numpat() == 0, 10, what="previous consumer gone")
    per_msg = round(shape["per_msg"])
    extra = list(extra_args or [])
    env = None
    if warm:
        if kind == "bridge":
            store_records(stack, warm)  # the bridge loads them at start, as after a restart
            # Loading takes longer than the default 3 s lease; the bridge would lose it
            # and reload forever (see memory.py's restart check), so give it time here.
            env = {**stack.env, "LEADER_TTL_SECONDS": "60"}
        elif kind == "flower":
            extra = ["--preload", str(len(warm))]
    proc = stack.popen([PY, "-m", "bench.consumers", kind, "--expect", str(shape["events"]),
                        "--per-msg", str(per_msg), "--idle", "3", "--timeout", str(timeout),
                        *extra], env=env)
    try:
        common.wait_numpat(db0, 1, 120, proc)
        time.sleep(0.3)
        spy = common.pyspy_start(proc.pid, profile_secs, profile) if profile else None
        t0, t1 = replay(stack, shape["key"], shape["messages"])
        common.send_line(proc, "replayed")
        res = common.read_json_line(proc, timeout + 30)
        if spy is not None:
            spy.wait(profile_secs + 30)
    finally:
        common.stop_child(proc)
    res["sent"] = shape["events"]
    res["loss"] = shape["events"] - res["count"]
    res["producer_rate"] = shape["events"] / max(1e-9, t1 - t0)
    # CPU between the first and the last event applied (start-up and idle waiting left out)
    res["events_per_cpu_s"] = res["count"] / res["cpu_span"] if res.get("cpu_span") else None
    res.pop("lag_trace", None)
    return res


def overload(stack: Stack, kind: str, rate: float, seconds: float) -> dict:
    """Paced fresh events at ``rate`` for ``seconds`` under Redis's default pub/sub limits."""
    db0 = stack.client(0)
    db0.flushdb()
    common.wait_for(lambda: db0.pubsub_numpat() == 0, 10, what="previous consumer gone")
    db0.config_set("client-output-buffer-limit", "pubsub 33554432 8388608 60")
    n = int(rate * seconds)
    n_images = 20
    ids = stream.new_ids(n // (n_images + 4) + 1)
    events = list(stream.interleaved(ids, n_images, concurrent=200))[:n]
    proc = stack.popen([PY, "-m", "bench.consumers", kind, "--expect", str(n), "--idle", "4",
                        "--timeout", str(seconds + 90), "--lag"])
    try:
        common.wait_numpat(db0, 1, 60, proc)
        time.sleep(0.3)
        wire = Wire()
        pub = stack.client(0)
        t0 = time.perf_counter()
        i = 0
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            if due > i:
                pipe = pub.pipeline(transaction=False)
                for type_, fields in events[i:due]:
                    pipe.publish(*wire.one(type_, fields))
                pipe.execute()
                i = due
            else:
                time.sleep(0.002)
        sent_secs = time.perf_counter() - t0
        common.send_line(proc, "replayed")
        res = common.read_json_line(proc, seconds + 120)
    finally:
        common.stop_child(proc)
        db0.config_set("client-output-buffer-limit", "pubsub 0 0 0")
    res.update({"sent": n, "target_rate": round(rate), "achieved_send_rate": round(n / sent_secs),
                "loss": n - res["count"], "loss_pct": round(100.0 * (n - res["count"]) / n, 2)})
    return res


def processor_breakdown(stack: Stack, n_tasks: int = 1000) -> dict:
    """The bridge's processor alone, in this process, on the same kind of stream.

    The processor's pure step (``Processor.step``: board, operator view,
    coalescer, record pass; ``state``), plus the real ``Publisher.send`` Lua
    script with only the Socket.IO messages (``emits``), only the store records
    (``records``), both (``full``), and both plus the result-backend read the
    bridge makes per batch of finished caption jobs (``full+results``: one
    ``MGET``), in batches of 20 and 200 events (the bridge's batch is whatever
    queued up meanwhile). Microseconds per event.
    """
    from bridge.emitter import Publisher
    from bridge.records import RecordWriter

    client = stack.client(0)
    base = []
    clock = 0
    for type_, fields in stream.interleaved(stream.new_ids(n_tasks), 10, concurrent=50):
        clock += 1
        base.append({"hostname": "bench-worker@localhost", "utcoffset": 0, "pid": 1, "clock": clock,
                     **fields, "type": type_})
    out: dict[str, dict] = {}
    for batch in (20, 200):
        row = {}
        for mode in ("state", "emits", "records", "full", "full+results"):
            client.flushdb()
            proc = common.processor(200_000)
            pub = Publisher(client, RecordWriter())
            events = [{**e, "timestamp": time.time()} for e in base]
            t0 = time.perf_counter()
            for i in range(0, len(events), batch):
                part = events[i:i + batch]
                if mode == "full+results":  # one MGET per batch, as the bridge's look-up
                    ended = [e["uuid"] for e in part if e["type"] == "task-succeeded"]
                    if ended:
                        client.mget([f"celery-task-meta-{t}" for t in ended])
                step = common.processor_step(proc, part, time.time())
                if mode in ("emits", "full", "full+results"):
                    pub.send(step.updates, step.records if mode != "emits" else [])
                elif mode == "records":
                    pub.send([], step.records)
            row[mode] = round(1e6 * (time.perf_counter() - t0) / len(events), 1)
        out[f"batch_{batch}"] = row
    client.flushdb()
    return out


def run(quick: bool = False) -> dict:
    n_tasks, n_images = (400, 10) if quick else (1000, 10)
    rounds = 1 if quick else 3
    with Stack() as stack:
        check = self_check(stack.url)
        streams = build_streams(stack, n_tasks, n_images)
        trials: dict[str, dict[str, list]] = {s: {k: [] for k in CONSUMERS} for s in streams}
        for r in range(rounds):
            order = CONSUMERS[r % len(CONSUMERS):] + CONSUMERS[:r % len(CONSUMERS)]
            for shape in streams:
                for kind in order:
                    res = trial(stack, kind, streams[shape])
                    res["round"] = r
                    trials[shape][kind].append(res)
                    print(f"  ingest {shape:8s} {kind:13s} {res['rate'] or 0:10.0f} ev/s"
                          f"  loss {res['loss']}", flush=True)
        med = {shape: {kind: common.median(t["rate"] for t in trials[shape][kind])
                       for kind in CONSUMERS} for shape in streams}
        # Per-round ratios (same round = closest in time on a noisy machine).
        ratios = {}
        for shape in streams:
            per_round = []
            for r in range(rounds):
                by = {k: trials[shape][k][r]["rate"] for k in CONSUMERS}
                per_round.append({"vs_flower": common.ratio(by["bridge"], by["flower"]),
                                  "vs_redis_raw": common.ratio(by["bridge"], by["redis-raw"]),
                                  "vs_redis_decode": common.ratio(by["bridge"], by["redis-decode"])})
            ratios[shape] = {
                "median_vs_flower": common.median(p["vs_flower"] for p in per_round),
                "median_vs_redis_raw": common.median(p["vs_redis_raw"] for p in per_round),
                "median_vs_redis_decode": common.median(p["vs_redis_decode"] for p in per_round),
                "per_round": per_round}
        profiles = {}
        if not quick:
            for kind in ("bridge", "flower"):
                rate = med["single"][kind] or 1000
                secs = max(2.0, streams["single"]["events"] / rate - 0.5)
                path = common.OUT / f"ingest-{kind}.pyspy.txt"
                common.OUT.mkdir(parents=True, exist_ok=True)
                res = trial(stack, kind, streams["single"], profile=path, profile_secs=secs)
                profiles[kind] = {"rate_while_profiled": res["rate"],
                                  **common.pyspy_summary(path)}
                print(f"  profiled {kind}: {res['rate'] or 0:.0f} ev/s", flush=True)
        breakdown = processor_breakdown(stack, 300 if quick else 1000)
        print(f"  processor alone (us/event): {breakdown}", flush=True)
        warm = {}
        if not quick:
            records = warm_records(WARM_TASKS)
            for _round in range(1):
                for kind in ("bridge", "flower"):
                    res = trial(stack, kind, streams["single"], warm=records)
                    warm.setdefault(kind, []).append(res)
                    print(f"  ingest warm ({WARM_TASKS} tasks held) {kind:7s} {res['rate'] or 0:8.0f} ev/s"
                          f"  loss {res['loss']}", flush=True)
            del records
            warm = {"tasks_held": WARM_TASKS, "trials": warm,
                    "median_rate": {k: common.median(t["rate"] for t in v) for k, v in warm.items()}}
            warm["ratio_vs_flower"] = common.ratio(warm["median_rate"]["bridge"],
                                                   warm["median_rate"]["flower"])
        over_rate = 2.0 * (med["single"]["bridge"] or med["single"]["flower"] or 2000)
        over_secs = 4.0 if quick else 5.0
        over = {}
        for kind in ("bridge", "flower"):
            over[kind] = overload(stack, kind, over_rate, over_secs)
            o = over[kind]
            print(f"  overload {kind}: sent {o['sent']} at {o['achieved_send_rate']}/s, "
                  f"applied {o['count']}, loss {o['loss_pct']}%, lag p99 {o['lag_ms']['p99']} ms",
                  flush=True)
        return {"self_check": check, "streams": streams, "rounds": rounds,
                "median_rate": med, "ratios": ratios, "trials": trials,
                "profiles": profiles, "overload": over, "warm": warm,
                "processor_us_per_event": breakdown,
                "machine": common.machine_info(stack.url)}
