"""The worker bench/overhead.py runs: ``celery -A bench.timed_worker worker -Q bench_on,bench_off``.

The same app and tasks as ``worker.py``, with two changes for the A/B:

- jobs taken from the ``bench_off`` queue send no ``task-progress`` events
  (Celery's own task events and ``task-cancelled`` still go out), so on and
  off jobs run in the same process, one after the other;
- the calls a job makes on its own thread to send events (tasks/caption.py's
  ``_send``) run inside a ``perf_counter`` pair. After the
  task returned (``task_postrun``, outside the job's own ``started_at``/
  ``finished_at``) the job's total is stored at ``bench:send_event_s:<task_id>``
  in Redis. Work the job causes elsewhere (Redis, the other core) is not in
  this figure (it shows in the A/B);
- with ``BENCH_IMAGE_COST_MS`` set, each image costs that much more CPU on the
  job's thread (a busy loop after the captioner's own work): the per-image
  cost of a real model (the default ``local`` captioner takes ~0.2-1.5 s).
"""
import os
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


class _Costly:
    """A captioner that spends ``ms`` more CPU per image than the one it wraps."""

    def __init__(self, inner, ms: float) -> None:
        self.inner, self.seconds, self.name = inner, ms / 1000.0, inner.name

    def caption(self, path, should_stop):
        text = self.inner.caption(path, should_stop)
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            sum(range(1000))
        return text


def _costly(make, ms: float):
    return lambda settings: _Costly(make(settings), ms)


caption._send = _timed(_quiet_off_queue(caption._send))
if float(os.environ.get("BENCH_IMAGE_COST_MS") or 0) > 0:
    caption.process_captioner = _costly(caption.process_captioner,
                                        float(os.environ["BENCH_IMAGE_COST_MS"]))


@task_postrun.connect
def _store(task_id=None, **_kw):
    rec = _spent.pop(task_id, None)
    if rec is not None:
        redis_client(load_settings().redis_url).set(f"bench:send_event_s:{task_id}",
                                                    f"{rec[0]:.6f} {rec[1]}", ex=3600)


__all__ = ["app"]
