"""Faults with real processes: every watcher still ends on the right terminal state, once.

Each test runs its own Redis, workers, bridge(s) and web process (tests.support.Stack).
"""
from __future__ import annotations

import signal
import sys
import time

import pytest
import redis
import requests

from tests.support import Stack, Watcher, make_image, wait_for

pytestmark = pytest.mark.slow
ENDINGS = ("task_completed", "task_cancelled", "task_error")


@pytest.fixture()
def make_stack(tmp_path):
    stacks: list[Stack] = []

    def make(**kw) -> Stack:
        stack = Stack(tmp_path / f"s{len(stacks)}", **kw)
        stacks.append(stack)
        return stack
    yield make
    for s in stacks:
        s.close()


def pictures(tmp_path, n, size=(1600, 1200), prefix="p"):
    return [make_image(tmp_path / f"{prefix}{i}.png", i, size) for i in range(n)]


def watch_all(stack: Stack, user: dict, task_ids: list[str]) -> Watcher:
    w = Watcher(stack.web.url, user["token"]).connect()
    for tid in task_ids:
        assert w.call("join_task", {"task_id": tid})["ok"]
    return w


def assert_one_ending_each(w: Watcher, task_ids: list[str], expected: str = "task_completed",
                           timeout: float = 90) -> None:
    for tid in task_ids:
        w.wait_ending(tid, timeout)
    time.sleep(1.5)  # room for a duplicate or a late progress_update to show up
    for tid in task_ids:
        names = [n for n, _ in w.events(tid)]
        assert [n for n in names if n in ENDINGS] == [expected], (tid, names)
        assert names[-1] == expected, f"something followed the ending of {tid}: {names}"


def test_bridge_killed_mid_run_and_restarted(make_stack, tmp_path):
    stack = make_stack().start(workers=1, bridges=1)
    user = stack.user("kim")
    tids = [stack.submit(user, pictures(tmp_path, 6, prefix=f"j{j}-")) for j in range(5)]
    w = watch_all(stack, user, tids)
    try:
        w.wait_progress(tids[0], 1)
        bridge = stack.procs.procs[1]
        bridge.kill()  # SIGKILL: no goodbye, the lease stays until it expires
        time.sleep(1.0)
        stack.start_bridge("fb-restarted")
        assert_one_ending_each(w, tids)
    finally:
        w.close()


def test_two_bridges_standby_takes_over_without_duplicates(make_stack, tmp_path):
    stack = make_stack().start(workers=1, bridges=1)
    standby = stack.start_bridge("fb-standby")
    assert "bridge standby" in standby.log() and "bridge active" not in standby.log()
    user = stack.user("lee")
    tids = [stack.submit(user, pictures(tmp_path, 6, prefix=f"k{j}-")) for j in range(4)]
    w = watch_all(stack, user, tids)
    try:
        w.wait_progress(tids[0], 1)
        active = stack.procs.procs[1]
        killed_at = time.monotonic()
        active.kill()
        wait_for(lambda: "bridge active" in standby.log(), 10, interval=0.02, what="takeover")
        took = time.monotonic() - killed_at
        assert took < 5.0, f"standby took {took:.1f}s to take over"
        assert_one_ending_each(w, tids)
    finally:
        w.close()


def test_worker_killed_mid_job_is_redelivered_and_completes(make_stack, tmp_path):
    stack = make_stack(visibility_timeout=4).start(workers=1, bridges=1)
    user = stack.user("max")
    tid = stack.submit(user, pictures(tmp_path, 30, size=(2400, 1800)))
    w = watch_all(stack, user, [tid])
    try:
        w.wait_progress(tid, 2)
        first_worker = stack.procs.procs[0]
        stack.procs.start_worker("fw-second", stack.env, stack.settings, concurrency=1)
        first_worker.kill()  # the whole worker, mid-job: its message was never acked
        ending = w.wait_ending(tid, 120)
        assert [n for n, _ in ending] == ["task_completed"]
        results = ending[0][1]["results"]
        assert results["count"] == 30 and results["failed"] == 0
        caps = requests.get(f"{stack.web.url}/api/jobs/{tid}/captions", headers=user["headers"]).json()
        assert len(caps["captions"]) == 30  # nothing captioned twice
    finally:
        w.close()


def test_redis_restart_mid_run(make_stack, tmp_path):
    stack = make_stack(redis_args=["--appendonly", "yes", "--appendfsync", "always"])
    stack.start(workers=1, bridges=1)
    user = stack.user("ned")
    tid = stack.submit(user, pictures(tmp_path, 40, size=(2400, 1800)))
    w = watch_all(stack, user, [tid])
    try:
        w.wait_progress(tid, 2)
        stack.restart_redis(down_for=1.0)
        ending = w.wait_ending(tid, 120)
        assert [n for n, _ in ending] == ["task_completed"]
        assert ending[0][1]["results"]["count"] == 40
        # Everything reconnected by itself: a new job goes through end to end.
        tid2 = stack.submit(user, pictures(tmp_path, 2, prefix="after"))
        assert w.call("join_task", {"task_id": tid2})["ok"]
        assert [n for n, _ in w.wait_ending(tid2, 60)] == ["task_completed"]
    finally:
        w.close()


def test_bridge_dropped_by_redis_still_delivers_every_ending(make_stack, tmp_path):
    # A tiny pub/sub output buffer: Redis drops a subscriber 64 KB behind.
    stack = make_stack(redis_args=["--client-output-buffer-limit", "pubsub", "64kb", "32kb", "1"])
    stack.start(workers=1, bridges=1)
    user = stack.user("ola")
    bridge = stack.procs.procs[1]
    w = Watcher(stack.web.url, user["token"]).connect()
    try:
        bridge.signal(signal.SIGSTOP)
        tids = [stack.submit(user, pictures(tmp_path, 3, size=(320, 240), prefix=f"d{j}-"))
                for j in range(4)]
        for tid in tids:
            assert w.call("join_task", {"task_id": tid})["ok"]
        wait_for(lambda: all(requests.get(f"{stack.web.url}/api/jobs/{t}", headers=user["headers"])
                             .json()["state"] == "SUCCESS" for t in tids), 60, what="jobs done")
        flood(stack)
        bridge.signal(signal.SIGCONT)
        # A watcher that joined after the ends got them from the database
        # already; the bridge must not add a second one.
        assert_one_ending_each(w, tids, timeout=60)
        assert "event stream lost" in bridge.log() or "lost the leader lease" in bridge.log()
    finally:
        if bridge.alive():
            bridge.signal(signal.SIGCONT)
        w.close()


def flood(stack: Stack, megabytes: int = 40) -> None:
    """Publish far more bytes on the event channel than the paused bridge can buffer
    (kernel socket buffers included), as messages it cannot parse."""
    client = redis.Redis.from_url(stack.settings.redis_url)
    junk = b"x" * (256 * 1024)
    for _ in range(megabytes * 4):
        client.publish("/0.celeryev/task.flood", junk)


def test_a_late_cancel_never_overwrites_a_success(make_stack, tmp_path):
    """Issue 16, item 9: the bridge never saw the job (it was down) and then handles the
    cancel queued meanwhile: the job's SUCCESS, which the result backend holds, wins."""
    from tasks.app import make_celery

    stack = make_stack().start(workers=1, bridges=0)
    user = stack.user("pia")
    tid = stack.submit(user, pictures(tmp_path, 30, size=(2400, 1800)))
    w = watch_all(stack, user, [tid])  # in the room while the job runs
    try:
        resp = requests.post(f"{stack.web.url}/api/jobs/{tid}/cancel", headers=user["headers"])
        assert resp.status_code == 202, resp.text  # queued for the bridge, which is down
        wait_for(lambda: requests.get(f"{stack.web.url}/api/jobs/{tid}", headers=user["headers"])
                 .json()["state"] == "SUCCESS", 120, what="the job's success (no bridge: no flag)")
        bridge = stack.start_bridge("fb-late")
        ending = w.wait_ending(tid, 60)
        time.sleep(1.5)  # room for a second ending to show up
        assert [n for n, _ in w.endings(tid)] == ["task_completed"], bridge.log()[-3000:]
        assert ending[0][1]["results"]["count"] == 30
        snap = requests.get(f"{stack.web.url}/api/jobs/{tid}", headers=user["headers"]).json()
        assert snap["state"] == "SUCCESS"
        assert make_celery(stack.settings).AsyncResult(tid).state == "SUCCESS"
    finally:
        w.close()


def test_an_event_with_huge_numbers_costs_the_bridge_nothing(make_stack, tmp_path):
    """Issue 16, item 8: a worker event with 10**30 made the store write raise; the bridge
    stepped down and dropped what it held. Numbers are clamped; nothing steps down."""
    import uuid

    from bridge.store import SnapshotStore
    from tasks.app import make_celery

    stack = make_stack().start(workers=1, bridges=1)
    user = stack.user("quinn")
    bridge = stack.procs.procs[1]
    first = stack.submit(user, pictures(tmp_path, 2, size=(320, 240), prefix="q1-"))
    w = watch_all(stack, user, [first])
    try:
        w.wait_ending(first, 60)
        app = make_celery(stack.settings)
        evil = str(uuid.uuid4())
        huge = 10 ** 30
        with app.connection_for_write() as conn, app.events.Dispatcher(conn, hostname="evil@h") as d:
            d.send("task-progress", uuid=evil, current=huge, total=huge, job_id=huge, failed=huge,
                   eta=huge, owner="x", step="s")
            d.send("worker-heartbeat", active=huge, processed=huge, loadavg=[huge])
        store = SnapshotStore(redis.Redis.from_url(stack.settings.redis_url))
        record = wait_for(lambda: store.get(evil), 20, what="the odd task's record")
        assert record["snapshot"]["current"] == 2 ** 53 - 1 and record["snapshot"]["job_id"] is None
        after = stack.submit(user, pictures(tmp_path, 2, size=(320, 240), prefix="q2-"))
        assert w.call("join_task", {"task_id": after})["ok"]
        assert [n for n, _ in w.wait_ending(after, 60)] == ["task_completed"]
        assert store.get(first)["snapshot"]["state"] == "SUCCESS"
        log = bridge.log()
        assert "stepping down" not in log and "Traceback" not in log, log[-3000:]
    finally:
        w.close()


def test_a_worker_survives_a_redis_restart_mid_job(make_stack, tmp_path):
    """Issue 16, item 12: a worker started as the Procfile starts it (gossip and mingle
    on) died, or logged "Error on restarting Gossip", when Redis restarted mid-job."""
    stack = make_stack(redis_args=["--appendonly", "yes", "--appendfsync", "always"])
    stack.start(workers=0, bridges=1)
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-E", "--loglevel=INFO",
            "-n", "procfile@%h", "-c", "1"]  # the Procfile's command (plus a name)
    worker = stack.procs.start("fw-procfile", argv, stack.env)
    wait_for(lambda: "ready." in worker.log() or not worker.alive(), 60, what="the worker")
    user = stack.user("rae")
    tid = stack.submit(user, pictures(tmp_path, 40, size=(2400, 1800)))
    w = watch_all(stack, user, [tid])
    try:
        w.wait_progress(tid, 2)
        stack.restart_redis(down_for=1.0)
        ending = w.wait_ending(tid, 120)
        assert [n for n, _ in ending] == ["task_completed"]
        tid2 = stack.submit(user, pictures(tmp_path, 2, prefix="after"))
        assert w.call("join_task", {"task_id": tid2})["ok"]
        assert [n for n, _ in w.wait_ending(tid2, 60)] == ["task_completed"]
        log = worker.log()
        assert worker.alive(), log[-3000:]
        for trouble in ("Unrecoverable error", "Error on restarting", "AttributeError"):
            assert trouble not in log, log[-3000:]
    finally:
        w.close()


def test_the_worker_runs_without_celerys_gossip_step():
    from celery.worker.consumer import Consumer as CeleryConsumer

    from celeryconfig import worker_consumer
    from tasks.consumer import GOSSIP_STEP, Consumer

    assert worker_consumer == "tasks.consumer:Consumer"
    assert GOSSIP_STEP in CeleryConsumer.Blueprint.default_steps
    assert GOSSIP_STEP not in Consumer.Blueprint.default_steps
    assert len(Consumer.Blueprint.default_steps) == len(CeleryConsumer.Blueprint.default_steps) - 1
