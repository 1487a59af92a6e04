"""The worker's consumer: Celery's own, without its gossip step.

Gossip (workers watching each other over a fanout queue: clock sync,
elections) is nothing Skald uses, and it breaks a worker when Redis
restarts: on the reconnect, closing the gossip channel of the dead
connection runs kombu's Redis transport into a connection whose client is
already gone (``AttributeError: 'NoneType' object has no attribute
'hostname'`` / ``'connection_errors'``; celery/kombu#582), which Celery either
logs as "Error on restarting Gossip" or, depending on timing, treats as an
unrecoverable error and exits. Without the step there is no such channel.
Worker heartbeats and events (the bridge's liveness) are a different step
and stay. Set as ``worker_consumer`` in celeryconfig.py, so the Procfile's
command (``celery -A worker worker -E``) needs no ``--without-gossip``.
"""
from __future__ import annotations

from celery.worker.consumer import Consumer as CeleryConsumer

GOSSIP_STEP = "celery.worker.consumer.gossip:Gossip"


class Consumer(CeleryConsumer):
    gossip = None  # what the ``election`` control command looks for (no gossip: no election)

    class Blueprint(CeleryConsumer.Blueprint):
        default_steps = [s for s in CeleryConsumer.Blueprint.default_steps if s != GOSSIP_STEP]
