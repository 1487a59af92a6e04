"""Socket.IO handlers: auth on connect, validated and rate-limited client events, rooms.

Every client event is answered through its acknowledgement, ``{"ok": true, ...}``
or ``{"ok": false, "error": {"code", "message"}}``; nothing a client sends can
break the connection or the process. Each event first re-checks that the
connection's credentials still hold (``web/connections.py``), then its role
(``web/roles.py``): a viewer watches any task and the admin room, only an
admin acts on other users' jobs.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import orjson
from flask import Flask, current_app, request
from flask_login import current_user
from flask_socketio import ConnectionRefusedError, SocketIO, emit, join_room, leave_room
from redis.exceptions import RedisError

import protocol
from bridge.store import read_metrics
from web import access, jobs, metrics
from web.accounts import Principal
from web.auth import principal_for_token
from web.connections import Conn, Connections, Guard, install
from web.errors import ApiError
from web.maintenance import maintenance_status
from web.ratelimit import TokenBucket
from web.roles import VIEW_ALL, check
from web.services import services
from web.watchtokens import WatchPrincipal, principal_for

log = logging.getLogger(__name__)

TASK_KEYS = frozenset({"task_id", "watch_token"})


def fail(code: str, message: str) -> dict:
    metrics.SOCKET_REJECTED.labels(reason=code).inc()
    return {"ok": False, "error": {"code": code, "message": message}}


def register(socketio: SocketIO, app: Flask) -> None:
    svc = app.extensions["skald"]
    settings = svc.settings
    conns = Connections()
    server = socketio.server

    def disconnect_now(sid: str) -> None:
        socketio.sleep(0.05)  # an event's refusal ack goes out first
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        server.disconnect(sid, namespace="/", ignore_queue=True)
        if eio_sid is not None and eio_sid in server.eio.sockets:
            server.eio.disconnect(eio_sid)

    def disconnect(sid: str) -> None:
        socketio.start_background_task(disconnect_now, sid)

    guard = Guard(conns, svc.db, settings, disconnect)
    app.extensions["skald_connections"] = conns
    app.extensions["skald_guard"] = guard
    install(socketio, guard)
    if hasattr(server.manager, "hooks"):
        server.manager.hooks = RoomHooks(conns, guard, svc.store)

    def handler(name: str, keys: frozenset[str], needs: str | None = None,
                refuse: str = "forbidden") -> Callable:
        """Wrap a client-event handler: credentials, rate limit, payload, role, errors as acks."""
        def deco(fn: Callable[[Conn, dict], dict]) -> Callable:
            @wraps(fn)
            def wrapped(data: Any = None, *extra: Any) -> dict:
                conn = conns.get(request.sid)
                if conn is None or not guard.current(request.sid, conn):
                    return fail("unauthorized", "not connected, or the credentials changed")
                if not conn.bucket.take():
                    return fail("rate_limited", "too many events; slow down")
                problem = _check_payload(data, keys, settings.socket_payload_bytes)
                if problem:
                    return fail("invalid", problem)
                try:
                    if needs is not None:
                        check(conn.user, needs, refuse)
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
        guard.connected(server.manager.eio_sid_from_sid(request.sid, "/"))
        promote = request.environ.get("skald.connection")
        if promote is not None and user.is_authenticated:
            promote()  # a user's connection: no longer counted as anonymous (a token's stays)
        metrics.WATCHERS.set(len(conns))
        emit(protocol.CONNECTED, {"sid": request.sid, "user": user.name, "is_admin": user.is_admin,
                                  "role": user.role, "server_time": time.time(),
                                  "watch_only": isinstance(user, WatchPrincipal)})
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

    def _target(conn: Conn, data: dict) -> access.Target:
        """The task of a payload, if this connection may watch it (web/access.py)."""
        task_id = data.get("task_id")
        if not jobs.is_uuid(task_id):
            raise ApiError("invalid", "task_id must be a UUID")
        token = data.get("watch_token")
        if token is not None and (not isinstance(token, str) or len(token) > 200):
            raise ApiError("invalid", "watch_token must be a watch token")
        if isinstance(conn.user, WatchPrincipal):  # a token-only connection: its token only
            if token is not None and token != conn.user.token:
                raise ApiError("not_found", "no such task")
            target = access.find(services(), task_id, conn.user, conn.user.token)
            promote = request.environ.get("skald.connection")
            if promote is not None:
                promote()  # its token holds: no longer counted as an anonymous connection
            return target
        return access.find(services(), task_id, conn.user, token)

    @handler("join_task", TASK_KEYS)
    def join_task(conn: Conn, data: dict) -> dict:
        target = _target(conn, data)
        join_room(protocol.task_room(target.task_id))
        snap, ending = access.view(services(), target)
        if ending is not None:
            # It ended: this is the client's one ending. It stays in the room for
            # caption_updated (review); a late duplicate of the ending from the
            # room skips a client that already had it (claim_ending).
            if conns.claim_ending(request.sid, target.task_id):
                emit(ending["event"], ending["payload"])
        elif not conns.has_ending(request.sid, target.task_id) \
                and snap["state"] not in protocol.TERMINAL_STATES:
            emit(protocol.PROGRESS_UPDATE, snap)  # (an ending the bridge has yet to record comes to the room)
        return {"ok": True, "snapshot": snap}

    @handler("leave_task", TASK_KEYS)
    def leave_task(conn: Conn, data: dict) -> dict:
        task_id = data.get("task_id")
        if not jobs.is_uuid(task_id):
            raise ApiError("invalid", "task_id must be a UUID")
        leave_room(protocol.task_room(task_id))
        conns.forget_task(request.sid, task_id)
        return {"ok": True}

    @handler("cancel_task", TASK_KEYS)
    def cancel_task(conn: Conn, data: dict) -> dict:
        access.cancel(services(), _target(conn, data), by=conn.user.name or "a cancel token")
        return {"ok": True, "state": "CANCELLING"}

    @handler("get_task_status", TASK_KEYS)
    def get_task_status(conn: Conn, data: dict) -> dict:
        return {"ok": True, "snapshot": access.view(services(), _target(conn, data), with_ending=False)[0]}

    @handler("join_admin_dashboard", frozenset(), needs=VIEW_ALL, refuse="unauthorized")
    def join_admin_dashboard(conn: Conn, data: dict) -> dict:
        join_room(protocol.ADMIN_ROOM)
        svc = services()
        watchers = metrics.watchers_total(svc.redis, current_app.extensions["skald_report_id"],
                                          len(conns))
        return {"ok": True, "metrics": read_metrics(svc.redis, watchers=watchers)}


class RoomHooks:
    """What the message queue (``web/messagequeue.py``) asks of this process's rooms."""

    def __init__(self, conns: Connections, guard: Guard, store: Any) -> None:
        self.conns = conns
        self.guard = guard
        self.store = store

    def already_ended(self, task_id: str, sids: list[str]) -> list[str]:
        """The members that already had ``task_id``'s ending (the rest are marked as having it)."""
        return [sid for sid in sids if not self.conns.claim_ending(sid, task_id)]

    def had_ending(self, task_id: str, sids: list[str]) -> list[str]:
        """The members that already had ``task_id``'s ending (a progress_update skips them)."""
        return [sid for sid in sids if self.conns.has_ending(sid, task_id)]

    def catch_up(self, manager: Any) -> None:
        """Re-send to every task room here the ending, or else the snapshot, the store holds."""
        rooms = [r for r in manager.rooms.get("/", {}) if isinstance(r, str)
                 and r.startswith(protocol.task_room(""))]
        if not rooms:
            return
        try:
            records = self.store.get_many(r[len(protocol.task_room("")):] for r in rooms)
        except RedisError as exc:
            log.warning("catch-up: cannot read the task records: %s", exc)
            return
        sent = 0
        for task_id, record in records.items():
            room = protocol.task_room(task_id)
            sids = [sid for sid, _eio in manager.get_participants("/", room)]
            ending = record.get("ending")
            if record["snapshot"].get("state") in protocol.TERMINAL_STATES and ending:
                for sid in sids:
                    if self.conns.claim_ending(sid, task_id):
                        manager.emit(ending["event"], ending["payload"], namespace="/", room=sid,
                                     ignore_queue=True)
                        sent += 1
            else:
                done = [sid for sid in sids if self.conns.has_ending(sid, task_id)]
                manager.emit(protocol.PROGRESS_UPDATE, record["snapshot"], namespace="/",
                             room=room, skip_sid=done, ignore_queue=True)
        log.info("catch-up: %d task rooms, %d endings re-sent", len(records), sent)

    def auth_changed(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            user_id = int(message["user_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed credential announcement")
            return
        dropped = self.guard.recheck_user(user_id)
        if dropped:
            log.info("credentials of user %s changed: %d connection(s) closed", user_id, dropped)


def _authenticate(auth: Any) -> Principal | WatchPrincipal | None:
    """A user (API token, else the session cookie), else a watch token's principal."""
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return principal_for_token(auth["token"])
    if current_user.is_authenticated:
        return current_user._get_current_object()
    if isinstance(auth, dict) and "watch_token" in auth:
        return principal_for(auth["watch_token"])
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
