"""The bridge's Redis event reader against a real Redis: bursts, batches, junk."""
from __future__ import annotations

import json
import threading
import time
import uuid

import redis

from bridge.receiver import RedisEventReader
from tasks import wire
from tests.support import wait_for


def envelope(payload) -> bytes:
    """A Celery event message as kombu's Redis transport publishes it (tests/test_wire.py)."""
    return wire.encode(payload, "task.progress", hostname="w@h", delivery_tag=str(uuid.uuid4()))


def channel(url: str, key: str = "task.progress") -> str:
    return wire.channel_prefix(url) + key


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
            pipe.publish(channel(url), envelope(event(i)))
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
        client.publish(channel(url, "task.multi"), envelope([event(1), event(2), event(3)]))
        client.publish(channel(url), b"not json at all")
        client.publish(channel(url),
                       json.dumps({"body": "x", "content-type": "application/x-python-serialize"}))
        client.publish(channel(url), envelope(event(4)))
        other = url.rsplit("/", 1)[0] + "/7"
        client.publish(channel(other), envelope(event(99)))  # another database
        wait_for(lambda: len(got) >= 4, 10, what="events")
        time.sleep(0.2)
        assert [e["clock"] for e in got] == [1, 2, 3, 4]
        assert reader.skipped == 2 and reader.reconnects == 0 and reader.is_alive()
    finally:
        reader.stop()
