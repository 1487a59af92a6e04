"""Jobs as the web process sees them: create and submit, find with rights, snapshot.

Live state comes from the bridge's snapshots in Redis; the database (written
by the worker) is the fallback, and wins when it already holds an ending the
bridge has not seen (the bridge may be down).
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

import protocol
from bridge.commands import send_cancel, send_track
from tasks.events import CAPTION_TASK_NAME
from tasks.models import Caption, Image, Job, User
from web.errors import ApiError
from web.roles import VIEW_ALL, can
from web.services import Services
from web.uploads import StoredImage

log = logging.getLogger(__name__)


def create_and_submit(svc: Services, owner_id: int, owner: str, stored: list[StoredImage]) -> Job:
    """Record the job and its images, send it to the workers, and have the bridge follow it."""
    task_id = str(uuid.uuid4())
    with svc.db() as db:
        job = Job(task_id=task_id, owner_id=owner_id, state="PENDING", total=len(stored),
                  current_step="queued")
        job.images = [Image(position=i, name=s.name, path=s.path, size=s.size)
                      for i, s in enumerate(stored)]
        db.add(job)
        db.commit()
        job_id = job.id
    try:
        svc.celery.send_task(CAPTION_TASK_NAME, args=[job_id], task_id=task_id)
    except (KombuOperationalError, RedisError, OSError) as exc:
        log.error("could not queue job %s: %s", task_id, exc)
        with svc.db() as db:
            job = db.get(Job, job_id)
            job.state, job.error, job.finished_at = "FAILURE", "broker unavailable", time.time()
            db.commit()
        raise ApiError("unavailable", "the job queue is not reachable; try again shortly") from exc
    track(svc, task_id, job_id, owner, len(stored))
    with svc.db() as db:
        return db.get(Job, job_id)


def track(svc: Services, task_id: str, job_id: int, owner: str, total: int) -> None:
    """Ask the bridge to follow a job even if it misses its events (best effort)."""
    try:
        send_track(svc.redis, task_id, job_id, owner, total)
    except RedisError as exc:
        log.warning("could not ask the bridge to track %s: %s", task_id, exc)


def find_job(db: Session, task_id: str, user: Any) -> Job:
    """The job if ``user`` may see it (its owner, a viewer or an admin); otherwise
    ``not_found`` (existence is not leaked). Acting on it is ``roles.may_act_on``."""
    if not is_uuid(task_id):
        raise ApiError("not_found", "no such job")
    job = db.scalar(select(Job).where(Job.task_id == task_id))
    if job is None or (job.owner_id != user.id and not can(user, VIEW_ALL)):
        raise ApiError("not_found", "no such job")
    return job


def is_uuid(value: Any) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def db_snapshot(job: Job, owner: str) -> dict:
    return protocol.snapshot(job.task_id, job_id=job.id, owner=owner, state=job.state,
                             current=job.done, total=job.total, current_step=job.current_step,
                             updated_at=job.updated_at)


def fetch_record(svc: Services, task_id: str) -> dict | None:
    try:
        return svc.store.get(task_id)
    except RedisError:
        return None


def live_snapshot(job: Job, owner: str, record: dict | None) -> dict:
    """The bridge's snapshot unless the database already knows an ending it lacks."""
    if record is not None:
        snap = {**record["snapshot"], "job_id": job.id, "owner": owner}
        if snap["state"] in protocol.TERMINAL_STATES or job.state not in protocol.TERMINAL_STATES:
            if not snap.get("total"):  # before the first image the bridge cannot know it
                snap["total"] = job.total
            return snap
    return db_snapshot(job, owner)


def ending(svc: Services, job: Job, snap: dict, record: dict | None) -> dict | None:
    """The terminal event ``{"event", "payload"}`` of an ended job, else None."""
    if snap["state"] not in protocol.TERMINAL_STATES:
        return None
    stored = (record or {}).get("ending")
    if stored and stored.get("event") == protocol.ENDING_EVENT[snap["state"]]:
        return {"event": stored["event"], "payload": {**stored["payload"], "job_id": job.id,
                                                      "owner": snap["owner"]}}
    return db_ending(svc, job, snap)


def db_ending(svc: Services, job: Job, snap: dict) -> dict:
    """The terminal event built from the database (the bridge did not record one)."""
    results = None
    if snap["state"] == "SUCCESS":
        rows = captions(svc, job.id)
        ok = [{"image": r["image"], "caption": r["caption"]} for r in rows if r["caption"] is not None]
        results = protocol.caption_results({"count": len(ok), "failed": job.failed, "captions": ok})
    return protocol.ending(snap, results=results, completed=job.done - job.failed,
                           error=("JobFailed", job.error or "the job failed"))


def captions(svc: Services, job_id: int) -> list[dict]:
    with svc.db() as db:
        rows = db.execute(
            select(Image.name, Caption.text, Caption.captioner, Caption.error)
            .join(Caption, Caption.image_id == Image.id)
            .where(Image.job_id == job_id).order_by(Image.position)).all()
    out = []
    for name, text, captioner, error in rows:
        item = {"image": name, "caption": text, "captioner": captioner}
        if error:
            item["error"] = error
        out.append(item)
    return out


def list_jobs(svc: Services, user: Any, all_users: bool, limit: int) -> list[dict]:
    with svc.db() as db:
        q = select(Job, User.name).join(User, User.id == Job.owner_id)
        if not (all_users and can(user, VIEW_ALL)):
            q = q.where(Job.owner_id == user.id)
        rows = db.execute(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)).all()
    try:
        records = svc.store.get_many(job.task_id for job, _ in rows)
    except RedisError:
        records = {}
    return [live_snapshot(job, owner, records.get(job.task_id)) for job, owner in rows]


def request_cancel(svc: Services, job: Job, owner: str, by: str) -> dict:
    """Queue a cancel for the bridge; ``conflict`` when the job already ended."""
    record = fetch_record(svc, job.task_id)
    snap = live_snapshot(job, owner, record)
    if snap["state"] in protocol.TERMINAL_STATES:
        raise ApiError("conflict", f"the job already ended ({snap['state']})")
    queue_cancel(svc, job.task_id, by)
    return {**snap, "state": "CANCELLING"}


def queue_cancel(svc: Services, task_id: str, by: str) -> None:
    """Hand a cancel to the bridge (flag, revoke, terminate after the grace period)."""
    try:
        send_cancel(svc.redis, task_id, by)
    except RedisError as exc:
        raise ApiError("unavailable", "cannot reach Redis to cancel; try again") from exc
