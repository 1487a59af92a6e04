"""What Celery's result backend knows of tasks: the truth the event stream may have lost.

Events are fire-and-forget: a bridge that was down, or that Redis dropped for
falling behind, misses some. The bridge looks tasks up here (reads batched,
``MGET``, on key-value backends: :func:`backend_metas`, the only I/O) to find
endings it missed (:func:`ending_event`: the event that would have said so),
a caption job's return value for its ending (:func:`result_of`), and, before
it decides on a cancel, whether a worker already started or ended the task.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from celery import Celery
from celery.exceptions import CeleryError
from kombu.exceptions import KombuError

from tasks import events as ev

log = logging.getLogger(__name__)
BATCH = 500


def backend_metas(app: Celery, task_ids: Iterable[str]) -> dict[str, dict]:
    """``{task_id: meta}`` for the ids the backend knows (PENDING ones are absent)."""
    backend = app.backend
    ids = list(task_ids)
    out: dict[str, dict] = {}
    if hasattr(backend, "mget") and hasattr(backend, "get_key_for_task"):
        for start in range(0, len(ids), BATCH):
            chunk = ids[start:start + BATCH]
            raws = backend.mget([backend.get_key_for_task(t) for t in chunk])
            for task_id, raw in zip(chunk, raws):
                if raw:
                    try:
                        out[task_id] = backend.decode_result(raw)
                    # One bad entry only; CeleryError: e.g. SecurityError, a FAILURE whose
                    # exc_type names no exception class (any application can write one).
                    except (ValueError, TypeError, KeyError, KombuError, CeleryError):
                        log.warning("cannot decode the stored result of %s", task_id)
        return out
    for task_id in ids:  # pragma: no cover - other backends
        meta = backend.get_task_meta(task_id)
        if meta.get("status") != "PENDING":
            out[task_id] = meta
    return out


def started(meta: dict | None) -> bool:
    """Whether a worker started the task (``task_track_started``) or ended it."""
    return bool(meta) and meta.get("status") not in (None, "PENDING", "RECEIVED")


def result_of(meta: dict | None) -> Any:
    """The return value of a task that succeeded (None otherwise)."""
    return meta.get("result") if meta and meta.get("status") == "SUCCESS" else None


def ending_event(task_id: str, meta: dict) -> dict | None:
    """The Celery event a terminal ``meta`` stands for, or None if it has not ended
    (a SUCCESS's return value goes with it: :func:`result_of`)."""
    status = meta.get("status")
    stamp = _timestamp(meta.get("date_done"))
    base: dict[str, Any] = {"uuid": task_id, "timestamp": stamp}
    result = meta.get("result")
    if status == "SUCCESS":
        return {"type": ev.TASK_SUCCEEDED, **base, "result": repr(result)[:1024]}
    if status == "FAILURE":
        exc = result if isinstance(result, dict) else {}
        message = exc.get("exc_message", "")
        if isinstance(message, (list, tuple)):
            message = ", ".join(map(str, message))
        text = f"{exc.get('exc_type', 'Error')}({str(message)!r})" if exc else repr(result)
        return {"type": ev.TASK_FAILED, **base, "exception": text,
                "traceback": meta.get("traceback")}
    if status == "REVOKED":
        return {"type": ev.TASK_REVOKED, **base, "terminated": False}
    return None


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None
