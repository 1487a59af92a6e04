"""The caption job: one Celery task over a job's images.

After each image it stores the caption and sends ``task-progress``; between
images (and while a captioner streams) it checks the cancel flag and, when set,
keeps what it made, sends ``task-cancelled`` and ends REVOKED. An image that
cannot be read fails that image, not the job.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from celery import Task
from celery.exceptions import Ignore
from celery.signals import worker_process_init, worker_process_shutdown
from redis.exceptions import RedisError
from sqlalchemy import select

from settings import Settings, load_settings
from tasks import events
from tasks.app import app
from tasks.cancel import is_cancel_requested, redis_client
from tasks.captioners import (
    CaptionCancelled,
    Captioned,
    Captioner,
    CaptionerUnavailable,
    ImageUnreadable,
    isolated,
)
from tasks.db import dispose_all, session_scope
from tasks.models import Caption, Job
from tasks.reporting import EventSender

log = logging.getLogger(__name__)


_events = EventSender(app)
_local = threading.local()  # this pool process's (or thread's) captioner and its child process


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    """Pooled DB and broker connections (and any captioning child) must not cross a fork."""
    dispose_all()
    _events.reset()
    _local.__dict__.clear()


@worker_process_shutdown.connect
def _close_captioner(**_kwargs) -> None:
    captioner = getattr(_local, "captioner", None)
    if captioner is not None and hasattr(captioner, "close"):
        captioner.close()


def process_captioner(settings: Settings) -> Captioner:
    """One captioner per pool process (per thread with a thread pool), made at its first job.

    ``local`` and ``basic`` caption in a child process that keeps its models
    between jobs; a change of ``CAPTIONER`` makes a new one.
    """
    key = (settings.captioner, settings.image_time_budget, settings.stage_time_budget,
           settings.max_image_pixels, settings.caption_stages)
    if getattr(_local, "key", None) != key:
        _close_captioner()
        _local.captioner, _local.key = isolated(settings), key
    return _local.captioner


@dataclass
class Tally:
    total: int
    done: int = 0
    failed: int = 0
    captions: list[dict] = field(default_factory=list)
    failed_images: list[dict] = field(default_factory=list)  # [{"image", "error"}]
    started: float = field(default_factory=time.monotonic)
    timed: int = 0  # images captioned in this run (for the ETA)

    def eta(self) -> float | None:
        if not self.timed:
            return None
        per_image = (time.monotonic() - self.started) / self.timed
        return round(per_image * (self.total - self.done), 1)


class JobCancelled(Exception):
    pass


def _load(settings: Settings, job_id: int, task_id: str) -> tuple[str, list[tuple[int, str, str, bool]], Tally]:
    """Owner name, the images as (id, name, path, already done), and the tally so far."""
    with session_scope(settings.database_url) as db:
        job = db.get(Job, job_id)
        if job is None or job.task_id != task_id:
            raise ValueError(f"job {job_id} does not exist for task {task_id}")
        job.state = "STARTED"
        job.current_step = "started"
        job.started_at = job.started_at or time.time()
        job.updated_at = time.time()
        rows = []
        tally = Tally(total=len(job.images))
        for img in job.images:
            cap = img.caption
            rows.append((img.id, img.name, img.path, cap is not None))
            if cap is not None:  # a redelivered job keeps what it made
                tally.done += 1
                tally.failed += cap.error is not None
                if cap.error is not None:
                    tally.failed_images.append({"image": img.name, "error": cap.error})
                if cap.text is not None:
                    tally.captions.append({"image": img.name, "caption": cap.text})
        return job.owner.name, rows, tally


def _record(settings: Settings, job_id: int, image_id: int, captioner: str, made: Captioned | None,
            error: str | None, tally: Tally, step: str) -> None:
    now = time.time()
    text = made.text if made is not None else None
    with session_scope(settings.database_url) as db:
        if db.scalar(select(Caption.id).where(Caption.image_id == image_id)) is not None:
            # Another copy of this job made it first: a message redelivered while the
            # worker holding it was cut off, which then came back and went on. Keep theirs.
            log.info("job %s: image %s already captioned by another run", job_id, image_id)
            return
        db.add(Caption(image_id=image_id, text=text, generated=text, error=error,
                       captioner=made.captioner if made is not None else captioner,
                       stages=",".join(made.stages)[:255] if made is not None else None,
                       status="generated" if error is None else "failed",
                       created_at=now, updated_at=now))
        job = db.get(Job, job_id)
        job.done, job.failed = tally.done, tally.failed
        job.current_step = step[:255]
        job.updated_at = time.time()


def _finish(settings: Settings, job_id: int, state: str, step: str, error: str | None = None) -> None:
    with session_scope(settings.database_url) as db:
        job = db.get(Job, job_id)
        if job is None:
            return
        job.state = state
        job.current_step = step[:255]
        job.error = error
        job.finished_at = job.updated_at = time.time()


def run_images(task: Task, settings: Settings, job_id: int, captioner: Captioner,
               should_stop: Callable[[], bool]) -> dict:
    """Caption every image of the job not yet done; returns the results."""
    task_id = task.request.id
    owner, rows, tally = _load(settings, job_id, task_id)
    for image_id, name, path, already_done in rows:
        if already_done:
            continue
        if should_stop():
            raise JobCancelled()
        made, error = caption_one(captioner, Path(path), should_stop)
        if error is not None:
            log.warning("job %s: image %s failed: %s", job_id, name, error)
        text = made.text if made is not None else None
        tally.done += 1
        tally.timed += 1
        if made is not None:
            tally.captions.append({"image": name, "caption": text})
            step = f"Captioned {name}"
        else:
            tally.failed += 1
            tally.failed_images.append({"image": name, "error": error})
            step = f"Could not read {name}"
        _record(settings, job_id, image_id, captioner.name, made, error, tally, step)
        _send(task, events.TASK_PROGRESS, events.progress_fields(
            current=tally.done, total=tally.total, step=step, image=name, caption=text,
            eta=tally.eta(), job_id=job_id, owner=owner, failed=tally.failed))
    return {"job_id": job_id, "count": tally.done - tally.failed, "failed": tally.failed,
            "total": tally.total, "captions": tally.captions, "failed_images": tally.failed_images,
            "owner": owner}


def caption_one(captioner: Captioner, path: Path, should_stop: Callable[[], bool]
                ) -> tuple[Captioned | None, str | None]:
    """``(caption, None)`` or ``(None, error)``: nothing one image does fails the job.

    A cancel (:class:`JobCancelled`) and a captioner that cannot work at all
    (:class:`CaptionerUnavailable`, e.g. Ollama down) still end the job.
    """
    try:
        return captioner.caption(path, should_stop), None
    except CaptionCancelled:
        raise JobCancelled() from None
    except CaptionerUnavailable:
        raise
    except ImageUnreadable as exc:
        return None, str(exc)[:1000]
    except Exception as exc:  # noqa: BLE001 - a crafted image must not fail the other images
        log.exception("captioning %s raised", path)
        return None, f"captioning failed: {type(exc).__name__}: {exc}"[:1000]


def _send(task: Task, event_type: str, fields: dict) -> None:
    _events.send(task.request.hostname, event_type, task.request.id, fields)


def _cancel_check(settings: Settings, task_id: str) -> Callable[[], bool]:
    """The stop check: is the cancel flag set? Redis being away means "not yet"."""
    flags = redis_client(settings.redis_url)

    def should_stop() -> bool:
        try:
            return is_cancel_requested(flags, task_id)
        except RedisError as exc:
            log.warning("cannot read the cancel flag of %s: %s", task_id, exc)
            return False
    return should_stop


@app.task(bind=True, name=events.CAPTION_TASK_NAME)
def caption_job(self: Task, job_id: int) -> dict:
    """Caption the images of job ``job_id`` (created by the web process)."""
    settings = load_settings()
    try:
        captioner = process_captioner(settings)
        result = run_images(self, settings, job_id, captioner, _cancel_check(settings, self.request.id))
    except JobCancelled:
        _cancel(self, settings, job_id)
        raise Ignore() from None
    except CaptionerUnavailable as exc:
        _finish(settings, job_id, "FAILURE", "failed", error=str(exc))
        raise
    _finish(settings, job_id, "SUCCESS", "done")
    return result


def _cancel(task: Task, settings: Settings, job_id: int) -> None:
    """Keep what was made, tell the bridge, and end REVOKED."""
    with session_scope(settings.database_url) as db:
        job = db.get(Job, job_id)
        completed, total = job.done - job.failed, job.total  # kept current image by image
        owner = job.owner.name
    _finish(settings, job_id, "REVOKED", "cancelled")
    # Sent (synchronously) before the backend says REVOKED: the bridge hears the count first.
    _send(task, events.TASK_CANCELLED, events.cancelled_fields(
        completed=completed, total=total, job_id=job_id, owner=owner))
    task.backend.mark_as_revoked(task.request.id, "cancelled", request=task.request)
