"""What-if experiments for the proposed levers (``python -m bench.run --only whatif``).

Not part of the default suite (it would pass 10 minutes). Each runs the
shipped code and a bench-only variant side by side in the same run:

- ``web_gc_freeze``: 5 000 gevent watchers as in bench/watchers.py, the web
  process as shipped vs. the same with ``gc.freeze()`` every 5 s
  (bench/web_timed.py ``--gc-freeze``): delivery p99 and the web's GC pauses.
- ``reader_fix``: the single-stream ingest of bench/ingest.py, the bridge as
  shipped vs. the bridge with the proposed ``RedisEventReader`` drain-loop fix
  (bench/consumers.py ``--fix-reader``), next to Flower, 3 rounds.
- ``restart_renewing``: a bridge restart on 100 000 stored tasks as in
  bench/memory.py, shipped vs. renewing the lease while loading
  (bench/bridge_renewing.py).
"""
from __future__ import annotations

import json
import time

from bench import common, ingest, stream, watchers
from bench.common import PY, Stack
from bench.latency import Tap


def web_gc_freeze(n: int = 5000, seconds: float = 5.0) -> dict:
    out = {}
    with Stack() as stack:
        token = stack.add_user("bench")
        bridge = stack.start_bridge()
        tap = Tap(stack)
        tap.start()
        try:
            for label, extra in (("shipped", []), ("gc.freeze every 5 s", ["--gc-freeze", "5"])):
                web = stack.start_web(f"web-{len(out)}", argv=[PY, "-m", "bench.web_timed", *extra])
                ids = stream.new_ids(n // watchers.PER_JOB)
                jobs = stack.create_jobs("bench", ids, total=1_000_000)
                plan_all = [[ids[k // watchers.PER_JOB]] for k in range(n)]
                clients = []
                try:
                    for p in range(watchers.CLIENT_PROCS):
                        plan = stack.dir / f"whatif-{len(out)}-{p}.json"
                        plan.write_text(json.dumps({"url": web.url, "token": token,
                                                    "watchers": plan_all[p::watchers.CLIENT_PROCS]}))
                        clients.append(stack.popen([PY, "-m", "bench.sioclient", str(plan)]))
                    for c in clients:
                        common.read_json_line(c, 60)
                    time.sleep(6)  # let a freeze happen after the idle start
                    res = watchers.phase(stack, clients, ids, jobs, n, seconds, 0, web,
                                         bridge.popen.pid, tap)
                finally:
                    for c in clients:
                        common.stop_child(c)
                    web.stop()
                out[label] = {k: res[k] for k in ("connected", "delivered_pct", "delivery_ms",
                                                  "web_gc_pauses_ge_5ms", "web_gc_max_ms",
                                                  "web_rss_mib", "web_cpu_cores")}
                print(f"  what-if web {label}: p99 {res['delivery_ms']['p99']} ms, "
                      f"GC max {res['web_gc_max_ms']} ms", flush=True)
        finally:
            tap.stop()
    return out


def restart_renewing(n: int = 100_000, watch: float = 10.0) -> dict:
    out = {}
    with Stack() as stack:
        records = ingest.warm_records(n)
        for label, module in (("shipped", "bridge"), ("renew while loading", "bench.bridge_renewing")):
            stack.client(0).flushdb()
            ingest.store_records(stack, records)
            proc = stack.procs.start(f"bridge-{len(out)}", [PY, "-m", module], stack.env)
            time.sleep(watch)
            log = proc.log()
            proc.stop()
            out[label] = {"became_active": log.count("bridge active"),
                          "lost_lease": max(log.count("lost the leader lease"),
                                            log.count("lease taken over")), "watch_s": watch}
            print(f"  what-if restart {label}: active x{out[label]['became_active']}, "
                  f"lease lost x{out[label]['lost_lease']}", flush=True)
    return out


def reader_fix(rounds: int = 3, n_tasks: int = 1000) -> dict:
    out: dict[str, list] = {"bridge (shipped)": [], "bridge (reader fix)": [], "flower": []}
    with Stack() as stack:
        streams = ingest.build_streams(stack, n_tasks, 10)
        for _ in range(rounds):
            for label, kind, extra in (("bridge (shipped)", "bridge", []),
                                       ("bridge (reader fix)", "bridge", ["--fix-reader"]),
                                       ("flower", "flower", [])):
                r = ingest.trial(stack, kind, streams["single"], extra_args=extra)
                out[label].append({"rate": r["rate"], "count": r["count"], "sent": r["sent"],
                                   "warnings": r.get("warning_count", 0)})
        med = {k: common.median(t["rate"] for t in v) for k, v in out.items()}
        # one more, under py-spy: where the bridge's time goes once the reader keeps up
        path = common.OUT / "whatif-bridge-readerfix.pyspy.txt"
        common.OUT.mkdir(parents=True, exist_ok=True)
        secs = max(2.0, streams["single"]["events"] / (med["bridge (reader fix)"] or 5000) - 0.5)
        r = ingest.trial(stack, "bridge", streams["single"], extra_args=["--fix-reader"],
                         profile=path, profile_secs=secs)
        profile = {"rate_while_profiled": r["rate"], **common.pyspy_summary(path)}
        for k, v in out.items():
            print(f"  what-if ingest {k}: median {med[k]} ev/s, applied "
                  f"{[t['count'] for t in v]} of {v[0]['sent']}", flush=True)
    return {"trials": out, "median_rate": med, "profile": profile,
            "fixed_vs_flower": common.ratio(med["bridge (reader fix)"], med["flower"])}


def run(quick: bool = False) -> dict:
    return {"reader_fix": reader_fix(1 if quick else 3, 400 if quick else 1000),"web_gc_freeze": web_gc_freeze(1000 if quick else 5000),
            "restart_renewing": restart_renewing(20_000 if quick else 100_000),
            "machine": common.machine_info()}
