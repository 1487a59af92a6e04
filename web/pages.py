"""Server-rendered pages: upload and recent jobs, the job watcher (login: auth.py, admin: admin.py).

Every page also gets ``maintenance`` (the operator's status) so the banner, the
upload form and the login page show it from the first paint; the socket keeps
it current afterwards.
"""
from __future__ import annotations

from flask import Blueprint, abort, render_template
from flask_login import current_user
from redis.exceptions import RedisError
from sqlalchemy import select

import protocol
from tasks.models import Image
from web import jobs
from web.auth import user_required
from web.errors import ApiError
from web.maintenance import OFF, maintenance_status
from web.roles import VIEW_ALL, can, may_act_on
from web.services import services
from web.taskactions import uncaptioned
from web.uploads import ALLOWED_FORMATS

bp = Blueprint("pages", __name__)

# What the file picker accepts (MIME types and extensions of uploads.ALLOWED_FORMATS).
ACCEPT = {"JPEG": ("image/jpeg", ".jpg", ".jpeg"), "PNG": ("image/png", ".png"),
          "GIF": ("image/gif", ".gif"), "WEBP": ("image/webp", ".webp"),
          "BMP": ("image/bmp", ".bmp"), "TIFF": ("image/tiff", ".tif", ".tiff")}


@bp.app_context_processor
def _maintenance() -> dict:
    try:
        status = maintenance_status(services().redis)
    except RedisError:
        status = dict(OFF)
    return {"maintenance": status, "operator": can(current_user, VIEW_ALL)}


@bp.get("/")
@user_required
def index():
    settings = services().settings
    accept = [item for fmt in ALLOWED_FORMATS for item in ACCEPT.get(fmt, ())]
    limits = {"max_images": settings.max_images_per_job, "max_image_bytes": settings.max_image_bytes,
              "max_request_bytes": settings.max_request_bytes,
              "image_size": megabytes(settings.max_image_bytes),
              "request_size": megabytes(settings.max_request_bytes),
              "formats": ["WebP" if f == "WEBP" else f for f in ALLOWED_FORMATS], "accept": accept}
    return render_template("index.html", limits=limits)


def megabytes(n: int) -> str:
    """20971520 -> "20 MB"; 1536000 -> "1.5 MB"; under 1 MB in KB."""
    if n < 1024 * 1024:
        return f"{max(1, round(n / 1024))} KB"
    return f"{n / (1024 * 1024):.1f}".removesuffix(".0") + " MB"


@bp.get("/jobs/<task_id>")
@user_required
def job_page(task_id: str):
    svc = services()
    with svc.db() as db:
        try:
            job = jobs.find_job(db, task_id, current_user)
        except ApiError:
            abort(404)
        owner = job.owner.name
        first = db.scalar(select(Image.name).where(Image.job_id == job.id, Image.position == 0))
        snapshot = jobs.live_snapshot(job, owner, jobs.fetch_record(svc, task_id))
        may_resume = may_act_on(current_user, job.owner_id)  # "Caption the rest" (web/taskactions.py)
        resumable = may_resume and snapshot["state"] in protocol.TERMINAL_STATES \
            and bool(uncaptioned(db, job))
    return render_template("job.html", task_id=task_id, snapshot=snapshot, first_image=first or "",
                           total=job.total, created_at=job.created_at, owner=owner,
                           may_resume=may_resume, resumable=resumable)
