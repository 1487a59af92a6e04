"""Failover: the Redis master's host cut off mid-run, on several hosts (opt-in).

``python -m bench.run --only failover`` (root, ``ip netns``, haproxy; not in the
default run: it builds eleven network namespaces and takes a few minutes).

The cluster of the several-hosts tier (tests/hosts/cluster.py): three Redis
hosts (a server and a Sentinel each), two worker hosts, two web hosts behind
HAProxy, two bridges (active/standby) and a watcher host, every process on
``REDIS_URL=redis+sentinel://...``. Each run submits three jobs of 12 small
images (0.5 s each on the test worker; two run, one waits in the queue), has
two Socket.IO clients on the watcher host join all three, and once a job has
captioned two images takes the current master's host off the network (its
cable goes dead: no RST, the hard case). Then it measures, from that moment:

- the first ``progress_update`` a watcher receives that says more than it
  knew before the loss (a resent snapshot does not count);
- each job's ending at the watchers (first client to get it), and the last;
- jobs the broker lost (the sweeper resubmitted them: "lost before the
  sweeper") and jobs that never ended ("lost after the sweeper");
- watcher/job pairs with no ending or more than one.

Between runs the host comes back (its Redis rejoins as a replica) and the next
run cuts whichever server is master then. The sweeper runs with
``SWEEP_AFTER=10`` / ``SWEEP_SECONDS=2`` so a lost job is caught inside a run.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import common
from tests.support import wait_for

RUNS = 5
JOBS = 3
IMAGES = 12
SWEEP_ENV = {"SWEEP_AFTER": "10", "SWEEP_SECONDS": "2"}


def one_run(cluster, user: dict) -> dict:
    tids = [cluster.submit(user, IMAGES) for _ in range(JOBS)]
    watch = cluster.watch(user, tids, clients=2, timeout=120)
    watch.wait_for("progress_update", timeout=60, current=2)
    known = {t: 0 for t in tids}
    for item in watch.items():
        if item.get("task_id") in known and item.get("current"):
            known[item["task_id"]] = max(known[item["task_id"]], item["current"])
    master = cluster.master()
    cluster.h[master].cut()
    cut_at = time.time()
    try:
        wait_for(lambda: not watch.proc.alive(), 150, interval=0.2, what="the watchers to finish")
    except AssertionError:
        watch.proc.kill()
    finally:
        cluster.h[master].restore()
    items = watch.items()
    fresh = [i["t"] - cut_at for i in items if i["event"] == "progress_update" and i["t"] > cut_at
             and (i.get("current") or 0) > known.get(i.get("task_id"), 10**9)]
    endings = {t: min((i["t"] - cut_at for i in items if i["event"] in watch.ENDINGS
                       and i.get("task_id") == t), default=None) for t in tids}
    bridge_logs = cluster.procs["bridge1"].log() + cluster.procs["bridge2"].log()
    resubmitted = [t for t in tids if f"resubmitted job {t}" in bridge_logs]
    wrong = {f"{c}:{t}": v for (c, t), v in watch.endings().items() if len(v) != 1}
    wait_for(cluster.replicas_in_sync, 60, interval=0.5, what="the old master to rejoin")
    return {"master": master, "first_progress_s": round(min(fresh), 2) if fresh else None,
            "endings_s": {t: None if v is None else round(v, 2) for t, v in endings.items()},
            "all_ended_s": None if None in endings.values() else round(max(endings.values()), 2),
            "resubmitted": resubmitted, "never_ended": [t for t, v in endings.items() if v is None],
            "wrong_endings": wrong,
            "states": sorted({i["state"] for i in items if i["event"] in watch.ENDINGS})}


def run(quick: bool = False) -> dict:
    from tests.hosts.cluster import Cluster, missing_programs
    from tests.hosts.netns import unavailable_reason

    reason = unavailable_reason() or (", ".join(missing_programs()) or None)
    if reason:
        raise RuntimeError(f"the failover benchmark needs network namespaces and haproxy: {reason}")
    runs = 2 if quick else RUNS
    base = Path(tempfile.mkdtemp(prefix="skald-failover-"))
    cluster = Cluster(base, sentinel=True, env=SWEEP_ENV)
    out: list[dict] = []
    try:
        cluster.start()
        user = cluster.user("failover")
        for n in range(runs):
            out.append(one_run(cluster, user))
            print(f"[failover] run {n + 1}: {out[-1]}", flush=True)
    finally:
        cluster.close()
    firsts = [r["first_progress_s"] for r in out if r["first_progress_s"] is not None]
    alls = [r["all_ended_s"] for r in out if r["all_ended_s"] is not None]
    return {"runs": out, "n": len(out), "jobs_per_run": JOBS, "images": IMAGES,
            "first_progress_s": common.summary(firsts), "all_ended_s": common.summary(alls),
            "lost_before_sweeper": sum(len(r["resubmitted"]) + len(r["never_ended"]) for r in out),
            "lost_after_sweeper": sum(len(r["never_ended"]) for r in out),
            "wrong_endings": sum(len(r["wrong_endings"]) for r in out),
            "watchers": 2, "logs": str(base / "logs"), "machine": common.machine_info()}


def section(x: dict) -> str:
    """This benchmark's part of bench/RESULTS.md (bench/report.py's per-module hook)."""
    from bench.report import dated, f

    L = dated("Failover: the Redis master's host cut off (several hosts, opt-in)", x)
    L.append(f"{x['n']} runs on eleven network namespaces (tests/hosts/): each run {x['jobs_per_run']} jobs "
             f"of {x['images']} images watched by {x['watchers']} Socket.IO clients through HAProxy; the "
             "current master's host is cut off (no RST) once a job has two captions; sentinels "
             "`down-after-milliseconds 1000`. Times are from the cut.")
    L.append("")
    L.append("| from the master's loss to | n | median s | max s |")
    L.append("|---|---|---|---|")
    for name, key in (("the first progress delivered after it (news, not a resent snapshot)",
                       "first_progress_s"), ("every job's ending at the watchers", "all_ended_s")):
        m = x[key]
        L.append(f"| {name} | {f(m.get('n'))} | {f(m.get('p50'))} | {f(m.get('max'))} |")
    L.append("")
    L.append(f"Jobs lost before the sweeper (resubmitted by it, or never ended): {x['lost_before_sweeper']}; "
             f"after the sweeper (never ended): {x['lost_after_sweeper']}. Watcher/job pairs with a "
             f"missing or duplicate ending: {x['wrong_endings']}.")
    L.append("")
    L.append("| run | master cut | first progress s | all ended s | resubmitted | endings |")
    L.append("|---|---|---|---|---|---|")
    for i, r in enumerate(x["runs"], 1):
        L.append(f"| {i} | {r['master']} | {f(r['first_progress_s'])} | {f(r['all_ended_s'])} | "
                 f"{len(r['resubmitted'])} | {', '.join(r['states'])} |")
    return "\n".join(L)


def targets(x: dict) -> list[tuple[str, str, bool | None]]:
    ok = x["lost_after_sweeper"] == 0 and x["wrong_endings"] == 0
    return [("Master's host cut off: every job ends, every watcher exactly once",
             f"lost after the sweeper {x['lost_after_sweeper']}, wrong endings {x['wrong_endings']}; "
             f"all ended in {x['all_ended_s'].get('p50')} s median, {x['all_ended_s'].get('max')} s max",
             ok)]
