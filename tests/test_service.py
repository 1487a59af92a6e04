"""The bridge's shell (bridge/service.py) around the processor: batching and its I/O,
against the test session's real Redis (no bridge process)."""
from __future__ import annotations

import uuid

from bridge.commands import CancelRequest, TrackRequest
from bridge.processor import BATCH, Command, Events, MarkRevoked
from bridge.service import Bridge
from tasks.app import make_celery


def test_a_batch_is_cut_right_after_an_item_that_may_end_a_task(settings):
    bridge = Bridge(settings)
    tid = str(uuid.uuid4())
    progress = Events([{"type": "task-progress", "uuid": tid, "current": 1, "total": 2}])
    ending = Events([{"type": "task-succeeded", "uuid": tid}])
    track = Command("1-0", TrackRequest(tid, 1, "ann", 2))
    cancel = Command("2-0", CancelRequest(tid, "ann", 0.0))
    for item in (progress, track, ending, progress, cancel, progress):
        bridge.queue.put(item)
    assert bridge.collect(0.1) == [progress, track, ending]
    assert bridge.collect(0.1) == [progress, cancel]
    assert bridge.collect(0.1) == [progress]
    assert bridge.collect(0.01) == []
    big = Events([{"type": "task-progress", "uuid": tid}] * BATCH)
    bridge.queue.put(big)
    bridge.queue.put(progress)
    assert bridge.collect(0.1) == [big]  # a full batch goes alone


def test_the_bridge_never_writes_revoked_over_a_stored_success(settings):
    app = make_celery(settings)
    done, queued = str(uuid.uuid4()), str(uuid.uuid4())
    app.backend.store_result(done, {"count": 1, "failed": 0, "captions": []}, "SUCCESS")
    bridge = Bridge(settings, app=app)
    bridge.carry_out([MarkRevoked(done, "cancelled before it started"),
                      MarkRevoked(queued, "cancelled before it started")])
    assert app.AsyncResult(done).state == "SUCCESS"
    assert app.AsyncResult(queued).state == "REVOKED"


def test_look_up_reads_the_backends_metas_in_one_go(settings):
    app = make_celery(settings)
    done, unknown = str(uuid.uuid4()), str(uuid.uuid4())
    app.backend.store_result(done, {"count": 2}, "SUCCESS")
    metas = Bridge(settings, app=app).look_up({done, unknown})
    assert set(metas) == {done} and metas[done]["status"] == "SUCCESS"
    assert metas[done]["result"] == {"count": 2}


def test_look_up_says_none_when_the_backend_cannot_be_read(settings):
    from devstack import free_port

    away = settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app = make_celery(away)
    app.conf.result_backend_transport_options = {"retry_policy": {"max_retries": 0}}
    assert Bridge(away, app=app).look_up({str(uuid.uuid4())}) is None
    assert Bridge(away, app=app).look_up(set()) == {}
