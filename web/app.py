"""The Flask app factory: settings, services, blueprints, Socket.IO."""
from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from flask import Flask, g, request
from flask_login import current_user
from flask_socketio import SocketIO
from flask_wtf.csrf import CSRFProtect

from bridge.store import SnapshotStore
from protocol import SOCKETIO_CHANNEL
from settings import Settings, load_settings
from tasks.app import make_celery
from tasks.cancel import redis_client
from tasks.db import sessions
from web.control import Inspector
from web.errors import ApiError
from web.services import Services

log = logging.getLogger(__name__)
csrf = CSRFProtect()


def _settings_from(config: Settings | Mapping[str, Any] | None) -> tuple[Settings, dict]:
    """Split ``config`` into Skald settings and extra Flask config (UPPER_CASE keys)."""
    if isinstance(config, Settings):
        return config, {}
    base = load_settings()
    if not config:
        return base, {}
    names = {f.name for f in fields(Settings)}
    overrides = {k: v for k, v in config.items() if k in names}
    flask_cfg = {k: v for k, v in config.items() if k.isupper()}
    unknown = set(config) - names - set(flask_cfg)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    return base.with_overrides(**overrides), flask_cfg


def secret_key(settings: Settings) -> str:
    """``SECRET_KEY`` from the environment, else ``var/secret_key`` (created, mode 600)."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.var_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        key = secrets.token_hex(32)
        fh.write(key)
    return key


def _async_mode(wanted: str) -> str:
    if wanted == "gevent":
        from gevent import monkey
        if not monkey.is_module_patched("socket"):
            return "threading"
    return wanted


def create_app(config: Settings | Mapping[str, Any] | None = None, *,
               message_queue: bool = True) -> Flask:
    """Build the web app. ``config``: a :class:`Settings`, or overrides of its fields
    plus Flask config keys in UPPER_CASE; default: the environment.

    ``message_queue=False`` leaves out the Redis message queue, for
    Flask-SocketIO's test client (which refuses to run with one).
    """
    settings, flask_cfg = _settings_from(config)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key(settings),
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SECURE=settings.secure_cookies,
        WTF_CSRF_CHECK_DEFAULT=False,  # checked below, for session-authenticated requests
        WTF_CSRF_TIME_LIMIT=None,
        JSON_SORT_KEYS=False,
    )
    app.config.update(flask_cfg)
    client = redis_client(settings.redis_url)
    celery = make_celery(settings)
    app.extensions["skald"] = Services(
        settings=settings, redis=client, db=sessions(settings.database_url),
        celery=celery, store=SnapshotStore(client), inspector=Inspector(celery))

    from web import admin, api, audit, auth, errors, explorer, operate, pages, progress, review, sockets, taskactions
    errors.register(app)
    csrf.init_app(app)
    auth.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(progress.bp)  # GET /api/tasks/<id>/progress (celery-progress's shape)
    app.register_blueprint(pages.bp)
    app.register_blueprint(review.bp)
    app.register_blueprint(audit.bp)    # GET /api/audit
    app.register_blueprint(operate.bp)  # one worker, worker control, task-type limits, queues
    app.register_blueprint(explorer.bp)  # GET /api/tasks, /api/tasks/<id>, /admin/tasks/<id>
    app.register_blueprint(taskactions.bp)  # terminate, retry, apply, resume

    @app.before_request
    def _credentials_and_csrf():
        # With a Bearer header only the token counts (the cookie is never used):
        # a bad one is 401 on the API whatever cookie comes with it. CSRF guards
        # ambient credentials: every form, and API calls made with the session
        # cookie; it is skipped only for a request a bearer token authenticated.
        if auth.has_bearer():
            if current_user.is_authenticated:
                return
            if request.path.startswith("/api/"):
                raise ApiError("unauthorized", "the bearer token is not valid")
        if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
            return
        if current_user.is_authenticated or not request.path.startswith("/api/"):
            csrf.protect()

    @app.after_request
    def _promote_connection(response):
        # A request that authenticated: its connection stops counting against
        # the per-IP cap of anonymous connections (web/server.py).
        user = g.get("_login_user")
        promote = request.environ.get("skald.connection")
        if promote is not None and user is not None and user.is_authenticated:
            promote()
        return response

    async_mode = _async_mode(settings.web_async_mode)
    manager = None
    if message_queue:
        from web.messagequeue import MessageQueue

        manager = MessageQueue(settings.redis_url, channel=SOCKETIO_CHANNEL)
    socketio = SocketIO(
        app,
        async_mode=async_mode,
        client_manager=manager,
        cors_allowed_origins=list(settings.cors_allowed_origins) or None,
        # Engine.IO drops a connection past this; the 16 KB payload cap is
        # checked per event so an oversized payload gets an `invalid` ack.
        max_http_buffer_size=1024 * 1024,
        ping_interval=10,
        ping_timeout=10,
    )
    sockets.register(socketio, app)
    admin.init_app(app, socketio)  # operator view, /metrics; after sockets (connections)
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Outermost, so pages, the API and Socket.IO all see the client's address.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies,
                                x_proto=settings.trusted_proxies)
    return app
