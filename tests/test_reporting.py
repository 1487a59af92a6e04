"""Job events reach Celery's own event receiver the same through both senders."""
from __future__ import annotations

import time

from tasks.app import make_celery
from tasks.reporting import EventSender, RedisEventWire
from tests.support import EventLog, wait_for

FIELDS = {"current": 2, "total": 3, "step": "Captioned b.png", "image": "b.png",
          "caption": "A dark image.", "eta": 1.5, "job_id": 7, "owner": "ann", "failed": 0}


def currents(log: EventLog, task_id: str, n: int) -> list[int]:
    """The ``current`` of each event of ``task_id``, in arrival order, once ``n`` arrived."""
    got = wait_for(lambda: len(log.for_task(task_id)) == n and log.for_task(task_id), 10,
                   what=f"{n} events of {task_id}")
    return [e["current"] for e in got]


def test_wire_events_read_like_a_dispatchers(settings):
    log = EventLog(settings).start()
    try:
        app = make_celery(settings)
        RedisEventWire(settings.broker_url).publish("w1@h", "task-progress", "wire-1", FIELDS,
                                                    app.clock.forward())
        with app.events.default_dispatcher(hostname="w1@h") as dispatcher:
            dispatcher.send("task-progress", uuid="disp-1", **FIELDS)
        wire = wait_for(lambda: log.for_task("wire-1"), 10, what="wire event")[0]
        real = wait_for(lambda: log.for_task("disp-1"), 10, what="dispatcher event")[0]
        assert set(wire) == set(real)
        for key, value in FIELDS.items():
            assert wire[key] == real[key] == value
        assert wire["type"] == real["type"] == "task-progress"
        assert wire["hostname"] == real["hostname"] == "w1@h"
        assert abs(wire["timestamp"] - real["timestamp"]) < 5
    finally:
        log.stop()


def test_sender_queues_then_flushes_in_order(settings):
    log = EventLog(settings).start()
    try:
        sender = EventSender(make_celery(settings))
        for i in range(50):
            sender.send("w2@h", "task-progress", "ordered", {**FIELDS, "current": i})
        assert sender.flush(5)
        assert currents(log, "ordered", 50) == list(range(50))
    finally:
        log.stop()


def test_wire_drops_events_quickly_while_the_broker_is_away(settings):
    from devstack import free_port

    wire = RedisEventWire(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    for i in range(100):
        wire.publish("w3@h", "task-progress", "away", {**FIELDS, "current": i}, i)
    assert time.monotonic() - started < 1.0  # one refused connect, then no more tries
    assert wire.dropped == 100
    assert wire.barrier() is True  # nothing was sent: nothing to wait for


def test_wire_waits_for_replies_where_reply_off_is_refused(settings):
    class Refusing(RedisEventWire):
        REPLY_OFF = ("CLIENT", "REPLY", "NEVER")  # what a server without the mode answers

    log = EventLog(settings).start()
    try:
        wire = Refusing(settings.broker_url)
        for i in range(5):
            wire.publish("w4@h", "task-progress", "refused", {**FIELDS, "current": i}, i)
        assert wire.dropped == 0 and wire.barrier() is True
        assert currents(log, "refused", 5) == list(range(5))
    finally:
        log.stop()


def test_wire_reconnects_after_the_connection_drops(settings):
    import redis

    class Named(RedisEventWire):  # only this wire's connection gets killed, not the workers'
        CLIENT_NAME = "skald-events-reconnect-test"
        RETRY_AFTER = 0.0

    log = EventLog(settings).start()
    try:
        wire = Named(settings.broker_url)
        wire.publish("w5@h", "task-progress", "reconnect", {**FIELDS, "current": 1}, 1)
        assert wire.barrier()
        client = redis.Redis.from_url(settings.broker_url)
        killed = [c["id"] for c in client.client_list() if c.get("name") == Named.CLIENT_NAME]
        assert killed and all(client.client_kill_filter(_id=i) for i in killed)

        def resent() -> bool:
            wire.publish("w5@h", "task-progress", "reconnect", {**FIELDS, "current": 2}, 2)
            return wire.barrier() and len(log.for_task("reconnect")) >= 2
        wait_for(resent, 10, what="an event after the connection was dropped")
        assert log.for_task("reconnect")[0]["current"] == 1 and wire.dropped >= 1
    finally:
        log.stop()
