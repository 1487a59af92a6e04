"""Acting on tasks: terminate now, retry, apply by name, and resuming a caption job.

Terminate, retry and apply are admin-only (:data:`web.roles.ACT_ALL`; a viewer is
``403 forbidden``); resuming a caption job ("Caption the rest") is for its owner
too. Every action is written to the audit log (web/audit.py). Worker control goes
through web/control.py (``terminate``; the registered names for apply).

Retry sends the same task name again with its original args, kwargs and queue:
from the result backend when it keeps them (``result_extended``, on in Skald's
celeryconfig), else from the repr the worker's events carried when that repr is
whole and a plain literal (Celery cuts reprs at 1 024 characters unless the sender
raised ``argsrepr_maxsize``; Skald's own sends keep up to 64 KB). Otherwise it is
``409 conflict``. A caption job is retried as a new job, owned by the same user,
over its images that were not captioned.
"""
from __future__ import annotations

import ast
import logging
import math
import uuid
from typing import Any

import orjson
from celery.exceptions import CeleryError
from flask import Blueprint, jsonify, request
from flask_login import current_user
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy import select

import protocol
from tasks.events import CAPTION_TASK_NAME
from tasks.models import Image, Job
from web import audit, control, jobs
from web.errors import ApiError
from web.explorer import find_record
from web.roles import ACT_ALL, may_act_on, require
from web.services import Services, services
from web.uploads import StoredImage

log = logging.getLogger(__name__)
bp = Blueprint("taskactions", __name__)

ARGS_CAP = 64 * 1024        # bytes of JSON args (and kwargs) a task may be sent with
NAME_CAP = 200              # longest task or queue name
COUNTDOWN_CAP = 7 * 86400   # s an applied task may wait at most
SEND_ERRORS = (KombuError, CeleryError, RedisError, OSError)


def _body(allowed: set[str]) -> dict:
    body = request.get_json(silent=True)
    if body is None and not request.get_data():
        body = {}
    if not isinstance(body, dict):
        raise ApiError("invalid", "the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise ApiError("invalid", f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    return body


def send(svc: Services, name: str, args: list, kwargs: dict, queue: str | None = None,
         countdown: float | None = None) -> str:
    """Send a task by name with a new id (the full repr of its arguments travels with it,
    up to 64 KB, so the explorer keeps them); ``503 unavailable`` when the broker is away."""
    task_id = str(uuid.uuid4())
    options: dict[str, Any] = {"task_id": task_id}
    if queue:
        options["queue"] = queue
    if countdown:
        options["countdown"] = countdown
    for key, value in (("argsrepr", args), ("kwargsrepr", kwargs)):
        text = repr(value)
        if len(text) <= ARGS_CAP:
            options[key] = text
    try:
        svc.celery.send_task(name, args=args, kwargs=kwargs, **options)
    except SEND_ERRORS as exc:
        raise ApiError("unavailable", "the broker is not reachable; try again") from exc
    return task_id


# -- terminate --------------------------------------------------------------------------------
@bp.post("/api/tasks/<task_id>/terminate")
@require(ACT_ALL)
def terminate_task(task_id: str):
    """Revoke and signal now (``{"signal"?}``, default SIGTERM): ``202``; ``409`` once ended."""
    body = _body({"signal"})
    signal = body.get("signal", "SIGTERM")
    if signal not in control.SIGNALS:
        raise ApiError("invalid", f"signal must be one of {', '.join(control.SIGNALS)}")
    state = find_record(task_id)["snapshot"].get("state")
    if state in protocol.TERMINAL_STATES:
        raise ApiError("conflict", f"the task already ended ({state})")
    try:
        control.terminate(services().celery, task_id, signal)
    except SEND_ERRORS as exc:
        raise ApiError("unavailable", "the broker is not reachable; try again") from exc
    audit.log(current_user.name, "terminate", task_id, {"signal": signal}, "sent")
    return jsonify({"task_id": task_id, "signal": signal, "state": state}), 202


# -- retry --------------------------------------------------------------------------------------
def literal(text: Any, kind: type) -> Any:
    """A kept repr of args (list) or kwargs (dict) as JSON values, or None when it is cut,
    not a literal, or not JSON (a repr Celery cut at its limit ends in ``...``)."""
    if not isinstance(text, str) or len(text) > ARGS_CAP:
        return None
    if text.strip() == "":
        return [] if kind is list else {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if kind is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, kind):
        return None
    try:
        return orjson.loads(orjson.dumps(value))
    except (orjson.JSONEncodeError, TypeError):
        return None


def original_call(svc: Services, task_id: str, detail: dict) -> tuple[list, dict, str | None] | None:
    """(args, kwargs, queue) the task was sent with, or None when they were not kept."""
    meta: dict = {}
    try:
        meta = svc.celery.backend.get_task_meta(task_id) or {}
    except SEND_ERRORS as exc:
        log.warning("cannot read the result backend for %s: %s", task_id, exc)
    queue = meta.get("queue") or detail.get("queue")
    if isinstance(meta.get("args"), (list, tuple)) and isinstance(meta.get("kwargs"), dict):
        return list(meta["args"]), meta["kwargs"], queue
    args, kwargs = literal(detail.get("args"), list), literal(detail.get("kwargs"), dict)
    if args is None or kwargs is None:
        return None
    return args, kwargs, queue


def uncaptioned(db, job: Job, depth: int = 0) -> list[Image]:
    """The job's images with no caption text (never captioned, or failed), leaving out
    those a job that resumed it (and so on, 10 deep) has captioned since."""
    rows = db.scalars(select(Image).where(Image.job_id == job.id).order_by(Image.position)).all()
    missing = [i for i in rows if i.caption is None or i.caption.text is None]
    if not missing or depth >= 10:
        return missing
    done: set[str] = set()
    for later in db.scalars(select(Job).where(Job.retry_of == job.task_id)).all():
        left = {i.path for i in uncaptioned(db, later, depth + 1)}
        done |= {i.path for i in later.images} - left
    return [i for i in missing if i.path not in done]


def resume_job(svc: Services, job: Job, by: str) -> Job:
    """A new job of the same owner over ``job``'s images that were not captioned;
    ``409 conflict`` while it runs or when every image has a caption."""
    with svc.db() as db:
        job = db.get(Job, job.id)
        state = jobs.live_snapshot(job, job.owner.name, jobs.fetch_record(svc, job.task_id))["state"]
        if state not in protocol.TERMINAL_STATES:
            raise ApiError("conflict", f"the job has not ended ({state})")
        rest = uncaptioned(db, job)
        if not rest:
            raise ApiError("conflict", "every image of the job has a caption")
        stored = [StoredImage(i.name, i.path, i.size, i.width, i.height) for i in rest]
        owner_id, owner, old = job.owner_id, job.owner.name, job.task_id
    new = jobs.create_and_submit(svc, owner_id, owner, stored)
    with svc.db() as db:
        row = db.get(Job, new.id)
        row.retry_of = old
        db.commit()
        db.refresh(row)
        log.info("job %s resumes %s (%d images) for %s", row.task_id, old, len(stored), by)
        return row


@bp.post("/api/tasks/<task_id>/retry")
@require(ACT_ALL)
def retry_task(task_id: str):
    """``202 {"task_id": NEW, "retry_of": OLD}``; ``409`` when its arguments were not kept."""
    svc = services()
    record = find_record(task_id)
    detail = record.get("detail") or {}
    name = detail.get("name")
    if name == CAPTION_TASK_NAME or (name is None and record["snapshot"].get("job_id")):
        with svc.db() as db:
            job = db.scalar(select(Job).where(Job.task_id == task_id))
        if job is None:
            raise ApiError("conflict", "the job of this task is not in the database")
        new = resume_job(svc, job, current_user.name)
        audit.log(current_user.name, "retry", task_id, {"caption_job": True, "images": new.total},
                  new.task_id)
        return jsonify({"task_id": new.task_id, "retry_of": task_id, "job_id": new.id,
                        "total": new.total}), 202
    if not name:
        raise ApiError("conflict", "the task's name was not kept")
    call = original_call(svc, task_id, detail)
    if call is None:
        raise ApiError("conflict", "the task's arguments were not kept in full")
    args, kwargs, queue = call
    new_id = send(svc, name, args, kwargs, queue)
    audit.log(current_user.name, "retry", task_id, {"name": name, "queue": queue}, new_id)
    return jsonify({"task_id": new_id, "retry_of": task_id}), 202


@bp.post("/api/jobs/<task_id>/resume")
@require()
def resume(task_id: str):
    """"Caption the rest": a new job over the images of an ended job that were not
    captioned, for its owner (or an admin): ``202`` as ``POST /api/jobs`` plus ``retry_of``."""
    svc = services()
    with svc.db() as db:
        job = jobs.find_job(db, task_id, current_user)
        if not may_act_on(current_user, job.owner_id):
            raise ApiError("forbidden", "only the job's owner or an admin may resume it")
    new = resume_job(svc, job, current_user.name)
    audit.log(current_user.name, "resume", task_id, {"images": new.total}, new.task_id)
    return jsonify({"task_id": new.task_id, "job_id": new.id, "total": new.total,
                    "state": "PENDING", "retry_of": task_id}), 202


# -- apply -------------------------------------------------------------------------------------------
def _json_arg(body: dict, key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    if not isinstance(value, kind):
        raise ApiError("invalid", f"{key} must be a JSON {'list' if kind is list else 'object'}")
    try:
        size = len(orjson.dumps(value))
    except (orjson.JSONEncodeError, TypeError):
        raise ApiError("invalid", f"{key} cannot be sent as JSON") from None
    if size > ARGS_CAP:
        raise ApiError("invalid", f"{key} is over {ARGS_CAP // 1024} KB of JSON")
    return value


def queue_for(svc: Services, name: str) -> str | None:
    """A queue consumed by an online worker that registers ``name`` (its first one), so an
    applied task without a queue goes where it can run; None: Celery's routing decides."""
    hosts = sorted(host for host, names in svc.inspector.ask("registered").items()
                   if name in {str(t).split(" ", 1)[0] for t in names or ()})
    queues = svc.inspector.ask("active_queues")
    for host in hosts:
        for q in queues.get(host) or ():
            if isinstance(q, dict) and isinstance(q.get("name"), str):
                return q["name"]
    return None


@bp.post("/api/tasks/apply")
@require(ACT_ALL)
def apply_task():
    """``{"name", "args"?, "kwargs"?, "queue"?, "countdown"?}`` -> ``202 {"task_id"}``;
    ``name`` must be registered on an online worker (``400 invalid`` otherwise)."""
    body = _body({"name", "args", "kwargs", "queue", "countdown"})
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= NAME_CAP:
        raise ApiError("invalid", f"name must be a task name of 1..{NAME_CAP} characters")
    args = _json_arg(body, "args", list, [])
    kwargs = _json_arg(body, "kwargs", dict, {})
    queue = body.get("queue")
    if queue is not None and (not isinstance(queue, str) or not 0 < len(queue) <= NAME_CAP):
        raise ApiError("invalid", f"queue must be a queue name of 1..{NAME_CAP} characters")
    countdown = body.get("countdown")
    if countdown is not None and (isinstance(countdown, bool) or not isinstance(countdown, (int, float))
                                  or not math.isfinite(countdown)
                                  or not 0 <= countdown <= COUNTDOWN_CAP):
        raise ApiError("invalid", f"countdown must be 0..{COUNTDOWN_CAP} seconds")
    svc = services()
    try:
        registered = svc.inspector.registered_names()
        if name in registered and queue is None:
            queue = queue_for(svc, name)
    except SEND_ERRORS as exc:
        raise ApiError("unavailable", "cannot ask the workers; try again") from exc
    if name not in registered:
        raise ApiError("invalid", f"no online worker registers a task named {name[:80]!r}")
    task_id = send(svc, name, args, kwargs, queue, countdown)
    audit.log(current_user.name, "apply", name,
              {"args": args, "kwargs": kwargs, "queue": queue, "countdown": countdown}, task_id)
    return jsonify({"task_id": task_id}), 202
