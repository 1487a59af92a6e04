"""An example Flask + Celery application whose tasks are watched live through Skald."""
