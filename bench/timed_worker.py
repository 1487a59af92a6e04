"""The worker bench/overhead.py runs: ``celery -A bench.timed_worker worker -Q bench_on,bench_off``.

The same app and tasks as ``worker.py``, with two changes for the A/B:

- jobs taken from the ``bench_off`` queue send no ``task-progress`` events
  (Celery's own task events and ``task-cancelled`` still go out), so on and
  off jobs run in the same process, one after the other;
- the calls a job makes on its own thread to send events (tasks/caption.py's
  ``_send`` and ``_events.flush``) run inside a ``perf_counter`` pair. After the
  task returned (``task_postrun``, outside the job's own ``started_at``/
  ``finished_at``) the job's total is stored at ``bench:send_event_s:<task_id>``
  in Redis. Work the job causes elsewhere (Redis, the other core) is not in
  this figure (it shows in the A/B).
"""
import time

from celery.signals import task_postrun

from settings import load_settings
from tasks import caption
from tasks.app import app
from tasks.cancel import redis_client
from tasks.events import TASK_PROGRESS

QUIET_QUEUE = "bench_off"
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


def _quiet_off_queue(send):
    def wrapped(task, event_type, *args, **kwargs):
        if event_type == TASK_PROGRESS and \
                (task.request.delivery_info or {}).get("routing_key") == QUIET_QUEUE:
            return None
        return send(task, event_type, *args, **kwargs)
    return wrapped


caption._send = _timed(_quiet_off_queue(caption._send))
caption._events.flush = _timed(caption._events.flush)


@task_postrun.connect
def _store(task_id=None, **_kw):
    rec = _spent.pop(task_id, None)
    if rec is not None:
        redis_client(load_settings().redis_url).set(f"bench:send_event_s:{task_id}",
                                                    f"{rec[0]:.6f} {rec[1]}", ex=3600)


__all__ = ["app"]
