"""Reviewing captions (PROTOCOL.md, "Reviewing captions"): list, edit, approve, thumbnails.

Who may do what: the job's owner and admins read and change a job's captions;
a viewer reads any job's but changes none (``403 forbidden``); anyone else is
told ``404 not_found`` (existence is not leaked). Every change is pushed to the
job's room as ``caption_updated`` (the row, ``"task_id"`` and ``"by"``), so a
second tab or a second reviewer sees it at once; approvals are audited.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask_login import current_user
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

import protocol
from tasks.models import ROLES, Image, Job, User
from web import audit, captions, thumbnails
from web.auth import user_required
from web.errors import ApiError
from web.jobs import is_uuid
from web.services import services

log = logging.getLogger(__name__)
bp = Blueprint("review", __name__)

THUMB_MAX_AGE = 7 * 24 * 3600  # s a browser may keep a thumbnail (it never changes)


def role_of(db: Session, user: Any) -> str:
    """The caller's role (``user``, ``viewer`` or ``admin``)."""
    role = getattr(user, "role", None)
    if role in ROLES:
        return role
    if getattr(user, "is_admin", False):
        return "admin"
    row = db.get(User, user.id)
    return row.role if row is not None and row.role in ROLES else "user"


def review_job(db: Session, task_id: str, user: Any, *, change: bool = False) -> Job:
    """The job if ``user`` may read (``change``: also change) its captions."""
    job = db.scalar(select(Job).where(Job.task_id == task_id)) if is_uuid(task_id) else None
    if job is None:
        raise ApiError("not_found", "no such job")
    if job.owner_id == user.id:
        return job
    role = role_of(db, user)
    if role == "admin":
        return job
    if role == "viewer":
        if change:
            raise ApiError("forbidden", "a viewer may read these captions but not change them")
        return job
    raise ApiError("not_found", "no such job")


def push(task_id: str, items: list[dict], by: str) -> None:
    """``caption_updated`` for each changed row, to the job's room on every web process."""
    socketio = current_app.extensions["socketio"]
    room = protocol.task_room(task_id)
    for item in items:
        try:
            socketio.emit(protocol.CAPTION_UPDATED, {**item, "task_id": task_id, "by": by},
                          to=room, namespace="/")
        except (RedisError, OSError) as exc:  # saved anyway; the next load shows it
            log.warning("could not push caption_updated for %s: %s", task_id, exc)
            return


@bp.get("/api/jobs/<task_id>/captions")
@user_required
def list_captions(task_id: str):
    """Every image of the job in upload order; ``?format=csv`` for a spreadsheet."""
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError("invalid", "format must be json or csv")
    with services().db() as db:
        job = review_job(db, task_id, current_user)
        items = captions.rows(db, task_id, job.id)
    if fmt == "csv":
        return Response(captions.to_csv(items), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="captions-{task_id}.csv"'})
    return jsonify({"task_id": task_id, "captions": items})


@bp.patch("/api/jobs/<task_id>/captions/<image_id>")
@user_required
def edit_caption(task_id: str, image_id: str):
    """``{"caption"?: text, "status"?: "approved"}`` -> 200 the row."""
    with services().db() as db:
        job = review_job(db, task_id, current_user, change=True)
        image, caption = captions.find_image(db, job.id, image_id)
        text, approve = captions.parse_edit(request.get_json(silent=True))
        changed = captions.apply_edit(caption, text, approve, current_user.name)
        item = captions.row(task_id, image, caption)
        if changed and approve:
            audit.record(db, current_user.name, "caption_approve", task_id,
                  {"image_id": image.id, "edited": text is not None}, "approved")
        db.commit()
    if changed:
        push(task_id, [item], current_user.name)
    return jsonify(item)


@bp.post("/api/jobs/<task_id>/captions/approve")
@user_required
def approve_captions(task_id: str):
    """Every ``generated`` or ``edited`` row becomes ``approved`` -> ``{"approved": N}``."""
    with services().db() as db:
        job = review_job(db, task_id, current_user, change=True)
        changed = captions.approve_all(db, job.id, current_user.name)
        items = [captions.row(task_id, image, caption) for image, caption in changed]
        if items:
            audit.record(db, current_user.name, "captions_approve_all", task_id, {},
                  f"{len(items)} approved")
        db.commit()
    push(task_id, items, current_user.name)
    return jsonify({"approved": len(items)})


@bp.get("/api/jobs/<task_id>/images/<image_id>/thumbnail")
@user_required
def thumbnail(task_id: str, image_id: str):
    """A JPEG at most 320 px on its longer side, made on first request and kept."""
    svc = services()
    with svc.db() as db:
        job = review_job(db, task_id, current_user)
        image, _caption = captions.find_image(db, job.id, image_id)
        known, source = image.thumbnail, image.path
    data = thumbnails.cached(known)
    if data is None:
        try:
            made, width, height = thumbnails.make(Path(source), Path(svc.settings.upload_dir) / "thumbs")
        except thumbnails.NoPreview as exc:
            raise ApiError("unsupported", f"no preview: {exc}") from None
        data = made.read_bytes()
        _remember(svc, image.id, made, width, height)
    resp = Response(data, mimetype=thumbnails.MIME)
    resp.headers["Cache-Control"] = f"private, max-age={THUMB_MAX_AGE}"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def _remember(svc: Any, image_id: int, made: Path, width: int, height: int) -> None:
    """Record a new thumbnail; one made at the same time by another request is dropped."""
    with svc.db() as db:
        image = db.get(Image, image_id)
        earlier = image.thumbnail
        image.thumbnail, image.width, image.height = str(made), width, height
        db.commit()
    if earlier and earlier != str(made):
        Path(earlier).unlink(missing_ok=True)
