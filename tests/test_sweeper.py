"""No job lost when Redis forgets it (bridge/sweeper.py): the pure rule, then real processes:
a job whose broker message is deleted, a job left STARTED by a killed worker and a Redis
restarted without persistence, and an ending Redis lost."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
import requests

from bridge.sweeper import GiveUp, JobRow, RestoreEnding, Resubmit, Seen, Suspect, decide
from tests.support import Stack, Watcher, make_image, wait_for

NOW = 10_000.0
AFTER = 120.0


def row(state="PENDING", quiet=200.0, **kw) -> JobRow:
    return JobRow(task_id=kw.pop("task_id", "t1"), job_id=1, state=state, updated_at=NOW - quiet, **kw)


def one(job: JobRow, seen: Seen | None = None, suspects=frozenset()) -> list:
    return decide([job], {job.task_id: seen} if seen else {}, NOW, sweep_after=AFTER, suspects=suspects)


LOST = Seen(in_broker=False)


def test_a_lost_job_is_suspect_first_then_resubmitted():
    assert [type(d) for d in one(row(), LOST)] == [Suspect]
    [d] = one(row(), LOST, suspects={"t1"})
    assert isinstance(d, Resubmit) and "no task record" in d.reason and "no result" in d.reason


@pytest.mark.parametrize("job, seen", [
    (row(quiet=30), LOST),                                               # progress lately
    (row(), Seen(in_broker=True)),                                       # still queued / unacked
    (row(), Seen(in_broker=None)),                                       # cannot tell: leave it
    (row(), Seen(backend_status="SUCCESS", in_broker=False)),            # ended, the DB lags
    (row(), Seen(backend_status="REVOKED", in_broker=False)),            # revoked before it ran
    (row(), Seen(record_state="FAILURE", in_broker=False)),
    (row(), Seen(record_state="PROGRESS", record_updated=NOW - 5, in_broker=False)),  # record is fresh
])
def test_nothing_to_do(job, seen):
    assert one(job, seen, suspects={"t1"}) == []


def test_started_forever_is_resubmitted():
    """A worker killed mid-job and Redis restarted empty: STARTED in the DB, nothing in Redis."""
    [d] = one(row("STARTED", quiet=600), LOST, suspects={"t1"})
    assert isinstance(d, Resubmit) and d.reason.startswith("STARTED")
    [d] = one(row("STARTED"), Seen(backend_status="STARTED", record_state="PROGRESS",
                                   record_updated=NOW - 300, in_broker=False), suspects={"t1"})
    assert isinstance(d, Resubmit) and "result backend STARTED" in d.reason


def test_gives_up_after_the_last_resubmit():
    [d] = one(row(resubmitted=3), LOST, suspects={"t1"})
    assert isinstance(d, GiveUp)


def test_endings_redis_lost_are_written_back():
    ended = row("SUCCESS", finished_at=NOW - 200)
    [d] = one(ended)
    assert isinstance(d, RestoreEnding) and d.write_backend
    [d] = one(ended, Seen(backend_status="SUCCESS"))
    assert isinstance(d, RestoreEnding) and not d.write_backend   # only the record is missing
    assert one(ended, Seen(record_state="SUCCESS")) == []
    assert one(row("REVOKED", finished_at=NOW - 10)) == []          # too recent: the bridge has it
    assert one(row("FAILURE", finished_at=NOW - 10 * 3600)) == []   # too old to matter


def test_every_job_gets_its_own_decision():
    jobs = [row(task_id=f"t{i}") for i in range(3)]
    seen = {"t0": LOST, "t1": Seen(in_broker=True), "t2": LOST}
    out = decide(jobs, seen, NOW, sweep_after=AFTER, suspects={"t2"})
    assert [(type(d).__name__, d.job.task_id) for d in out] == [("Suspect", "t0"), ("Resubmit", "t2")]


def test_task_ids_are_read_off_kombu_messages():
    from bridge.sweeper import message_ids

    queued = (b'{"body": "W1sxXV0=", "content-encoding": "utf-8", "content-type": "application/json", '
              b'"headers": {"lang": "py", "task": "skald.caption_job", "id": "aaaa-1", "shadow": null}, '
              b'"properties": {"correlation_id": "aaaa-1", "reply_to": "x"}}')
    unacked = b'[{"body": "e30=", "headers": {"id": "bbbb-2"}}, "", "celery"]'
    assert message_ids([queued, unacked, b"junk", b'{"properties": {"correlation_id": "c"}}']) == \
        {"aaaa-1", "bbbb-2"}


# -- real processes ------------------------------------------------------------------------------
SWEEP = {"SWEEP_AFTER": "2", "SWEEP_SECONDS": "0.5"}


@pytest.fixture()
def sweep_stack(tmp_path):
    stacks: list[Stack] = []

    def make(**kw) -> Stack:
        stack = Stack(tmp_path / f"s{len(stacks)}", **kw)
        stack.env.update(SWEEP)
        stacks.append(stack)
        return stack
    yield make
    for s in stacks:
        s.close()


@contextmanager
def watched(stack: Stack, user: dict) -> Iterator[Watcher]:
    """A watcher for ``user``; when the test fails, the processes' logs are printed."""
    w = Watcher(stack.web.url, user["token"]).connect()
    try:
        yield w
    except AssertionError:
        print("\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in stack.procs.procs))
        raise
    finally:
        w.close()


def admin_watcher(stack: Stack) -> Watcher:
    from tasks.db import session_scope
    from web.auth import create_user

    with session_scope(stack.settings.database_url) as db:
        _, token = create_user(db, "root", admin=True)
    w = Watcher(stack.web.url, token).connect()
    assert w.call("join_admin_dashboard", {})["ok"]
    return w


def audit_rows(stack: Stack, task_id: str) -> list:
    from sqlalchemy import select

    from tasks.db import session_scope
    from tasks.models import AuditEntry, Job

    with session_scope(stack.settings.database_url) as db:
        rows = db.scalars(select(AuditEntry).where(AuditEntry.target == task_id)).all()
        job = db.scalar(select(Job).where(Job.task_id == task_id))
        return [(a.user, a.action, json.loads(a.params)) for a in rows], job.resubmitted


def alerts(w: Watcher, kind: str) -> list:
    return [d for name, d in w.events(names=("admin_alert",)) if d.get("kind") == kind]


def one_ending(w: Watcher, tid: str, timeout: float = 60) -> None:
    w.wait_ending(tid, timeout)
    time.sleep(1.0)
    names = [n for n, _ in w.events(tid)]
    assert [n for n in names if n in Watcher.ENDINGS] == ["task_completed"], names


@pytest.mark.slow
def test_a_deleted_broker_message_is_resubmitted(sweep_stack, tmp_path):
    stack = sweep_stack().start(workers=0, bridges=1)
    user = stack.user("pat")
    admin = admin_watcher(stack)
    with watched(stack, user) as w:
        tid = stack.submit(user, [make_image(tmp_path / f"d{i}.png", i) for i in range(2)])
        assert w.call("join_task", {"task_id": tid})["ok"]
        client = redis.Redis.from_url(stack.settings.redis_url)
        wait_for(lambda: client.llen("celery") == 1, 10, what="the queued message")
        client.delete("celery")  # the broker forgets it (as a failover can)
        stack.procs.start_worker("late", stack.env, stack.settings, concurrency=1)
        one_ending(w, tid, 30)
        entries, resubmitted = audit_rows(stack, tid)
        assert resubmitted == 1 and [(u, a) for u, a, _ in entries] == [("sweeper", "job.resubmit")]
        assert entries[0][2]["state"] == "PENDING"
        wait_for(lambda: alerts(admin, "job_resubmitted"), 10, what="the admin_alert")
        snap = requests.get(f"{stack.web.url}/api/jobs/{tid}", headers=user["headers"], timeout=5).json()
        assert snap["state"] == "SUCCESS" and snap["current"] == 2
        admin.close()


@pytest.mark.slow
def test_started_forever_after_worker_killed_and_redis_restarted_empty(sweep_stack, tmp_path):
    stack = sweep_stack().start(workers=1, bridges=1)
    user = stack.user("ron")
    with watched(stack, user) as w:
        images = [make_image(tmp_path / f"s{i}.png", i, (1600, 1200)) for i in range(8)]
        tid = stack.submit(user, images)
        assert w.call("join_task", {"task_id": tid})["ok"]
        w.wait_progress(tid, 1, 60)
        stack.procs.procs[0].kill()    # SIGKILL the worker mid-job: its message stays unacked...
        stack.restart_redis(0.5)       # ...in a Redis that comes back empty (no persistence)
        stack.procs.start_worker("fresh", stack.env, stack.settings, concurrency=1)
        one_ending(w, tid, 90)
        entries, resubmitted = audit_rows(stack, tid)
        assert resubmitted == 1 and entries[0][2]["state"] == "STARTED", entries


@pytest.mark.slow
def test_an_ending_redis_lost_is_written_back(sweep_stack, tmp_path):
    """The job ends while no bridge runs, then Redis restarts empty: the database's ending
    goes back to the result backend and the task record, and the watcher ends once."""
    from bridge.store import SnapshotStore
    from tasks.db import session_scope
    from tasks.models import Job

    stack = sweep_stack().start(workers=1, bridges=1)
    user = stack.user("una")
    with watched(stack, user) as w:
        images = [make_image(tmp_path / f"e{i}.png", i, (1600, 1200)) for i in range(3)]
        tid = stack.submit(user, images)
        assert w.call("join_task", {"task_id": tid})["ok"]
        w.wait_progress(tid, 1, 60)
        stack.procs.procs[1].kill()  # the bridge: nobody hears the ending

        def ended() -> bool:
            with session_scope(stack.settings.database_url) as db:
                return db.query(Job).filter_by(task_id=tid).one().state == "SUCCESS"
        wait_for(ended, 60, what="the job to end in the database")
        stack.restart_redis(0.3)     # the result and the record are gone
        stack.start_bridge("fb-after")
        client = redis.Redis.from_url(stack.settings.redis_url)
        wait_for(lambda: client.exists(f"celery-task-meta-{tid}"), 30, what="the result written back")
        meta = json.loads(client.get(f"celery-task-meta-{tid}"))
        assert meta["status"] == "SUCCESS" and meta["result"]["count"] == 3
        wait_for(lambda: (SnapshotStore(client).get(tid) or {}).get("ending"), 20,
                 what="the task record's ending")
        one_ending(w, tid, 30)
        [(_, ending)] = w.endings(tid)
        assert ending["results"]["count"] == 3


@pytest.mark.slow
def test_a_job_still_queued_is_left_alone(sweep_stack, tmp_path):
    """No worker for longer than SWEEP_AFTER: the broker still holds the message, so the
    sweeper sends nothing (no duplicate), and the job runs once a worker comes."""
    stack = sweep_stack().start(workers=0, bridges=1)
    user = stack.user("quinn")
    with watched(stack, user) as w:
        tid = stack.submit(user, [make_image(tmp_path / "q.png", 0)])
        assert w.call("join_task", {"task_id": tid})["ok"]
        client = redis.Redis.from_url(stack.settings.redis_url)
        time.sleep(5.0)  # SWEEP_AFTER 2 s, a sweep every 0.5 s
        assert client.llen("celery") == 1
        entries, resubmitted = audit_rows(stack, tid)
        assert entries == [] and resubmitted == 0
        stack.procs.start_worker("finally", stack.env, stack.settings, concurrency=1)
        one_ending(w, tid, 30)
