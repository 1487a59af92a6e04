"""The worker with caption jobs' progress events switched off (bench/overhead.py only).

``celery -A bench.quiet_worker worker``: the same app and tasks as ``worker.py``,
except that the caption job's ``task-progress`` events are not sent (whichever
way tasks/caption.py sends them: its ``_send`` helper, or ``Task.send_event``),
so a job's wall time can be compared with and without them. Celery's own task
events (received, started, succeeded) and ``task-cancelled`` still go out.
"""
from tasks import caption
from tasks.app import app
from tasks.events import TASK_PROGRESS

if hasattr(caption, "_send"):
    _real_send = caption._send

    def _send_without_progress(task, event_type, *args, **kwargs):
        if event_type == TASK_PROGRESS:
            return None
        return _real_send(task, event_type, *args, **kwargs)

    caption._send = _send_without_progress
else:  # an older tasks/caption.py that calls task.send_event directly
    _real_send_event = caption.caption_job.send_event

    def _send_event_without_progress(event_type, *args, **kwargs):
        if event_type == TASK_PROGRESS:
            return None
        return _real_send_event(event_type, *args, **kwargs)

    caption.caption_job.send_event = _send_event_without_progress

__all__ = ["app"]
