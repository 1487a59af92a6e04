"""The event vocabulary: every Celery event name Skald sends or reads.

Event names are built here and nowhere else.
"""
from __future__ import annotations

from typing import Final

# Sent by caption jobs (PROTOCOL.md, "Celery task events").
TASK_PROGRESS: Final = "task-progress"
TASK_CANCELLED: Final = "task-cancelled"

# Celery's own task events.
TASK_SENT: Final = "task-sent"
TASK_RECEIVED: Final = "task-received"
TASK_STARTED: Final = "task-started"
TASK_SUCCEEDED: Final = "task-succeeded"
TASK_FAILED: Final = "task-failed"
TASK_REJECTED: Final = "task-rejected"
TASK_REVOKED: Final = "task-revoked"
TASK_RETRIED: Final = "task-retried"

# Celery's worker events.
WORKER_ONLINE: Final = "worker-online"
WORKER_HEARTBEAT: Final = "worker-heartbeat"
WORKER_OFFLINE: Final = "worker-offline"


# Celery also sends "task-cancelled" (no fields) when a worker loses its broker
# connection and gives the task back; ours always carries ``completed``.
CANCELLED_MARKER_FIELD: Final = "completed"

CAPTION_TASK_NAME: Final = "skald.caption_job"


def progress_fields(
    *,
    current: int,
    total: int,
    step: str,
    image: str | None = None,
    caption: str | None = None,
    eta: float | None = None,
    job_id: int | None = None,
    owner: str | None = None,
    failed: int = 0,
) -> dict:
    """The fields of a ``task-progress`` event (``caption`` only when one was made)."""
    fields: dict = {"current": current, "total": total, "step": step, "image": image,
                    "eta": eta, "job_id": job_id, "owner": owner, "failed": failed}
    if caption is not None:
        fields["caption"] = caption
    return fields


def cancelled_fields(*, completed: int, total: int, job_id: int | None = None,
                     owner: str | None = None) -> dict:
    """The fields of our ``task-cancelled`` event."""
    return {"completed": completed, "total": total, "job_id": job_id, "owner": owner}
