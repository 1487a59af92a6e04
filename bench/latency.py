"""Latency: a worker's ``send_event`` to a python-socketio watcher's receipt.

The real bridge (``python -m bridge``, coalescing on: COALESCE_MS=100) and web
process (``python -m web serve``, gevent) run on a private Redis. Jobs exist
in the database so watchers (bench/sioclient.py: 4 connections, each joined
to a quarter of the jobs' rooms) may join them. bench/producer.py plays the
workers at 100, 1 000 and 5 000 events/s for a few seconds: each job sends
``task-received``, ``task-started``, progress per image and ``task-succeeded``
over a quarter of the run, jobs staggered. Below 2 000 events/s the producer
sends as a Skald worker does (Celery's ``Dispatcher.send`` for the lifecycle
events, ``tasks.reporting.EventSender`` for progress); at 1 000 also every event through
the Dispatcher, and as pipelined bytes (bench/wire.py), to show what the
producer's own CPU costs on two shared cores; at 5 000 only the pipelined
bytes, because one Dispatcher cannot go that fast.

Latency of a receipt = receipt time - the ``updated_at`` of its payload, which
is the timestamp of the newest event it carries (set by the sender). A tap on
the ``flask-socketio`` channel splits it into event -> bridge emit and bridge
emit -> receipt.
"""
from __future__ import annotations

import json
import threading
import time

from bench import common, stream
from bench.common import PY, Stack

TERMINAL = {1, 2, 3}


class Tap(threading.Thread):
    """Records every bridge emit on the Socket.IO channel: {(event, task, updated_at): t}."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.sub = stack.client(0).pubsub(ignore_subscribe_messages=True)
        self.sub.subscribe("flask-socketio")
        self.emits: dict[tuple, float] = {}
        self.counts: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            msg = self.sub.get_message(timeout=0.2)
            if not msg or msg["type"] != "message":
                continue
            t = time.time()
            try:
                data = json.loads(msg["data"])
            except ValueError:
                continue
            if not isinstance(data, dict) or data.get("method") != "emit":
                continue
            name = data.get("event")
            self.counts[name] = self.counts.get(name, 0) + 1
            payload = data.get("data")
            if isinstance(payload, list) and payload:
                payload = payload[0]
            if isinstance(payload, dict) and "task_id" in payload:
                self.emits.setdefault((name, payload["task_id"], payload.get("updated_at")), t)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)
        self.sub.close()


NAMES = {0: "progress_update", 1: "task_completed", 2: "task_cancelled", 3: "task_error"}


def analyse(receipts: list[list], t0: float, tap: Tap | None) -> dict:
    prog, term, prog_emit, term_emit, prog_bridge, term_bridge = [], [], [], [], [], []
    for code, task_id, _current, updated, t_recv in receipts:
        if not isinstance(updated, (int, float)) or updated < t0:
            continue  # the snapshot sent on join (before the first send), not a live update
        lat = t_recv - updated
        (term if code in TERMINAL else prog).append(lat)
        if tap is not None:
            t_emit = tap.emits.get((NAMES[code], task_id, updated))
            if t_emit is not None:
                (term_emit if code in TERMINAL else prog_emit).append(t_recv - t_emit)
                (term_bridge if code in TERMINAL else prog_bridge).append(t_emit - updated)
    ms = 1000.0
    return {"progress_ms": common.summary(prog, ms), "terminal_ms": common.summary(term, ms),
            "progress_event_to_emit_ms": common.summary(prog_bridge, ms),
            "progress_emit_to_receipt_ms": common.summary(prog_emit, ms),
            "terminal_event_to_emit_ms": common.summary(term_bridge, ms),
            "terminal_emit_to_receipt_ms": common.summary(term_emit, ms)}


def bridge_stats(pid: int, path, wait: float = 5.0) -> dict | None:
    """Ask the timed bridge for its step timings since the last ask."""
    import os
    import signal

    try:
        old = path.stat().st_mtime_ns if path.exists() else 0
        os.kill(pid, signal.SIGUSR1)
        common.wait_for(lambda: path.exists() and path.stat().st_mtime_ns != old, wait, 0.02,
                        what="bridge stats")
        return json.loads(path.read_text())
    except (OSError, AssertionError, ValueError):
        return None


def level(stack: Stack, token: str, web_url: str, rate: int, seconds: float, mode: str,
          bridge_pid: int, web_pid: int, tap: Tap, profile: bool = False,
          stats_path=None) -> dict:
    events_total = int(rate * seconds)
    n_tasks = max(10, min(400, events_total // 12))
    n_images = max(1, events_total // n_tasks - 3)
    ids = stream.new_ids(n_tasks)
    jobs = stack.create_jobs("bench", ids, total=n_images)
    n_conn = 4
    plan = {"url": web_url, "token": token,
            "watchers": [ids[i::n_conn] for i in range(n_conn)]}
    plan_path = stack.dir / f"plan-{rate}-{mode}.json"
    plan_path.write_text(json.dumps(plan))
    spec_path = stack.dir / f"spec-{rate}-{mode}.json"
    spec_path.write_text(json.dumps({"mode": mode, "task_ids": ids, "job_ids": jobs,
                                     "images": n_images, "seconds": seconds,
                                     "span": seconds / 4}))
    client = stack.popen([PY, "-m", "bench.sioclient", str(plan_path)])
    producer = stack.popen([PY, "-m", "bench.producer", str(spec_path)])
    try:
        common.read_json_line(client, 30)
        common.send_line(client, f"grow {n_conn}")
        grown = common.read_json_line(client, 120)
        if grown["connected"] != n_conn:
            raise RuntimeError(f"watchers did not connect: {grown}")
        ready = common.read_json_line(producer, 60)
        cpu0 = {"bridge": common.cpu_seconds(bridge_pid), "web": common.cpu_seconds(web_pid)}
        spies = {}
        if profile:
            for name, pid in (("bridge", bridge_pid), ("web", web_pid)):
                path = common.OUT / f"latency-{rate}-{name}.pyspy.txt"
                spies[name] = (common.pyspy_start(pid, seconds, path), path)
        if stats_path is not None:
            bridge_stats(bridge_pid, stats_path)  # start afresh
        w0 = time.time()
        common.send_line(producer, "go")
        sent = common.read_json_line(producer, seconds + 120)
        cpu = {k: round((common.cpu_seconds(p) - cpu0[k]) / (time.time() - w0), 2)
               for k, p in (("bridge", bridge_pid), ("web", web_pid))}
        # wait for every job's ending (or give up after 15 s)
        got: list[list] = []
        ends: set[str] = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            common.send_line(client, "dump")
            chunk = common.read_json_line(client, 60)["r"]
            got.extend(chunk)
            ends.update(r[1] for r in chunk if r[0] in TERMINAL)
            if len(ends) >= n_tasks:
                break
            time.sleep(0.5)
        steps = bridge_stats(bridge_pid, stats_path) if stats_path is not None else None
        profiles = {}
        for name, (spy, path) in spies.items():
            if spy is not None:
                spy.wait(seconds + 30)
                profiles[name] = common.pyspy_summary(path)
    finally:
        common.send_line(client, "quit") if client.poll() is None else None
        common.stop_child(client)
        common.stop_child(producer)
    res = analyse(got, sent["t0"], tap)  # every live update is newer than the first send
    res.update({"rate": rate, "mode": mode, "seconds": seconds, "tasks": n_tasks,
                "images_per_task": n_images, "events": ready["events"],
                "sent_rate": round(sent["rate"]), "producer_late_p99_ms": sent["late_p99_ms"],
                "endings_received": len(ends), "cpu_cores": cpu, "profiles": profiles,
                "bridge_steps_ms": steps})
    return res


def run(quick: bool = False) -> dict:
    seconds = 4.0 if quick else 5.0
    levels = [(100, "worker"), (1000, "worker"), (5000, "wire")]
    if not quick:  # same rate, other producers: what the producer itself costs
        levels[2:2] = [(1000, "celery"), (1000, "wire")]
    with Stack() as stack:
        token = stack.add_user("bench")
        stats_path = stack.dir / "bridge-steps.json"
        bridge = stack.start_bridge_timed(stats_path)
        web = stack.start_web()
        tap = Tap(stack)
        tap.start()
        out = []
        try:
            for rate, mode in levels:
                res = level(stack, token, web.url, rate, seconds, mode, bridge.popen.pid,
                            web.popen.pid, tap, stats_path=stats_path)
                out.append(res)
                print(f"  latency {rate:5d}/s ({mode:6s}): progress p50 {res['progress_ms']['p50']} "
                      f"p99 {res['progress_ms']['p99']} ms; terminal p50 {res['terminal_ms']['p50']} "
                      f"p99 {res['terminal_ms']['p99']} max {res['terminal_ms']['max']} ms "
                      f"({res['endings_received']}/{res['tasks']} endings)", flush=True)
            # Profiles come from a level of their own: py-spy takes CPU from the same
            # two cores, so the levels above are measured without it.
            profiled = None if quick else level(
                stack, token, web.url, 1000, seconds, "worker", bridge.popen.pid, web.popen.pid,
                tap, profile=True, stats_path=stats_path)
        finally:
            tap.stop()
        return {"levels": out, "coalesce_ms": stack.settings.coalesce_ms,
                "profiles": profiled["profiles"] if profiled else {},
                "machine": common.machine_info(stack.url)}
