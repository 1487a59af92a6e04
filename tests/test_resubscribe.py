"""Endings published while a web process is not subscribed still reach its pages, once.

Real Redis, bridge and web processes (tests.support.Stack), no worker: a queued
job ends at once when cancelled, so each ending happens exactly when the test
asks for it, before, during or after the web process's gap in the message queue.
"""
from __future__ import annotations

import signal
import time

import pytest
import redis
import requests

from bridge.commands import send_cancel
from protocol import SOCKETIO_CHANNEL
from tests import test_faults
from tests.support import Stack, Watcher, make_image, wait_for

pytestmark = pytest.mark.slow
ENDINGS = Watcher.ENDINGS
make_stack = test_faults.make_stack  # the fixture: private stacks, each closed afterwards


def queued_jobs(stack: Stack, user: dict, tmp_path, n: int) -> list[str]:
    return [stack.submit(user, [make_image(tmp_path / f"q{i}.png", i)]) for i in range(n)]


def cancel_over_http(stack: Stack, user: dict, task_id: str) -> None:
    def sent() -> bool:
        try:
            return requests.post(f"{stack.web.url}/api/jobs/{task_id}/cancel", headers=user["headers"],
                                 timeout=5).status_code == 202
        except requests.RequestException:
            return False
    wait_for(sent, 30, interval=0.2, what=f"the cancel of {task_id} to be accepted")


def handled(stack: Stack, task_id: str) -> bool:
    return any(f"cancel {task_id} by" in p.log() for p in stack.procs.procs if p.name.startswith("fb"))


def web_subscribed(stack: Stack) -> bool:
    try:
        client = redis.Redis.from_url(stack.settings.redis_url, socket_timeout=1)
        return dict(client.pubsub_numsub(SOCKETIO_CHANNEL)).get(SOCKETIO_CHANNEL.encode(), 0) >= 1
    except redis.RedisError:
        return False


def assert_one_ending_each(w: Watcher, task_ids: list[str]) -> None:
    for tid in task_ids:
        w.wait_ending(tid, 30)
    time.sleep(1.5)  # room for a duplicate to show up
    for tid in task_ids:
        names = [n for n, _ in w.events(tid)]
        assert [n for n in names if n in ENDINGS] == ["task_cancelled"], (tid, names)
        assert names[-1] == "task_cancelled", f"something followed the ending of {tid}: {names}"


def test_endings_around_a_redis_restart_reach_watchers_once(make_stack, tmp_path):
    stack = make_stack(redis_args=["--appendonly", "yes", "--appendfsync", "always"])
    stack.start(workers=0, bridges=1)
    user = stack.user("rs-restart")
    before, during, after = queued_jobs(stack, user, tmp_path, 3)
    w = Watcher(stack.web.url, user["token"]).connect()
    try:
        for tid in (before, during, after):
            assert w.call("join_task", {"task_id": tid})["ok"]
        cancel_over_http(stack, user, before)
        w.wait_ending(before, 30)
        bridge = next(p for p in stack.procs.procs if p.name.startswith("fb"))
        connected = bridge.log().count("event stream connected")
        stack.restart_redis(down_for=3.0)  # python-socketio's listener is then in a 4 s back-off
        wait_for(lambda: bridge.log().count("event stream connected") > connected, 30,
                 what="the bridge to reconnect")
        cancel_over_http(stack, user, during)  # the bridge emits at once, maybe before we listen
        wait_for(lambda: handled(stack, during), 30, what="the bridge to end it")
        wait_for(lambda: web_subscribed(stack), 30, what="the web process to subscribe again")
        cancel_over_http(stack, user, after)
        assert_one_ending_each(w, [before, during, after])
    finally:
        w.close()


def test_an_ending_missed_while_dropped_by_redis_is_caught_up(make_stack, tmp_path):
    """Deterministic gap: Redis drops the paused web process's subscription (it fell
    behind), the ending is published, and only then does the web process listen again."""
    stack = make_stack(redis_args=["--client-output-buffer-limit", "pubsub", "64kb", "32kb", "1"])
    stack.start(workers=0, bridges=1)
    user = stack.user("rs-dropped")
    missed, later = queued_jobs(stack, user, tmp_path, 2)
    w = Watcher(stack.web.url, user["token"]).connect()
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        for tid in (missed, later):
            assert w.call("join_task", {"task_id": tid})["ok"]
        stack.web.signal(signal.SIGSTOP)
        try:
            junk = b"x" * (256 * 1024)
            wait_for(lambda: client.publish("skald:auth", junk) == 0, 30,
                     interval=0, what="Redis to drop the paused web process's subscription")
            send_cancel(client, missed, "test")  # the ending goes out while nobody listens
            wait_for(lambda: handled(stack, missed), 30, what="the bridge to end it")
        finally:
            stack.web.signal(signal.SIGCONT)
        wait_for(lambda: web_subscribed(stack), 30, what="the web process to subscribe again")
        cancel_over_http(stack, user, later)
        assert_one_ending_each(w, [missed, later])
        assert "catching up the task rooms" in stack.web.log()
    finally:
        if stack.web.alive():
            stack.web.signal(signal.SIGCONT)
        w.close()
