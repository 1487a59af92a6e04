"""The Celery app: ``make_celery(settings)`` for any process, ``app`` for the worker."""
from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import celeryd_after_setup

import celeryconfig
import redisurl
from settings import Settings, load_settings

log = logging.getLogger(__name__)


def make_celery(settings: Settings | None = None, include_tasks: bool = False) -> Celery:
    """A Celery app configured from ``celeryconfig`` for ``settings``.

    Publishers (web) and the bridge do not need the task code: they send by
    name. The worker's app (``app`` below) includes it.
    """
    settings = settings or load_settings()
    _cli_broker_in_kombu_form()
    celery = Celery("skald", include=["tasks.caption"] if include_tasks else [])
    celery.config_from_object(celeryconfig)
    celery.conf.update(celeryconfig.for_settings(settings))
    return celery


def _cli_broker_in_kombu_form() -> None:
    """The ``celery`` command reads ``BROKER_URL`` into ``CELERY_BROKER_URL``, which wins
    over the config: give it kombu's spelling of a Sentinel or TLS URL (redisurl.py)."""
    raw = os.environ.get("CELERY_BROKER_URL")
    if raw and redisurl.is_redis(raw):
        os.environ["CELERY_BROKER_URL"] = redisurl.kombu_url(raw)


app = make_celery(include_tasks=True)


@celeryd_after_setup.connect
def announce_captioner(**_kwargs) -> None:
    """Say at the worker's start what the configured captioner can do (and when it falls back)."""
    settings = load_settings()
    if settings.captioner != "local":
        log.info("captioner: %s", settings.captioner)
        return
    from tasks.captioners.local import startup_report

    ok, message = startup_report(settings)
    (log.info if ok else log.warning)("%s", message)
