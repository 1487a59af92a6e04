"""The bridge's Socket.IO messages are exactly what python-socketio's manager writes."""
from __future__ import annotations

import json

import socketio

from bridge.emitter import socketio_message
from protocol import SOCKETIO_CHANNEL


class Capture(socketio.RedisManager):
    def __init__(self) -> None:
        super().__init__("redis://unused", channel=SOCKETIO_CHANNEL, write_only=True)
        self.out: list = []

    def _publish(self, data) -> None:
        self.out.append(data)


def test_message_matches_python_socketio():
    payload = {"task_id": "t", "state": "PROGRESS", "progress_percent": 12.5, "eta": None,
               "last_caption": {"image": "é.png", "caption": "A \"quoted\" caption"},
               "recent_captions": [{"image": "a", "caption": "b"}]}
    manager = Capture()
    manager.emit("progress_update", payload, namespace="/", room="task:t")
    expected = dict(manager.out[0])
    mine = json.loads(socketio_message("progress_update", payload, "task:t", expected["host_id"]))
    assert mine == expected
    # And the web side's decoder reads it back to the same emit.
    assert manager.json.loads(socketio_message("x", payload, "r", "h"))["data"] == [payload]


def test_a_record_or_message_that_cannot_be_encoded_costs_the_others_nothing(settings):
    """One value orjson refuses (an int past 64 bits) is left out; the rest of the batch is
    stored and emitted, and nothing raises (the bridge used to step down over it)."""
    import redis

    from bridge.emitter import Publisher
    from bridge.records import RecordWriter
    from bridge.state import Update
    from bridge.store import SnapshotStore
    from protocol import snapshot, task_room

    client = redis.Redis.from_url(settings.redis_url)
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.subscribe("skald-test-isolation")
    sub.get_message(timeout=1)  # the subscription's confirmation
    bad, good = {"snapshot": snapshot("bad-1", current=10 ** 30), "ending": None, "detail": {}}, \
        {"snapshot": snapshot("good-1", current=3), "ending": None, "detail": {}}
    updates = [Update("progress_update", task_room(r["snapshot"]["task_id"]), r["snapshot"]["task_id"],
                      r["snapshot"]) for r in (bad, good)]
    publisher = Publisher(client, RecordWriter(), channel="skald-test-isolation")
    publisher.send(updates, [bad, good])
    assert publisher.skipped == 2
    store = SnapshotStore(client)
    assert store.get("good-1")["snapshot"]["current"] == 3 and store.get("bad-1") is None
    msg = sub.get_message(timeout=5)
    assert json.loads(msg["data"])["data"][0]["task_id"] == "good-1"
    assert sub.get_message(timeout=0.5) is None
    sub.close()
