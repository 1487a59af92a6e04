"""Entry point for ``celery -A worker worker``: the Celery app with the tasks."""
from tasks.app import app

__all__ = ["app"]
