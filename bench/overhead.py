"""Worker overhead: a caption job's wall time with its progress events on vs off.

One real worker (``celery -A bench.timed_worker``, ``-c 1``: the Procfile's app,
with the job's own calls that send events timed, so that time is measured
directly too) takes jobs from two queues: ``bench_on`` jobs send their
``task-progress`` events, ``bench_off`` jobs do not. Jobs alternate on/off,
off/on, one at a time, in the same pool process, so both see the same machine. Wall time is the
job's own ``started_at`` -> ``finished_at`` in the database (written by
tasks/caption.py), which does not depend on events. Kinds of job, with the
``basic`` captioner: many small PNGs (the per-image work is tiny, so events
weigh most) and photo-sized JPEGs (1024x768); then, on a second worker whose
images each cost ``IMAGE_COST_MS`` more CPU (bench/timed_worker.py), the cost
of a real model: the default ``local`` captioner takes ~0.2-1.5 s per image,
and 200 ms is its cheapest, so the worst case for the events' share.
"""
from __future__ import annotations

import time

from bench import common, images
from bench.common import Stack
from tasks.events import CAPTION_TASK_NAME

IMAGE_COST_MS = 200


def make_job(stack: Stack, owner_id: int, paths: list[str]) -> tuple[int, str]:
    import uuid

    from tasks.db import session_scope
    from tasks.models import Image, Job

    task_id = str(uuid.uuid4())
    with session_scope(stack.settings.database_url) as db:
        job = Job(task_id=task_id, owner_id=owner_id, state="PENDING", total=len(paths),
                  current_step="queued")
        job.images = [Image(position=i, name=f"img{i}", path=p, size=0) for i, p in enumerate(paths)]
        db.add(job)
        db.flush()
        return job.id, task_id


def wall_time(stack: Stack, job_id: int, timeout: float = 120) -> float:
    from tasks.db import session_scope
    from tasks.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(stack.settings.database_url) as db:
            job = db.get(Job, job_id)
            if job.finished_at:
                if job.state != "SUCCESS":
                    raise RuntimeError(f"job {job_id} ended {job.state}: {job.error}")
                return job.finished_at - job.started_at
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not finish")


def run(quick: bool = False) -> dict:
    from sqlalchemy import select

    from tasks.app import make_celery
    from tasks.db import session_scope
    from tasks.models import User

    reps = 3 if quick else 15
    with Stack() as stack:
        stack.add_user("bench")
        with session_scope(stack.settings.database_url) as db:
            owner = db.scalar(select(User.id).where(User.name == "bench"))
        small = [str(images.small(stack.dir / f"small{i}.png", i)) for i in range(8)]
        photo = str(images.photo(stack.dir / "photo.jpg"))
        basic = {"small_png_x100": [small[i % 8] for i in range(100)],
                 "photo_1024x768_x20": [photo] * 20}
        costly = {f"photo_x10_plus_{IMAGE_COST_MS}ms_per_image": [photo] * 10}
        app = make_celery(stack.settings)
        out: dict[str, dict] = {}
        for i, (kinds, env) in enumerate(((basic, {}),
                                          (costly, {"BENCH_IMAGE_COST_MS": str(IMAGE_COST_MS)}))):
            worker = stack.start_worker(f"ab{i}", extra=["-Q", "bench_on,bench_off"],
                                        app="bench.timed_worker", env=env)
            for kind, paths in kinds.items():
                out[kind] = ab_pairs(stack, app, owner, paths, reps)
                print(f"  overhead {kind}: on {out[kind]['median_on_s']:.3f}s off "
                      f"{out[kind]['median_off_s']:.3f}s -> {out[kind]['overhead_pct']}% "
                      f"({out[kind]['per_event_ms']} ms/event); send_event share "
                      f"{out[kind]['median_send_event_share_pct']}%", flush=True)
            worker.stop()
        out["send_event_cost"] = send_event_cost(stack)
        return {"results": out, "reps": reps, "machine": common.machine_info(stack.url)}


def ab_pairs(stack: Stack, app, owner: int, paths: list[str], reps: int) -> dict:
    """``reps`` on/off pairs of one kind of job (after a warm-up pair), alternating order."""
    walls: dict[str, list[float]] = {"on": [], "off": []}
    direct: list[float] = []
    for rep in range(reps + 1):  # the first pair warms the worker up
        order = ("on", "off") if rep % 2 == 0 else ("off", "on")
        for mode in order:
            job_id, task_id = make_job(stack, owner, paths)
            app.send_task(CAPTION_TASK_NAME, args=[job_id], task_id=task_id,
                          queue=f"bench_{mode}")
            w = wall_time(stack, job_id)
            if rep:
                walls[mode].append(w)
                if mode == "on":
                    spent = _spent(stack, task_id)
                    if spent is not None:
                        direct.append(100.0 * spent / w)
    on, off = common.median(walls["on"]), common.median(walls["off"])
    # Each rep's on and off jobs ran back to back: the median of their
    # ratios is robust to the machine's load drifting over the run.
    paired = common.median(a / b - 1.0 for a, b in zip(walls["on"], walls["off"]))
    n_img = len(paths)
    return {"images": n_img, "on_s": walls["on"], "off_s": walls["off"],
            "median_on_s": round(on, 4), "median_off_s": round(off, 4),
            "overhead_pct": round(100.0 * paired, 2),
            "overhead_of_medians_pct": round(100.0 * (on - off) / off, 2),
            "per_event_ms": round(1000.0 * paired * off / n_img, 3),
            "send_event_share_pct": direct,
            "median_send_event_share_pct": round(common.median(direct), 2) if direct else None}


def _spent(stack: Stack, task_id: str) -> float | None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        raw = stack.client().get(f"bench:send_event_s:{task_id}")
        if raw:
            return float(raw.split()[0])
        time.sleep(0.01)
    return None


def send_event_cost(stack: Stack, n: int = 400) -> dict:
    """Ways to send one ``task-progress``, each timed in isolation (ms per event).

    - ``default_dispatcher_per_event``: what ``task.send_event`` does (a dispatcher
      from the producer pool per call, then ``send``);
    - ``dispatcher_reused``: one ``app.events.Dispatcher`` kept for the whole job;
    - ``redis_publish_same_bytes``: the same message (bench/wire.py) with one
      cached redis-py client: kombu's Redis transport builds a new ``redis.Redis``
      client per publish (``Channel.conn_or_acquire`` -> ``_create_client``).
    """
    import uuid

    from bench.wire import Wire
    from tasks.app import make_celery
    from tasks.events import TASK_PROGRESS, progress_fields

    app = make_celery(stack.settings)
    fields = progress_fields(current=1, total=10, step="Captioned x", image="x", caption="c" * 90)
    out = {}
    t0 = time.perf_counter()
    for _ in range(n):
        with app.events.default_dispatcher(hostname="bench@localhost") as d:
            d.send(TASK_PROGRESS, uuid=str(uuid.uuid4()), **fields)
    out["default_dispatcher_per_event"] = round(1000 * (time.perf_counter() - t0) / n, 3)
    with app.connection_for_write() as conn, app.events.Dispatcher(conn, hostname="bench@localhost") as d:
        t0 = time.perf_counter()
        for _ in range(n):
            d.send(TASK_PROGRESS, uuid=str(uuid.uuid4()), **fields)
        out["dispatcher_reused"] = round(1000 * (time.perf_counter() - t0) / n, 3)
    client = stack.client(0)
    wire = Wire("bench@localhost")
    t0 = time.perf_counter()
    for _ in range(n):
        client.publish(*wire.one(TASK_PROGRESS, {"uuid": str(uuid.uuid4()), **fields}))
    out["redis_publish_same_bytes"] = round(1000 * (time.perf_counter() - t0) / n, 3)
    out["n"] = n
    return out
