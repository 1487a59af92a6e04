"""Skald settings: the one place that reads the environment.

Every setting is declared once, as a field of :class:`Settings` made by
:func:`env`: its environment variable, its parser and its default. Every
process (web, worker, bridge) builds its settings with :func:`load_settings`;
a ``.env`` file in the working directory is read first when present, and real
environment variables win over it.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class SettingsError(ValueError):
    """A setting in the environment has a value Skald cannot use."""


Parser = Callable[[str, str], Any]  # (variable name, raw text) -> value


def text(_name: str, raw: str) -> str:
    return raw.strip()


def lower(_name: str, raw: str) -> str:
    return raw.strip().lower()


def url(_name: str, raw: str) -> str:
    return raw.strip().rstrip("/")


def path(_name: str, raw: str) -> Path:
    return Path(raw.strip())


def flag(_name: str, raw: str) -> bool:
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def names(_name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def integer(low: int | None = None, high: int | None = None) -> Parser:
    """An integer, refused outside ``low..high``."""
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        _check_range(name, value, low, high)
        return value
    return parse


def number(low: float | None = None, high: float | None = None, clamp: bool = False) -> Parser:
    """A finite number; outside ``low..high`` it is refused, or clamped with ``clamp``."""
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise SettingsError(f"{name} must be a finite number, got {raw!r}")
        if clamp:
            return min(high if high is not None else value, max(low if low is not None else value, value))
        _check_range(name, value, low, high)
        return value
    return parse


def _check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
        raise SettingsError(f"{name} must lie in {bounds}, got {value}")


def env(variable: str, default: Any, parse: Parser = text, *, fallback: str | None = None,
        doc: str = "") -> Any:
    """Declare a setting: read from ``variable`` with ``parse``; when the variable is
    unset or empty, the value of the field ``fallback`` (if given) else ``default``."""
    return field(default=default, metadata={"env": variable, "parse": parse,
                                             "fallback": fallback, "doc": doc})


MB = 1024 * 1024
WEEK = 7 * 24 * 3600


@dataclass(frozen=True)
class Settings:
    """All Skald settings with their defaults (PROTOCOL.md lists the contract's)."""

    # -- where things are (PROTOCOL.md) ----------------------------------------------------
    redis_url: str = env("REDIS_URL", DEFAULT_REDIS_URL)
    broker_url: str = env("BROKER_URL", DEFAULT_REDIS_URL, fallback="redis_url")
    database_url: str = env("DATABASE_URL", "sqlite:///var/skald.db")
    web_host: str = env("WEB_HOST", "127.0.0.1")
    web_port: int = env("WEB_PORT", 5000, integer(1, 65535))
    # "gevent" for `python -m web serve` (it monkey-patches first); create_app
    # falls back to "threading" in an unpatched process (tests).
    web_async_mode: str = env("WEB_ASYNC_MODE", "gevent", lower)
    secure_cookies: bool = env("SECURE_COOKIES", False, flag)
    secret_key: str | None = env("SECRET_KEY", None)
    watch_secret: str | None = env("SKALD_WATCH_SECRET", None,
                                   doc="signs watch tokens (PROTOCOL.md); unset: derived from SECRET_KEY")
    var_dir: Path = env("SKALD_VAR_DIR", Path("var"), path)
    captioner: str = env("CAPTIONER", "local", lower,
                         doc="local (offline models), basic (Pillow only) or ollama")
    ollama_url: str = env("OLLAMA_URL", "http://127.0.0.1:11434", url)
    ollama_model: str = env("OLLAMA_MODEL", "llava")
    ollama_timeout: float = env("OLLAMA_TIMEOUT", 120.0, number(0.1))
    upload_dir: Path = env("UPLOAD_DIR", Path("var/uploads"), path)
    # -- upload limits (PROTOCOL.md defaults) ------------------------------------------------
    max_images_per_job: int = env("MAX_IMAGES_PER_JOB", 1000, integer(1))
    max_image_bytes: int = env("MAX_IMAGE_BYTES", 20 * MB, integer(1))
    max_request_bytes: int = env("MAX_REQUEST_BYTES", 200 * MB, integer(1))
    uploads_per_minute: int = env("UPLOADS_PER_MINUTE", 30, integer(1))
    max_image_pixels: int = env("MAX_IMAGE_PIXELS", 50_000_000, integer(1, 89_000_000),
                                doc="pixels per image (width x height): a decompression bomb "
                                    "is refused at upload and never decoded by a worker")
    max_job_pixels: int = env("MAX_JOB_PIXELS", 2_000_000_000, integer(1),
                              doc="pixels of all images of one job together")
    # -- captioning (tasks/captioners) --------------------------------------------------------------
    image_time_budget: float = env("IMAGE_TIME_BUDGET", 30.0, number(0.01),
                                   doc="s one image may take (reading and every stage); past it the "
                                       "captioning child is killed and that image fails")
    stage_time_budget: float = env("STAGE_TIME_BUDGET", 10.0, number(0.01),
                                   doc="s one stage of `local` may take; past it its sentence is dropped")
    caption_memory_mb: int = env("CAPTION_MEMORY_MB", 4096, integer(0),
                                 doc="address-space limit of each captioning child in MB (0: none)")
    caption_stages: tuple[str, ...] = env("CAPTION_STAGES", ("ocr", "objects", "faces", "colour"), names,
                                          doc="the stages `local` runs, in this order")
    # -- Socket.IO limits ----------------------------------------------------------------------
    socket_rate: float = env("SOCKET_RATE", 20.0, number(0.1))
    socket_burst: int = env("SOCKET_BURST", 40, integer(1))
    socket_payload_bytes: int = env("SOCKET_PAYLOAD_BYTES", 16 * 1024, integer(256))
    connections_per_user: int = env("CONNECTIONS_PER_USER", 20, integer(1))
    cors_allowed_origins: tuple[str, ...] = env("CORS_ALLOWED_ORIGINS", (), names)
    socketio_connect_timeout: float = env(
        "SOCKETIO_CONNECT_TIMEOUT", 5.0, number(0.5),
        doc="s an Engine.IO session may stay open without an accepted Socket.IO connect")
    # -- sign-in and credentials (web/auth.py, web/loginlimit.py) ------------------------------
    login_user_free: int = env("LOGIN_FREE_FAILURES", 5, integer(1),
                               doc="failed logins per user name before each one adds a delay")
    login_ip_free: int = env("LOGIN_IP_FREE_FAILURES", 20, integer(1),
                             doc="failed logins per client IP before each one adds a delay")
    login_backoff_max: float = env("LOGIN_BACKOFF_MAX", 900.0, number(1),
                                   doc="longest delay (s) the login backoff imposes")
    login_window: float = env("LOGIN_FAILURE_WINDOW", 900.0, number(1),
                              doc="s without a failure after which the failures are forgotten")
    session_max_age: float = env("SESSION_MAX_AGE", 7 * 24 * 3600.0, number(60),
                                 doc="s a browser login lasts at most")
    auth_recheck_seconds: float = env("AUTH_RECHECK_SECONDS", 1.0, number(0, 60),
                                      doc="longest a Socket.IO event relies on an earlier credential check")
    auth_sweep_seconds: float = env("AUTH_SWEEP_SECONDS", 5.0, number(0.5),
                                    doc="s between re-checks of every open connection's credentials")
    trusted_proxies: int = env("TRUSTED_PROXIES", 0, integer(0, 5),
                               doc="proxies in front whose X-Forwarded-For is believed (client IPs)")
    # -- connections (web/server.py, gevent) -------------------------------------------------------
    http_header_timeout: float = env("HTTP_HEADER_TIMEOUT", 10.0, number(0.5),
                                     doc="s a connection may take to send a request line and headers")
    http_idle_timeout: float = env("HTTP_IDLE_TIMEOUT", 60.0, number(1),
                                   doc="s a socket read or write may wait (bodies, websockets)")
    unauth_connections_per_ip: int = env("UNAUTH_CONNECTIONS_PER_IP", 50, integer(0),
                                         doc="open connections per IP not yet authenticated (0: no cap)")
    max_connections: int = env("MAX_CONNECTIONS", 0, integer(0),
                               doc="open connections at most (0: from the file-descriptor limit)")
    # -- bridge ------------------------------------------------------------------------------------
    bridge_max_tasks: int = env("BRIDGE_MAX_TASKS", 100_000, integer(1))
    cancel_grace_seconds: float = env("CANCEL_GRACE_SECONDS", 30.0, number(0))
    coalesce_ms: int = env("COALESCE_MS", 100, integer(0))
    reconcile_seconds: float = env("RECONCILE_SECONDS", 30.0, number(0.1))
    snapshot_ttl_seconds: int = env("SNAPSHOT_TTL_SECONDS", WEEK, integer(60))
    leader_ttl_seconds: float = env("LEADER_TTL_SECONDS", 3.0, number(0.2))
    sweep_after: float = env(
        "SWEEP_AFTER", 120.0, number(0.5),
        doc="s a job may go without progress, task record, result or broker message before the "
            "active bridge's sweeper sends it again (same task id); also how long an ending the "
            "database holds may be missing from Redis before it is written back")
    sweep_seconds: float = env("SWEEP_SECONDS", 30.0, number(0.2),
                               doc="s between two sweeps (a lost job is resubmitted on the second "
                                   "sweep that finds it lost)")
    progress_poll_seconds: float = env(
        "PROGRESS_POLL_SECONDS", 0.5, number(0.1, 60, clamp=True),
        doc="s between reads of the result backend for watched open tasks whose progress comes "
            "only from update_state (celery-progress's way): one MGET for all of them")
    # -- operator view (bridge/cluster.py) ---------------------------------------------------------
    worker_offline_after: float = env("WORKER_OFFLINE_AFTER", 10.0, number(0.1))
    worker_forget_after: float = env("WORKER_FORGET_AFTER", 86400.0, number(1),
                                     doc="s a worker stays listed after it went offline")
    alert_webhook_url: str | None = env("ALERT_WEBHOOK_URL", None,
                                        doc="every admin_alert is also POSTed here as JSON "
                                            "(with a Slack-compatible text); unset: none")
    alert_webhook_timeout: float = env("ALERT_WEBHOOK_TIMEOUT", 5.0, number(0.1, 60),
                                       doc="s one webhook POST may take")
    failure_burst: int = env("ALERT_FAILURE_BURST", 5, integer(1),
                             doc="failures within failure_window s make a failure_burst alert")
    failure_window: float = env("ALERT_FAILURE_WINDOW", 60.0, number(1))
    queue_backlog: int = env("ALERT_QUEUE_BACKLOG", 100, integer(0))
    bridge_lag_alert: float = env("ALERT_BRIDGE_LAG", 10.0, number(0.1),
                                  doc="a bridge_lag alert past this many seconds behind")
    bridge_backlog_alert: int = env("ALERT_BRIDGE_BACKLOG", 10_000, integer(1),
                                    doc="a bridge_lag alert past this many events waiting")
    metrics_interval: float = env("METRICS_INTERVAL", 1.0, number(0.2, 2.0, clamp=True),
                                  doc="s between system_metrics_update (the contract: at most 2)")
    queue_poll_seconds: float = env("QUEUE_POLL_SECONDS", 3.0, number(0.5, clamp=True),
                                    doc="s between reads of the broker's queue lengths")
    # -- Celery ----------------------------------------------------------------------------------------
    result_expires: int = env("RESULT_EXPIRES", WEEK, integer(60))
    visibility_timeout: int = env("VISIBILITY_TIMEOUT", 3600, integer(1))

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (tests and tools use this)."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClientSettings:
    """Settings of ``python -m web caption`` / ``watch`` (the client side)."""

    url: str = env("SKALD_URL", "http://127.0.0.1:5000", url)
    token: str | None = env("SKALD_TOKEN", None)


def _read(cls: type, env_map: Mapping[str, str]) -> Any:
    values: dict[str, Any] = {}
    for f in fields(cls):
        meta = f.metadata
        raw = env_map.get(meta["env"])
        if raw is None or raw.strip() == "":
            values[f.name] = values[meta["fallback"]] if meta["fallback"] else f.default
        else:
            values[f.name] = meta["parse"](meta["env"], raw)
    return cls(**values)


def _environment(env_map: Mapping[str, str] | None, dotenv: bool) -> Mapping[str, str]:
    if env_map is not None:
        return env_map
    if dotenv:
        _load_dotenv()
    return os.environ


def load_settings(env: Mapping[str, str] | None = None, dotenv: bool = True) -> Settings:
    """Read :class:`Settings` from ``env`` (default: ``os.environ`` plus ``.env``)."""
    return _read(Settings, _environment(env, dotenv))


def load_client_settings(env: Mapping[str, str] | None = None) -> ClientSettings:
    return _read(ClientSettings, _environment(env, True))


def variables() -> dict[str, str]:
    """``{VARIABLE: field name}`` of every setting (for documentation and checks)."""
    return {f.metadata["env"]: f.name for cls in (Settings, ClientSettings) for f in fields(cls)}


def _load_dotenv() -> None:
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)
