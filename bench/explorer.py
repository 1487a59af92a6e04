"""The task explorer over 100 000 tracked tasks: page latency and the index's memory.

One stream of Celery events (received, started, then succeeded or failed; names,
workers, args and kwargs drawn from a seeded generator) goes

- through the bridge's real record path (``Processor.step`` -> ``Publisher.send`` ->
  ``RecordWriter``, the index included) into a private Redis, which the real web
  process (``python -m web serve``) then answers ``GET /api/tasks`` from;
- into Flower 2.2.0's own state (``flower.events.Events``), served by Flower's own
  HTTP server, whose ``/api/tasks`` answers the same filters (requirements-bench.txt).

Each query (filters, sort, a cursor walked a few pages deep) is timed over HTTP from
this process, sequentially, on both. Memory per task added by the index is Redis's
``used_memory`` before and after deleting the index's keys, divided by the tasks.
Run: ``python -m bench.run --only explorer`` (``--quick``: 5 000 tasks).
"""
from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from bench import common

TASKS = 100_000
QUICK_TASKS = 5_000
ROUNDS = 200            # timed requests per query (Skald); Flower gets fewer when slow
FLOWER_BUDGET_S = 30.0  # wall time Flower's rounds may take per query at most
TARGET_P99_MS = 50.0
TARGET_INDEX_KIB = 0.5
NAMES = ("reports.build", "mail.send", "thumbs.make", "skald.caption_job", "billing.charge",
         "search.reindex", "etl.load", "cache.warm")
WORKERS = tuple(f"celery@node{i}" for i in range(8))


def stream(n: int, seed: int = 42, t0: float | None = None) -> list[dict]:
    """Celery events of ``n`` tasks (about 3 each), ended, in time order."""
    rng = random.Random(seed)
    t = t0 if t0 is not None else time.time() - n * 0.01
    out: list[dict] = []
    for i in range(n):
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        t += 0.01
        name, host = rng.choice(NAMES), rng.choice(WORKERS)
        base = {"uuid": task_id, "hostname": host, "pid": 4242, "clock": 3 * i, "utcoffset": 0}
        out.append({**base, "type": "task-received", "timestamp": t, "name": name,
                    "args": f"[{rng.randint(0, 10_000)}]",
                    "kwargs": repr({"customer": f"c{rng.randint(0, 5000)}", "n": i}),
                    "retries": 0, "root_id": task_id, "eta": None, "expires": None})
        out.append({**base, "type": "task-started", "timestamp": t + 0.001})
        runtime = round(rng.expovariate(2.0), 4)
        if rng.random() < 0.1:
            out.append({**base, "type": "task-failed", "timestamp": t + 0.002 + runtime,
                        "exception": "ValueError('bad input')",
                        "traceback": "Traceback (most recent call last):\n  ...\nValueError: bad input"})
        else:
            out.append({**base, "type": "task-succeeded", "timestamp": t + 0.002 + runtime,
                        "runtime": runtime, "result": repr({"ok": True, "n": i})})
    return out


def load_skald(client, events: list[dict], max_tasks: int) -> float:
    """The events through the processor and publisher into Redis; seconds taken."""
    from bridge.emitter import Ops, Publisher
    from bridge.records import RecordWriter

    proc = common.processor(max_tasks)
    writer = RecordWriter(max_tasks=max_tasks)
    publisher = Publisher(client, writer)
    began = time.perf_counter()
    for start in range(0, len(events), 500):
        out = common.processor_step(proc, events[start:start + 500], time.time())
        extra = None
        if out.unindex:
            extra = Ops()
            for task_id, entry in out.unindex:
                writer.unindex(extra, task_id, entry)
        publisher.send([], out.records, extra=extra)
    return time.perf_counter() - began


def queries(events: list[dict]) -> list[dict]:
    """The queries timed, with Skald's and Flower's parameters for each."""
    mid = events[len(events) // 2]["timestamp"]
    needle = ast.literal_eval(events[len(events) // 3 // 3 * 3]["kwargs"])["customer"] + "'"
    fmt = time.strftime("%Y-%m-%d %H:%M", time.localtime(mid))
    fmt_end = time.strftime("%Y-%m-%d %H:%M", time.localtime(mid + 600))
    return [
        {"label": "state=FAILURE, newest received first, 50",
         "skald": {"state": "FAILURE", "limit": 50}, "flower": {"state": "FAILURE", "limit": 50, "sort_by": "-received"}},
        {"label": "name + worker, newest received first, 50",
         "skald": {"name": "mail.send", "worker": "celery@node3", "limit": 50},
         "flower": {"taskname": "mail.send", "workername": "celery@node3", "limit": 50, "sort_by": "-received"}},
        {"label": "name, sorted by runtime (longest first), 50",
         "skald": {"name": "reports.build", "sort": "runtime", "limit": 50},
         "flower": None},  # Flower's sort_by: name, received, started, state only
        {"label": "received in a 10-minute window, oldest first, 50",
         "skald": {"received_after": mid, "received_before": mid + 600, "order": "asc", "limit": 50},
         "flower": {"received_start": fmt, "received_end": fmt_end, "limit": 50, "sort_by": "received"}},
        {"label": "everything, sorted by name, 50",
         "skald": {"sort": "name", "limit": 50}, "flower": {"limit": 50, "sort_by": "name"}},
        {"label": "page 20 of state=SUCCESS (cursor / offset 950)",
         "skald": {"state": "SUCCESS", "limit": 50, "deep": 19},
         "flower": {"state": "SUCCESS", "limit": 50, "offset": 950, "sort_by": "-received"}},
        {"label": "free text: a kwarg value (q=, capped scan)",
         "skald": {"q": needle, "limit": 50}, "flower": {"search": needle, "limit": 50}},
    ]


def time_skald(session: requests.Session, url: str, params: dict, rounds: int) -> tuple[dict, int]:
    params = dict(params)
    deep = params.pop("deep", 0)
    cursor = None
    for _ in range(deep):  # walk to the page (untimed), then time that page
        page = session.get(f"{url}/api/tasks", params={**params, **({"cursor": cursor} if cursor else {})}, timeout=30).json()
        cursor = page["next_cursor"]
    if cursor:
        params["cursor"] = cursor
    lat, count = [], 0
    for _ in range(rounds):
        t = time.perf_counter()
        resp = session.get(f"{url}/api/tasks", params=params, timeout=30)
        lat.append(time.perf_counter() - t)
        assert resp.status_code == 200, resp.text[:300]
        count = len(resp.json()["tasks"])
    return common.summary(lat, 1000.0), count


def time_flower(url: str, params: dict, rounds: int) -> tuple[dict, int]:
    lat, count, began = [], 0, time.perf_counter()
    with requests.Session() as s:
        for _ in range(rounds):
            t = time.perf_counter()
            resp = s.get(f"{url}/api/tasks", params=params, timeout=120)
            lat.append(time.perf_counter() - t)
            assert resp.status_code == 200, resp.text[:300]
            count = len(resp.json())
            if time.perf_counter() - began > FLOWER_BUDGET_S and len(lat) >= 5:
                break
    return common.summary(lat, 1000.0), count


def serve_flower(spec_path: str) -> None:
    """Child process: Flower's state loaded with the stream, its HTTP server on a port."""
    from celery import Celery
    from flower.app import Flower
    from flower.events import Events
    from flower.options import options
    from tornado.ioloop import IOLoop

    spec = json.loads(Path(spec_path).read_text())
    events = stream(spec["tasks"], spec["seed"], spec["t0"])
    loop = IOLoop.current()
    capp = Celery("bench", broker="memory://")
    state = Events(capp, loop, enable_events=False, max_tasks_in_memory=spec["tasks"] + 10)
    for e in events:
        state.state.event({**e, "local_received": e["timestamp"]})
    options.port, options.address = spec["port"], "127.0.0.1"
    app = Flower(options=options, capp=capp, events=state, io_loop=loop)
    app.start_http_server()
    print(json.dumps({"ready": True, "tasks": len(state.state.tasks)}), flush=True)
    loop.start()


def index_bytes(client) -> tuple[int, int]:
    """(used_memory with the index, without it): the index keys are deleted."""
    before = client.info("memory")["used_memory"]
    keys = list(client.scan_iter("skald:ix:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i:i + 500])
    time.sleep(0.2)
    return before, client.info("memory")["used_memory"]


def run(quick: bool = False) -> dict:
    n = QUICK_TASKS if quick else TASKS
    rounds = 30 if quick else ROUNDS
    t0 = time.time() - n * 0.01 - 60
    events = stream(n, 42, t0)
    out: dict = {"tasks": n, "events": len(events), "rounds": rounds, "queries": []}
    with common.Stack(quick=quick) as stack:
        client = stack.client()
        base_memory = client.info("memory")["used_memory"]
        out["load_s"] = round(load_skald(client, events, max(n, 100_000)), 1)
        out["records"] = client.zcard("skald:tasks")
        web = stack.start_web()
        token = stack.add_user("bench-admin", admin=True)
        port = common.free_port()
        spec = stack.dir / "flower.json"
        spec.write_text(json.dumps({"tasks": n, "seed": 42, "t0": t0, "port": port}))
        flower = subprocess.Popen([sys.executable, "-m", "bench.explorer", "flower", str(spec)],
                                  stdout=subprocess.PIPE, text=True, start_new_session=True,
                                  env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"})
        try:
            began = time.perf_counter()
            ready = common.read_json_line(flower, timeout=900)
            out["flower_load_s"] = round(time.perf_counter() - began, 1)
            out["flower_tasks"] = ready.get("tasks")
            flower_url = f"http://127.0.0.1:{port}"
            with requests.Session() as s:
                s.headers["Authorization"] = f"Bearer {token}"
                for q in queries(events):
                    sk, sk_n = time_skald(s, web.url, q["skald"], rounds)
                    fl, fl_n = (time_flower(flower_url, q["flower"], max(5, rounds // 4))
                                if q["flower"] is not None else (None, None))
                    out["queries"].append({"label": q["label"], "skald_ms": sk, "skald_rows": sk_n,
                                           "flower_ms": fl, "flower_rows": fl_n})
                    print(f"[explorer] {q['label']}: skald p99 {sk['p99']} ms ({sk_n} rows), "
                          f"flower p99 {fl and fl['p99']} ms ({fl_n} rows)", flush=True)
        finally:
            common.stop_child(flower)
        with_index, without = index_bytes(client)
        out["used_memory"] = {"empty": base_memory, "with_index": with_index, "without_index": without}
        out["index_bytes_per_task"] = round((with_index - without) / n, 1)
        out["record_bytes_per_task"] = round((without - base_memory) / n, 1)
        out["machine"] = common.machine_info(stack.url)
    return out


def section(x: dict) -> str:
    """This benchmark's part of bench/RESULTS.md (bench/report.py's per-module hook)."""
    from bench.report import dated, f

    L = dated("Task explorer: a filtered, sorted page over tracked tasks", x)
    L.append(f"{x['tasks']:,} ended tasks ({x['events']:,} events: received, started, succeeded or "
             f"failed; 8 names, 8 workers, args and kwargs) written through the bridge's record path "
             f"(`Processor.step` -> `Publisher.send`, index included) in {x['load_s']} s, and loaded "
             f"into Flower 2.2.0's state in {x.get('flower_load_s')} s ({x.get('flower_tasks')} tasks). "
             f"Each query timed over HTTP, one at a time: Skald's web process (`GET /api/tasks`, "
             f"{x['rounds']} rounds) and Flower's `/api/tasks` (fewer rounds when slow).")
    L.append("")
    L.append("| query | Skald p50 / p99 ms | rows | Flower p50 / p99 ms | rows |")
    L.append("|---|---|---|---|---|")
    for q in x["queries"]:
        s, fl = q["skald_ms"], q["flower_ms"]
        flower = (f"{f(fl['p50'])} / {f(fl['p99'])} | {q['flower_rows']}" if fl
                  else "cannot sort by runtime | –")
        L.append(f"| {q['label']} | {f(s['p50'])} / {f(s['p99'])} | {q['skald_rows']} | {flower} |")
    L.append("")
    L.append(f"Redis memory the index adds: {f(x['index_bytes_per_task'])} bytes per task "
             f"({f(x['index_bytes_per_task'] / 1024, 2)} KiB; `used_memory` with and without the "
             f"`skald:ix:*` keys); the records themselves take {f(x['record_bytes_per_task'])} bytes per "
             f"task. Free text (`q`) looks at most 2 000 candidates per request (`truncated` and a "
             f"cursor to go on), so its page may hold fewer rows than Flower's full scan finds.")
    return "\n".join(L)


def targets(x: dict) -> list[tuple[str, str, bool | None]]:
    indexed = [q for q in x["queries"] if not q["label"].startswith("free text")]
    worst = max((q["skald_ms"]["p99"] for q in indexed), default=None)
    kib = x["index_bytes_per_task"] / 1024
    return [(f"Explorer page p99 < {TARGET_P99_MS:.0f} ms over {x['tasks']:,} tasks (filtered, sorted)",
             f"worst p99 {worst} ms over {len(indexed)} queries",
             None if worst is None else worst < TARGET_P99_MS),
            (f"Index memory < {TARGET_INDEX_KIB} KiB per task",
             f"{kib:.2f} KiB ({x['index_bytes_per_task']} bytes)", kib < TARGET_INDEX_KIB)]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "flower":
        serve_flower(sys.argv[2])
    else:
        sys.exit("usage: python -m bench.run --only explorer")
