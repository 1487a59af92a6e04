"""Socket.IO payload shapes of PROTOCOL.md, shared by the bridge and the web process."""
from __future__ import annotations

import time
from typing import Any

SNAPSHOT_FIELDS = ("task_id", "job_id", "owner", "state", "progress_percent", "current",
                   "total", "current_step", "estimated_completion", "updated_at")
STATES = ("PENDING", "RECEIVED", "STARTED", "PROGRESS", "CANCELLING",
          "SUCCESS", "FAILURE", "REVOKED")
TERMINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

# Flask-SocketIO's message-queue channel; the bridge publishes on it, web listens.
SOCKETIO_CHANNEL = "flask-socketio"

PROGRESS_UPDATE = "progress_update"
TASK_COMPLETED = "task_completed"
TASK_CANCELLED = "task_cancelled"
TASK_ERROR = "task_error"
ENDING_EVENT = {"SUCCESS": TASK_COMPLETED, "REVOKED": TASK_CANCELLED, "FAILURE": TASK_ERROR}


def percent(current: int, total: int, state: str) -> float:
    if state == "SUCCESS":
        return 100.0
    if total <= 0:
        return 0.0
    return round(min(100.0, 100.0 * current / total), 1)


def snapshot(task_id: str, *, job_id: int | None = None, owner: str | None = None,
             state: str = "PENDING", current: int = 0, total: int = 0,
             current_step: str = "", estimated_completion: float | None = None,
             updated_at: float | None = None) -> dict[str, Any]:
    return {
        "task_id": task_id, "job_id": job_id, "owner": owner, "state": state,
        "progress_percent": percent(current, total, state), "current": current,
        "total": total, "current_step": current_step,
        "estimated_completion": estimated_completion,
        "updated_at": updated_at if updated_at is not None else time.time(),
    }


def completed(snap: dict, results: dict) -> dict:
    return {**snap, "results": {"count": results.get("count", 0),
                                "failed": results.get("failed", 0),
                                "captions": results.get("captions", [])}}


def cancelled(snap: dict, completed_count: int, **extra: Any) -> dict:
    return {**snap, "completed": completed_count, **extra}


def error(snap: dict, type_: str, message: str) -> dict:
    return {**snap, "error": {"type": type_, "message": message}}
