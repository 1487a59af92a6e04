"""Celery settings for every Skald process, read from the environment.

Loaded with ``app.config_from_object("celeryconfig")``. JSON only on the wire;
events on; late acks with reject-on-worker-lost so a killed worker's job is
redelivered instead of lost.
"""
from settings import Settings, load_settings


def for_settings(settings: Settings) -> dict:
    """The settings that depend on the environment, for an app built from ``settings``."""
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.redis_url,
        "result_expires": settings.result_expires,
        "broker_transport_options": {
            # Redis broker: a job whose worker died unacked is given back to
            # the queue after this long (set it above your longest job).
            "visibility_timeout": settings.visibility_timeout,
            # ...and the sweep that gives it back runs every this many
            # seconds (kombu's default throttle makes it ~100 s).
            "unacked_restore_interval": min(10, max(1, settings.visibility_timeout // 2)),
            "unacked_restore_throttle": 1,
            "fanout_prefix": True,
            "fanout_patterns": True,
        },
    }


_env = for_settings(load_settings())
broker_url = _env["broker_url"]
result_backend = _env["result_backend"]
result_expires = _env["result_expires"]
broker_transport_options = _env["broker_transport_options"]

# JSON only: no pickle anywhere on the wire.
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Events: workers send task-* events without -E, publishers send task-sent.
worker_send_task_events = True
task_send_sent_event = True

# A job is acknowledged only once it ended; a worker that dies mid-job gives
# it back to the queue.
task_acks_late = True
task_reject_on_worker_lost = True
task_track_started = True
worker_prefetch_multiplier = 1
result_extended = True

broker_connection_retry_on_startup = True
# Celery's consumer without its gossip step, which broke workers on a Redis restart
# (tasks/consumer.py).
worker_consumer = "tasks.consumer:Consumer"
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}
# Event queues of receivers that went away are dropped by the broker (amqp).
event_queue_expires = 60.0
event_queue_ttl = 5.0
worker_hijack_root_logger = False
# The operator's pool_restart (POST /api/workers/<hostname>/control) needs it.
worker_pool_restarts = True
