"""What a web request needs, built once by ``create_app`` and kept on the app."""
from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from bridge.store import SnapshotStore
from settings import Settings
from web.control import Inspector


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    db: sessionmaker[Session]
    celery: Celery
    store: SnapshotStore
    inspector: Inspector  # cached app.control.inspect() (web/control.py)


def services() -> Services:
    return current_app.extensions["skald"]
