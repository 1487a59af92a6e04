"""Captioner benchmark: ``local`` against ``basic``, per stage and per image, load time and RSS.

Method. Inputs are made here: photos at 1024x768 (the three CC0 /
public-domain fixtures, cover-cropped, and their mirror images) and
screenshots at 1280x720 (notices rendered with DejaVu Sans, a different
text each). Phase 1 starts one captioning child per captioner exactly as a
worker's pool process does (``tasks/captioners/isolation.py``), records
the child's start (Python, imports, model loading) and then captions every
image in turn with ``local`` and ``basic`` alternately (A/B in the same
run), ``rounds`` times; the total is the pool process's wall time per
image (child round trip included), the stages are the child's own timings.
Phase 2 runs a real Celery worker (``-c 2``, ``CAPTIONER=local``) on a
private stack, sends it two jobs at once so both pool processes caption,
and reads the RSS of each pool process and of its captioning child.

Output: ``bench/out/captioner.json``; :func:`section` and :func:`targets`
render it into RESULTS.md. Run alone: ``python -m bench.run --only captioner``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from bench.common import ROOT, machine_info, summary

FIXTURES = ROOT / "tests" / "fixtures"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
PHOTO_SIZE, SCREEN_SIZE = (1024, 768), (1280, 720)
STAGES = ("read", "ocr", "objects", "faces", "metadata", "colour")
TEXTS = [
    ["Library hours", "Monday to Friday 9 am to 7 pm", "Saturday 10 am to 4 pm", "Closed on Sunday"],
    ["Error 503", "The service is temporarily unavailable.", "Please try again in a few minutes."],
    ["Weekly report", "Orders shipped: 1,284", "Returns: 37", "Average delivery time: 2.4 days"],
    ["Lost cat", "Grey tabby, answers to Miso", "Last seen near the station", "Call 555 0142"],
    ["Settings", "Notifications: on", "Dark mode: off", "Language: English"],
    ["Menu", "Soup of the day 4.50", "Grilled cheese 6.00", "Lemonade 2.50"],
]


def make_inputs(folder: Path) -> dict[str, list[Path]]:
    photos = []
    for name in ("chelsea", "coffee", "astronaut"):
        img = Image.open(FIXTURES / f"{name}.png").convert("RGB")
        fitted = ImageOps.fit(img, PHOTO_SIZE, Image.Resampling.BICUBIC)
        for variant, picture in (("", fitted), ("-mirror", ImageOps.mirror(fitted))):
            path = folder / f"{name}{variant}.jpg"
            picture.save(path, quality=90)
            photos.append(path)
    screens = []
    title, body = ImageFont.truetype(FONT, 44), ImageFont.truetype(FONT, 34)
    for i, lines in enumerate(TEXTS):
        img = Image.new("RGB", SCREEN_SIZE, (250, 250, 250))
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, 0, SCREEN_SIZE[0], 100), fill=(30 + 30 * i, 70, 140))
        draw.text((40, 25), lines[0], font=title, fill="white")
        for n, line in enumerate(lines[1:]):
            draw.text((40, 150 + 70 * n), line, font=body, fill=(20, 20, 20) if n % 2 == 0 else (180, 20, 20))
        path = folder / f"screen{i}.png"
        img.save(path)
        screens.append(path)
    return {"photo": photos, "screenshot": screens}


def _children() -> dict[str, Any]:
    from settings import load_settings
    from tasks.captioners.isolation import IsolatedCaptioner

    out = {}
    for name in ("local", "basic"):
        child = IsolatedCaptioner(load_settings(env={}).with_overrides(captioner=name))
        started = time.monotonic()
        ready = child.start()
        out[name] = (child, {"start_s": round(time.monotonic() - started, 3),
                             "load_total_s": ready.get("load_total"),
                             "stages_load_s": ready.get("load_seconds") or {},
                             "stages": ready.get("stages")})
    return out


def phase_timing(inputs: dict[str, list[Path]], rounds: int) -> dict:
    import psutil

    children = _children()
    walls: dict[str, dict[str, list[float]]] = {n: {k: [] for k in inputs} for n in children}
    stages: dict[str, dict[str, dict[str, list[float]]]] = {
        n: {k: {s: [] for s in STAGES} for k in inputs} for n in children}
    samples: dict[str, dict[str, str]] = {n: {} for n in children}
    try:
        for _ in range(rounds):
            for kind, paths in inputs.items():
                for path in paths:
                    for name, (child, _load) in children.items():  # A/B, image by image
                        t0 = time.monotonic()
                        made = child.caption(path, lambda: False)
                        walls[name][kind].append(time.monotonic() - t0)
                        for stage, secs in (child.last_reply.get("timings") or {}).items():
                            stages[name][kind].setdefault(stage, []).append(secs)
                        samples[name].setdefault(kind, f"{path.name}: {made.text}")
        rss = {name: round(psutil.Process(child.proc.pid).memory_info().rss / 2**20, 1)
               for name, (child, _l) in children.items()}
    finally:
        for child, _load in children.values():
            child.close()
    return {
        "load": {name: load for name, (_c, load) in children.items()},
        "per_image": {name: {kind: {"total": summary(walls[name][kind], digits=3),
                                    "stages": {s: summary(v, digits=3) for s, v in stages[name][kind].items() if v}}
                             for kind in inputs} for name in children},
        "child_rss_mb": rss,
        "samples": samples,
    }


def phase_worker(inputs: dict[str, list[Path]], folder: Path) -> dict:
    """RSS of each pool process and its captioning child in a real ``-c 2`` worker."""
    import psutil
    import requests

    from tests.support import Stack, wait_for

    stack = Stack(folder / "stack", captioner="local")
    stack.env["CAPTIONER"] = "local"
    try:
        stack.procs.start_worker("bw", stack.env, stack.settings, concurrency=2)
        stack.web = stack.procs.start_web("bweb", stack.env, stack.port)
        user = stack.user("bench")
        images = inputs["photo"] + inputs["screenshot"]
        t0 = time.monotonic()
        ids = [stack.submit(user, images), stack.submit(user, images)]

        def done() -> bool:
            states = [requests.get(f"{stack.web.url}/api/jobs/{t}", headers=user["headers"],
                                   timeout=10).json().get("state") for t in ids]
            return all(s in ("SUCCESS", "FAILURE", "REVOKED") for s in states)
        wait_for(done, 600, interval=0.5, what="the benchmark jobs")
        wall = time.monotonic() - t0
        worker = psutil.Process(next(p for p in stack.procs.procs if p.name == "bw").popen.pid)
        pools = []
        for pool in worker.children():
            kids = pool.children()
            pool_mb = pool.memory_info().rss / 2**20
            child_mb = sum(k.memory_info().rss for k in kids) / 2**20
            pools.append({"pid": pool.pid, "pool_mb": round(pool_mb, 1), "child_mb": round(child_mb, 1),
                          "total_mb": round(pool_mb + child_mb, 1)})
        return {"jobs": 2, "images": 2 * len(images), "wall_s": round(wall, 2),
                "per_image_s": round(wall * 2 / (2 * len(images)), 3),  # two pool processes at once
                "main_mb": round(worker.memory_info().rss / 2**20, 1), "pools": pools,
                "max_pool_total_mb": max((p["total_mb"] for p in pools), default=None)}
    finally:
        stack.close()


def run(quick: bool = False) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="skald-bench-captioner-"))
    inputs = make_inputs(folder)
    data: dict[str, Any] = {"machine": machine_info(), "rounds": 1 if quick else 3,
                            "inputs": {k: len(v) for k, v in inputs.items()},
                            "sizes": {"photo": list(PHOTO_SIZE), "screenshot": list(SCREEN_SIZE)}}
    data.update(phase_timing(inputs, data["rounds"]))
    data["worker"] = phase_worker(inputs, folder)
    return data


# -- RESULTS.md -------------------------------------------------------------------------------
def _f(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def targets(data: dict) -> list[tuple[str, str, bool | None]]:
    """Rows ``(target, measured, met)`` for the Targets table."""
    photo = data["per_image"]["local"]["photo"]["total"]
    basic = data["per_image"]["basic"]["photo"]["total"]
    load = data["load"]["local"]
    rss = (data.get("worker") or {}).get("max_pool_total_mb")
    return [
        ("Captioner `local`: median < 1.5 s per photo",
         f"{_f(photo['p50'], 3)} s (p90 {_f(photo['p90'], 3)}); basic {_f(basic['p50'], 3)} s",
         None if photo["p50"] is None else photo["p50"] < 1.5),
        ("Captioner `local`: models load < 2 s",
         f"{_f(load['load_total_s'], 3)} s in the child ({_f(load['start_s'], 3)} s with Python start-up)",
         None if load["load_total_s"] is None else load["load_total_s"] < 2.0),
        ("Captioner `local`: < 700 MB RSS per pool process",
         f"{_f(rss, 0)} MB (pool process + its captioning child, worst of 2)",
         None if rss is None else rss < 700),
    ]


def section(data: dict) -> str:
    L = ["## Captioner: `local` against `basic`", "",
         f"_{data.get('finished', '?')}, {data.get('seconds', '?')} s, `{data.get('command', '?')}`"
         + (" (quick)" if data.get("quick") else "") + "_", "",
         f"{data['inputs']['photo']} photos at {data['sizes']['photo'][0]}x{data['sizes']['photo'][1]} and "
         f"{data['inputs']['screenshot']} screenshots at {data['sizes']['screenshot'][0]}x"
         f"{data['sizes']['screenshot'][1]}, {data['rounds']} rounds, `local` and `basic` alternating image "
         "by image in the same run, each in its own captioning child as a worker runs it (one "
         "onnxruntime thread per session). Seconds per image; the machine is shared (2 cores, other "
         "sessions running tests; load average at start "
         f"{(data.get('machine') or {}).get('loadavg_at_start')}), so read medians.", "",
         "| captioner | kind | total p50 | total p90 | " + " | ".join(f"{s} p50" for s in STAGES) + " |",
         "|---|---|---|---|" + "---|" * len(STAGES)]
    for name in ("local", "basic"):
        for kind, row in data["per_image"][name].items():
            st = row["stages"]
            L.append(f"| {name} | {kind} | {_f(row['total']['p50'], 3)} | {_f(row['total']['p90'], 3)} | "
                     + " | ".join(_f((st.get(s) or {}).get("p50"), 3) for s in STAGES) + " |")
    load = data["load"]["local"]
    L += ["", f"Model loading in the child: {_f(load['load_total_s'], 3)} s ("
          + ", ".join(f"{k} {_f(v, 3)} s" for k, v in load["stages_load_s"].items())
          + f"); the child is up {_f(load['start_s'], 3)} s after it is started (Python and imports "
          f"included); basic's child {_f(data['load']['basic']['start_s'], 3)} s. Child RSS after the "
          f"run: local {_f(data['child_rss_mb']['local'], 0)} MB, basic {_f(data['child_rss_mb']['basic'], 0)} MB."]
    w = data.get("worker") or {}
    if w:
        L += ["", f"Real worker (`-c 2`, `CAPTIONER=local`): {w['jobs']} jobs of {w['images'] // w['jobs']} "
              f"images at once took {_f(w['wall_s'])} s ({_f(w['per_image_s'], 3)} s per image per pool "
              f"process). RSS: main process {_f(w['main_mb'], 0)} MB; "
              + "; ".join(f"pool process {_f(p['pool_mb'], 0)} MB + captioning child {_f(p['child_mb'], 0)} MB"
                          f" = {_f(p['total_mb'], 0)} MB" for p in w["pools"]) + "."]
    L += ["", "Sample captions:", ""]
    for name in ("local", "basic"):
        for kind, text in data["samples"][name].items():
            L.append(f"- {name}, {kind}: {text!r}")
    return "\n".join(L)
