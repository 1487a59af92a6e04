"""The event streams every benchmark feeds: caption jobs' lifecycles, as Celery events.

A job sends, in order: ``task-sent`` (the web process), ``task-received``,
``task-started``, one ``task-progress`` per image (with its caption) and
``task-succeeded``. Field names and sizes are those of Celery 5 and
``tasks/caption.py``.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator

from tasks import events as ev

CAPTION = ("A landscape photo, 1024 by 768 pixels, mostly sky blue and white with some "
           "dark green; bright.")  # the length of a typical `basic` caption


def result_of(job_id: int, n_images: int, owner: str = "bench") -> dict:
    caps = [{"image": f"img{i:04d}.jpg", "caption": CAPTION} for i in range(n_images)]
    return {"job_id": job_id, "count": n_images, "failed": 0, "total": n_images,
            "captions": caps, "owner": owner}


def lifecycle(task_id: str, job_id: int, n_images: int, *, owner: str = "bench",
              worker: str = "bench-worker@localhost", with_results: bool = False,
              sent: bool = True) -> Iterator[tuple[str, dict]]:
    """``(type, fields)`` of one caption job's events (fields without the envelope keys)."""
    args = f"[{job_id}]"
    if sent:
        yield ev.TASK_SENT, {"uuid": task_id, "root_id": task_id, "parent_id": None,
                             "name": ev.CAPTION_TASK_NAME, "args": args, "kwargs": "{}",
                             "retries": 0, "eta": None, "expires": None,
                             "queue": "celery", "exchange": "", "routing_key": "celery"}
    yield ev.TASK_RECEIVED, {"uuid": task_id, "name": ev.CAPTION_TASK_NAME, "args": args,
                             "kwargs": "{}", "root_id": task_id, "parent_id": None,
                             "retries": 0, "eta": None, "expires": None}
    yield ev.TASK_STARTED, {"uuid": task_id}
    for i in range(1, n_images + 1):
        yield ev.TASK_PROGRESS, {"uuid": task_id, **ev.progress_fields(
            current=i, total=n_images, step=f"Captioned img{i - 1:04d}.jpg",
            image=f"img{i - 1:04d}.jpg", caption=CAPTION, eta=round(0.2 * (n_images - i), 1),
            job_id=job_id, owner=owner, failed=0)}
    result = result_of(job_id, n_images, owner)
    done = {"uuid": task_id, "result": repr(result)[:1024], "runtime": 0.2 * n_images}
    if with_results:
        done["results"] = result
    yield ev.TASK_SUCCEEDED, done


def new_ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def interleaved(task_ids: list[str], n_images: int, concurrent: int = 50,
                first_job_id: int = 1, **kw) -> Iterator[tuple[str, dict]]:
    """Many jobs' events interleaved round-robin, ``concurrent`` jobs running at a time."""
    pending = iter(enumerate(task_ids))
    running: list[Iterator[tuple[str, dict]]] = []
    while True:
        while len(running) < concurrent:
            nxt = next(pending, None)
            if nxt is None:
                break
            i, tid = nxt
            running.append(lifecycle(tid, first_job_id + i, n_images, **kw))
        if not running:
            return
        still = []
        for gen in running:
            item = next(gen, None)
            if item is not None:
                yield item
                still.append(gen)
        running = still
