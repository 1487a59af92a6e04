"""Endings the event stream lost, read back from Celery's result backend.

Events are fire-and-forget: a bridge that was down, or that Redis dropped for
falling behind, misses some. Every task the bridge holds as not ended is looked
up in the result backend; a terminal state found there becomes the event that
would have said so. Reads are batched (``MGET``) on key-value backends.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery

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
                    except Exception:  # noqa: BLE001 - one bad entry must not stop the rest
                        log.warning("cannot decode the stored result of %s", task_id)
        return out
    for task_id in ids:  # pragma: no cover - other backends
        meta = backend.get_task_meta(task_id)
        if meta.get("status") != "PENDING":
            out[task_id] = meta
    return out


def ending_event(task_id: str, meta: dict) -> dict | None:
    """The Celery event a terminal ``meta`` stands for, or None if it has not ended."""
    status = meta.get("status")
    stamp = _timestamp(meta.get("date_done"))
    base: dict[str, Any] = {"uuid": task_id, "timestamp": stamp, "reconciled": True}
    result = meta.get("result")
    if status == "SUCCESS":
        event = {"type": ev.TASK_SUCCEEDED, **base, "result": repr(result)[:1024]}
        if isinstance(result, dict) and "captions" in result:
            event["results"] = result
        return event
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


def caption_results(app: Celery, task_ids: Iterable[str]) -> dict[str, dict]:
    """Caption jobs' return values (``count``, ``failed``, ``captions``) from the backend."""
    out = {}
    for task_id, meta in backend_metas(app, task_ids).items():
        result = meta.get("result")
        if isinstance(result, dict) and "captions" in result:
            out[task_id] = result
    return out


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        from datetime import datetime

        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None
