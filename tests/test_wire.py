"""tasks/wire.py against Celery's own EventDispatcher and EventReceiver, on a real Redis."""
from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from tasks import wire
from tasks.app import make_celery
from tests.support import EventLog, wait_for

FIELDS = {"current": 2, "total": 3, "step": "Captioned b.png", "image": "é.png",
          "caption": "A \"dark\" image.", "eta": 1.5, "job_id": 7, "owner": "ann", "failed": 0}


def capture(url: str):
    sub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    sub.psubscribe(wire.pattern(url))
    wait_for(lambda: sub.get_message(timeout=0.1) is None and sub.subscribed, 5, what="psubscribe")
    return sub


def next_message(sub) -> dict:
    return wait_for(lambda: sub.get_message(timeout=0.2), 10, what="a message on the event channels")


def envelope_shape(raw: bytes) -> dict:
    env = json.loads(raw)
    props = {k: v for k, v in env["properties"].items() if k != "delivery_tag"}
    return {**{k: v for k, v in env.items() if k != "body"}, "properties": props}


def test_decode_reads_a_dispatchers_messages_as_celerys_receiver_does(settings):
    sub = capture(settings.broker_url)
    log = EventLog(settings).start()
    try:
        app = make_celery(settings)
        with app.connection_for_write() as conn, \
                app.events.Dispatcher(conn, hostname="d1@h") as dispatcher:
            dispatcher.send("task-progress", uuid="wire-dec", **FIELDS)
        message = next_message(sub)
        while wire.decode(message["data"])[0].get("uuid") != "wire-dec":
            message = next_message(sub)  # another process's event (the test session's worker)
        [mine] = wire.decode(message["data"])
        theirs = wait_for(lambda: log.for_task("wire-dec"), 10, what="receiver event")[0]
        assert message["channel"].decode() == wire.channel_prefix(settings.broker_url) + "task.progress"
        assert {k: mine[k] for k in FIELDS} == {k: theirs[k] for k in FIELDS} == FIELDS
        for key in ("type", "hostname", "pid", "clock", "uuid", "utcoffset"):
            assert mine[key] == theirs[key], key
        wire.localize(mine, 0)  # the receiver runs in the same timezone: localizing is a no-op
        assert abs(mine["timestamp"] - theirs["timestamp"]) < 1
    finally:
        log.stop()
        sub.close()


def test_encode_writes_what_a_dispatcher_writes(settings):
    sub = capture(settings.broker_url)
    log = EventLog(settings).start()
    try:
        app = make_celery(settings)
        with app.connection_for_write() as conn, \
                app.events.Dispatcher(conn, hostname="d2@h") as dispatcher:
            dispatcher.send("task-progress", uuid="wire-enc-real", **FIELDS)
        real = next_message(sub)
        while b"wire-enc-real" not in json.dumps(wire.decode(real["data"])).encode():
            real = next_message(sub)
        body = wire.event_body("task-progress", {"uuid": "wire-enc-mine", **FIELDS},
                               hostname="d2@h", pid=1, clock=1)
        channel = wire.channel_prefix(settings.broker_url) + wire.routing_key("task-progress")
        data = wire.encode(body, wire.routing_key("task-progress"), hostname="d2@h",
                           delivery_tag=str(uuid.uuid4()))
        assert real["channel"].decode() == channel
        assert envelope_shape(real["data"]) == envelope_shape(data)
        assert list(wire.decode(real["data"])[0]) == list(body)  # same keys, same order
        redis.Redis.from_url(settings.broker_url).publish(channel, data)
        got = wait_for(lambda: log.for_task("wire-enc-mine"), 10, what="our event at Celery's receiver")[0]
        assert {k: got[k] for k in FIELDS} == FIELDS and got["type"] == "task-progress"
    finally:
        log.stop()
        sub.close()


def test_multi_messages_decode_to_every_event_in_order():
    events = [wire.event_body("task-progress", {"uuid": f"t{i}", "current": i}, hostname="h",
                              pid=1, clock=i) for i in range(3)]
    data = wire.encode(events, "task.multi", hostname="h", delivery_tag="x")
    assert [e["uuid"] for e in wire.decode(data)] == ["t0", "t1", "t2"]


@pytest.mark.parametrize("raw", [
    b"not json at all", b"[]", b"{}", b'{"body": "x", "content-type": "application/json"}',
    json.dumps({"body": "eyJh", "content-type": "application/x-python-serialize"}).encode(),
    json.dumps({"body": "!!!", "content-type": "application/json",
                "properties": {"body_encoding": "base64"}}).encode(),
])
def test_junk_is_a_wire_error(raw):
    with pytest.raises(wire.WireError):
        wire.decode(raw)


def test_broker_urls():
    assert wire.is_redis("redis://h:1/3") and wire.is_redis("rediss://h/0")
    assert not wire.is_redis("amqp://guest@h//") and not wire.is_redis(None)
    assert wire.pattern("redis://h:1/3") == "/3.celeryev/*"
    assert wire.channel_prefix("redis://h") == "/0.celeryev/"
    assert wire.routing_key("task-progress") == "task.progress"


def test_localize_moves_a_timestamp_between_utc_offsets():
    event = {"timestamp": time.time(), "utcoffset": 2}
    before = event["timestamp"]
    wire.localize(event, -1)
    assert event["timestamp"] == pytest.approx(before - 3 * 3600)
    odd = {"timestamp": "x"}
    wire.localize(odd, 0)  # no utcoffset: left alone
    assert odd == {"timestamp": "x"}
