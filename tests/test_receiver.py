"""The bridge's Redis event reader against a real Redis: bursts, batches, junk."""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid

import redis

from bridge.receiver import RedisEventReader
from tests.support import wait_for


def envelope(payload) -> bytes:
    """A Celery event message as kombu's Redis transport publishes it."""
    body = base64.b64encode(json.dumps(payload).encode()).decode()
    return json.dumps({"body": body, "content-encoding": "utf-8",
                       "content-type": "application/json", "headers": {"hostname": "w@h"},
                       "properties": {"delivery_mode": 1, "body_encoding": "base64",
                                      "delivery_info": {"exchange": "celeryev",
                                                        "routing_key": "task.progress"},
                                      "priority": 0, "delivery_tag": str(uuid.uuid4())}}).encode()


def event(i: int) -> dict:
    return {"hostname": "w@h", "utcoffset": 0, "pid": 1, "clock": i, "uuid": f"t{i % 97}",
            "current": i, "total": 10**6, "step": "x" * 900, "timestamp": time.time(),
            "type": "task-progress"}


def start_reader(url: str, slow: float = 0.0):
    got: list[dict] = []
    lock = threading.Lock()
    connected = threading.Event()

    def sink(events: list[dict]) -> None:
        with lock:
            got.extend(events)
        time.sleep(slow)  # a busy bridge: data piles up, messages arrive split
    reader = RedisEventReader(url, sink, on_connect=connected.set)
    reader.start()
    assert connected.wait(10)
    return reader, got


def test_a_large_burst_arrives_whole(redis_proc):
    url = redis_proc.url.rsplit("/", 1)[0] + "/5"
    reader, got = start_reader(url, slow=0.02)
    try:
        client = redis.Redis.from_url(url)
        n = 20_000
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.publish("/5.celeryev/task.progress", envelope(event(i)))
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        wait_for(lambda: len(got) >= n, 60, what="all events")
        assert [e["clock"] for e in got] == list(range(n))
        assert reader.reconnects == 0
    finally:
        reader.stop()


def test_batched_messages_and_junk(redis_proc):
    url = redis_proc.url.rsplit("/", 1)[0] + "/6"
    reader, got = start_reader(url)
    try:
        client = redis.Redis.from_url(url)
        client.publish("/6.celeryev/task.multi", envelope([event(1), event(2), event(3)]))
        client.publish("/6.celeryev/task.progress", b"not json at all")
        client.publish("/6.celeryev/task.progress",
                       json.dumps({"body": "x", "content-type": "application/x-python-serialize"}))
        client.publish("/6.celeryev/task.progress", envelope(event(4)))
        client.publish("/7.celeryev/task.progress", envelope(event(99)))  # another database
        wait_for(lambda: len(got) >= 4, 10, what="events")
        time.sleep(0.2)
        assert [e["clock"] for e in got] == [1, 2, 3, 4]
        assert reader.skipped == 2 and reader.reconnects == 0 and reader.is_alive()
    finally:
        reader.stop()
