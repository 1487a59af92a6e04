"""The worker the several-hosts tests run: ``celery -A tests.hosts.slow_worker worker``.

The same app and tasks as ``worker.py``; each image first waits
``HOSTS_IMAGE_SECONDS`` (default 0.5; a sleep, not CPU, so two busy cores
still keep the tier's timing) before the ``basic`` captioner runs, so a small
job lasts long enough to break something in its middle.
"""
import os
import time

from tasks import caption
from tasks.app import app

_DELAY = float(os.environ.get("HOSTS_IMAGE_SECONDS") or 0.5)
_caption_one = caption.caption_one


def _slow_caption_one(captioner, path, should_stop):
    time.sleep(_DELAY)
    return _caption_one(captioner, path, should_stop)


caption.caption_one = _slow_caption_one

__all__ = ["app"]
