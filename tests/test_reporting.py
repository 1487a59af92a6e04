"""Job events reach Celery's own event receiver the same through both senders."""
from __future__ import annotations

from tasks.app import make_celery
from tasks.reporting import EventSender, RedisEventWire
from tests.support import EventLog, wait_for

FIELDS = {"current": 2, "total": 3, "step": "Captioned b.png", "image": "b.png",
          "caption": "A dark image.", "eta": 1.5, "job_id": 7, "owner": "ann", "failed": 0}


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
        got = wait_for(lambda: len(log.for_task("ordered")) == 50 and log.for_task("ordered"), 10,
                       what="50 events")
        assert [e["current"] for e in got] == list(range(50))
    finally:
        log.stop()
