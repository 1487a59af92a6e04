"""Watchers: concurrent websocket watchers on one web process, delivery p99 and RSS.

One web process per async mode, the real bridge, and 4 client processes
(bench/sioclient.py: python-socketio ``AsyncClient`` over aiohttp, websocket
transport). Every watcher authenticates with a token (one user,
``CONNECTIONS_PER_USER`` lifted) and joins one job's room, 10 watchers per job.
At 1 000, 2 000 and 5 000 watchers, bench/producer.py sends one
``task-progress`` per watched job per second (so each watcher gets about one
update a second) for a few seconds; delivery latency = receipt - the event's
send time, and bridge emit -> receipt from a tap on the Socket.IO channel.

Modes: ``gevent`` (what ``python -m web serve`` runs) and ``threading``
(``WEB_ASYNC_MODE=threading``: Werkzeug's threaded server with OS threads;
``python -m web serve`` itself always monkey-patches with gevent, so its
"threading" would run on greenlets). Both run through bench/web_timed.py, which
is ``python -m web serve`` plus a log of the web process's GC pauses. A size
whose watchers cannot all connect within 45 s is reported as such, and the
larger sizes are skipped.
"""
from __future__ import annotations

import json
import subprocess
import time

from bench import common, stream
from bench.common import PY, Stack
from bench.latency import Tap

CLIENT_PROCS = 4
PER_JOB = 10
RAMP_TIMEOUT = 45  # s to connect one size's new watchers


def gc_pauses(web, t0: float, t1: float) -> list[tuple[int, float]]:
    """The web process's GC pauses (generation, ms) logged between t0 and t1."""
    out = []
    for line in web.log().splitlines():
        if line.startswith("BENCH_GC "):
            _, t, gen, ms = line.split()
            if t0 <= float(t) <= t1:
                out.append((int(gen), float(ms)))
    return out


def phase(stack: Stack, clients: list, ids: list[str], jobs: list[int], n: int, seconds: float,
          start_current: int, web, bridge_pid: int, tap: Tap, profile=None) -> dict:
    web_pid = web.popen.pid
    # connect up to n watchers (n / CLIENT_PROCS per client process, in parallel)
    t0 = time.perf_counter()
    for c in clients:
        common.send_line(c, f"grow {n // CLIENT_PROCS} {RAMP_TIMEOUT}")
    grown = [common.read_json_line(c, 600) for c in clients]
    ramp = time.perf_counter() - t0
    connected = sum(g["connected"] for g in grown)
    errors: dict[str, int] = {}
    for g in grown:
        for k, v in g.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
    time.sleep(1.0)
    for c in clients:  # drop what the joins sent
        common.send_line(c, "dump")
        common.read_json_line(c, 60)
    n_jobs = n // PER_JOB
    spec = stack.dir / f"ticks-{n}-{web_pid}.json"
    spec.write_text(json.dumps({"mode": "wire", "ticks": True, "task_ids": ids[:n_jobs],
                                "job_ids": jobs[:n_jobs], "per_second": 1, "seconds": seconds,
                                "start": start_current}))
    producer = stack.popen([PY, "-m", "bench.producer", str(spec)])
    try:
        common.read_json_line(producer, 60)
        rss0 = common.rss_bytes(web_pid)
        cpu0 = (common.cpu_seconds(web_pid), common.cpu_seconds(bridge_pid),
                sum(common.cpu_seconds(c.pid) for c in clients))
        spy = common.pyspy_start(web_pid, seconds, profile) if profile else None
        w0 = time.time()
        common.send_line(producer, "go")
        sent = common.read_json_line(producer, seconds + 60)
        time.sleep(1.5)
        elapsed = time.time() - w0
        cpu = (round((common.cpu_seconds(web_pid) - cpu0[0]) / elapsed, 2),
               round((common.cpu_seconds(bridge_pid) - cpu0[1]) / elapsed, 2),
               round((sum(common.cpu_seconds(c.pid) for c in clients) - cpu0[2]) / elapsed, 2))
        w1 = time.time()
        rss = common.rss_bytes(web_pid)
        if spy is not None:
            try:
                spy.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
    finally:
        common.stop_child(producer)
    receipts, alive = [], 0
    for c in clients:
        common.send_line(c, "dump")
        d = common.read_json_line(c, 120)
        receipts.extend(d["r"])
        alive += d["connected"]
    lat, from_emit = [], []
    for code, task_id, _cur, updated, t_recv in receipts:
        if code != 0 or not isinstance(updated, (int, float)) or updated < sent["t0"] - 0.5:
            continue
        lat.append(t_recv - updated)
        t_emit = tap.emits.get(("progress_update", task_id, updated))
        if t_emit is not None:
            from_emit.append(t_recv - t_emit)
    expected = connected * int(seconds)
    pauses = gc_pauses(web, w0, w1)
    return {"watchers": n, "connected": connected, "alive_after": alive, "errors": errors,
            "ramp_s": round(ramp, 1), "connects_per_s": round(connected / ramp, 1) if ramp else None,
            "deliveries": len(lat), "expected": expected,
            "delivered_pct": round(100.0 * len(lat) / expected, 1) if expected else None,
            "delivery_ms": common.summary(lat, 1000.0),
            "emit_to_receipt_ms": common.summary(from_emit, 1000.0),
            "web_rss_mib": round(rss / 2**20, 1), "web_rss_before_mib": round(rss0 / 2**20, 1),
            "web_cpu_cores": cpu[0], "bridge_cpu_cores": cpu[1], "clients_cpu_cores": cpu[2],
            "web_gc_pauses_ge_5ms": len(pauses),
            "web_gc_max_ms": max((ms for _, ms in pauses), default=0.0),
            "sent_rate": round(sent["rate"]),
            "web_profile": common.pyspy_summary(profile) if profile else None}


def run_mode(stack: Stack, mode: str, token: str, sizes: list[int], seconds: float,
             bridge_pid: int, tap: Tap) -> dict:
    if mode == "gevent":
        web = stack.start_web(f"web-{mode}", argv=[PY, "-m", "bench.web_timed"])
    else:
        web = stack.start_web(f"web-{mode}", env={"WEB_ASYNC_MODE": "threading"},
                              argv=[PY, "-m", "bench.web_timed", "--threading"])
    web_pid = web.popen.pid
    idle_rss = common.rss_bytes(web_pid)
    n_max = max(sizes)
    ids = stream.new_ids(n_max // PER_JOB)
    jobs = stack.create_jobs("bench", ids, total=1_000_000)
    watchers = [[ids[k // PER_JOB]] for k in range(n_max)]
    clients = []
    out = {"idle_rss_mib": round(idle_rss / 2**20, 1), "phases": []}
    try:
        for p in range(CLIENT_PROCS):
            plan = stack.dir / f"watchers-{mode}-{p}.json"
            plan.write_text(json.dumps({"url": web.url, "token": token,
                                        "watchers": watchers[p::CLIENT_PROCS]}))
            clients.append(stack.popen([PY, "-m", "bench.sioclient", str(plan)]))
        for c in clients:
            common.read_json_line(c, 60)
        for i, n in enumerate(sizes):
            res = phase(stack, clients, ids, jobs, n, seconds, 1000 * i, web, bridge_pid, tap)
            if n >= 5000 and mode == "gevent" and res["connected"] == n:
                # The profile comes from one more window with the same watchers: py-spy takes
                # CPU from the same two cores, so the measured window runs without it. (It
                # cannot keep up with thousands of OS threads: gevent only.)
                prof = common.OUT / f"watchers-{mode}-{n}.pyspy.txt"
                res["web_profile"] = phase(stack, clients, ids, jobs, n, seconds, 1000 * (i + 1),
                                           web, bridge_pid, tap, prof)["web_profile"]
            out["phases"].append(res)
            print(f"  watchers {mode:9s} {n:5d}: connected {res['connected']} "
                  f"({res['connects_per_s']}/s), delivered {res['delivered_pct']}%, "
                  f"p50 {res['delivery_ms']['p50']} p99 {res['delivery_ms']['p99']} ms, "
                  f"RSS {res['web_rss_mib']} MiB, web CPU {res['web_cpu_cores']}, "
                  f"web GC max {res['web_gc_max_ms']} ms", flush=True)
            if res["connected"] < n:
                out["stopped"] = (f"{res['connected']:,} of {n:,} watchers connected within "
                                  f"{RAMP_TIMEOUT} s ({res['errors']}); larger sizes skipped")
                break
    finally:
        for c in clients:
            if c.poll() is None:
                try:
                    common.send_line(c, "quit")
                except OSError:
                    pass
        for c in clients:
            try:
                c.wait(15)
            except Exception:  # noqa: BLE001
                pass
            common.stop_child(c)
        web.stop()
    return out


def run(quick: bool = False) -> dict:
    sizes = [200, 1000] if quick else [1000, 2000, 5000]
    seconds = 4.0
    modes = ["gevent", "threading"]
    with Stack() as stack:
        token = stack.add_user("bench")
        bridge = stack.start_bridge()
        tap = Tap(stack)
        tap.start()
        out = {}
        try:
            for mode in modes:
                try:
                    out[mode] = run_mode(stack, mode, token, sizes, seconds, bridge.popen.pid, tap)
                except Exception as exc:  # noqa: BLE001 - a mode that falls over is a result
                    out[mode] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"  watchers {mode}: failed: {exc}", flush=True)
        finally:
            tap.stop()
        return {"modes": out, "sizes": sizes, "window_s": seconds, "per_job": PER_JOB,
                "client_processes": CLIENT_PROCS, "machine": common.machine_info(stack.url)}
