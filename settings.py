"""Skald settings: the one place that reads the environment.

Every process (web, worker, bridge) builds a :class:`Settings` with
:func:`load_settings`. A ``.env`` file in the working directory is read first
when present; real environment variables win over it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class SettingsError(ValueError):
    """A setting in the environment has a value Skald cannot use."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """All Skald settings with their defaults (see PROTOCOL.md for the contract)."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = DEFAULT_REDIS_URL
    database_url: str = "sqlite:///var/skald.db"
    web_host: str = "127.0.0.1"
    web_port: int = 5000
    # "gevent" for `python -m web serve` (it monkey-patches first); create_app
    # falls back to "threading" in an unpatched process (tests).
    web_async_mode: str = "gevent"
    secure_cookies: bool = False
    secret_key: str | None = None
    var_dir: Path = Path("var")
    captioner: str = "basic"
    ollama_url: str = "http://127.0.0.1:11434"
    ollama_model: str = "llava"
    ollama_timeout: float = 120.0
    upload_dir: Path = Path("var/uploads")
    # Upload limits (PROTOCOL.md defaults).
    max_images_per_job: int = 1000
    max_image_bytes: int = 20 * 1024 * 1024
    max_request_bytes: int = 200 * 1024 * 1024
    uploads_per_minute: int = 30
    # Socket.IO limits.
    socket_rate: float = 20.0
    socket_burst: int = 40
    socket_payload_bytes: int = 16 * 1024
    connections_per_user: int = 20
    cors_allowed_origins: tuple[str, ...] = ()
    # Bridge.
    bridge_max_tasks: int = 100_000
    cancel_grace_seconds: float = 30.0
    coalesce_ms: int = 100
    reconcile_seconds: float = 30.0
    snapshot_ttl_seconds: int = 7 * 24 * 3600
    leader_ttl_seconds: float = 3.0
    worker_offline_after: float = 10.0
    failure_burst: int = 5
    queue_backlog: int = 100
    # Operator view (bridge/cluster.py): a failure burst is `failure_burst`
    # failures within `failure_window` s; the bridge is "behind" past
    # `bridge_lag_alert` s or `bridge_backlog_alert` events waiting; metrics go
    # to the admin room every `metrics_interval` s (at most 2, the contract);
    # broker queue lengths are read every `queue_poll_seconds`.
    failure_window: float = 60.0
    bridge_lag_alert: float = 10.0
    bridge_backlog_alert: int = 10_000
    metrics_interval: float = 1.0
    queue_poll_seconds: float = 3.0
    # Celery.
    result_expires: int = 7 * 24 * 3600
    visibility_timeout: int = 3600

    def with_overrides(self, **changes: object) -> "Settings":
        """A copy with some fields replaced (tests and tools use this)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def load_settings(env: Mapping[str, str] | None = None, dotenv: bool = True) -> Settings:
    """Read :class:`Settings` from ``env`` (default: ``os.environ`` plus ``.env``)."""
    if env is None:
        if dotenv:
            _load_dotenv()
        env = os.environ
    redis_url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    origins = tuple(o.strip() for o in env.get("CORS_ALLOWED_ORIGINS", "").split(",") if o.strip())
    return Settings(
        redis_url=redis_url,
        broker_url=env.get("BROKER_URL") or redis_url,
        database_url=env.get("DATABASE_URL") or "sqlite:///var/skald.db",
        web_host=env.get("WEB_HOST") or "127.0.0.1",
        web_port=_int(env, "WEB_PORT", 5000),
        web_async_mode=(env.get("WEB_ASYNC_MODE") or "gevent").strip().lower(),
        secure_cookies=_bool(env, "SECURE_COOKIES", False),
        secret_key=env.get("SECRET_KEY") or None,
        var_dir=Path(env.get("SKALD_VAR_DIR") or "var"),
        captioner=(env.get("CAPTIONER") or "basic").strip().lower(),
        ollama_url=(env.get("OLLAMA_URL") or "http://127.0.0.1:11434").rstrip("/"),
        ollama_model=env.get("OLLAMA_MODEL") or "llava",
        ollama_timeout=_float(env, "OLLAMA_TIMEOUT", 120.0),
        upload_dir=Path(env.get("UPLOAD_DIR") or "var/uploads"),
        max_images_per_job=_int(env, "MAX_IMAGES_PER_JOB", 1000),
        max_image_bytes=_int(env, "MAX_IMAGE_BYTES", 20 * 1024 * 1024),
        max_request_bytes=_int(env, "MAX_REQUEST_BYTES", 200 * 1024 * 1024),
        uploads_per_minute=_int(env, "UPLOADS_PER_MINUTE", 30),
        socket_rate=_float(env, "SOCKET_RATE", 20.0),
        socket_burst=_int(env, "SOCKET_BURST", 40),
        socket_payload_bytes=_int(env, "SOCKET_PAYLOAD_BYTES", 16 * 1024),
        connections_per_user=_int(env, "CONNECTIONS_PER_USER", 20),
        cors_allowed_origins=origins,
        bridge_max_tasks=_int(env, "BRIDGE_MAX_TASKS", 100_000),
        cancel_grace_seconds=_float(env, "CANCEL_GRACE_SECONDS", 30.0),
        coalesce_ms=_int(env, "COALESCE_MS", 100),
        reconcile_seconds=_float(env, "RECONCILE_SECONDS", 30.0),
        snapshot_ttl_seconds=_int(env, "SNAPSHOT_TTL_SECONDS", 7 * 24 * 3600),
        leader_ttl_seconds=_float(env, "LEADER_TTL_SECONDS", 3.0),
        worker_offline_after=_float(env, "WORKER_OFFLINE_AFTER", 10.0),
        failure_burst=_int(env, "ALERT_FAILURE_BURST", 5),
        queue_backlog=_int(env, "ALERT_QUEUE_BACKLOG", 100),
        failure_window=_float(env, "ALERT_FAILURE_WINDOW", 60.0),
        bridge_lag_alert=_float(env, "ALERT_BRIDGE_LAG", 10.0),
        bridge_backlog_alert=_int(env, "ALERT_BRIDGE_BACKLOG", 10_000),
        metrics_interval=min(2.0, max(0.2, _float(env, "METRICS_INTERVAL", 1.0))),
        queue_poll_seconds=max(0.5, _float(env, "QUEUE_POLL_SECONDS", 3.0)),
        result_expires=_int(env, "RESULT_EXPIRES", 7 * 24 * 3600),
        visibility_timeout=_int(env, "VISIBILITY_TIMEOUT", 3600),
    )


def _load_dotenv() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover - python-dotenv is pinned
        return
    load_dotenv(Path.cwd() / ".env", override=False)


@dataclass(frozen=True)
class ClientSettings:
    """Settings of ``python -m web caption`` (the client side)."""

    url: str = "http://127.0.0.1:5000"
    token: str | None = None


def load_client_settings(env: Mapping[str, str] | None = None) -> ClientSettings:
    if env is None:
        _load_dotenv()
        env = os.environ
    return ClientSettings(url=(env.get("SKALD_URL") or "http://127.0.0.1:5000").rstrip("/"),
                          token=env.get("SKALD_TOKEN") or None)
