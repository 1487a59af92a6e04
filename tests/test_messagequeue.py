"""The web's message queue and Redis clients under load (real Redis).

Found by the watchers benchmark: with a few hundred watchers connecting at once
to a gevent web process, redis-py 8's pool (100 connections by default) ran out,
a publish failed, and python-socketio's retry replaced the listener's
subscription, so that process received nothing more.
"""
from __future__ import annotations

import json
import threading
import uuid

import redis

import redisurl
from tests.support import wait_for
from web.messagequeue import MessageQueue


def test_a_client_holds_more_than_a_hundred_connections_at_once(redis_proc):
    client = redisurl.client(redis_proc.url)
    errors: list[Exception] = []

    def wait(i: int) -> None:
        try:
            client.blpop(f"mq-test-nothing-{i}", timeout=1)
        except redis.RedisError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []


def test_a_failed_publish_leaves_the_subscription_alone(redis_proc):
    channel = f"mq-test-{uuid.uuid4().hex}"
    mq = MessageQueue(redis_proc.url, channel=channel)
    got: list[dict] = []

    def listen() -> None:
        for data in mq._listen():
            got.append(json.loads(data))

    threading.Thread(target=listen, daemon=True).start()
    wait_for(lambda: mq.subscriptions >= 1, 10, what="the subscription")
    mq.publisher = redis.Redis(port=1, socket_connect_timeout=0.5)  # nothing listens there
    mq._publish({"n": 1})  # fails once, then goes out on a fresh client
    redis.Redis.from_url(redis_proc.url).publish(channel, json.dumps({"n": 2}))
    wait_for(lambda: len(got) >= 2, 10, what="both messages")
    assert got == [{"n": 1}, {"n": 2}]
    assert mq.subscriptions == 1
