"""A worker's job events (tasks/reporting.py) reach Celery's own event receiver."""
from __future__ import annotations

import os
import time

import redis

from tasks.app import make_celery
from tasks.reporting import EventSender
from tests.support import EventLog, wait_for

FIELDS = {"current": 2, "total": 3, "step": "Captioned b.png", "image": "b.png",
          "caption": "A dark image.", "eta": 1.5, "job_id": 7, "owner": "ann", "failed": 0}


def currents(log: EventLog, task_id: str, n: int) -> list[int]:
    """The ``current`` of each event of ``task_id``, in arrival order, once ``n`` arrived."""
    got = wait_for(lambda: len(log.for_task(task_id)) == n and log.for_task(task_id), 10,
                   what=f"{n} events of {task_id}")
    return [e["current"] for e in got]


def test_sender_events_read_like_a_default_dispatchers(settings):
    log = EventLog(settings).start()
    try:
        app = make_celery(settings)
        EventSender(app).send("w1@h", "task-progress", "sender-1", FIELDS)
        with app.events.default_dispatcher(hostname="w1@h") as dispatcher:
            dispatcher.send("task-progress", uuid="disp-1", **FIELDS)
        mine = wait_for(lambda: log.for_task("sender-1"), 10, what="sender event")[0]
        real = wait_for(lambda: log.for_task("disp-1"), 10, what="dispatcher event")[0]
        assert set(mine) == set(real)
        for key, value in FIELDS.items():
            assert mine[key] == real[key] == value
        assert mine["type"] == real["type"] == "task-progress"
        assert mine["hostname"] == real["hostname"] == "w1@h"
        assert mine["pid"] == os.getpid()
    finally:
        log.stop()


def test_sends_are_in_order_and_done_when_send_returns(settings):
    """Synchronous: once ``send`` returned the broker has the event (a job's events
    therefore precede Celery's own task-succeeded), and order is kept."""
    log = EventLog(settings).start()
    try:
        sender = EventSender(make_celery(settings))
        for i in range(50):
            sender.send("w2@h", "task-progress", "ordered", {**FIELDS, "current": i})
        assert currents(log, "ordered", 50) == list(range(50))
        assert sender.dropped == 0
    finally:
        log.stop()


def test_one_dispatcher_per_process_is_kept(settings):
    sender = EventSender(make_celery(settings))
    sender.send("w3@h", "task-progress", "kept", FIELDS)
    first = sender._dispatcher
    for i in range(5):
        sender.send("w3@h", "task-progress", "kept", {**FIELDS, "current": i})
    assert sender._dispatcher is first is not None
    sender.reset()  # what a forked pool process does first
    assert sender._dispatcher is None


def test_events_are_dropped_quickly_while_the_broker_is_away(settings):
    from devstack import free_port

    away = settings.with_overrides(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    sender = EventSender(make_celery(away))
    started = time.monotonic()
    for i in range(100):
        sender.send("w4@h", "task-progress", "away", {**FIELDS, "current": i})
    assert time.monotonic() - started < 3.0  # one refused attempt, then no more tries
    assert sender.dropped == 100


def test_sender_reconnects_after_the_connection_drops(settings):
    class Quick(EventSender):
        RETRY_AFTER = 0.0

    log = EventLog(settings).start()
    try:
        app = make_celery(settings)
        name = "skald-events-reconnect-test"  # only this sender's connections get killed
        app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                             "client_name": name}
        sender = Quick(app)
        sender.send("w5@h", "task-progress", "reconnect", {**FIELDS, "current": 1})
        wait_for(lambda: log.for_task("reconnect"), 10, what="the first event")
        client = redis.Redis.from_url(settings.broker_url)
        mine = [c["id"] for c in client.client_list() if c.get("name") == name]
        assert mine and all(client.client_kill_filter(_id=i) for i in mine)

        def resent() -> bool:
            sender.send("w5@h", "task-progress", "reconnect", {**FIELDS, "current": 2})
            return len(log.for_task("reconnect")) >= 2
        wait_for(resent, 10, what="an event after the connection was dropped")
        assert log.for_task("reconnect")[0]["current"] == 1
    finally:
        log.stop()
