"""A small Flask application, separate from Skald, whose Celery tasks are watched live
through Skald (PROTOCOL.md, "Watching any Celery task").

It starts a task (:mod:`examples.watch_app.tasks`), mints a watch token for it
with the one-file helper ``skald_watch_token.py`` (no Skald dependency: copy
the file into your own application), and serves a page that loads Skald's
Socket.IO client and live-socket module (``/static/js/live.js``) from Skald
and watches the task with only that token.

Settings (environment):

- ``SKALD_URL``: where browsers reach Skald (default ``http://127.0.0.1:5000``);
  Skald must list this application's origin in ``CORS_ALLOWED_ORIGINS``;
- ``SKALD_WATCH_SECRET``: the secret Skald signs watch tokens with (the same value
  in both applications);
- ``REDIS_URL``: the broker Skald uses (see tasks.py).

Run: ``python -m examples.watch_app`` (port ``EXAMPLE_PORT``, default 5050).
"""
from __future__ import annotations

import os

from flask import Flask, abort, jsonify, redirect, render_template, request, url_for

from examples.watch_app.tasks import count, crunch
from skald_watch_token import mint

KINDS = {"count": count, "crunch": crunch}


def create_app(skald_url: str | None = None, secret: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SKALD_URL"] = (skald_url or os.environ.get("SKALD_URL") or "http://127.0.0.1:5000").rstrip("/")
    app.config["WATCH_SECRET"] = secret or os.environ.get("SKALD_WATCH_SECRET") or ""

    def start(kind: str) -> dict:
        task = KINDS.get(kind)
        if task is None:
            abort(404)
        total = min(max(request.values.get("total", 10, type=int), 1), 1000)
        delay = min(max(request.values.get("delay", 0.2, type=float), 0.0), 5.0)
        kwargs: dict = {"total": total, "delay": delay}
        if kind == "count" and request.values.get("fail_at", type=int):
            kwargs["fail_at"] = request.values.get("fail_at", type=int)
        countdown = min(max(request.values.get("countdown", 0.0, type=float), 0.0), 3600.0)
        result = task.apply_async(kwargs=kwargs, countdown=countdown or None)
        token = mint(result.id, app.config["WATCH_SECRET"], minutes=60)
        cancel_token = mint(result.id, app.config["WATCH_SECRET"], minutes=60, cancel=True)
        return {"task_id": result.id, "watch_token": token, "cancel_token": cancel_token, "kind": kind,
                "watch_url": url_for("watch", task_id=result.id, token=token, _external=True),
                "progress_url": f"{app.config['SKALD_URL']}/api/tasks/{result.id}/progress"
                                f"?watch_token={token}"}

    @app.get("/")
    def index():
        return render_template("index.html", kinds=sorted(KINDS))

    @app.post("/start/<kind>")
    def start_page(kind: str):
        started = start(kind)  # who started it may cancel it: the page gets the cancel token
        return redirect(url_for("watch", task_id=started["task_id"], token=started["cancel_token"]))

    @app.post("/api/start/<kind>")
    def start_api(kind: str):
        return jsonify(start(kind)), 202

    @app.get("/watch/<task_id>")
    def watch(task_id: str):
        return render_template("watch.html", task_id=task_id, token=request.args.get("token", ""),
                               skald_url=app.config["SKALD_URL"])

    return app


def main() -> None:
    if not os.environ.get("SKALD_WATCH_SECRET"):
        raise SystemExit("set SKALD_WATCH_SECRET (the same value as Skald's)")
    create_app().run(host="127.0.0.1", port=int(os.environ.get("EXAMPLE_PORT", "5050")))
