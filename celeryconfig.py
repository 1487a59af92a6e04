"""Celery settings for every Skald process, read from the environment.

Loaded with ``app.config_from_object("celeryconfig")``. JSON only on the wire;
events on; late acks with reject-on-worker-lost so a killed worker's job is
redelivered instead of lost.
"""
import redisurl
from settings import Settings, load_settings

# The result backend gives up a read or write after this long (Redis away, a failover).
BACKEND_RETRY_POLICY = {"timeout": 5.0}


def for_settings(settings: Settings) -> dict:
    """The settings that depend on the environment, for an app built from ``settings``.

    ``REDIS_URL`` / ``BROKER_URL`` are translated by :mod:`redisurl`: a Sentinel URL
    becomes kombu's and Celery's ``sentinel://...;sentinel://...`` plus the master's
    name (and the sentinels' credentials) in the transport options; ``rediss://``
    becomes ``broker_use_ssl`` / ``redis_backend_use_ssl``.
    """
    broker = redisurl.kombu_options(settings.broker_url)
    backend = redisurl.backend_options(settings.redis_url)
    conf = {
        "broker_url": redisurl.kombu_url(settings.broker_url),
        "result_backend": redisurl.backend_url(settings.redis_url),
        "result_expires": settings.result_expires,
        "result_backend_transport_options": {"retry_policy": dict(BACKEND_RETRY_POLICY),
                                             **backend["transport_options"]},
        "broker_transport_options": {
            **broker["transport_options"],
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
        # Reconnect for ever after a broker loss (a failover), with Celery's capped backoff.
        "broker_connection_max_retries": None,
    }
    if broker["use_ssl"]:
        conf["broker_use_ssl"] = broker["use_ssl"]
    if backend["use_ssl"]:
        conf["redis_backend_use_ssl"] = backend["use_ssl"]
    return conf


_env = for_settings(load_settings())
broker_url = _env["broker_url"]
result_backend = _env["result_backend"]
result_expires = _env["result_expires"]
broker_transport_options = _env["broker_transport_options"]
result_backend_transport_options = _env["result_backend_transport_options"]
broker_connection_max_retries = _env["broker_connection_max_retries"]
if "broker_use_ssl" in _env:
    broker_use_ssl = _env["broker_use_ssl"]
if "redis_backend_use_ssl" in _env:
    redis_backend_use_ssl = _env["redis_backend_use_ssl"]

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
# Event queues of receivers that went away are dropped by the broker (amqp).
event_queue_expires = 60.0
event_queue_ttl = 5.0
worker_hijack_root_logger = False
# The operator's pool_restart (POST /api/workers/<hostname>/control) needs it.
worker_pool_restarts = True
# The result backend's socket gives up a reply after 2 s, well inside BACKEND_RETRY_POLICY's
# 5 s, so a write to a master whose host was cut off is retried (through the sentinels: on
# the new master) instead of failing the job (Celery's default, 120 s, hung it that long;
# seen on the several-hosts tier, tests/hosts/).
redis_socket_timeout = 2.0
# ...and a result write that fails on a connection error or timeout (a failover) is tried
# again for ~30 s (0.1 s doubling to 2 s between tries) rather than failing a finished job.
result_backend_always_retry = True
result_backend_max_retries = 20
result_backend_base_sleep_between_retries_ms = 100
result_backend_max_sleep_between_retries_ms = 2000
redis_socket_keepalive = True
