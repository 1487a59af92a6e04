"""The Celery app: ``make_celery(settings)`` for any process, ``app`` for the worker."""
from __future__ import annotations

from celery import Celery

import celeryconfig
from settings import Settings, load_settings


def make_celery(settings: Settings | None = None, include_tasks: bool = False) -> Celery:
    """A Celery app configured from ``celeryconfig`` for ``settings``.

    Publishers (web) and the bridge do not need the task code: they send by
    name. The worker's app (``app`` below) includes it.
    """
    settings = settings or load_settings()
    celery = Celery("skald", include=["tasks.caption"] if include_tasks else [])
    celery.config_from_object(celeryconfig)
    celery.conf.update(celeryconfig.for_settings(settings))
    return celery


app = make_celery(include_tasks=True)
