"""Cancel: from a watcher's ``cancel_task`` to its ``task_cancelled``, queued and running.

Real worker (``-c 1``, ``CAPTIONER=basic``), bridge and web (gevent); jobs are
submitted through ``POST /api/jobs`` and watched by a python-socketio client
(tests/support.py's ``Watcher``) that joins the job's room.

- running: a job of 40 photo-sized JPEGs; the cancel is sent once its first
  ``progress_update`` arrived (the job is captioning);
- queued: a long job keeps the single worker busy; a second job waits in the
  broker queue (PENDING) and is cancelled there.

Latency = receipt of ``task_cancelled`` - the moment ``cancel_task`` was sent.
"""
from __future__ import annotations

import time

import requests

from bench import common, images
from bench.common import Stack
from tests.support import Watcher, wait_for


def submit(url: str, token: str, files: list[tuple[str, bytes]]) -> str:
    resp = requests.post(f"{url}/api/jobs", headers={"Authorization": f"Bearer {token}"},
                         files=[("images", (name, data, "image/jpeg")) for name, data in files],
                         timeout=60)
    resp.raise_for_status()
    return resp.json()["task_id"]


def cancel_once(watcher: Watcher, task_id: str) -> dict:
    t0 = time.time()
    ack = watcher.call("cancel_task", {"task_id": task_id}, timeout=20)
    t_ack = time.time()
    if not ack.get("ok"):
        raise RuntimeError(f"cancel refused: {ack}")

    def cancelled():
        with watcher._lock:
            for t, name, data in watcher.received:
                if name == "task_cancelled" and isinstance(data, dict) and data.get("task_id") == task_id:
                    return t
        return None
    t_end = wait_for(cancelled, 30, 0.002, what=f"task_cancelled of {task_id}")
    return {"latency": t_end - t0, "ack": t_ack - t0}


def run(quick: bool = False) -> dict:
    trials = 4 if quick else 12
    with Stack() as stack:
        token = stack.add_user("bench")
        stack.start_bridge()
        web = stack.start_web()
        stack.start_worker("w1", concurrency=1)
        photo = images.photo(stack.dir / "photo.jpg").read_bytes()
        watcher = Watcher(web.url, token).connect()
        try:
            running, queued = [], []
            for _i in range(trials):
                task_id = submit(web.url, token, [(f"p{k}.jpg", photo) for k in range(40)])
                watcher.call("join_task", {"task_id": task_id})
                wait_for(lambda: any((d or {}).get("current", 0) >= 1 for _, d in
                                     watcher.events(task_id, ("progress_update",))), 60, 0.002,  # noqa: B023 - called at once
                         what="first progress")
                r = cancel_once(watcher, task_id)
                running.append(r)
                wait_for(lambda: _ended_in_db(stack, task_id), 30, 0.05, what="job ended")  # noqa: B023
            blocker = submit(web.url, token, [(f"b{k}.jpg", photo) for k in range(900)])
            watcher.call("join_task", {"task_id": blocker})
            wait_for(lambda: watcher.events(blocker, ("progress_update",))[-1:] and
                     watcher.events(blocker, ("progress_update",))[-1][1].get("current", 0) >= 1,
                     60, 0.01, what="blocker running")
            states = []
            for _i in range(trials):
                task_id = submit(web.url, token, [("q.jpg", photo), ("q2.jpg", photo)])
                ack = watcher.call("join_task", {"task_id": task_id})
                states.append(ack["snapshot"]["state"])
                time.sleep(0.05)
                queued.append(cancel_once(watcher, task_id))
            cancel_once(watcher, blocker)
        finally:
            watcher.close()
        lat = {name: {"latency_ms": common.summary([r["latency"] for r in rs], 1000.0),
                      "ack_ms": common.summary([r["ack"] for r in rs], 1000.0)}
               for name, rs in (("running", running), ("queued", queued))}
        for name in ("running", "queued"):
            s = lat[name]["latency_ms"]
            print(f"  cancel {name}: p50 {s['p50']} p99 {s['p99']} max {s['max']} ms (n={s['n']})",
                  flush=True)
        return {**lat, "queued_states_at_cancel": sorted(set(states)), "trials": trials,
                "running_job_images": 40, "machine": common.machine_info(stack.url)}


def _ended_in_db(stack: Stack, task_id: str) -> bool:
    from sqlalchemy import select

    from tasks.db import session_scope
    from tasks.models import Job

    with session_scope(stack.settings.database_url) as db:
        job = db.scalar(select(Job).where(Job.task_id == task_id))
        return job is not None and job.finished_at is not None
