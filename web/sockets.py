"""Socket.IO handlers: auth on connect, validated and rate-limited client events, rooms.

Every client event is answered through its acknowledgement, ``{"ok": true, ...}``
or ``{"ok": false, "error": {"code", "message"}}``; nothing a client sends can
break the connection or the process.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import Flask, current_app, request
from flask_login import current_user
from flask_socketio import ConnectionRefusedError, SocketIO, emit, join_room, leave_room
from redis.exceptions import RedisError

import protocol
from bridge.store import read_metrics
from web import jobs, metrics
from web.auth import Principal, principal_for_token
from web.errors import ApiError
from web.maintenance import maintenance_status
from web.ratelimit import TokenBucket
from web.services import services

log = logging.getLogger(__name__)

TASK_KEYS = frozenset({"task_id"})


@dataclass
class Conn:
    user: Principal
    bucket: TokenBucket


class Connections:
    """Who is connected to this web process (per-process, thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_sid: dict[str, Conn] = {}
        self.per_user: dict[int, int] = {}

    def add(self, sid: str, conn: Conn, cap: int) -> bool:
        with self._lock:
            if self.per_user.get(conn.user.id, 0) >= cap:
                return False
            self.by_sid[sid] = conn
            self.per_user[conn.user.id] = self.per_user.get(conn.user.id, 0) + 1
            return True

    def remove(self, sid: str) -> None:
        with self._lock:
            conn = self.by_sid.pop(sid, None)
            if conn is not None:
                left = self.per_user.get(conn.user.id, 1) - 1
                if left > 0:
                    self.per_user[conn.user.id] = left
                else:
                    self.per_user.pop(conn.user.id, None)

    def get(self, sid: str) -> Conn | None:
        return self.by_sid.get(sid)

    def __len__(self) -> int:
        return len(self.by_sid)


def fail(code: str, message: str) -> dict:
    metrics.SOCKET_REJECTED.labels(reason=code).inc()
    return {"ok": False, "error": {"code": code, "message": message}}


def register(socketio: SocketIO, app: Flask) -> None:
    settings = app.extensions["skald"].settings
    conns = Connections()
    app.extensions["skald_connections"] = conns

    def handler(name: str, keys: frozenset[str]) -> Callable:
        """Wrap a client-event handler: rate limit, payload checks, errors as acks."""
        def deco(fn: Callable[[Conn, dict], dict]) -> Callable:
            @wraps(fn)
            def wrapped(data: Any = None, *extra: Any) -> dict:
                conn = conns.get(request.sid)
                if conn is None:
                    return fail("unauthorized", "not connected")
                if not conn.bucket.take():
                    return fail("rate_limited", "too many events; slow down")
                problem = _check_payload(data, keys, settings.socket_payload_bytes)
                if problem:
                    return fail("invalid", problem)
                try:
                    return fn(conn, data or {})
                except ApiError as err:
                    return fail(err.code, err.message)
                except RedisError:
                    log.exception("redis error in %s", name)
                    return fail("unavailable", "live state is unavailable; try again")
                except Exception:  # noqa: BLE001 - a handler bug must not drop the client
                    log.exception("error in socket handler %s", name)
                    return fail("unavailable", "internal error")
            socketio.on_event(name, wrapped)
            return wrapped
        return deco

    @socketio.on("connect")
    def on_connect(auth: Any = None):
        user = _authenticate(auth)
        if user is None:
            metrics.SOCKET_REJECTED.labels(reason="unauthorized").inc()
            raise ConnectionRefusedError("unauthorized")
        conn = Conn(user=user, bucket=TokenBucket(settings.socket_rate, settings.socket_burst))
        if not conns.add(request.sid, conn, settings.connections_per_user):
            metrics.SOCKET_REJECTED.labels(reason="rate_limited").inc()
            raise ConnectionRefusedError("rate_limited")
        metrics.WATCHERS.set(len(conns))
        emit(protocol.CONNECTED, {"sid": request.sid, "user": user.name, "is_admin": user.is_admin,
                           "server_time": time.time()})
        try:
            status = maintenance_status(services().redis)
        except RedisError:
            status = {"active": False}
        if status["active"]:
            emit(protocol.MAINTENANCE_STATUS, status)

    @socketio.on("disconnect")
    def on_disconnect(*_args: Any):
        conns.remove(request.sid)
        metrics.WATCHERS.set(len(conns))

    def _job(conn: Conn, data: dict):
        task_id = data.get("task_id")
        if not jobs.is_uuid(task_id):
            raise ApiError("invalid", "task_id must be a UUID")
        svc = services()
        with svc.db() as db:
            job = jobs.find_job(db, task_id, conn.user)
            owner = job.owner.name
        return svc, job, owner

    @handler("join_task", TASK_KEYS)
    def join_task(conn: Conn, data: dict) -> dict:
        svc, job, owner = _job(conn, data)
        join_room(protocol.task_room(job.task_id))
        record = jobs.fetch_record(svc, job.task_id)
        snap = jobs.live_snapshot(job, owner, record)
        if record is None and snap["state"] not in protocol.TERMINAL_STATES:
            # The bridge has no word on this job (it may have missed all of
            # it): have it follow the job and reconcile its ending.
            jobs.track(svc, job.task_id, job.id, owner, job.total)
        ending = jobs.ending(svc, job, snap, record)
        if ending is not None:
            # It ended: this is the client's one ending. It stays in the room for
            # caption_updated (review); clients keep the first ending they get.
            emit(ending["event"], ending["payload"])
        else:
            emit(protocol.PROGRESS_UPDATE, snap)
        return {"ok": True, "snapshot": snap}

    @handler("leave_task", TASK_KEYS)
    def leave_task(conn: Conn, data: dict) -> dict:
        task_id = data.get("task_id")
        if not jobs.is_uuid(task_id):
            raise ApiError("invalid", "task_id must be a UUID")
        leave_room(protocol.task_room(task_id))
        return {"ok": True}

    @handler("cancel_task", TASK_KEYS)
    def cancel_task(conn: Conn, data: dict) -> dict:
        svc, job, owner = _job(conn, data)
        jobs.request_cancel(svc, job, owner, by=conn.user.name)
        return {"ok": True, "state": "CANCELLING"}

    @handler("get_task_status", TASK_KEYS)
    def get_task_status(conn: Conn, data: dict) -> dict:
        svc, job, owner = _job(conn, data)
        return {"ok": True, "snapshot": jobs.live_snapshot(job, owner,
                                                           jobs.fetch_record(svc, job.task_id))}

    @handler("join_admin_dashboard", frozenset())
    def join_admin_dashboard(conn: Conn, data: dict) -> dict:
        if not conn.user.is_admin:
            raise ApiError("unauthorized", "admins only")
        join_room(protocol.ADMIN_ROOM)
        svc = services()
        watchers = metrics.watchers_total(svc.redis, current_app.extensions["skald_report_id"],
                                          len(conns))
        return {"ok": True, "metrics": read_metrics(svc.redis, watchers=watchers)}


def _authenticate(auth: Any) -> Principal | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return principal_for_token(auth["token"])
    if current_user.is_authenticated:
        return Principal(id=current_user.id, name=current_user.name,
                         is_admin=current_user.is_admin)
    return None


def _check_payload(data: Any, keys: frozenset[str], cap: int) -> str | None:
    """Why ``data`` is refused, or None when it is a well-formed payload."""
    if data is None and not keys:
        return None
    if not isinstance(data, dict):
        return "the payload must be a JSON object"
    try:
        size = len(json.dumps(data))
    except (TypeError, ValueError):
        return "the payload is not JSON"
    if size > cap:
        return f"the payload is larger than {cap} bytes"
    unknown = set(data) - keys
    if unknown:
        return f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}"
    return None
