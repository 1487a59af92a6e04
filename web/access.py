"""Who may watch or cancel which task, and what a watcher is shown: caption jobs (rights
from the database, ``web/jobs.py``) and tasks of any application on the broker.

- A caption job: its owner, viewers and admins, or a watch token for it.
- Any other task: viewers and admins, or a watch token for it (PROTOCOL.md,
  "Watching any Celery task"). Cancel: admins, and tokens minted with cancel rights
  (a caption job's owner too).

Anything else is ``not_found``, answered before any look-up of the task, so the
answer never says whether the task exists. For a caller with rights, a task
Skald's store does not know is looked up in Celery's result backend (it may run
on a worker without events, or the bridge may have missed it) and, for up to
:data:`UNKNOWN_WAIT` s, waited for (the bridge may be a few milliseconds behind a
``task-sent``); only then is it ``not_found``.

Watching a task of another application asks the bridge to follow it (a ``track``
command without a job id, sent at most once per :data:`FOLLOW_EVERY` s per task and
process): it then reconciles its ending and polls the backend for
``update_state`` progress (bridge/watchlist.py).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery.exceptions import CeleryError
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy import select

import protocol
from bridge.commands import send_track
from tasks.models import Job
from web import jobs
from web.errors import ApiError
from web.roles import ACT_ALL, VIEW_ALL, can
from web.services import Services
from web.watchtokens import CANCEL, rights

log = logging.getLogger(__name__)

TASK_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,155}$")  # Celery ids: UUIDs or custom
UNKNOWN_WAIT = 3.0   # s a task unknown to the store and the backend is waited for
UNKNOWN_STEP = 0.2   # s between looks meanwhile
FOLLOW_EVERY = 30.0  # s between track commands for one task from one process
FOLLOW_CAP = 10_000  # tasks remembered for that


@dataclass
class Target:
    """A task the caller may watch: ``job`` for a caption job (None: any other task)."""

    task_id: str
    job: Job | None
    owner: str | None
    may_cancel: bool
    record: dict | None
    meta: dict | None = None  # the result backend's, when it was read


def may_see(user: Any, owner_id: int | None) -> bool:
    return bool(getattr(user, "is_authenticated", False)) and user.id == owner_id


def find(svc: Services, task_id: str, user: Any, token: str | None, *,
         wait: float = UNKNOWN_WAIT) -> Target:
    """The task ``task_id`` if ``user`` (or ``token``) may watch it; else ``not_found``."""
    if not isinstance(task_id, str) or not TASK_ID_RE.match(task_id):
        raise ApiError("not_found", "no such task")
    granted = rights(task_id, token) if token else None
    job, owner = _caption_job(svc, task_id)
    if job is not None:
        if not (granted or may_see(user, job.owner_id) or can(user, VIEW_ALL)):
            raise ApiError("not_found", "no such job")
        may_cancel = granted == CANCEL or may_see(user, job.owner_id) or can(user, ACT_ALL)
        return Target(task_id, job, owner, may_cancel, jobs.fetch_record(svc, task_id))
    if not (granted or can(user, VIEW_ALL)):
        raise ApiError("not_found", "no such task")
    target = Target(task_id, None, None, granted == CANCEL or can(user, ACT_ALL), None)
    deadline = time.monotonic() + wait
    while True:
        target.record = svc.store.get(task_id)
        if target.record is not None and target.record["snapshot"].get("state") != "PENDING":
            return target
        # The bridge may know the task only from a `track` (PENDING) while the result backend
        # already holds its update_state progress or ending: read that too.
        target.meta = backend_meta(svc, task_id)
        if target.meta is not None or target.record is not None:
            return target
        if time.monotonic() >= deadline:
            raise ApiError("not_found", "no such task")
        time.sleep(UNKNOWN_STEP)


def _caption_job(svc: Services, task_id: str) -> tuple[Job | None, str | None]:
    with svc.db() as db:
        job = db.scalar(select(Job).where(Job.task_id == task_id))
        return (job, job.owner.name) if job is not None else (None, None)


def backend_meta(svc: Services, task_id: str) -> dict | None:
    """Celery's meta of ``task_id`` as the result backend holds it (exceptions rebuilt, as
    ``AsyncResult`` does), or None when it holds nothing (PENDING) or nothing readable."""
    try:
        meta = svc.celery.backend.get_task_meta(task_id)
    except (CeleryError, KombuError, ValueError, TypeError, KeyError) as exc:
        log.warning("cannot read the stored result of %s: %s", task_id, exc)
        return None
    return meta if meta.get("status") not in (None, "PENDING") else None


def view(svc: Services, target: Target, with_ending: bool = True) -> tuple[dict, dict | None]:
    """``(snapshot, ending)`` of a watched task (ending None while it runs, or when not
    ``with_ending``); asks the bridge to follow it when its store has no word on it, or
    no ending yet for any application's task."""
    if target.job is not None:
        snap = jobs.live_snapshot(target.job, target.owner, target.record)
        if target.record is None and snap["state"] not in protocol.TERMINAL_STATES:
            jobs.track(svc, target.task_id, target.job.id, target.owner, target.job.total)
        return snap, jobs.ending(svc, target.job, snap, target.record) if with_ending else None
    record = target.record
    if record is not None and target.meta is None:
        snap = dict(record["snapshot"])
        ending = record.get("ending") if snap.get("state") in protocol.TERMINAL_STATES else None
        if ending is None:
            follow(svc, target.task_id)
        return snap, ending
    follow(svc, target.task_id)  # the bridge reconciles it: an ending reaches the room
    return meta_snapshot(target.task_id, target.meta or {}), None


def meta_snapshot(task_id: str, meta: dict) -> dict:
    """A snapshot from the result backend alone (the bridge has not recorded the task yet)."""
    status = meta.get("status")
    info = meta.get("result") if isinstance(meta.get("result"), dict) else {}
    state = status if status in protocol.STATES else "PROGRESS" if status else "PENDING"
    numbers = [info.get(k) for k in ("current", "total")]
    current, total = (int(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                      and 0 <= v < 2**53 else 0 for v in numbers)
    description = info.get("description")
    return protocol.snapshot(task_id, state=state, current=current, total=total,
                             current_step=description if isinstance(description, str) else "",
                             updated_at=time.time())


_followed: dict[str, float] = {}
_followed_lock = threading.Lock()


def follow(svc: Services, task_id: str) -> None:
    """Ask the bridge to follow a task of any application (throttled per process)."""
    now = time.monotonic()
    with _followed_lock:
        if now - _followed.get(task_id, -FOLLOW_EVERY) < FOLLOW_EVERY:
            return
        if len(_followed) >= FOLLOW_CAP:
            for key in [k for k, t in _followed.items() if now - t >= FOLLOW_EVERY] or list(_followed):
                del _followed[key]
        _followed[task_id] = now
    try:
        send_track(svc.redis, task_id, None, None, 0)
    except RedisError as exc:
        log.warning("could not ask the bridge to follow %s: %s", task_id, exc)
        with _followed_lock:
            _followed.pop(task_id, None)


def cancel(svc: Services, target: Target, by: str) -> None:
    """Hand a cancel to the bridge: ``forbidden`` without the right, ``conflict`` once ended."""
    if not target.may_cancel:
        raise ApiError("forbidden", "only the job's owner, an admin or a cancel token may cancel it")
    if target.job is not None:
        jobs.request_cancel(svc, target.job, target.owner, by=by)
        return
    state = view(svc, target, with_ending=False)[0]["state"]
    if state not in protocol.TERMINAL_STATES:  # the backend may know an ending the bridge has yet to
        state = (target.meta or backend_meta(svc, target.task_id) or {}).get("status", state)
    if state in protocol.TERMINAL_STATES:
        raise ApiError("conflict", f"the task already ended ({state})")
    jobs.queue_cancel(svc, target.task_id, by)
