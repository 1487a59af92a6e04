"""The processor's pure step (bridge/processor.py): typed items and the result backend's
answers in; updates, records, effects and acks out. No I/O; the clock is injected.

The result backend's answers are given as Celery's metas (``{"status", "result", ...}``),
as ``reconcile.backend_metas`` returns them.
"""
from __future__ import annotations

import uuid

import orjson
import pytest

import protocol
from bridge.commands import CancelRequest, TrackRequest
from bridge.processor import (
    BATCH,
    CancelFlag,
    Command,
    Connected,
    Events,
    Gauges,
    MarkRevoked,
    Processor,
    Terminate,
    may_end,
    size,
)
from settings import load_settings
from tasks import events as ev

CAPTIONS = [{"image": "a.png", "caption": "A cat."}, {"image": "b.png", "caption": "A dog."}]
SUCCESS = {"status": "SUCCESS", "result": {"job_id": 7, "count": 2, "failed": 0, "total": 2,
                                           "captions": CAPTIONS}}
STARTED = {"status": "STARTED", "result": {"pid": 1, "hostname": "w@h"}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def proc(clock) -> Processor:
    settings = load_settings(env={}).with_overrides(cancel_grace_seconds=30.0, coalesce_ms=0,
                                                    reconcile_seconds=30.0)
    return Processor(settings, clock)


def new_id() -> str:
    return str(uuid.uuid4())


def event(type_: str, tid: str, ts: float = 999.0, **fields) -> dict:
    return {"type": type_, "uuid": tid, "timestamp": ts, "hostname": "w@h", **fields}


def run(proc: Processor, clock: Clock, *items, metas=None, answer=True):
    """One step as the bridge runs it: ``needs`` first, then the backend's answer
    (``metas``: by id; those asked for and absent are unknown to the backend)."""
    batch = list(items)
    asked = proc.needs(batch, clock.now)
    known = {t: m for t, m in (metas or {}).items() if t in asked} if answer else None
    return asked, proc.step(batch, known, clock.now, Gauges())


def room(out, tid: str) -> list[str]:
    return [u.event for u in out.updates if u.room == protocol.task_room(tid)]


def cancel(tid: str, msg: str = "1-0") -> Command:
    return Command(msg, CancelRequest(tid, "alice", 0.0))


def track(tid: str, msg: str = "0-1") -> Command:
    return Command(msg, TrackRequest(tid, 7, "alice", 2))


# -- a late cancel never overrides a known ending (issue 16, item 9) ---------------------------------
def test_a_late_cancel_of_a_job_the_backend_saw_succeed_ends_it_completed(proc, clock):
    """The bridge missed the job's events (it was down); the cancel queued meanwhile must not
    turn a SUCCESS into "cancelled before it started"."""
    tid = new_id()
    asked, out = run(proc, clock, track(tid), cancel(tid), metas={tid: SUCCESS})
    assert tid in asked
    assert room(out, tid) == [protocol.TASK_COMPLETED]
    [end] = [u for u in out.updates if u.event == protocol.TASK_COMPLETED]
    assert end.payload["results"]["captions"] == CAPTIONS and end.payload["results"]["count"] == 2
    assert out.effects == []  # no flag, no revoke, and no REVOKED written to the backend
    assert out.acks == ["0-1", "1-0"]
    assert proc.board.get(tid).state == "SUCCESS"


def test_cancel_of_a_job_the_backend_saw_start_waits_and_terminates(proc, clock):
    tid = new_id()
    _, out = run(proc, clock, track(tid), cancel(tid), metas={tid: STARTED})
    assert room(out, tid) == [protocol.PROGRESS_UPDATE]  # CANCELLING, not an ending
    assert out.effects == [CancelFlag(CancelRequest(tid, "alice", 0.0))]
    clock.now += 31
    _, out = run(proc, clock)
    assert out.effects == [Terminate(tid)]
    clock.now += 11
    asked, out = run(proc, clock, metas={tid: STARTED})  # still running after the terminate
    assert tid in asked
    assert room(out, tid) == [protocol.TASK_CANCELLED]
    assert out.effects == [MarkRevoked(tid, "terminated after the cancel grace period")]
    assert out.updates[0].payload["terminated"] is True


def test_a_job_that_succeeded_before_its_terminate_ends_completed(proc, clock):
    tid = new_id()
    run(proc, clock, Events([event(ev.TASK_STARTED, tid)]))
    run(proc, clock, cancel(tid), metas={tid: STARTED})
    clock.now += 31
    run(proc, clock)
    clock.now += 11
    _, out = run(proc, clock, metas={tid: SUCCESS})  # its events were lost; the backend knows
    assert room(out, tid) == [protocol.TASK_COMPLETED] and out.effects == []


def test_cancel_of_a_queued_job_ends_it_at_once_and_records_it(proc, clock):
    tid = new_id()
    run(proc, clock, Events([event(ev.TASK_SENT, tid, name=ev.CAPTION_TASK_NAME, args="(7,)")]))
    _, out = run(proc, clock, cancel(tid))  # the backend does not know it: still queued
    assert room(out, tid) == [protocol.TASK_CANCELLED]
    assert out.effects == [CancelFlag(CancelRequest(tid, "alice", 0.0)),
                           MarkRevoked(tid, "cancelled before it started")]
    assert out.acks == ["1-0"]


def test_a_cancel_waits_unacknowledged_while_the_backend_cannot_be_read(proc, clock):
    tid = new_id()
    run(proc, clock, track(tid))
    _, out = run(proc, clock, cancel(tid), answer=False)
    assert out.acks == [] and out.effects == [] and room(out, tid) == []
    asked, out = run(proc, clock, metas={tid: SUCCESS})  # asked again, by itself
    assert tid in asked and out.acks == ["1-0"] and room(out, tid) == [protocol.TASK_COMPLETED]


def test_cancel_of_an_ended_task_is_acknowledged_and_does_nothing(proc, clock):
    tid = new_id()
    run(proc, clock, Events([event(ev.TASK_FAILED, tid, exception="ValueError('x')")]))
    asked, out = run(proc, clock, cancel(tid))
    assert tid not in asked and out.effects == [] and out.acks == ["1-0"] and out.updates == []


# -- results, reconciliation, isolation -------------------------------------------------------
def test_a_caption_jobs_ending_carries_the_backends_return_value(proc, clock):
    tid = new_id()
    items = Events([event(ev.TASK_RECEIVED, tid, name=ev.CAPTION_TASK_NAME, args="(7,)"),
                    event(ev.TASK_SUCCEEDED, tid, result="{...}")])
    asked, out = run(proc, clock, items, metas={tid: SUCCESS})
    assert asked == {tid}
    [end] = [u for u in out.updates if u.event == protocol.TASK_COMPLETED]
    assert end.payload["results"]["captions"] == CAPTIONS
    assert out.events == 2 and proc.events_applied == 2


def test_reconnect_reconciles_every_open_task(proc, clock):
    a, b = new_id(), new_id()
    run(proc, clock, Events([event(ev.TASK_STARTED, a), event(ev.TASK_STARTED, b)]))
    asked, out = run(proc, clock, Connected(), metas={a: SUCCESS})
    assert asked == {a, b}
    assert room(out, a) == [protocol.TASK_COMPLETED] and room(out, b) == []


def test_quiet_open_tasks_are_reconciled_periodically(proc, clock):
    tid = new_id()
    run(proc, clock, Events([event(ev.TASK_STARTED, tid)]))
    clock.now += 31
    asked, out = run(proc, clock, metas={tid: {"status": "FAILURE", "traceback": "...",
                                               "result": {"exc_type": "ValueError",
                                                          "exc_message": ["bad"]}}})
    assert asked == {tid}
    [end] = [u for u in out.updates if u.event == protocol.TASK_ERROR]
    assert end.payload["error"] == {"type": "ValueError", "message": "bad"}


def test_one_event_with_huge_numbers_costs_the_batch_nothing(proc, clock):
    bad, good = new_id(), new_id()
    huge = 10 ** 30
    _, out = run(proc, clock, Events([
        event(ev.TASK_PROGRESS, bad, current=huge, total=huge, job_id=huge, failed=huge),
        event(ev.TASK_PROGRESS, good, current=1, total=2, job_id=3, owner="ann"),
        {"type": ev.WORKER_HEARTBEAT, "hostname": "w@h", "timestamp": 1.0, "active": huge,
         "processed": huge, "loadavg": [huge, 1e300]}]))
    for update in out.updates:
        orjson.dumps(update.payload)
    for record in out.records:
        orjson.dumps(record)
    orjson.dumps(out.cluster)
    assert room(out, good) == [protocol.PROGRESS_UPDATE] and room(out, bad) == [protocol.PROGRESS_UPDATE]


def test_the_tick_stores_cluster_state_and_counts_the_boards_transitions(proc, clock):
    tid = new_id()
    _, out = run(proc, clock, Events([event(ev.TASK_STARTED, tid)]))
    assert out.cluster["metrics"]["active_jobs"] == 1 and out.cluster["workers"] == []
    assert out.cluster["stats"]["tasks_open"] == [["STARTED", "unknown", 1]]
    _, out = run(proc, clock)
    assert out.cluster is None  # ticks once per metrics interval
    clock.now += 1
    _, out = run(proc, clock, Events([event(ev.TASK_SUCCEEDED, tid)]))
    assert out.cluster["metrics"]["completed_today"] == 1 and out.cluster["workers"] is None


def test_batches_are_cut_after_an_item_that_may_end_a_task():
    tid = new_id()
    assert not may_end(Events([event(ev.TASK_PROGRESS, tid)]))
    assert may_end(Events([event(ev.TASK_PROGRESS, tid), event(ev.TASK_SUCCEEDED, tid)]))
    assert may_end(cancel(tid)) and may_end(Connected()) and not may_end(track(tid))
    assert size(Events([{}] * 7)) == 7 and size(track(tid)) == 1 and BATCH >= 100


def test_wake_is_the_next_due_work(proc, clock):
    tid = new_id()
    _, out = run(proc, clock, Events([event(ev.TASK_STARTED, tid)]), cancel(tid))
    assert out.wake == proc.next_tick  # the metrics tick comes before the cancel's deadline


def test_a_step_leaves_no_garbage_for_the_collector(proc, clock):
    """What the bridge's GC policy (gcpolicy.py: freeze every 5 s, a full collection every
    15 minutes) would keep: cyclic garbage made per event (ast.literal_eval's closures, once
    per task-sent/received) grew a busy bridge by ~0.45 MiB a minute (bench/rss.py)."""
    import gc

    def jobs(n: int) -> list:
        out = []
        for _ in range(n):
            tid = new_id()
            out.append(Events([
                event(ev.TASK_SENT, tid, name=ev.CAPTION_TASK_NAME, args="(7,)", kwargs="{}"),
                event(ev.TASK_RECEIVED, tid, name=ev.CAPTION_TASK_NAME, args="(7,)", kwargs="{}"),
                event(ev.TASK_STARTED, tid),
                event(ev.TASK_PROGRESS, tid, current=1, total=2, step="s", image="a", caption="c"),
                event(ev.TASK_FAILED, tid, exception="ValueError('boom')", traceback="...")]))
        return out
    for item in jobs(20):
        run(proc, clock, item)  # warm: caches, interned names
    gc.collect()
    gc.disable()
    try:
        for item in jobs(200):
            clock.now += 0.01
            run(proc, clock, item)
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage < 200, f"{garbage} objects of cyclic garbage from 1 000 events"
