"""Writes bench/RESULTS.md from the raw results in bench/out/*.json.

The sections of the first benchmarks are rendered here; any other benchmark of
``bench.run.ORDER`` renders its own: its module's ``section(data) -> str``
(and, for the summary table, ``targets(data) -> [(target, measured, met)]``).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from bench.common import BENCH, OUT

RESULTS = BENCH / "RESULTS.md"


BUILT_IN = ("ingest", "latency", "watchers", "memory", "cancel", "overhead")


def _modules() -> list[str]:
    """Every benchmark, in the order ``bench.run`` runs them."""
    from bench.run import OPT_IN, ORDER

    return [*ORDER, *OPT_IN]


def _hook(name: str, attr: str):
    """A benchmark module's own renderer (``section`` or ``targets``), if it has one."""
    if name in BUILT_IN:
        return None
    return getattr(importlib.import_module(f"bench.{name}"), attr, None)


def load() -> dict[str, dict]:
    out = {}
    for name in ("run", *_modules()):
        path = OUT / f"{name}.json"
        if path.exists():
            try:
                out[name] = json.loads(path.read_text())
            except ValueError:
                pass
    return out


def f(x: Any, digits: int = 1, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}{unit}"
        return f"{x:.{digits}f}{unit}"
    if isinstance(x, int):
        return f"{x:,}{unit}"
    return f"{x}{unit}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _lt(x, limit):
    return None if x is None else x < limit


def _ge(x, limit):
    return None if x is None else x >= limit


def _level(lat: dict, rate: int, mode: str | None = None) -> dict | None:
    for lv in (lat or {}).get("levels", []):
        if lv["rate"] == rate and (mode is None or lv["mode"] == mode):
            return lv
    return None


def _phase(w: dict, mode: str, n: int) -> dict | None:
    for ph in (((w or {}).get("modes") or {}).get(mode) or {}).get("phases", []):
        if ph["watchers"] == n:
            return ph
    return None


def render(d: dict[str, dict]) -> str:
    L: list[str] = []
    add = L.append
    run = d.get("run", {})
    machine = next((d[k]["machine"] for k in ("ingest", "latency", "cancel", "overhead", "watchers",
                                               "memory") if d.get(k, {}).get("machine")), {})
    add("# Skald benchmarks")
    add("")
    add("Written by `make bench` (`python -m bench.run`) from the raw numbers in "
        "`bench/out/*.json`; every figure below comes from the run described here. The machine is "
        "shared and noisy, so each comparison runs A/B in the same run and medians and ratios are "
        "quoted. Method notes live in each module's docstring (`bench/*.py`).")
    add("")
    add(f"- **Run:** `{run.get('command', 'python -m bench.run')}` finished {run.get('finished', '?')}, "
        f"whole suite {f(run.get('seconds'))} s" + (" (**--quick smoke run: not figures to quote**)"
                                                   if run.get("quick") else ""))
    add(f"- **Machine:** {machine.get('nproc')} cores ({machine.get('cpu', '?')}), "
        f"{machine.get('mem_gib')} GiB, {machine.get('platform', '')}; load average at start "
        f"{machine.get('loadavg_at_start')}")
    add(f"- **Versions:** Python {machine.get('python')}, Celery {machine.get('celery')} "
        f"(kombu {machine.get('kombu')}), **Flower {machine.get('flower')}** (tornado "
        f"{machine.get('tornado')}), Redis server {machine.get('redis_server')} (redis-py "
        f"{machine.get('redis')}" + (f", {machine['redis_parser']}" if machine.get("redis_parser") else "")
        + ")" + (f", orjson {machine['orjson']}" if machine.get("orjson") else "") + f", python-socketio {machine.get('python-socketio')}, "
        f"Flask-SocketIO {machine.get('Flask-SocketIO')}, gevent {machine.get('gevent')}, "
        f"aiohttp {machine.get('aiohttp')} (bench clients), py-spy {machine.get('py-spy')}")
    other = [n for n in _modules()
             if n in d and (d[n].get("command") != run.get("command")
                            or d[n].get("finished", "") > run.get("finished", "~"))]
    if other:
        add(f"- Sections from another run: {', '.join(other)} (see each section's date and command).")
    add("")
    add(_targets(d))
    built_in = {"ingest": _ingest, "latency": _latency, "watchers": _watchers, "memory": _memory,
                "cancel": _cancel, "overhead": _overhead}
    for name in _modules():
        fn = built_in.get(name) or _hook(name, "section")
        data = d.get(name)
        if fn is None:
            continue
        if data is None:
            continue
        add("")
        if not data.get("ok", True):
            add(f"## {name}\n\nFailed in this run: `{data.get('error')}`")
            continue
        add(fn(data))
    add("")
    add(_levers(d))
    return "\n".join(L) + "\n"


# -- the summary ------------------------------------------------------------------------
def _targets(d: dict) -> str:
    rows = []
    ing = d.get("ingest") or {}
    r = ing.get("ratios") or {}
    mr = ing.get("median_rate") or {}
    for shape in ("single", "batched"):
        if shape not in r:
            continue
        m = mr[shape]
        trials = ing["trials"][shape]["bridge"]
        lost = sum(1 for t in trials if t["count"] < t["sent"])
        note = (f"; **the bridge lost events in {lost} of {len(trials)} rounds** (receiver "
                f"reconnected mid-burst, see Ingest)") if lost else ""
        vf = r[shape]["median_vs_flower"]
        rows.append((f"Ingest {shape} >= 4x Flower (same run)",
                     (f"{f(vf, 2)}x ({f(m['bridge'])} vs {f(m['flower'])} ev/s)" if vf is not None
                      else f"bridge: no complete round; Flower {f(m['flower'])} ev/s") + note,
                     verdict(False) if vf is None else verdict(_ge(vf, 4.0))))
        vr = r[shape]["median_vs_redis_raw"]
        rows.append((f"Ingest {shape} >= 50% of bare redis-py",
                     (f"{f(100 * vr, 0)}% of {f(m['redis-raw'])} ev/s (receive only); "
                      f"{f(100 * (r[shape]['median_vs_redis_decode'] or 0), 0)}% of "
                      f"{f(m['redis-decode'])} (receive+decode)") if vr is not None
                     else f"bridge: no complete round; ceiling {f(m['redis-raw'])} ev/s",
                     verdict(False) if vr is None else verdict(_ge(vr, 0.5))))
    lat = d.get("latency") or {}
    lv = _level(lat, 1000, "worker") or _level(lat, 1000)
    others = [x for x in (_level(lat, 1000, "celery"), _level(lat, 1000, "wire")) if x and x is not lv]

    def alt(kind: str) -> str:
        return "".join(f"; {x['mode']} producer p99 {f(x[kind]['p99'])} ms" for x in others)
    if lv:
        rows.append(("Terminal event p99 < 10 ms at 1 000 ev/s",
                     f"p99 {f(lv['terminal_ms']['p99'])} ms (p50 {f(lv['terminal_ms']['p50'])}, "
                     f"max {f(lv['terminal_ms']['max'])}; producer: {lv['mode']}){alt('terminal_ms')}",
                     verdict(_lt(lv["terminal_ms"]["p99"], 10))))
        rows.append(("Progress p99 < 120 ms, coalescing on (1 000 ev/s)",
                     f"p99 {f(lv['progress_ms']['p99'])} ms (p50 {f(lv['progress_ms']['p50'])})"
                     f"{alt('progress_ms')}",
                     verdict(_lt(lv["progress_ms"]["p99"], 120))))
    for rate in (100, 5000):
        lv = _level(lat, rate)
        if lv:
            rows.append((f"Progress p99 < 120 ms / terminal p99 at {rate:,} ev/s",
                         f"progress p99 {f(lv['progress_ms']['p99'])} ms; terminal p99 "
                         f"{f(lv['terminal_ms']['p99'])} ms",
                         verdict(_lt(lv["progress_ms"]["p99"], 120))))
    w = d.get("watchers") or {}
    # The target is for the web process Skald runs (gevent); threading is measured beside it.
    for mode, label in (("gevent", "gevent, the shipped mode"), ("threading", "threading, for comparison")):
        ph = _phase(w, mode, 5000)
        err = (((w.get("modes") or {}).get(mode)) or {}).get("error")
        judge = verdict if mode == "gevent" else (lambda ok: "met" if ok else "would miss")
        if ph:
            ok = ph["connected"] >= 5000 and ph["delivery_ms"]["p99"] is not None \
                and ph["delivery_ms"]["p99"] < 250 and (ph["delivered_pct"] or 0) >= 99.9
            rows.append((f"5 000 watchers, delivery p99 < 250 ms ({label})",
                         f"{ph['connected']:,} connected, {f(ph['delivered_pct'])}% delivered, "
                         f"p99 {f(ph['delivery_ms']['p99'])} ms, RSS {f(ph['web_rss_mib'])} MiB",
                         judge(ok)))
        elif w and not w.get("quick"):
            rows.append((f"5 000 watchers, delivery p99 < 250 ms ({label})",
                         f"did not reach 5 000: {err or (w['modes'].get(mode) or {}).get('stopped')}",
                         judge(False)))
    mem = (d.get("memory") or {}).get("results") or {}
    b, fl = mem.get("bridge@100000"), mem.get("flower@100000")
    if b:
        rows.append(("< 1.5 KiB per tracked task at 100 000",
                     f"{f(b['kib_per_task_rss'], 2)} KiB (Flower {f((fl or {}).get('kib_per_task_rss'), 2)})",
                     verdict(_lt(b["kib_per_task_rss"], 1.5))))
        rows.append(("GC pauses < 50 ms at 100 000 tasks",
                     f"longest {f(b['max_pause_ms'])} ms, full collect {f(b['full_collect_ms'])} ms "
                     f"(Flower {f((fl or {}).get('max_pause_ms'))} / {f((fl or {}).get('full_collect_ms'))} ms)",
                     verdict(_lt(max(b["max_pause_ms"], b["full_collect_ms"]), 50))))
    c = d.get("cancel") or {}
    if c.get("running"):
        s = c["running"]["latency_ms"]
        rows.append(("Cancel of a running basic job p99 < 300 ms",
                     f"p99 {f(s['p99'])} ms (p50 {f(s['p50'])}, n={s['n']})", verdict(_lt(s["p99"], 300))))
        s = c["queued"]["latency_ms"]
        rows.append(("Cancel of a queued job < 200 ms",
                     f"p99 {f(s['p99'])} ms (p50 {f(s['p50'])}, n={s['n']})", verdict(_lt(s["p99"], 200))))
    o = (d.get("overhead") or {}).get("results") or {}
    for kind, res in o.items():
        if kind == "send_event_cost":
            continue
        share = res.get("median_send_event_share_pct")
        # The direct share is a lower bound on the cost, the A/B a noisy estimate of all of it:
        # the verdict takes the larger.
        worst = max(x for x in (res["overhead_pct"], share) if x is not None)
        limit = 1 if "_plus_" in kind else 5  # a real captioner's per-image cost: the 1 % rule
        rows.append((f"Progress events < {limit}% of wall time ({kind})",
                     f"A/B {f(res['overhead_pct'], 1)}%; job thread sending events {f(share, 1)}% (direct); "
                     f"({f(res['median_on_s'], 3)} s on vs {f(res['median_off_s'], 3)} s off)",
                     verdict(_lt(worst, limit))))
    for name in _modules():
        hook = _hook(name, "targets")
        data = d.get(name)
        if hook is not None and data is not None and data.get("ok", True):
            rows += [(a, b, verdict(ok)) for a, b, ok in hook(data)]
    out = ["## Targets", "", "| target | measured (this run) | verdict |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


# -- sections -------------------------------------------------------------------------------
def dated(title: str, data: dict) -> list[str]:
    return [f"## {title}", "",
            f"_{data.get('finished', '?')}, {data.get('seconds', '?')} s, `{data.get('command', '?')}`"
            + (" (quick)" if data.get("quick") else "") + "_", ""]


def _ingest(x: dict) -> str:
    L = dated("Ingest: events applied per second, no loss", x)
    s = x["streams"]
    L.append(f"Stream: {s['single']['events']:,} events of caption jobs (sent, received, started, "
             f"10 progress, succeeded), {s['single']['bytes_per_msg']} B per single-event message; "
             f"batched = {round(s['batched']['per_msg'])} events per `task.multi` message. Replayed "
             f"by a Lua script from Redis (the producer never limits), pub/sub buffer unlimited. "
             f"{x['rounds']} rounds, each consumer alone in turn; rate = applied / (last - first "
             f"application). Wire format checked against a real Celery Dispatcher: "
             f"{'identical' if x['self_check'].get('ok') else 'DIFFERENT: ' + str(x['self_check'])}.")
    L.append("")
    L.append("| consumer | single: median ev/s | rounds | loss | ev per CPU-s | batched: median ev/s | rounds | loss |")
    L.append("|---|---|---|---|---|---|---|---|")
    names = {"bridge": "Skald bridge (`Bridge`, full pipeline)",
             "flower": "Flower 2.2.0 (`flower.events.Events`)",
             "redis-raw": "bare redis-py PSUBSCRIBE, receive only (ceiling)",
             "redis-decode": "bare redis-py, receive + decode to event dicts"}
    for kind, label in names.items():
        cells = [label]
        for shape in ("single", "batched"):
            ts = x["trials"][shape][kind]
            cells.append(f(x["median_rate"][shape][kind]))
            cells.append(", ".join(f(t["rate"]) for t in ts))
            cells.append(str(sum(t["loss"] for t in ts if t["loss"] > 0)))
            if shape == "single":
                cpu = [t.get("events_per_cpu_s") for t in ts if t.get("events_per_cpu_s")]
                cells.append(f(sorted(cpu)[len(cpu) // 2]) if cpu else "n/a")
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    failed = [(shape, kind, t) for shape in ("single", "batched") for kind in names
               for t in x["trials"][shape][kind] if t.get("warnings")]
    if failed:
        L.append("")
        L.append("Consumer warnings during these trials (last one of each trial shown):")
        L.append("")
        for shape, kind, t in failed:
            L.append(f"- {shape} / {kind} / round {t.get('round')}: applied {t['count']:,} of "
                     f"{t['sent']:,}; {t.get('warning_count')} warning(s), last: `{t['warnings'][-1]}`")
    L.append("")
    r = x["ratios"]
    def x_(v):
        return "n/a" if v is None else f"{v:.2f}x"
    L.append(f"Ratios (median of per-round ratios; a round where the bridge applied nothing has no "
             f"ratio): single: bridge/Flower **{x_(r['single']['median_vs_flower'])}**, bridge/bare "
             f"**{f(100 * (r['single']['median_vs_redis_raw'] or 0), 0)}%** (vs receive+decode "
             f"{f(100 * (r['single']['median_vs_redis_decode'] or 0), 0)}%); batched: bridge/Flower "
             f"**{x_(r['batched']['median_vs_flower'])}**, bridge/bare "
             f"**{f(100 * (r['batched']['median_vs_redis_raw'] or 0), 0)}%**.")
    pb = x.get("processor_us_per_event") or {}
    if pb:
        L.append("")
        L.append("**The bridge's processor alone** (in-process, same stream, real `Publisher` Lua "
                 "script; microseconds per event; `state` = Board + coalescer + record pass, "
                 "`emits` / `records` = the script with only Socket.IO messages / only store writes, "
                 "`full+results` adds the result-backend read, one `MGET` per batch):")
        L.append("")
        modes = list(next(iter(pb.values())).keys())
        L.append("| batch | " + " | ".join(modes) + " |")
        L.append("|---|" + "---|" * len(modes))
        for b, row in pb.items():
            L.append(f"| {b.split('_')[1]} events | " + " | ".join(f(row[m]) for m in modes) + " |")
    warm = x.get("warm") or {}
    if warm.get("trials"):
        L.append("")
        L.append(f"**Warm state** (each consumer already holds {warm['tasks_held']:,} ended jobs: the "
                 "bridge loaded from its store at start, Flower's state fed before; same single stream, "
                 "one round; the bridge runs with a 60 s lease here, see the restart check):")
        L.append("")
        L.append("| consumer | median ev/s | rounds | loss |")
        L.append("|---|---|---|---|")
        for kind, ts in warm["trials"].items():
            L.append(f"| {kind} | {f(warm['median_rate'][kind])} | "
                     f"{', '.join(f(t['rate']) for t in ts)} | {sum(max(0, t['loss']) for t in ts)} |")
        L.append("")
        v = warm.get("ratio_vs_flower")
        L.append(f"Warm bridge/Flower: **{'n/a' if v is None else f'{v:.2f}x'}**.")
    over = x.get("overload") or {}
    if over:
        L.append("")
        L.append("**Producer outrunning the consumer** (fresh single events paced at twice the "
                 "bridge's rate, Redis's default `client-output-buffer-limit pubsub 32mb 8mb 60`):")
        L.append("")
        L.append("| consumer | sent | at ev/s | applied | lost | lag p50 / p99 / max (ms) | reconnects |")
        L.append("|---|---|---|---|---|---|---|")
        for kind, o in over.items():
            L.append(f"| {kind} | {o['sent']:,} | {o['achieved_send_rate']:,} | {o['count']:,} | "
                     f"{o['loss']:,} ({o['loss_pct']}%) | {f(o['lag_ms']['p50'], 0)} / "
                     f"{f(o['lag_ms']['p99'], 0)} / {f(o['lag_ms']['max'], 0)} | "
                     f"{o.get('reconnects', 'n/a')} |")
    return "\n".join(L)


def _latency(x: dict) -> str:
    L = dated("Latency: worker send_event -> watcher receipt", x)
    L.append(f"Real bridge (coalescing {x.get('coalesce_ms')} ms) and web (gevent); 4 python-socketio "
             "watchers joined to every job's room; each job's events spread over a quarter of the "
             "run. Latency = receipt - the payload's `updated_at` (the newest event's send time); "
             "the tap on `flask-socketio` splits it at the bridge's emit. `cpu` = cores used during "
             "the level.")
    L.append("")
    L.append("| rate (producer) | jobs | progress p50 / p99 / max ms | terminal p50 / p99 / max ms "
             "| terminal: event->emit p99 | emit->receipt p99 | endings | cpu bridge / web |")
    L.append("|---|---|---|---|---|---|---|---|")
    for lv in x["levels"]:
        p, t = lv["progress_ms"], lv["terminal_ms"]
        L.append(f"| {lv['rate']:,}/s ({lv['mode']}, sent {lv['sent_rate']:,}/s) | {lv['tasks']} x "
                 f"{lv['images_per_task']} img | {f(p['p50'])} / {f(p['p99'])} / {f(p['max'])} | "
                 f"{f(t['p50'])} / {f(t['p99'])} / {f(t['max'])} | "
                 f"{f(lv['terminal_event_to_emit_ms']['p99'])} | {f(lv['terminal_emit_to_receipt_ms']['p99'])} | "
                 f"{lv['endings_received']}/{lv['tasks']} | {lv['cpu_cores']['bridge']} / "
                 f"{lv['cpu_cores']['web']} |")
    L.append("")
    L.append("Inside the bridge (bench/bridge_timed.py wrappers, ms; p50 / p99 / max): `receive` = "
             "send timestamp -> handed over by the receiver thread; `queue` = waiting for the processor; "
             "`results_read` = result-backend read for the caption jobs a batch ends; `publish` = one Lua script; "
             "`terminal wait` = a terminal event's apply -> end of its batch's publish; `batch` = events "
             "per processor iteration.")
    L.append("")
    L.append("| rate | receive | queue | results_read | publish | terminal wait | terminal total | batch p50/p99/max | GC max |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for lv in x["levels"]:
        st = lv.get("bridge_steps_ms") or {}
        if not st:
            continue

        def t3(k: str, st: dict = st) -> str:
            v = st.get(k) or {}
            return f"{f(v.get('p50'))} / {f(v.get('p99'))} / {f(v.get('max'))}"
        b = st.get("batch") or {}
        L.append(f"| {lv['rate']:,}/s {lv['mode']} | {t3('receive')} | {t3('queue')} | {t3('results_read')} | "
                 f"{t3('publish')} | {t3('publish_terminal_wait')} | {t3('terminal_total')} | "
                 f"{f(b.get('p50'), 0)} / {f(b.get('p99'), 0)} / {f(b.get('max'), 0)} | "
                 f"{f((st.get('gc') or {}).get('max'))} |")
    for name, p in (x.get("profiles") or {}).items():
        if not p.get("samples"):
            continue
        L.append("")
        L.append(_pyspy_line(f"the **{name}** process at 1,000/s (worker producer; a level of its own "
                             "after the measured ones, since py-spy takes CPU from the same cores", p))
    return "\n".join(L)


def _pyspy_line(what: str, p: dict, top: int = 16) -> str:
    """One sentence for a py-spy summary: ``what`` ends in an open bracket the samples close."""
    return (f"py-spy of {what}; {p['samples']} samples), inclusive %: "
            + ", ".join(f"`{n}` {v}" for n, v in p.get("inclusive", [])[:top]))


def _watchers(x: dict) -> str:
    L = dated("Watchers on one web process", x)
    L.append(f"{x['client_processes']} client processes of python-socketio `AsyncClient`s (aiohttp, "
             f"websocket), {x['per_job']} watchers per job room, one progress per job per second for "
             f"{x.get('window_s', 4.0)} s at each size (after all its watchers connected); delivery = "
             "receipt - event send time; GC pauses from the web process's own `gc.callbacks` log.")
    L.append("")
    L.append("| mode | watchers | connected (connects/s) | delivered | delivery p50 / p99 / max ms | "
             "emit->receipt p99 | web RSS MiB | CPU cores web / clients | web GC pauses >=5 ms (max ms) |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for mode, m in (x.get("modes") or {}).items():
        if m.get("error"):
            L.append(f"| {mode} | - | failed: {m['error']} | | | | | | |")
            continue
        for ph in m.get("phases", []):
            dm = ph["delivery_ms"]
            L.append(f"| {mode} | {ph['watchers']:,} | {ph['connected']:,} ({f(ph['connects_per_s'])}) | "
                     f"{f(ph['delivered_pct'])}% | {f(dm['p50'])} / {f(dm['p99'])} / {f(dm['max'])} | "
                     f"{f(ph['emit_to_receipt_ms']['p99'])} | {f(ph['web_rss_mib'])} (idle "
                     f"{f(m['idle_rss_mib'])}) | {ph['web_cpu_cores']} / {ph.get('clients_cpu_cores')} | "
                     f"{ph.get('web_gc_pauses_ge_5ms', 'n/a')} ({f(ph.get('web_gc_max_ms'))}) |")
        if m.get("stopped"):
            L.append(f"| {mode} | | stopped: {m['stopped']} | | | | | | |")
    for mode, m in (x.get("modes") or {}).items():
        for ph in m.get("phases", []) if not m.get("error") else []:
            p = ph.get("web_profile") or {}
            if p.get("samples"):
                L.append("")
                L.append(_pyspy_line(f"the {mode} web process at {ph['watchers']:,} watchers (a window "
                                     "of its own after the measured one", p))
    return "\n".join(L)


def _memory(x: dict) -> str:
    L = dated("Memory per tracked task and GC pauses", x)
    L.append(f"Same events fed in memory to the bridge's `Board` (+ coalescer, + record pass) and to "
             f"Flower's `EventsState`; jobs of {x['images_per_job']} images, 7 events each. RSS growth "
             "after a full collection (tracemalloc's count of live allocations for the bridge at "
             "10 000 as a cross-check); pauses from `gc.callbacks`.")
    L.append("")
    L.append("| state | tasks | KiB/task (RSS) | KiB/task (tracemalloc) | GC-tracked objects/task | "
             "longest GC pause ms | gen-2 collections | full collect ms | feed ev/s |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for _key, r in x["results"].items():
        L.append(f"| {r['impl']} | {r['tasks']:,} | {f(r['kib_per_task_rss'], 2)} | "
                 f"{f(r.get('kib_per_task_traced'), 2)} | {f(r.get('gc_tracked_per_task'), 1)} | "
                 f"{f(r['max_pause_ms'])} | {r['gen2_collections']} | {f(r['full_collect_ms'])} | "
                 f"{f(r['events_per_s'])} |")
    rs = x.get("restart") or {}
    if rs:
        L.append("")
        L.append("**Bridge restart with a full store** (the real `python -m bridge`, default lease; "
                 "the store holds N ended jobs as the bridge writes them):")
        L.append("")
        L.append("| tasks stored | read from Redis s | Board.load s | lease TTL s | watched s | became active | lost the lease |")
        L.append("|---|---|---|---|---|---|---|")
        for n, r in rs.items():
            L.append(f"| {int(n):,} | {r['read_s']} | {r['board_load_s']} | {r['lease_ttl_s']} | "
                     f"{r['watch_s']} | {r['became_active']}x | {r['lost_lease']}x |")
    return "\n".join(L)


def _cancel(x: dict) -> str:
    L = dated("Cancel: cancel_task -> task_cancelled", x)
    L.append(f"Real worker (-c 1, basic captioner), bridge, web (gevent); {x['trials']} trials each. "
             f"Running: {x['running_job_images']} photo-sized JPEGs, cancelled after the first "
             f"progress. Queued: behind a 900-image job; state at cancel: "
             f"{', '.join(x.get('queued_states_at_cancel', []))}.")
    L.append("")
    L.append("| job | p50 ms | p99 ms | max ms | n | ack p50 ms |")
    L.append("|---|---|---|---|---|---|")
    for name in ("running", "queued"):
        s, a = x[name]["latency_ms"], x[name]["ack_ms"]
        L.append(f"| {name} | {f(s['p50'])} | {f(s['p99'])} | {f(s['max'])} | {s['n']} | {f(a['p50'])} |")
    return "\n".join(L)


def _overhead(x: dict) -> str:
    L = dated("Worker overhead of progress events", x)
    L.append(f"One real worker (`-c 1`) taking on and off jobs from two queues, alternating, {x['reps']} each "
             "after a warm-up pair; wall = the job's `started_at` -> `finished_at`; A/B overhead = "
             "the median over reps of on/off - 1 (each rep's two jobs ran back to back), the ratio "
             "of the medians in brackets.")
    L.append("")
    L.append("| job | median on s | median off s | A/B overhead | per progress event | time the job's "
             "thread spends sending events (direct, median) |")
    L.append("|---|---|---|---|---|---|")
    for kind, r in x["results"].items():
        if kind == "send_event_cost":
            continue
        L.append(f"| {kind} | {f(r['median_on_s'], 3)} | {f(r['median_off_s'], 3)} | "
                 f"{f(r['overhead_pct'], 1)}% ({f(r.get('overhead_of_medians_pct'), 1)}%) | "
                 f"{f(r['per_event_ms'], 2)} ms | "
                 f"{f(r.get('median_send_event_share_pct'), 1)}% of wall |")
    sc = x["results"].get("send_event_cost")
    if sc:
        L.append("")
        L.append(f"One `task-progress` in isolation: `task.send_event`'s path (a dispatcher per call) "
                 f"{sc.get('default_dispatcher_per_event')} ms; one Dispatcher reused "
                 f"{sc.get('dispatcher_reused')} ms; the same bytes with one cached redis-py client "
                 f"{sc.get('redis_publish_same_bytes')} ms.")
    return "\n".join(L)


def _share(profile: dict, needle: str, kind: str = "inclusive") -> float | None:
    for name, pct in (profile or {}).get(kind, []):
        if needle in name:
            return pct
    return None


def _levers(d: dict) -> str:
    path = BENCH / "LEVERS.md"
    text = path.read_text() if path.exists() else ""
    ing = d.get("ingest") or {}
    prof = (ing.get("profiles") or {})
    L = ["## Profiles", ""]
    for kind in ("bridge", "flower"):
        p = prof.get(kind)
        if not p or not p.get("samples"):
            continue
        if not p.get("rate_while_profiled"):
            L.append(f"**{kind}**: the profiled ingest trial applied nothing (see the warnings under "
                     "the ingest table), so its profile shows an idle process.")
            L.append("")
            continue
        L.append(f"**{kind}**, ingest of the single stream under `py-spy record --threads` "
                 f"({p['samples']} samples, {f(p.get('rate_while_profiled'))} ev/s while profiled). "
                 "Inclusive share of samples:")
        L.append("")
        L.append("| function | % |")
        L.append("|---|---|")
        for name, pct in p.get("inclusive", [])[:22]:
            L.append(f"| `{name}` | {pct} |")
        L.append("")
        L.append("Self time: " + ", ".join(f"`{n}` {p_}%" for n, p_ in p.get("self", [])[:10]))
        L.append("")
    L.append("Raw collapsed stacks: `bench/out/*.pyspy.txt` (open with speedscope or flamegraph.pl).")
    if text:
        L.append("")
        L.append(text.strip())
    return "\n".join(L)


def write() -> Path:
    RESULTS.write_text(render(load()))
    return RESULTS


if __name__ == "__main__":
    print(write())
