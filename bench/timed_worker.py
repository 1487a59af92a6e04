"""The worker with the time a caption job spends sending events measured (bench/overhead.py only).

``celery -A bench.timed_worker worker``: the same app and tasks as ``worker.py``;
the calls a job makes on its own thread to send events (tasks/caption.py's
``_send`` and ``_events.flush``, or ``Task.send_event`` in an older version) run
unchanged inside a ``perf_counter`` pair. After the task returned
(``task_postrun``, outside the job's own ``started_at``/``finished_at``) the
job's total is stored at ``bench:send_event_s:<task_id>`` in Redis. Work done
by a background sending thread is not in this figure (it shows in the A/B).
"""
import time

from celery.signals import task_postrun

from settings import load_settings
from tasks import caption
from tasks.app import app
from tasks.cancel import redis_client

_spent: dict[str, list[float]] = {}


def _account(seconds: float) -> None:
    task_id = caption.caption_job.request.id
    rec = _spent.setdefault(task_id, [0.0, 0])
    rec[0] += seconds
    rec[1] += 1


def _timed(fn):
    def wrapped(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _account(time.perf_counter() - t)
    return wrapped


if hasattr(caption, "_send"):
    caption._send = _timed(caption._send)
    if hasattr(caption, "_events") and hasattr(caption._events, "flush"):
        caption._events.flush = _timed(caption._events.flush)
else:  # an older tasks/caption.py that calls task.send_event directly
    caption.caption_job.send_event = _timed(caption.caption_job.send_event)


@task_postrun.connect
def _store(task_id=None, **_kw):
    rec = _spent.pop(task_id, None)
    if rec is not None:
        redis_client(load_settings().redis_url).set(f"bench:send_event_s:{task_id}",
                                                    f"{rec[0]:.6f} {rec[1]}", ex=3600)


__all__ = ["app"]
