"""Jobs as the web process sees them: create and submit, find with rights, snapshot.

Live state comes from the bridge's snapshots in Redis; the database (written
by the worker) is the fallback, and wins when it already holds an ending the
bridge has not seen (the bridge may be down).
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

import protocol
from bridge.commands import send_cancel, send_track
from bridge.store import read_workers
from tasks.events import CAPTION_TASK_NAME
from tasks.models import Image, Job, User
from web.captions import failed_images
from web.captions import rows as caption_rows
from web.errors import ApiError
from web.roles import VIEW_ALL, can
from web.services import Services, services
from web.uploads import StoredImage

log = logging.getLogger(__name__)


def create_and_submit(svc: Services, owner_id: int, owner: str, stored: list[StoredImage]) -> Job:
    """Record the job and its images, send it to the workers, and have the bridge follow it."""
    task_id = str(uuid.uuid4())
    with svc.db() as db:
        job = Job(task_id=task_id, owner_id=owner_id, state="PENDING", total=len(stored),
                  current_step="queued")
        job.images = [Image(position=i, name=s.name, path=s.path, size=s.size,
                            width=s.width, height=s.height) for i, s in enumerate(stored)]
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


def live_snapshot(job: Job, owner: str, record: dict | None,
                  workers: list[dict] | None = None) -> dict:
    """The bridge's snapshot unless the database already knows an ending it lacks, with
    ``failed`` and ``waiting``. ``workers``: as the bridge stored them (read when needed)."""
    snap = _base_snapshot(job, owner, record)
    detail = (record or {}).get("detail") or {}
    failed = detail.get("failed")
    snap["failed"] = max(job.failed or 0, failed if isinstance(failed, int) else 0)
    snap["waiting"] = waiting(job.queue, snap["state"], workers)
    return snap


def _base_snapshot(job: Job, owner: str, record: dict | None) -> dict:
    if record is not None:
        snap = {**record["snapshot"], "job_id": job.id, "owner": owner}
        if snap["state"] in protocol.TERMINAL_STATES or job.state not in protocol.TERMINAL_STATES:
            if not snap.get("total"):  # before the first image the bridge cannot know it
                snap["total"] = job.total
            return snap
    return db_snapshot(job, owner)


def waiting(queue: str | None, state: str, workers: list[dict] | None = None) -> str | None:
    """PROTOCOL.md's ``waiting``: ``"no_worker"`` while PENDING and no online worker consumes
    ``queue``, ``"queued"`` while PENDING otherwise, None once started.

    A stored worker without a ``"queues"`` list counts as consuming every queue.
    ``workers`` None: read them; when Redis cannot say, the job counts as ``"queued"``.
    """
    if state != "PENDING":
        return None
    if workers is None:
        try:
            workers = read_workers(services().redis)
        except RedisError:
            return "queued"
    queue = queue or "celery"
    for worker in workers:
        queues = worker.get("queues")
        if worker.get("online") and (not isinstance(queues, list) or queue in queues):
            return "queued"
    return "no_worker"


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
        with svc.db() as db:
            items = caption_rows(db, job.task_id, job.id)
        ok = [{"image": r["image"], "caption": r["caption"]} for r in items if r["caption"] is not None]
        results = protocol.caption_results({"count": len(ok), "failed": job.failed, "captions": ok,
                                            "failed_images": failed_images(items)})
    return protocol.ending(snap, results=results, completed=job.done - job.failed,
                           error=("JobFailed", job.error or "the job failed"))


def list_jobs(svc: Services, user: Any, all_users: bool, limit: int, *,
              before: int | None = None, search: str | None = None) -> tuple[list[dict], int | None]:
    """The caller's jobs newest first (admins: everyone's with ``all_users``) and the cursor
    of the next page (None on the last). ``before``: a previous page's cursor (a job id);
    ``search``: part of any of the job's file names, case-insensitive.

    Each snapshot also carries ``first_image`` (the first file's name) and
    ``created_at``, so a list can name a job by what it holds.
    """
    with svc.db() as db:
        q = select(Job, User.name).join(User, User.id == Job.owner_id)
        if not (all_users and can(user, VIEW_ALL)):
            q = q.where(Job.owner_id == user.id)
        if before is not None:
            q = q.where(Job.id < before)
        if search:
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", search) + "%"
            q = q.where(Job.id.in_(select(Image.job_id).where(Image.name.ilike(pattern, escape="\\"))))
        rows = db.execute(q.order_by(Job.id.desc()).limit(limit + 1)).all()
        more, rows = len(rows) > limit, rows[:limit]
        firsts = dict(db.execute(select(Image.job_id, Image.name).where(
            Image.job_id.in_([job.id for job, _ in rows]), Image.position == 0)).all())
    try:
        records = svc.store.get_many(job.task_id for job, _ in rows)
        workers = read_workers(svc.redis) if any(j.state == "PENDING" for j, _ in rows) else []
    except RedisError:
        records, workers = {}, [{"online": True}]  # cannot tell: "queued", never a false alarm
    out = [{**live_snapshot(job, owner, records.get(job.task_id), workers),
            "first_image": firsts.get(job.id), "created_at": job.created_at} for job, owner in rows]
    return out, (rows[-1][0].id if more else None)


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
