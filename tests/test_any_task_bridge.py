"""Tasks of any application in the bridge (PROTOCOL.md, "Watching any Celery task"): the
pure tier (board, processor, watchlist; the clock injected) and the result backend read.

- a task's ending carries its return value from the result backend, capped at 64 KB;
- a progress event's small extra fields are kept, capped, always encodable;
- progress set with ``update_state`` (celery-progress's way) is read from the backend
  for watched open tasks only, once per poll interval, and only when it changed.
"""
from __future__ import annotations

import orjson
import pytest

import protocol
from bridge import reconcile
from bridge.commands import TrackRequest
from bridge.processor import Command, Events, Gauges, Processor
from bridge.state import Board
from bridge.task import EXTRA_CAP, EXTRA_KEYS, extra_fields
from bridge.watchlist import Watchlist, progress_event
from settings import load_settings
from tasks import events as ev
from tests.test_processor import Clock, event, new_id, run


@pytest.fixture()
def clock() -> Clock:
    return Clock()

@pytest.fixture()
def proc(clock) -> Processor:
    settings = load_settings(env={}).with_overrides(coalesce_ms=0, reconcile_seconds=30.0,
                                                    progress_poll_seconds=0.5)
    return Processor(settings, clock)


def room(out, tid: str) -> list:
    return [(u.event, u.payload) for u in out.updates if u.room == protocol.task_room(tid)]


def watch(tid: str, msg: str = "5-0") -> Command:
    """What the web process sends when someone joins a task of another application."""
    return Command(msg, TrackRequest(tid, None, None, 0))


def progress_meta(current: int, total: int, description: str = "", **extra) -> dict:
    """A meta as celery-progress's ProgressRecorder stores it."""
    percent = round(100.0 * current / total, 2) if total else 0
    return {"status": "PROGRESS", "result": {"pending": False, "current": current, "total": total,
                                             "percent": percent, "description": description, **extra}}


# -- endings carry the task's own result ------------------------------------------------------------
def test_any_tasks_ending_carries_its_result_from_the_backend(proc, clock):
    tid = new_id()
    run(proc, clock, Events([event(ev.TASK_RECEIVED, tid, name="reports.build", args="(3,)"),
                             event(ev.TASK_STARTED, tid)]))
    _, out = run(proc, clock, Events([event(ev.TASK_PROGRESS, tid, current=1, total=3, step="page 1")]))
    [(name, update)] = room(out, tid)
    assert name == protocol.PROGRESS_UPDATE and (update["current"], update["total"]) == (1, 3)
    assert update["current_step"] == "page 1" and update["state"] == "PROGRESS"
    value = {"pages": 3, "url": "https://example.org/r.pdf"}
    asked, out = run(proc, clock, Events([event(ev.TASK_SUCCEEDED, tid, result=repr(value), runtime=0.4)]),
                     metas={tid: {"status": "SUCCESS", "result": value}})
    assert tid in asked  # read in the step's one MGET
    [(name, end)] = room(out, tid)
    assert name == protocol.TASK_COMPLETED and end["results"] == {"result": value}
    assert end["state"] == "SUCCESS" and end["progress_percent"] == 100
    assert end["job_id"] is None and end["owner"] is None


@pytest.mark.parametrize("value", [None, 0, "done", [1, 2, 3], {"nested": {"a": [True, None]}}])
def test_any_json_result_is_carried_as_it_is(value):
    b, tid = Board(clock=lambda: 1.0), new_id()
    b.apply(event(ev.TASK_RECEIVED, tid, 1.0, name="app.work"))
    [end, _job] = b.apply(event(ev.TASK_SUCCEEDED, tid, 2.0), value).updates
    assert end.payload["results"] == {"result": value}


def test_a_result_over_64_kb_or_not_encodable_is_left_out_and_said_so():
    b = Board(clock=lambda: 1.0)
    big, huge_int, fits = new_id(), new_id(), new_id()
    for tid in (big, huge_int, fits):
        b.apply(event(ev.TASK_RECEIVED, tid, 1.0, name="app.work"))
    [end, _] = b.apply(event(ev.TASK_SUCCEEDED, big, 2.0), "x" * (64 * 1024)).updates
    assert end.payload["results"]["result"] is None and end.payload["results"]["result_truncated"] is True
    assert end.payload["results"]["result_bytes"] == 64 * 1024 + 2
    [end, _] = b.apply(event(ev.TASK_SUCCEEDED, huge_int, 2.0), {"n": 10**30}).updates
    assert end.payload["results"] == {"result": None, "result_truncated": True}
    orjson.dumps(end.payload)  # the ending can always be published
    just = "y" * (64 * 1024 - 2)  # 64 KB of JSON exactly
    [end, _] = b.apply(event(ev.TASK_SUCCEEDED, fits, 2.0), just).updates
    assert end.payload["results"] == {"result": just}


def test_a_task_that_never_sends_progress_still_gets_its_state_changes_and_ending(proc, clock):
    tid = new_id()
    seen = []
    for e in (event(ev.TASK_RECEIVED, tid, name="mail.send"), event(ev.TASK_STARTED, tid)):
        _, out = run(proc, clock, Events([e]))
        seen += room(out, tid)
    _, out = run(proc, clock, Events([event(ev.TASK_FAILED, tid, exception="SMTPError('refused')")]),
                 metas={})
    seen += room(out, tid)
    assert [(n, p["state"]) for n, p in seen] == [(protocol.PROGRESS_UPDATE, "RECEIVED"),
                                                  (protocol.PROGRESS_UPDATE, "STARTED"),
                                                  (protocol.TASK_ERROR, "FAILURE")]
    assert seen[-1][1]["error"] == {"type": "SMTPError", "message": "refused"}


def test_caption_jobs_keep_their_results_shape(proc, clock):
    tid = new_id()
    run(proc, clock, Command("1-0", TrackRequest(tid, 7, "alice", 1)))
    value = {"job_id": 7, "count": 1, "failed": 0, "total": 1,
             "captions": [{"image": "a.png", "caption": "A cat."}]}
    _, out = run(proc, clock, Events([event(ev.TASK_SUCCEEDED, tid)]),
                 metas={tid: {"status": "SUCCESS", "result": value}})
    [(_, end)] = room(out, tid)
    assert end["results"] == {"count": 1, "failed": 0, "captions": value["captions"],
                              "failed_images": []}


# -- extra fields of progress events ------------------------------------------------------------------
def test_extra_fields_of_a_progress_event_are_kept_small():
    b, tid = Board(clock=lambda: 1.0), new_id()
    fields = {"current": 2, "total": 5, "step": "rows", "phase": "load", "rows_per_s": 812.5,
              "huge": 10**30, "blob": "z" * 5000, "k" * 100: 1}
    [update, _job] = b.apply(event(ev.TASK_PROGRESS, tid, 1.0, **fields)).updates
    assert update.payload["extra"] == {"phase": "load", "rows_per_s": 812.5}
    assert update.payload["current_step"] == "rows"
    many = extra_fields({f"f{i}": i for i in range(100)})
    assert len(many) == EXTRA_KEYS
    wide = extra_fields({f"f{i}": "v" * 300 for i in range(15)})
    assert len(orjson.dumps(wide)) <= EXTRA_CAP
    assert extra_fields({"current": 1, "uuid": "x", "clock": 3}) is None
    # stored and loaded again, the extra fields are checked the same way
    record = b.get(tid).record()
    record["snapshot"]["extra"]["bad"] = 10**30
    again = Board(clock=lambda: 1.0)
    again.load([record])
    assert again.get(tid).snapshot()["extra"] == {"phase": "load", "rows_per_s": 812.5}


# -- update_state progress, polled for watched tasks only ------------------------------------------------
def test_update_state_progress_of_a_watched_task_is_polled_and_emitted_when_it_changes(proc, clock):
    tid, unwatched = new_id(), new_id()
    run(proc, clock, Events([event(ev.TASK_STARTED, unwatched, name="other.work")]))
    asked, out = run(proc, clock, watch(tid), metas={tid: {"status": "STARTED", "result": {}}})
    assert out.acks == ["5-0"]
    metas = {tid: progress_meta(3, 10, "crunching", stage="b"), unwatched: progress_meta(1, 2)}
    clock.now += 0.5
    asked, out = run(proc, clock, metas=metas)
    assert tid in asked and unwatched not in asked  # only watched tasks are read
    [(name, update)] = room(out, tid)
    assert name == protocol.PROGRESS_UPDATE
    assert (update["state"], update["current"], update["total"]) == ("PROGRESS", 3, 10)
    assert update["current_step"] == "crunching" and update["progress_percent"] == 30.0
    assert update["extra"] == {"stage": "b"}
    assert room(out, unwatched) == []
    clock.now += 0.2
    asked, _ = run(proc, clock, metas=metas)
    assert tid not in asked  # not before the poll interval
    assert out.wake <= clock.now + 0.3
    clock.now += 0.3
    asked, out = run(proc, clock, metas=metas)
    assert tid in asked and room(out, tid) == []  # unchanged: nothing to emit
    clock.now += 0.5
    _, out = run(proc, clock, metas={tid: progress_meta(4, 10, "crunching")})
    assert [p["current"] for _, p in room(out, tid)] == [4]
    clock.now += 0.5
    _, out = run(proc, clock, metas={tid: {"status": "SUCCESS", "result": {"answer": 42}}})
    [(name, end)] = room(out, tid)
    assert name == protocol.TASK_COMPLETED and end["results"] == {"result": {"answer": 42}}
    assert len(proc.watchlist) == 0
    clock.now += 0.5
    asked, _ = run(proc, clock, metas={tid: progress_meta(5, 10)})
    assert tid not in asked


def test_a_watched_task_that_sends_events_is_polled_for_its_ending_only(proc, clock):
    """Its progress comes by events (a backend's older PROGRESS must not be applied); a
    worker without -E sends no task-succeeded, so the poll still brings the ending."""
    tid = new_id()
    run(proc, clock, watch(tid))
    clock.now += 0.5
    _, out = run(proc, clock, Events([event(ev.TASK_PROGRESS, tid, current=5, total=9)]),
                 metas={tid: progress_meta(1, 9)})
    assert [p["current"] for _, p in room(out, tid)] == [5]
    clock.now += 0.5
    asked, out = run(proc, clock, metas={tid: progress_meta(7, 9, "from the backend")})
    assert tid in asked and room(out, tid) == []
    clock.now += 0.5
    _, out = run(proc, clock, metas={tid: {"status": "SUCCESS", "result": 9}})
    assert [(n, p["results"]) for n, p in room(out, tid)] == [(protocol.TASK_COMPLETED, {"result": 9})]


def test_polling_waits_while_the_backend_cannot_be_read(proc, clock):
    tid = new_id()
    run(proc, clock, watch(tid))
    clock.now += 0.5
    batch: list = []
    assert tid in proc.needs(batch, clock.now)
    proc.step(batch, None, clock.now, Gauges())  # the backend did not answer
    assert tid in proc.needs([], clock.now)  # asked again at once


def test_watchlist_is_bounded_and_watches_expire():
    b = Board(clock=lambda: 1.0)
    wl = Watchlist(every=0.5, cap=3, ttl=10.0)
    ids = [new_id() for _ in range(5)]
    for tid in ids:
        b.track(tid)
        wl.watch(tid, 0.0)
    assert len(wl) == 3 and wl.due(b, 0.0) == ids[2:]
    assert wl.due(b, 11.0) == []  # not asked for again within the TTL
    assert len(wl) == 0


def test_progress_event_of_backend_states():
    tid = new_id()
    assert progress_event(tid, {"status": "PENDING", "result": None}, 5.0) is None
    assert progress_event(tid, {"status": "RETRY", "result": {"current": 1, "total": 2}}, 5.0) is None
    assert progress_event(tid, {"status": "PROGRESS", "result": {"current": "a", "total": 2}}, 5.0) is None
    assert progress_event(tid, {"status": "PROGRESS", "result": "50%"}, 5.0) is None
    started = progress_event(tid, {"status": "STARTED", "result": {"hostname": "w@h", "pid": 3}}, 5.0)
    assert started == {"type": ev.TASK_STARTED, "uuid": tid, "timestamp": 5.0, "hostname": "w@h"}
    custom = progress_event(tid, {"status": "CRUNCHING", "result": {"current": 2, "total": 8,
                                                                     "uuid": "forged", "eta": 3}}, 5.0)
    assert custom["type"] == ev.TASK_PROGRESS and custom["uuid"] == tid
    assert (custom["current"], custom["total"], custom["step"]) == (2, 8, "")
    assert "eta" not in custom  # a meta's keys never pose as a caption job's fields


# -- the result backend read ----------------------------------------------------------------------------
def test_a_stored_result_that_names_no_exception_class_costs_only_itself(settings):
    """A FAILURE meta whose ``exc_module``/``exc_type`` name something that is no exception
    (any application on the broker can write one) made Celery raise SecurityError while
    decoding, out of the bridge's step: the bridge stepped down and retried for ever."""
    from tasks.app import make_celery

    app = make_celery(settings)
    bad, good = new_id(), new_id()
    backend = app.backend
    backend.set(backend.get_key_for_task(bad), orjson.dumps(
        {"status": "FAILURE", "task_id": bad, "traceback": None, "children": [], "date_done": None,
         "result": {"exc_type": "system", "exc_module": "os", "exc_message": ["echo pwned"]}}))
    backend.store_result(good, {"ok": True}, "SUCCESS")
    metas = reconcile.backend_metas(app, [bad, good])
    assert bad not in metas and metas[good]["result"] == {"ok": True}
