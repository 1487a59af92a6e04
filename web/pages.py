"""Server-rendered pages: upload, job watcher, login (auth.py), admin."""
from __future__ import annotations

from flask import Blueprint, abort, render_template
from flask_login import current_user

from web import jobs
from web.auth import user_required
from web.errors import ApiError
from web.services import services

bp = Blueprint("pages", __name__)


@bp.get("/")
@user_required
def index():
    return render_template("index.html")


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
    snapshot = jobs.live_snapshot(job, owner, jobs.fetch_record(svc, task_id))
    return render_template("job.html", task_id=task_id, snapshot=snapshot)
