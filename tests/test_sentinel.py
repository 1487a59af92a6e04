"""Skald on Redis Sentinel, one host: master + replica + 3 sentinels (tests/sentinel.py), the
real worker, bridge and web with ``REDIS_URL=redis+sentinel://...``; then the master dies
mid-run and every process follows the promoted replica by itself."""
from __future__ import annotations

import time

import pytest
import requests

import redisurl
from tests.sentinel import SentinelCluster
from tests.support import ProcessSet, Watcher, make_image, submit_job, wait_for, worker_env

pytestmark = pytest.mark.slow
ENDINGS = Watcher.ENDINGS


class SentinelStack:
    """A Sentinel deployment and Skald's processes on it (one worker, one bridge, one web)."""

    def __init__(self, base, **cluster_kw) -> None:
        from devstack import free_port
        from settings import load_settings

        self.cluster = SentinelCluster(base / "redis", **cluster_kw).start()
        url = self.cluster.url
        self.settings = load_settings(env={}).with_overrides(
            redis_url=url, broker_url=url, database_url=f"sqlite:///{base / 'skald.db'}",
            upload_dir=base / "uploads", var_dir=base / "var", secret_key="sentinel-secret",
            web_async_mode="threading", uploads_per_minute=1000, reconcile_seconds=2.0,
            captioner="basic")
        self.env = worker_env(self.settings)
        # A message the dead master took with it (asynchronous replication) is sent again.
        self.env.update({"SWEEP_AFTER": "3", "SWEEP_SECONDS": "0.5"})
        self.procs = ProcessSet()
        self.port = free_port()

    def start(self, worker: bool = True) -> SentinelStack:
        if worker:
            self.worker = self.procs.start_worker("sw0", self.env, self.settings, concurrency=1)
        self.bridge = self.procs.start_bridge("sb0", self.env)
        self.web = self.procs.start_web("sweb", self.env, self.port)
        return self

    def user(self, name: str) -> dict:
        from tasks.db import session_scope
        from web.auth import create_user

        with session_scope(self.settings.database_url) as db:
            _, token = create_user(db, name)
        return {"name": name, "token": token, "headers": {"Authorization": f"Bearer {token}"}}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in self.procs.procs)

    def close(self) -> None:
        self.procs.stop_all()
        self.cluster.stop()
        from tasks.db import dispose_all
        dispose_all()


@pytest.fixture()
def sstack(tmp_path):
    stack = SentinelStack(tmp_path, password="data-pw", sentinel_password="sentinel-pw").start()
    yield stack
    stack.close()


def pictures(tmp_path, n, prefix, size=(1600, 1200)):
    return [make_image(tmp_path / f"{prefix}{i}.png", i, size) for i in range(n)]


def assert_one_ending(w: Watcher, tid: str, expected: str = "task_completed", timeout: float = 90):
    w.wait_ending(tid, timeout)
    time.sleep(1.0)  # room for a duplicate or a late progress_update
    names = [n for n, _ in w.events(tid)]
    detail = [(round(t, 3), n, {k: d.get(k) for k in ("state", "current", "updated_at")})
              for t, n, d in list(w.received) if isinstance(d, dict) and d.get("task_id") == tid]
    if [n for n in names if n in ENDINGS] != [expected] or names[-1] != expected:
        print("EVENTS", tid, detail)
        print("ALL", [(round(t, 3), n, (d.get("task_id") or "")[:4] if isinstance(d, dict) else "",
                       d.get("state") if isinstance(d, dict) else "") for t, n, d in list(w.received)])
    assert [n for n in names if n in ENDINGS] == [expected], (tid, detail)
    assert names[-1] == expected, (tid, detail)


def test_job_watched_end_to_end_through_sentinel(sstack, tmp_path):
    user = sstack.user("sam")
    w = Watcher(sstack.web.url, user["token"]).connect()
    try:
        tid = submit_job(sstack.web.url, user, pictures(tmp_path, 2, "a", (64, 48)))["task_id"]
        assert w.call("join_task", {"task_id": tid})["ok"]
        assert_one_ending(w, tid)
        snap = requests.get(f"{sstack.web.url}/api/jobs/{tid}", headers=user["headers"], timeout=5).json()
        assert snap["state"] == "SUCCESS" and snap["current"] == 2
        assert requests.get(f"{sstack.web.url}/healthz", timeout=5).json()["ok"]
    finally:
        w.close()
    # The data lives on the master the sentinels name, in database 0.
    assert redisurl.client(sstack.settings.redis_url).exists(f"celery-task-meta-{tid}")


def test_master_killed_mid_run_every_process_follows(sstack, tmp_path):
    user = sstack.user("ida")
    url = sstack.web.url
    tids = [submit_job(url, user, pictures(tmp_path, 4, f"j{j}-", (1200, 900)))["task_id"]
            for j in range(3)]
    w = Watcher(url, user["token"]).connect()
    try:
        for tid in tids:
            assert w.call("join_task", {"task_id": tid})["ok"]
        w.wait_progress(tids[0], 1)
        killed_at = time.monotonic()
        seen_before = len(w.events())
        new = sstack.cluster.kill_master()
        promoted = time.monotonic() - killed_at
        wait_for(lambda: len(w.events()) > seen_before, 60, what="news of a job after the failover")
        first_progress = time.monotonic() - killed_at
        # Every job still ends, each exactly once, on the right state (a job whose queued
        # message the dead master took with it is resubmitted by the sweeper).
        for tid in tids:
            assert_one_ending(w, tid, timeout=120)
        ended = time.monotonic() - killed_at
        print(f"failover: promoted after {promoted:.1f}s, first news after {first_progress:.1f}s, "
              f"every job ended after {ended:.1f}s")
        # ...and every process now works against the promoted master: a new job end to end
        # (web -> broker -> worker -> events -> bridge -> message queue -> web -> watcher).
        after = submit_job(url, user, pictures(tmp_path, 2, "after", (64, 48)))["task_id"]
        assert w.call("join_task", {"task_id": after})["ok"]
        assert_one_ending(w, after, timeout=60)
        assert all(p.alive() for p in sstack.procs.procs), sstack.logs()
        assert promoted < 30 and new != sstack.cluster.data[0].port
    except AssertionError:
        print(sstack.logs())
        raise
    finally:
        w.close()


def test_sentinel_failover_command_is_followed(sstack, tmp_path):
    """A clean ``SENTINEL FAILOVER`` (the old master stays up, demoted): nothing keeps
    writing to it (a replica refuses writes; redis-py reconnects through the sentinels)."""
    user = sstack.user("eve")
    url = sstack.web.url
    w = Watcher(url, user["token"]).connect()
    try:
        sstack.cluster.failover()
        tid = submit_job(url, user, pictures(tmp_path, 2, "f", (64, 48)))["task_id"]
        assert w.call("join_task", {"task_id": tid})["ok"]
        assert_one_ending(w, tid, timeout=60)
        wait_for(lambda: requests.get(f"{url}/healthz", timeout=5).ok, 20, what="healthz")
    except AssertionError:
        print(sstack.logs())
        raise
    finally:
        w.close()


def test_a_job_the_broker_forgot_is_resubmitted_through_the_new_master(tmp_path):
    """The broker loses a queued job (as asynchronous replication can at a failover: here
    its message is deleted, then the master dies); the sweeper on the active bridge sends it
    again to the promoted master, a worker started afterwards runs it, the watcher ends once."""
    from sqlalchemy import select

    from tasks.db import session_scope
    from tasks.models import AuditEntry

    stack = SentinelStack(tmp_path).start(worker=False)
    try:
        user = stack.user("lou")
        w = Watcher(stack.web.url, user["token"]).connect()
        tid = submit_job(stack.web.url, user, pictures(tmp_path, 2, "lost", (64, 48)))["task_id"]
        assert w.call("join_task", {"task_id": tid})["ok"]
        client = redisurl.client(stack.settings.redis_url)
        wait_for(lambda: client.llen("celery") == 1, 10, what="the queued message")
        client.delete("celery")
        stack.cluster.kill_master()
        stack.procs.start_worker("late", stack.env, stack.settings, concurrency=1)
        assert_one_ending(w, tid, timeout=60)
        with session_scope(stack.settings.database_url) as db:
            actions = [(a.user, a.action) for a in db.scalars(
                select(AuditEntry).where(AuditEntry.target == tid))]
        assert actions == [("sweeper", "job.resubmit")]
        w.close()
    except AssertionError:
        print(stack.logs())
        raise
    finally:
        stack.close()
