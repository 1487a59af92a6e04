"""The example application's own Celery app and tasks (nothing of Skald imported).

It shares Skald's broker (``REDIS_URL``) so Skald's bridge sees its events, but
its tasks go to a queue of their own (``example``), which Skald's workers do not
consume. Run its worker with::

    celery -A examples.watch_app.tasks worker -Q example -E --loglevel=INFO

Two ways to report progress, both shown live by Skald:

- :func:`count` sends Celery events: ``self.send_event("task-progress",
  current=..., total=..., step=...)`` (milliseconds to a watcher; needs the
  worker's events on: ``-E`` or ``worker_send_task_events``);
- :func:`crunch` stores a ``PROGRESS`` state the way celery-progress's
  ``ProgressRecorder`` does (``update_state(state="PROGRESS", meta=...)``):
  existing celery-progress tasks work unchanged; Skald reads the result backend
  for them while someone watches (every ``PROGRESS_POLL_SECONDS``, 0.5 s).
"""
from __future__ import annotations

import os
import time

from celery import Celery

QUEUE = "example"
BROKER = os.environ.get("EXAMPLE_BROKER_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

app = Celery("example", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json", result_serializer="json", accept_content=["json"],
    worker_send_task_events=True,   # task-received / -started / -succeeded ... reach Skald
    task_send_sent_event=True,      # Skald knows a task the moment it is sent
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(bind=True, name="example.count")
def count(self, total: int = 10, delay: float = 0.2, fail_at: int | None = None) -> dict:
    """Count to ``total``, one step every ``delay`` s, with a ``task-progress`` event per step
    (and an extra field, ``phase``, that Skald passes on); fails at ``fail_at`` when given."""
    for i in range(1, total + 1):
        time.sleep(delay)
        if fail_at is not None and i == fail_at:
            raise RuntimeError(f"gave up at {i}")
        self.send_event("task-progress", current=i, total=total, step=f"counted {i} of {total}",
                        phase="counting" if i < total else "done")
    return {"counted": total, "by": self.request.hostname}


@app.task(bind=True, name="example.crunch")
def crunch(self, total: int = 10, delay: float = 0.2) -> dict:
    """celery-progress's style: the progress is a state in the result backend, no event."""
    for i in range(1, total + 1):
        time.sleep(delay)
        self.update_state(state="PROGRESS", meta={
            "pending": False, "current": i, "total": total,
            "percent": float(round(100.0 * i / total, 2)), "description": f"crunched {i} of {total}"})
    return {"crunched": total}
