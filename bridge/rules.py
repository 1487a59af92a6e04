"""How one Celery event changes one task: a function per event type. No I/O.

Each rule updates the :class:`bridge.task.Task` in place and says what came of
it as a :class:`Move`: nothing (None: a stale, duplicate or malformed event),
a quiet change (only the operator view's row), a progress update for the
task's room, or its ending. The board (bridge/state.py) turns moves into
emits and keeps the one table of tasks; it has already dropped any event for
a task that ended (our own terminal rule).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import protocol
from bridge.task import (
    HOST_CAP,
    NAME_CAP,
    TEXT_CAP,
    Task,
    as_count,
    as_id,
    as_label,
    as_number,
    as_text,
    caption_results,
    extra_fields,
    first_int_arg,
    keep,
    parse_exception,
    trim,
)
from tasks import events as ev

# How far along a task is; events never move a task to a lower rank.
RANK = {"PENDING": 0, "RECEIVED": 1, "STARTED": 2, "PROGRESS": 3, "CANCELLING": 4}
CAPTION_CAP = 10_000  # longest caption carried by a progress update


@dataclass(frozen=True, slots=True)
class Move:
    """What an event did to a task: ``kind`` is "quiet", "progress" or "end"."""

    kind: str
    state: str = ""                      # the ending's state
    results: dict | None = None          # SUCCESS: task_completed.results
    completed: int = 0                   # REVOKED: images captioned before the stop
    error: tuple[str, str] = ("Error", "the task failed")  # FAILURE: (type, message)
    caption: dict | None = None          # progress: the caption just made


QUIET = Move("quiet")
PROGRESS = Move("progress")


def advance(task: Task, state: str) -> bool:
    """Move ``task`` forward to ``state`` (never back; a cancelled one to CANCELLING)."""
    if task.cancel_requested:
        state = "CANCELLING" if RANK[state] >= RANK["STARTED"] else task.state
    if RANK.get(state, -1) > RANK.get(task.state, -1):
        task.state = state
        return True
    return False


def describe(task: Task, event: dict) -> bool:
    """Learn the task's name, arguments and (caption jobs) job id; True if anything was new."""
    changed = False
    name = as_label(event.get("name"))
    if name is not None and task.name != name:
        task.name = name
        changed = True
    if task.args is None and ("args" in event or "kwargs" in event):
        task.args = keep(event.get("args", ""))
        remember(task, "kwargs", keep(event.get("kwargs", "")))
        changed = True
    for key in SENT_FIELDS:  # first heard wins; retries grows with each retry
        value = as_count(event.get(key)) if key == "retries" else as_text(event.get(key), NAME_CAP)
        had = (task.full or {}).get(key)
        if value is not None and (had is None or (key == "retries" and value > had)):
            remember(task, key, value)
            changed = True
    if task.job_id is None and task.name == ev.CAPTION_TASK_NAME:
        job_id = first_int_arg(event.get("args"))
        if job_id is not None:
            task.job_id = job_id
            changed = True
    return changed


SENT_FIELDS = ("retries", "eta", "expires", "parent_id", "root_id", "queue")


def remember(task: Task, key: str, value: Any) -> None:
    """Keep one detail field for the explorer (``Task.full``); None is not kept."""
    if value is not None:
        task.keep(key, value)


def on_sent(task: Task, event: dict, stamp: float) -> Move | None:
    new = task.updated_at == 0
    return QUIET if describe(task, event) or new else None


def on_received(task: Task, event: dict, stamp: float) -> Move | None:
    described = describe(task, event)
    task.received_at = task.received_at or stamp
    if advance(task, "RECEIVED"):
        task.step = "queued on a worker"
        return PROGRESS
    return QUIET if described else None


def on_started(task: Task, event: dict, stamp: float) -> Move | None:
    task.worker = as_label(event.get("hostname"), HOST_CAP) or task.worker
    task.started_at = task.started_at or stamp
    if advance(task, "STARTED"):
        task.step = "started"
        return PROGRESS
    return None


def on_progress(task: Task, event: dict, stamp: float) -> Move | None:
    current, total = event.get("current"), event.get("total")
    if as_number(current) is None or as_number(total) is None or current < 0 or total < 0:
        return None
    current, total = as_count(current), as_count(total)
    if current < task.current:  # stale or duplicate
        return None
    task.worker = task.worker or as_label(event.get("hostname"), HOST_CAP)
    task.current, task.total = current, total
    task.failed = as_count(event.get("failed"), task.failed)
    task.step = trim(event.get("step")) or task.step
    eta = as_number(event.get("eta"))
    task.eta = round(eta, 1) if eta is not None and eta >= 0 else None
    task.job_id = as_id(event.get("job_id")) or task.job_id
    task.owner = as_label(event.get("owner")) or task.owner
    task.extra = extra_fields(event) or task.extra
    advance(task, "PROGRESS")
    caption, image = as_text(event.get("caption"), CAPTION_CAP), as_text(event.get("image"))
    if caption is None or image is None:
        return PROGRESS
    return Move("progress", caption={"image": image, "caption": caption})


def is_caption_job(task: Task, captions: dict | None) -> bool:
    """A caption job: by its name, or (name unknown) by its job id or a caption job's value."""
    if task.name is not None:
        return task.name == ev.CAPTION_TASK_NAME
    return task.job_id is not None or captions is not None


def on_succeeded(task: Task, event: dict, value: Any) -> Move:
    """``value``: the task's return value as the result backend holds it (None when it does
    not). A caption job's ending carries its checked captions (bridge/task.py); any other
    task's carries ``{"result": value}``, capped (``protocol.task_results``). The event's
    own ``result`` (a repr) only names the outcome on the operator view."""
    task.runtime = as_number(event.get("runtime"), task.runtime)
    remember(task, "result", keep(event.get("result")))
    remember(task, "succeeded_at", as_number(event.get("timestamp")))
    captions = caption_results(value)
    if not is_caption_job(task, captions):
        task.outcome = trim(event.get("result"))
        results = protocol.task_results(value)
    elif captions is None:  # the backend does not hold the job's value
        task.outcome = trim(event.get("result"))
        results = protocol.caption_results({"count": 0, "failed": task.failed, "captions": []})
    else:
        task.failed = captions["failed"]
        task.total = captions.get("total", task.total)
        task.outcome = f"{captions['count']} captions, {task.failed} failed"
        results = protocol.caption_results(captions)
    task.current = max(task.current, task.total)
    task.eta = 0.0 if task.total else None
    task.step = "done"
    return Move("end", "SUCCESS", results=results)


def on_failed(task: Task, event: dict, stamp: float) -> Move:
    exc = event.get("exception")
    type_, message = parse_exception(exc if isinstance(exc, str) else None)
    task.outcome = trim(event.get("traceback") or exc, keep_end=True)
    remember(task, "exception", keep(exc))
    remember(task, "traceback", keep(event.get("traceback"), keep_end=True))
    remember(task, "failed_at", stamp)
    task.step = "failed"
    task.eta = None
    return Move("end", "FAILURE", error=(type_[:NAME_CAP], message[:4 * TEXT_CAP]))


def on_revoked(task: Task, event: dict, stamp: float) -> Move:
    if event.get("terminated"):
        task.terminated = True
    remember(task, "revoked_at", stamp)
    task.step = "cancelled"
    task.eta = None
    return Move("end", "REVOKED", completed=max(0, task.current - task.failed))


def on_cancelled(task: Task, event: dict, stamp: float) -> Move | None:
    completed = as_number(event.get(ev.CANCELLED_MARKER_FIELD))
    if ev.CANCELLED_MARKER_FIELD in event and (completed is None or completed < 0):
        return None  # ours, but malformed
    if completed is None:
        # Celery's own task-cancelled (broker connection lost): the task
        # goes back to the queue, so this is no ending.
        task.step = "requeued after a lost connection"
        return QUIET
    task.total = as_count(event.get("total"), task.total)
    task.step = "cancelled"
    task.eta = None
    return Move("end", "REVOKED", completed=as_count(completed))


def on_rejected(task: Task, event: dict, stamp: float) -> Move:
    if event.get("requeue"):
        task.step = "requeued"
        return QUIET
    task.step = "rejected"
    return Move("end", "FAILURE", error=("Rejected", "the worker rejected the task"))


def on_retried(task: Task, event: dict, stamp: float) -> Move:
    task.step = "retrying"
    task.outcome = trim(event.get("exception"))
    remember(task, "exception", keep(event.get("exception")))
    return PROGRESS


# task-succeeded (on_succeeded) takes the job's results, not the event's time.
RULES: dict[str, Callable[[Task, dict, float], Move | None]] = {
    ev.TASK_SENT: on_sent,
    ev.TASK_RECEIVED: on_received,
    ev.TASK_STARTED: on_started,
    ev.TASK_PROGRESS: on_progress,
    ev.TASK_FAILED: on_failed,
    ev.TASK_REVOKED: on_revoked,
    ev.TASK_CANCELLED: on_cancelled,
    ev.TASK_REJECTED: on_rejected,
    ev.TASK_RETRIED: on_retried,
}
KNOWN = frozenset(RULES) | {ev.TASK_SUCCEEDED}
