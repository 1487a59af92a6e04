"""A paced stand-in for workers: ``python -m bench.producer SPEC.json``.

The spec names the tasks (``task_ids``, ``job_ids``), the images per job and
the schedule: each job's events spread evenly over ``span`` seconds, the jobs'
starts spread evenly over ``seconds - span`` (or ``ticks``: progress only,
``per_second`` per task, for the watcher benchmark). Events are sent at their
time, stamped when sent, by:

- ``worker``: what a Skald worker sends: the lifecycle events (received,
  started, succeeded) through Celery's own ``app.events.Dispatcher.send``, the
  ``task-progress`` events through ``tasks.reporting.EventSender`` (as a caption
  job sends them: one long-lived dispatcher of its own);
- ``celery``: every event through one Celery ``Dispatcher.send``, one event per
  message; about 2 000 events/s at most from one process here (kombu builds a
  redis-py client per publish);
- ``wire``: the same bytes built by bench/wire.py and pipelined, for higher rates.

Prints ``{"ready"}``, waits for ``go`` on stdin, sends, prints a JSON summary.
"""
from __future__ import annotations

import json
import sys
import time

from bench import stream
from tasks import events as ev


def schedule(spec: dict) -> list[tuple[float, str, dict]]:
    out: list[tuple[float, str, dict]] = []
    ids, jobs = spec["task_ids"], spec["job_ids"]
    if spec.get("ticks"):
        # progress only (jobs never end): `per_second` per task, staggered
        per, secs, start = spec["per_second"], spec["seconds"], spec.get("start", 0)
        n = len(ids)
        for k in range(int(per * secs)):
            for i, (tid, job) in enumerate(zip(ids, jobs)):
                t = (k + i / n) / per
                fields = {"uuid": tid, **ev.progress_fields(
                    current=start + k + 1, total=1_000_000, step=f"Captioned img{k}.jpg",
                    image=f"img{k}.jpg", caption=stream.CAPTION, eta=None, job_id=job,
                    owner=spec.get("owner", "bench"))}
                out.append((t, ev.TASK_PROGRESS, fields))
        out.sort(key=lambda x: x[0])
        return out
    n_images, span, secs = spec["images"], spec["span"], spec["seconds"]
    n = len(ids)
    for i, (tid, job) in enumerate(zip(ids, jobs)):
        start = (secs - span) * i / max(1, n - 1)
        evs = list(stream.lifecycle(tid, job, n_images, owner=spec.get("owner", "bench"),
                                    sent=False))
        for k, (type_, fields) in enumerate(evs):
            out.append((start + span * k / max(1, len(evs) - 1), type_, fields))
    out.sort(key=lambda x: x[0])
    return out


def main(path: str) -> None:
    with open(path) as fh:
        spec = json.load(fh)
    plan = schedule(spec)
    mode = spec.get("mode", "wire")
    from settings import load_settings

    settings = load_settings()
    if mode in ("celery", "worker"):
        from tasks.app import make_celery
        from tasks.reporting import EventSender

        app = make_celery(settings)
        conn = app.connection_for_write()
        host = "bench-worker@localhost"
        disp = app.events.Dispatcher(conn, hostname=host)
        progress = EventSender(app) if mode == "worker" else None

        def send(batch):
            for _, type_, fields in batch:
                if progress is not None and type_ == ev.TASK_PROGRESS:
                    rest = {k: v for k, v in fields.items() if k != "uuid"}
                    progress.send(host, type_, fields["uuid"], rest)
                else:
                    disp.send(type_, **fields)
    else:
        import redis

        from bench.wire import Wire

        client = redis.Redis.from_url(settings.redis_url)
        wire = Wire()

        def send(batch):
            pipe = client.pipeline(transaction=False)
            for _, type_, fields in batch:
                pipe.publish(*wire.one(type_, fields))
            pipe.execute()

    print(json.dumps({"ready": True, "events": len(plan)}), flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    wall0 = time.time()
    i, n = 0, len(plan)
    late: list[float] = []
    while i < n:
        now = time.perf_counter() - t0
        if plan[i][0] > now:
            time.sleep(min(0.002, plan[i][0] - now))
            continue
        j = i
        while j < n and plan[j][0] <= now:
            j += 1
        late.append(now - plan[i][0])
        send(plan[i:j])
        i = j
    secs = time.perf_counter() - t0
    late.sort()
    print(json.dumps({"sent": n, "secs": secs, "rate": n / secs, "t0": wall0,
                      "late_p99_ms": 1000 * late[int(0.99 * (len(late) - 1))] if late else None,
                      "late_max_ms": 1000 * late[-1] if late else None}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
