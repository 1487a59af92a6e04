"""Watching another application's tasks: ``send_event`` to a token watcher's receipt,
next to celery-progress's polling delay.

The real bridge and web process (gevent) run on a private Redis. The tasks belong
to no Skald job: a "foreign" Celery app (its own name, same broker) sends their
events, as any application's task does with ``self.send_event``. Each watcher is
one python-socketio connection (bench/sioclient.py) holding only a watch token
for its one task, as another application's page would.

1. **Events** (the target): ``TASKS`` tasks each send ``task-progress`` at
   ``PER_TASK`` per second (1 000 events/s together) for a few seconds through
   one long-lived Celery ``Dispatcher`` (bench/watch.py ``produce``, its own
   process). Each task's events are 1/PER_TASK s apart, longer than the 100 ms
   coalescing window, so coalescing holds none of them back. Latency = receipt -
   the payload's ``updated_at`` (the event's own send time, set by Celery).
2. **update_state**, side by side: ``STATE_TASKS`` tasks store a ``PROGRESS``
   state the way celery-progress's ``ProgressRecorder`` does, once every
   ``STATE_EVERY`` s each (at a random phase, so a change falls anywhere between
   two polls), with the time in the meta (``at``). (a) Watched through
   Skald with tokens: the bridge reads them every ``PROGRESS_POLL_SECONDS``
   (0.5 s), latency = receipt - ``at`` (an extra field of the update).
   (b) celery-progress's own way: ``Progress(AsyncResult(id)).get_info()`` (what
   its view answers) every 500 ms per task, as its JavaScript client polls;
   delay = the first poll that shows a new ``current`` - its ``at``. This
   leaves out the HTTP round trip of its view and the browser, so it favours
   celery-progress; half its interval (250 ms) is the expected mean.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import uuid

from bench import common
from bench.common import PY, Stack

TASKS = 200          # tasks sending events
PER_TASK = 5         # events per second per task (1 000 ev/s together)
STATE_TASKS = 20     # tasks in celery-progress's style
STATE_EVERY = 2.0    # s between update_state calls of one task (rarer than any poll)
POLL_MS = 500        # celery-progress's default pollInterval
SECRET = "bench-watch-secret"
TARGET_P99_MS = 120.0  # as for caption jobs' progress (bench/latency.py)


def foreign_app(url: str):
    from celery import Celery

    return Celery("foreign", broker=url, backend=url)


# -- 1. the event producer (a process of its own) ------------------------------------------------------
def produce(spec_path: str) -> None:
    """``python -m bench.watch produce SPEC``: received + started for every task, then
    ``task-progress`` at ``rate`` per second over the tasks, paced; prints JSON lines."""
    spec = json.loads(open(spec_path).read())
    app = foreign_app(spec["url"])
    ids, rate, seconds = spec["task_ids"], spec["rate"], spec["seconds"]
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="foreign@bench", enabled=True)
        for tid in ids:
            dispatcher.send("task-received", uuid=tid, name="foreign.crunch", args="()", kwargs="{}")
            dispatcher.send("task-started", uuid=tid)
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
        total, sent, late = int(rate * seconds), 0, []
        t0 = time.time()
        while sent < total:
            due = t0 + sent / rate
            now = time.time()
            if due > now:
                time.sleep(due - now)
            else:
                late.append(now - due)
            tid = ids[sent % len(ids)]
            dispatcher.send("task-progress", uuid=tid, current=sent // len(ids) + 1, total=10_000,
                            step="crunching")
            sent += 1
        elapsed = time.time() - t0
        dispatcher.close()
    print(json.dumps({"sent": sent, "t0": t0, "rate": sent / elapsed,
                      "late_p99_ms": round(1000 * (common.pct(late, 0.99) or 0.0), 1)}), flush=True)


# -- 2. update_state, and celery-progress's poller ---------------------------------------------------------
class StateWriter(threading.Thread):
    """Stores PROGRESS metas as ProgressRecorder does, with ``at`` (the write time)."""

    def __init__(self, backend, ids: list[str], every: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.backend, self.ids, self.every, self.seconds = backend, ids, every, seconds
        self.written: dict[tuple[str, int], float] = {}

    def run(self) -> None:
        import random

        rng = random.Random(13)
        phase = {tid: rng.uniform(0, self.every) for tid in self.ids}
        t0 = time.time()
        plan = sorted((phase[tid] + k * self.every, k, tid) for tid in self.ids
                      for k in range(int(self.seconds / self.every)))
        for when, k, tid in plan:
            if t0 + when > time.time():
                time.sleep(t0 + when - time.time())
            at = time.time()
            self.backend.store_result(tid, {"pending": False, "current": k + 1, "total": 10_000,
                                            "percent": round((k + 1) / 100, 2),
                                            "description": "crunching", "at": at}, "PROGRESS")
            self.written[(tid, k + 1)] = at


def poll_like_celery_progress(app, ids: list[str], seconds: float, stop: threading.Event) -> list[float]:
    """Each task polled every POLL_MS, staggered; the delay of each new ``current`` seen."""
    from celery_progress.backend import Progress

    delays: list[float] = []
    seen: dict[str, int | None] = dict.fromkeys(ids)
    n, every = len(ids), POLL_MS / 1000.0
    t0 = time.time()
    k = 0
    while not stop.is_set() and time.time() - t0 < seconds:
        for i, tid in enumerate(ids):
            due = t0 + k * every + i * every / n
            if due > time.time():
                time.sleep(due - time.time())
            info = Progress(app.AsyncResult(tid)).get_info()
            progress = info.get("progress") or {}
            current, at = progress.get("current"), progress.get("at")
            if isinstance(current, int) and current != seen[tid] and isinstance(at, float):
                delays.append(time.time() - at)
                seen[tid] = current
        k += 1
    return delays


# -- the run ----------------------------------------------------------------------------------------------
def run(quick: bool = False) -> dict:
    import skald_watch_token

    seconds = 4.0 if quick else 8.0
    state_seconds = 6.0 if quick else 12.0
    with Stack() as stack:
        stack.env["SKALD_WATCH_SECRET"] = SECRET
        bridge = stack.start_bridge()
        # Every watcher comes from this one address here; in production each page is a
        # client of its own (and behind a proxy the per-IP cap is off: README, Security).
        web = stack.start_web(env={"UNAUTH_CONNECTIONS_PER_IP": "0"})
        app = foreign_app(stack.url)
        ids = [str(uuid.uuid4()) for _ in range(TASKS)]
        state_ids = [str(uuid.uuid4()) for _ in range(STATE_TASKS)]
        for tid in state_ids:  # they exist: a worker started them (task_track_started)
            app.backend.store_result(tid, {"pid": 1, "hostname": "foreign@bench"}, "STARTED")
        spec = stack.dir / "watch-spec.json"
        spec.write_text(json.dumps({"url": stack.url, "task_ids": ids, "rate": TASKS * PER_TASK,
                                    "seconds": seconds}))
        producer = stack.popen([PY, "-m", "bench.watch", "produce", str(spec)])
        common.read_json_line(producer, 60)
        everyone = ids + state_ids
        tokens = [skald_watch_token.mint(t, SECRET) for t in everyone]
        plan = stack.dir / "watch-plan.json"
        plan.write_text(json.dumps({"url": web.url, "watchers": [[t] for t in everyone],
                                    "watch_tokens": tokens}))
        client = stack.popen([PY, "-m", "bench.sioclient", str(plan)])
        try:
            common.read_json_line(client, 30)
            common.send_line(client, f"grow {len(everyone)}")
            grown = common.read_json_line(client, 300)
            if grown["connected"] != len(everyone):
                raise RuntimeError(f"token watchers did not all join: {grown}")
            cpu0 = {"bridge": common.cpu_seconds(bridge.popen.pid),
                    "web": common.cpu_seconds(web.popen.pid)}
            w0 = time.time()
            common.send_line(producer, "go")
            sent = common.read_json_line(producer, seconds + 120)
            cpu = {k: round((common.cpu_seconds(p) - cpu0[k]) / (time.time() - w0), 2)
                   for k, p in (("bridge", bridge.popen.pid), ("web", web.popen.pid))}
            time.sleep(1.0)
            common.send_line(client, "dump")
            events_rows = common.read_json_line(client, 60)["r"]
            # 2. update_state: Skald's token watchers and celery-progress's poller, side by side
            writer = StateWriter(app.backend, state_ids, STATE_EVERY, state_seconds)
            stop = threading.Event()
            polled: list[float] = []
            poller = threading.Thread(target=lambda: polled.extend(
                poll_like_celery_progress(app, state_ids, state_seconds + 1, stop)), daemon=True)
            writer.start()
            poller.start()
            writer.join(state_seconds + 30)
            time.sleep(1.5)
            stop.set()
            poller.join(10)
            common.send_line(client, "dump")
            state_rows = common.read_json_line(client, 60)["r"]
        finally:
            if client.poll() is None:
                common.send_line(client, "quit")
            common.stop_child(client)
            common.stop_child(producer)
        event_ids = set(ids)
        ev_lat = [r[4] - r[3] for r in events_rows
                  if r[0] == 0 and r[1] in event_ids and isinstance(r[3], (int, float)) and r[3] >= sent["t0"]]
        state_lat = [r[4] - r[5] for r in state_rows if r[0] == 0 and len(r) > 5 and isinstance(r[5], float)]
        ms = 1000.0
        return {"tasks": TASKS, "per_task": PER_TASK, "rate": TASKS * PER_TASK, "seconds": seconds,
                "sent": sent["sent"], "sent_rate": round(sent["rate"]),
                "producer_late_p99_ms": sent["late_p99_ms"], "watchers": grown["connected"],
                "events_ms": common.summary(ev_lat, ms), "received_updates": len(ev_lat),
                "expected_updates": sent["sent"], "cpu_cores": cpu,
                "state_tasks": STATE_TASKS, "state_every": STATE_EVERY, "state_seconds": state_seconds,
                "poll_ms": POLL_MS, "written": len(writer.written),
                "skald_update_state_ms": common.summary(state_lat, ms),
                "celery_progress_poll_ms": common.summary(polled, ms),
                "machine": common.machine_info(stack.url)}


def section(x: dict) -> str:
    """This benchmark's part of bench/RESULTS.md (bench/report.py's per-module hook)."""
    from bench.report import dated, f

    e, s, c = x["events_ms"], x["skald_update_state_ms"], x["celery_progress_poll_ms"]
    L = dated("Watching another application's tasks (watch tokens)", x)
    L.append(f"{x['tasks']} tasks of a foreign Celery app, {x['per_task']} `task-progress` events/s each "
             f"({f(x['sent_rate'])} ev/s sent, {f(x['sent'])} events, producer late p99 "
             f"{x['producer_late_p99_ms']} ms), each watched by its own Socket.IO connection holding only "
             f"a watch token ({x['watchers']} connections including the update_state tasks'). "
             f"CPU: bridge {x['cpu_cores']['bridge']} cores, web {x['cpu_cores']['web']}.")
    L.append("")
    L.append("| path | n | p50 ms | p90 ms | p99 ms | max ms | mean ms |")
    L.append("|---|---|---|---|---|---|---|")
    rows = [("`send_event` -> token watcher (Skald, events)", e),
            (f"`update_state` -> token watcher (Skald polls every 0.5 s), {x['state_tasks']} tasks, "
             f"one change per {x['state_every']} s each", s),
            (f"`update_state` -> celery-progress's poll ({x['poll_ms']} ms, no HTTP)", c)]
    for name, m in rows:
        L.append(f"| {name} | {f(m['n'])} | {f(m['p50'])} | {f(m['p90'])} | {f(m['p99'])} | "
                 f"{f(m['max'])} | {f(m['mean'])} |")
    L.append("")
    L.append(f"Updates received by the event watchers: {f(x['received_updates'])} of {f(x['expected_updates'])} "
             f"events (each task's events are {1000 // x['per_task']} ms apart, beyond the 100 ms "
             f"coalescing window). Median ratio, celery-progress's delay to Skald's event path: "
             f"{f(common.ratio(c['p50'], e['p50'], 1))}x.")
    return "\n".join(L)


def targets(x: dict) -> list[tuple[str, str, bool | None]]:
    e, c = x["events_ms"], x["celery_progress_poll_ms"]
    p99 = e["p99"]
    return [(f"Token watcher progress p99 < {TARGET_P99_MS:.0f} ms at 1 000 ev/s (another app's tasks)",
             f"p99 {p99} ms (p50 {e['p50']}); celery-progress polling p50 {c['p50']} ms, mean {c['mean']}",
             None if p99 is None else p99 < TARGET_P99_MS)]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "produce":
        produce(sys.argv[2])
    else:
        sys.exit("usage: python -m bench.watch produce SPEC.json (or run it with python -m bench.run --only watch)")
