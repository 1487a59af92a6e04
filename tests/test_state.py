"""The state tier: scripted and shuffled Celery event lists fed to ``bridge.state.Board``.

No I/O. Events are Celery-style dicts (``type``, ``uuid``, ``timestamp``,
``hostname``, fields), in the style of Celery's own
``t/unit/events/test_state.py``.
"""
from __future__ import annotations

import random
import uuid as uuidlib

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import protocol as payloads
from bridge.state import Board, Change, Update
from bridge.task import TEXT_CAP, Task, parse_exception
from protocol import ADMIN_ROOM, JOB_UPDATE, task_room
from tasks import events as ev

HOST = "celery@worker-1"
ENDINGS = {payloads.TASK_COMPLETED, payloads.TASK_CANCELLED, payloads.TASK_ERROR}


# -- helpers ----------------------------------------------------------------------------
def new_id() -> str:
    return str(uuidlib.uuid4())


def event(type_: str, task_id: str, ts: float, **fields) -> dict:
    return {"type": type_, "uuid": task_id, "timestamp": ts, "hostname": HOST, **fields}


def sent(tid, ts=100.0, job_id=7):
    return event(ev.TASK_SENT, tid, ts, name=ev.CAPTION_TASK_NAME, args=f"({job_id},)",
                 kwargs="{}", retries=0, queue="celery")


def received(tid, ts=101.0, job_id=7):
    return event(ev.TASK_RECEIVED, tid, ts, name=ev.CAPTION_TASK_NAME, args=f"({job_id},)",
                 kwargs="{}", retries=0)


def started(tid, ts=102.0):
    return event(ev.TASK_STARTED, tid, ts, pid=4242)


def progress(tid, current, total=4, ts=None, caption=True, **extra):
    fields = ev.progress_fields(
        current=current, total=total, step=f"Captioned img{current}.png",
        image=f"img{current}.png", caption=f"caption {current}" if caption else None,
        eta=float(total - current) * 1.5, job_id=7, owner="alice")
    fields.update(extra)
    return event(ev.TASK_PROGRESS, tid, 103.0 + current if ts is None else ts, **fields)


def succeeded(tid, ts=200.0, count=4, failed=0, total=4):
    captions = [{"image": f"img{i}.png", "caption": f"caption {i}"} for i in range(1, count + 1)]
    return event(ev.TASK_SUCCEEDED, tid, ts, result="{'job_id': 7}", runtime=12.5,
                 results={"count": count, "failed": failed, "captions": captions,
                          "total": total})


def failed(tid, ts=200.0, exc="ValueError('boom')"):
    return event(ev.TASK_FAILED, tid, ts, exception=exc,
                 traceback="Traceback (most recent call last):\n  ...\nValueError: boom")


def revoked(tid, ts=200.0, **extra):
    return event(ev.TASK_REVOKED, tid, ts, terminated=False, signum=None, expired=False, **extra)


def our_cancelled(tid, completed=2, total=4, ts=200.0):
    return event(ev.TASK_CANCELLED, tid, ts,
                 **ev.cancelled_fields(completed=completed, total=total, job_id=7, owner="alice"))


def celery_cancelled(tid, ts=150.0):
    """Celery's own task-cancelled (broker connection lost): no ``completed``."""
    return event(ev.TASK_CANCELLED, tid, ts)


def life(tid, n=4):
    return [sent(tid), received(tid), started(tid), *[progress(tid, i, n) for i in range(1, n + 1)],
            succeeded(tid, count=n, total=n)]


def board(**kw) -> Board:
    return Board(clock=lambda: 1000.0, **kw)


def apply(b: Board, e) -> Change:
    """``b.apply`` as the bridge calls it: a task-succeeded's ``results`` (the job's return
    value) come from the result backend, apart from the event's own fields."""
    if isinstance(e, dict) and "results" in e:
        e = dict(e)
        return b.apply(e, e.pop("results"))
    return b.apply(e)


def task_updates(updates: list[Update], tid: str) -> list[Update]:
    return [u for u in updates if u.room == task_room(tid)]


def terminals(updates: list[Update], tid: str | None = None) -> list[Update]:
    return [u for u in updates if u.terminal and u.event in ENDINGS
            and (tid is None or u.task_id == tid)]


def apply_all(b: Board, evs) -> list[Update]:
    out: list[Update] = []
    for e in evs:
        out += apply(b, e).updates
    return out


def run_to_progress(b: Board, tid: str, upto: int = 2, total: int = 4) -> None:
    apply_all(b, [sent(tid), received(tid), started(tid),
                  *[progress(tid, i, total) for i in range(1, upto + 1)]])


# -- the normal life -----------------------------------------------------------------------
def test_normal_life_updates_in_order():
    b, tid = board(), new_id()
    per_event = [apply(b, e).updates for e in life(tid)]

    # task-sent: nothing for the task room, one job_update for the operators.
    assert [(u.event, u.room) for u in per_event[0]] == [(JOB_UPDATE, ADMIN_ROOM)]
    assert per_event[0][0].payload["job"]["state"] == "PENDING"
    assert per_event[0][0].payload["job"]["job_id"] == 7  # parsed from args "(7,)"

    expected_states = ["RECEIVED", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "PROGRESS"]
    for ups, state in zip(per_event[1:-1], expected_states):
        assert [(u.event, u.room, u.terminal) for u in ups] == [
            (payloads.PROGRESS_UPDATE, task_room(tid), False), (JOB_UPDATE, ADMIN_ROOM, False)]
        assert ups[0].payload["state"] == state
        assert ups[1].payload["job"]["state"] == state
        assert all(u.task_id == tid for u in ups)

    ending = per_event[-1]
    assert [(u.event, u.room, u.terminal) for u in ending] == [
        (payloads.TASK_COMPLETED, task_room(tid), True), (JOB_UPDATE, ADMIN_ROOM, True)]
    assert b.get(tid).state == "SUCCESS"


def test_progress_snapshot_fields_follow_the_contract():
    b, tid = board(), new_id()
    apply_all(b, [sent(tid), received(tid), started(tid)])
    ups = apply(b, progress(tid, 2, 4, ts=110.0)).updates
    payload = ups[0].payload
    assert set(payloads.SNAPSHOT_FIELDS) <= set(payload)
    assert payload["task_id"] == tid
    assert payload["job_id"] == 7
    assert payload["owner"] == "alice"
    assert payload["state"] == "PROGRESS"
    assert payload["current"] == 2 and payload["total"] == 4
    assert payload["progress_percent"] == 50.0
    assert payload["current_step"] == "Captioned img2.png"
    assert payload["estimated_completion"] == 3.0
    assert payload["updated_at"] == 110.0
    assert payload["last_caption"] == {"image": "img2.png", "caption": "caption 2"}
    job = ups[1].payload["job"]
    assert set(payloads.SNAPSHOT_FIELDS) <= set(job)
    assert {"name", "worker", "runtime"} <= set(job)
    assert job["name"] == ev.CAPTION_TASK_NAME and job["worker"] == HOST


def test_progress_without_caption_has_no_last_caption():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=0)
    ups = apply(b, progress(tid, 1, 4, caption=False, step="Could not read img1.png", failed=1)).updates
    assert "last_caption" not in ups[0].payload
    assert ups[0].payload["current_step"] == "Could not read img1.png"
    assert b.get(tid).failed == 1


def test_completed_payload_has_results_and_full_progress():
    b, tid = board(), new_id()
    out = apply_all(b, life(tid, n=3))
    ends = terminals(out)
    assert len(ends) == 1
    payload = ends[0].payload
    assert payload["state"] == "SUCCESS"
    assert payload["progress_percent"] == 100.0
    assert payload["current"] == payload["total"] == 3
    assert payload["results"]["count"] == 3
    assert payload["results"]["failed"] == 0
    assert payload["results"]["captions"] == [
        {"image": f"img{i}.png", "caption": f"caption {i}"} for i in (1, 2, 3)]
    assert set(payloads.SNAPSHOT_FIELDS) <= set(payload)
    # The ending is remembered for late joiners.
    assert b.get(tid).ending == {"event": payloads.TASK_COMPLETED, "payload": payload}
    assert b.get(tid).runtime == 12.5


def test_emitted_payloads_carry_the_event_time():
    """updated_at of a room payload is the time of the event that caused it."""
    b, tid = board(), new_id()
    first = apply(b, progress(tid, 1, ts=150.0)).updates  # the first event the bridge sees
    assert first[0].payload["updated_at"] == 150.0
    assert apply(b, progress(tid, 2, ts=160.0)).updates[0].payload["updated_at"] == 160.0
    end = apply(b, failed(tid, ts=170.0)).updates
    assert end[0].payload["updated_at"] == 170.0
    assert end[1].payload["job"]["updated_at"] == 170.0
    # The remembered ending agrees with the stored snapshot.
    task = b.get(tid)
    assert task.ending["payload"]["updated_at"] == task.snapshot()["updated_at"] == 170.0

    other = new_id()
    only_end = apply(b, failed(other, ts=42.0)).updates  # an ending seen with nothing before it
    assert only_end[0].payload["updated_at"] == 42.0


def test_succeeded_without_results_still_completes():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    ups = apply(b, event(ev.TASK_SUCCEEDED, tid, 150.0, result="'ok'", runtime=1.0)).updates
    assert ups[0].event == payloads.TASK_COMPLETED and ups[0].terminal
    assert ups[0].payload["results"] == {"count": 0, "failed": 0, "captions": [],
                                         "failed_images": []}
    assert b.get(tid).outcome == "'ok'"


def test_job_updates_go_to_admin_on_every_state_change():
    b, tid = board(), new_id()
    out = apply_all(b, life(tid))
    jobs = [u for u in out if u.event == JOB_UPDATE]
    assert all(u.room == ADMIN_ROOM for u in jobs)
    assert len(jobs) == len(life(tid))  # one per applied event
    assert [u.payload["job"]["state"] for u in jobs] == [
        "PENDING", "RECEIVED", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]
    assert [u.terminal for u in jobs] == [False] * 7 + [True]
    assert jobs[-1].payload["job"]["runtime"] == 12.5


def test_changed_tracks_tasks_for_the_store():
    b, t1, t2 = board(), new_id(), new_id()
    apply(b, sent(t1))
    apply(b, sent(t2))
    assert {r['snapshot']['task_id'] for r in b.take_records()} == {t1, t2}
    assert b.take_records() == []
    apply(b, started(t1))
    assert [r['snapshot']['task_id'] for r in b.take_records()] == [t1]


# -- our own terminal rule --------------------------------------------------------------------
@pytest.mark.parametrize("ending,state", [
    (lambda tid: revoked(tid), "REVOKED"),
    (lambda tid: our_cancelled(tid, completed=2), "REVOKED"),
    (lambda tid: failed(tid), "FAILURE"),
    (lambda tid: succeeded(tid), "SUCCESS"),
])
def test_progress_after_an_ending_is_ignored(ending, state):
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=2)
    first = apply(b, ending(tid)).updates
    assert len(terminals(first)) == 1
    before = b.get(tid).snapshot()
    ignored = b.ignored

    assert apply(b, progress(tid, 3, ts=300.0)).updates == []
    assert apply(b, progress(tid, 4, ts=301.0)).updates == []
    assert apply(b, started(tid, ts=302.0)).updates == []
    assert b.get(tid).snapshot() == before
    assert b.get(tid).state == state
    assert b.ignored == ignored + 3


@pytest.mark.parametrize("make", [revoked, our_cancelled, failed, succeeded])
def test_duplicate_terminal_event_gives_no_second_ending(make):
    b, tid = board(), new_id()
    run_to_progress(b, tid)
    assert len(terminals(apply(b, make(tid)).updates)) == 1
    assert apply(b, make(tid)).updates == []
    # A different ending after the first is ignored too.
    assert apply(b, failed(tid, ts=400.0)).updates == []
    assert apply(b, succeeded(tid, ts=401.0)).updates == []


def test_revoked_reports_images_done():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=3)
    apply(b, progress(tid, 4, caption=False, failed=1, ts=120.0))
    ups = apply(b, revoked(tid)).updates
    assert ups[0].event == payloads.TASK_CANCELLED
    assert ups[0].payload["state"] == "REVOKED"
    assert ups[0].payload["completed"] == 3  # 4 done, 1 of them failed


def test_our_cancelled_ends_revoked_with_completed():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=2, total=5)
    ups = apply(b, our_cancelled(tid, completed=2, total=5)).updates
    assert [(u.event, u.terminal) for u in ups] == [
        (payloads.TASK_CANCELLED, True), (JOB_UPDATE, True)]
    assert ups[0].payload["completed"] == 2
    assert ups[0].payload["total"] == 5
    assert ups[0].payload["state"] == "REVOKED"
    assert ups[0].payload["estimated_completion"] is None


def test_celery_own_task_cancelled_is_not_an_ending():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    ups = apply(b, celery_cancelled(tid)).updates
    assert terminals(ups) == []
    assert [u.event for u in ups] == [JOB_UPDATE]
    assert b.get(tid).state == "PROGRESS"
    assert not b.get(tid).ended
    # The job goes on and can still end normally, once.
    assert apply(b, progress(tid, 2)).updates[0].event == payloads.PROGRESS_UPDATE
    assert len(terminals(apply(b, succeeded(tid)).updates)) == 1


def test_task_cancelled_with_non_numeric_completed_is_not_an_ending():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    ups = apply(b, event(ev.TASK_CANCELLED, tid, 150.0, completed="2")).updates
    assert terminals(ups) == []
    assert b.get(tid).state == "PROGRESS"


def test_rejected_with_requeue_is_not_an_ending_but_without_is():
    b, t1, t2 = board(), new_id(), new_id()
    run_to_progress(b, t1, upto=0)
    assert terminals(apply(b, event(ev.TASK_REJECTED, t1, 150.0, requeue=True)).updates) == []
    assert b.get(t1).state == "STARTED"
    run_to_progress(b, t2, upto=0)
    ups = apply(b, event(ev.TASK_REJECTED, t2, 150.0, requeue=False)).updates
    assert ups[0].event == payloads.TASK_ERROR
    assert ups[0].payload["error"]["type"] == "Rejected"
    assert b.get(t2).state == "FAILURE"


def test_retried_keeps_state_and_says_so():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    ups = apply(b, event(ev.TASK_RETRIED, tid, 150.0, exception="OSError('disk')")).updates
    assert ups[0].event == payloads.PROGRESS_UPDATE
    assert ups[0].payload["state"] == "PROGRESS"
    assert ups[0].payload["current_step"] == "retrying"


# -- out of order and duplicates ---------------------------------------------------------------
def test_received_after_started_does_not_move_back():
    b, tid = board(), new_id()
    apply(b, sent(tid))
    apply(b, started(tid))
    assert b.get(tid).state == "STARTED"
    ups = apply(b, received(tid)).updates
    assert task_updates(ups, tid) == []
    assert b.get(tid).state == "STARTED"
    assert b.get(tid).received_at == 101.0  # still learnt


def test_started_after_progress_does_not_move_back():
    b, tid = board(), new_id()
    apply(b, sent(tid))
    apply(b, progress(tid, 1))
    assert b.get(tid).state == "PROGRESS"
    assert apply(b, started(tid)).updates == []
    assert apply(b, received(tid)).updates == []
    assert b.get(tid).state == "PROGRESS"


def test_stale_progress_is_ignored():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=0)
    apply(b, progress(tid, 3))
    before = b.get(tid).snapshot()
    assert apply(b, progress(tid, 1)).updates == []
    assert apply(b, progress(tid, 2)).updates == []
    assert b.get(tid).snapshot() == before
    assert b.get(tid).current == 3


def test_duplicate_events_change_nothing():
    b, tid = board(), new_id()
    apply(b, sent(tid))
    assert apply(b, sent(tid)).updates == []
    apply(b, received(tid))
    assert apply(b, received(tid)).updates == []
    apply(b, started(tid))
    assert apply(b, started(tid)).updates == []
    apply(b, progress(tid, 2))
    snap = b.get(tid).snapshot()
    # A repeated progress event never moves the task (it may re-send the same view).
    for u in apply(b, progress(tid, 2)).updates:
        if u.event == payloads.PROGRESS_UPDATE:
            assert {k: u.payload[k] for k in snap} == snap
    assert b.get(tid).snapshot() == snap


def test_progress_before_any_other_event_creates_the_task():
    b, tid = board(), new_id()
    ups = apply(b, progress(tid, 1)).updates
    assert ups[0].payload["state"] == "PROGRESS"
    assert ups[0].payload["owner"] == "alice"
    assert b.get(tid).worker == HOST


def test_timestamp_missing_uses_clock_and_updated_at_never_goes_back():
    b, tid = board(), new_id()
    apply(b, event(ev.TASK_STARTED, tid, 500.0))
    p = progress(tid, 1)
    del p["timestamp"]
    ups = apply(b, p).updates
    assert ups[0].payload["updated_at"] == 1000.0  # the board's clock
    ups = apply(b, progress(tid, 2, ts=10.0)).updates  # an older stamp
    assert ups[0].payload["updated_at"] == 1000.0


# -- failure --------------------------------------------------------------------------------
def test_failed_gives_task_error_with_parsed_exception():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    ups = apply(b, failed(tid, exc="ValueError('boom')")).updates
    assert [(u.event, u.terminal) for u in ups] == [(payloads.TASK_ERROR, True), (JOB_UPDATE, True)]
    payload = ups[0].payload
    assert payload["error"] == {"type": "ValueError", "message": "boom"}
    assert payload["state"] == "FAILURE"
    assert payload["estimated_completion"] is None
    assert set(payloads.SNAPSHOT_FIELDS) <= set(payload)
    assert "Traceback" in b.get(tid).outcome


def test_failed_without_exception_has_a_generic_error():
    b, tid = board(), new_id()
    ups = apply(b, event(ev.TASK_FAILED, tid, 1.0)).updates
    assert ups[0].payload["error"] == {"type": "Error", "message": "the task failed"}


def test_long_traceback_is_trimmed():
    b, tid = board(), new_id()
    apply(b, event(ev.TASK_FAILED, tid, 1.0, exception="ValueError('x')", traceback="x" * 5000))
    assert len(b.get(tid).outcome) == TEXT_CAP


@pytest.mark.parametrize("text,expected", [
    ("ValueError('boom')", ("ValueError", "boom")),
    ('ValueError("it\'s bad")', ("ValueError", "it's bad")),
    ("celery.exceptions.SoftTimeLimitExceeded('SoftTimeLimitExceeded(True,)')",
     ("SoftTimeLimitExceeded", "SoftTimeLimitExceeded(True,)")),
    ("KeyError(1, 'two')", ("KeyError", "1, two")),
    ("OSError(42)", ("OSError", "42")),
    ("RuntimeError()", ("RuntimeError", "")),
    ("ValueError(some_name)", ("ValueError", "some_name")),
    ("ValueError('line one\\nline two')", ("ValueError", "line one\nline two")),
    ("  ValueError('padded')  ", ("ValueError", "padded")),
    ("not an exception repr", ("Error", "not an exception repr")),
    ("ValueError('x') and more", ("Error", "ValueError('x') and more")),
    ("", ("Error", "the task failed")),
    (None, ("Error", "the task failed")),
])
def test_parse_exception(text, expected):
    assert parse_exception(text) == expected


def test_parse_exception_survives_deep_nesting():
    text = "ValueError(" + "[" * 5000 + "]" * 5000 + ")"
    type_, message = parse_exception(text)
    assert type_ == "ValueError"
    assert isinstance(message, str)


# -- Board.cancel and Board.terminated -------------------------------------------------------
@pytest.mark.parametrize("setup", [[sent], [sent, received], [received]])
def test_cancel_of_a_queued_task_ends_it_at_once(setup):
    b, tid = board(), new_id()
    for make in setup:
        apply(b, make(tid))
    ups = b.cancel(tid, by="alice").updates
    assert [(u.event, u.room, u.terminal) for u in ups] == [
        (payloads.TASK_CANCELLED, task_room(tid), True), (JOB_UPDATE, ADMIN_ROOM, True)]
    assert ups[0].payload["state"] == "REVOKED"
    assert ups[0].payload["completed"] == 0
    assert b.get(tid).cancel_requested
    # The worker's late events change nothing; a second cancel neither.
    assert apply(b, started(tid)).updates == []
    assert apply(b, progress(tid, 1)).updates == []
    assert apply(b, our_cancelled(tid, completed=0)).updates == []
    assert b.cancel(tid).updates == []


def test_cancel_of_a_running_task_shows_cancelling_until_its_ending():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    ups = b.cancel(tid).updates
    assert [(u.event, u.terminal) for u in ups] == [
        (payloads.PROGRESS_UPDATE, False), (JOB_UPDATE, False)]
    assert ups[0].payload["state"] == "CANCELLING"
    assert ups[1].payload["job"]["state"] == "CANCELLING"

    later = apply(b, progress(tid, 2)).updates
    assert later[0].event == payloads.PROGRESS_UPDATE
    assert later[0].payload["state"] == "CANCELLING"
    assert later[0].payload["current"] == 2

    end = apply(b, our_cancelled(tid, completed=2)).updates
    assert [(u.event, u.terminal) for u in end] == [
        (payloads.TASK_CANCELLED, True), (JOB_UPDATE, True)]
    assert end[0].payload["state"] == "REVOKED"
    assert end[0].payload["completed"] == 2
    assert apply(b, progress(tid, 3)).updates == []


def test_cancel_of_a_started_task_is_not_immediate():
    b, tid = board(), new_id()
    apply_all(b, [sent(tid), received(tid), started(tid)])
    ups = b.cancel(tid).updates
    assert terminals(ups) == []
    assert b.get(tid).state == "CANCELLING"


def test_cancel_of_an_unknown_task_shows_cancelling():
    b, tid = board(), new_id()
    ups = b.cancel(tid).updates
    assert terminals(ups) == []
    assert ups[0].event == payloads.PROGRESS_UPDATE
    assert ups[0].payload["state"] == "CANCELLING"
    assert ups[0].payload["updated_at"] == 1000.0
    # Late Celery events do not move it back to RECEIVED or STARTED.
    assert task_updates(apply(b, received(tid)).updates, tid) == []
    assert b.get(tid).state == "CANCELLING"
    assert task_updates(apply(b, started(tid)).updates, tid) == []
    assert b.get(tid).state == "CANCELLING"
    end = apply(b, revoked(tid)).updates
    assert len(terminals(end)) == 1


def test_cancel_of_an_ended_task_does_nothing():
    b, tid = board(), new_id()
    apply_all(b, life(tid))
    snap = b.get(tid).snapshot()
    assert b.cancel(tid).updates == []
    assert b.get(tid).snapshot() == snap
    assert not b.get(tid).cancel_requested


def test_terminated_ends_revoked_with_terminated_flag():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=2)
    b.cancel(tid)
    ups = b.terminated(tid).updates
    assert [(u.event, u.terminal) for u in ups] == [
        (payloads.TASK_CANCELLED, True), (JOB_UPDATE, True)]
    assert ups[0].payload["state"] == "REVOKED"
    assert ups[0].payload["terminated"] is True
    assert ups[0].payload["completed"] == 2
    assert ups[1].payload["job"]["terminated"] is True
    # Celery's task-revoked(terminated=True) that follows is ignored: one ending.
    assert apply(b, revoked(tid, ts=300.0)).updates == []
    assert b.terminated(tid).updates == []


def test_terminated_of_unknown_or_ended_task_does_nothing():
    b, tid = board(), new_id()
    assert b.terminated(new_id()).updates == []
    apply_all(b, life(tid))
    assert b.terminated(tid).updates == []


def test_revoked_with_terminated_field_marks_it():
    b, tid = board(), new_id()
    run_to_progress(b, tid)
    ups = apply(b, revoked(tid) | {"terminated": True}).updates
    assert ups[0].payload["terminated"] is True


# -- bounded memory ------------------------------------------------------------------------
def test_board_never_holds_more_than_max_tasks():
    b = board(max_tasks=5)
    ids = [new_id() for _ in range(40)]
    for i, tid in enumerate(ids):
        apply(b, sent(tid))
        if i % 3 == 0:
            apply(b, succeeded(tid))
        assert len(b) <= 5
    assert len(b) == 5


def test_ended_tasks_are_evicted_before_open_ones():
    b = board(max_tasks=3)
    a, c, d, e = (new_id() for _ in range(4))
    apply(b, sent(a))
    apply(b, sent(c))
    apply(b, sent(d))
    apply(b, succeeded(c))  # c ended; a is the oldest open one
    apply(b, sent(e))
    assert b.get(c) is None  # the ended one went, not the older open one
    assert b.get(a) is not None and b.get(d) is not None and b.get(e) is not None


def test_open_tasks_are_evicted_least_recently_used_first():
    b = board(max_tasks=3)
    a, c, d, e = (new_id() for _ in range(4))
    for tid in (a, c, d):
        apply(b, sent(tid))
    apply(b, started(a))  # a is touched: c is now the least recently used
    apply(b, sent(e))
    assert b.get(c) is None
    assert {t.task_id for t in b.tasks()} == {a, d, e}


def test_evicted_tasks_are_forgotten_by_take_records():
    b = board(max_tasks=2)
    ids = [new_id() for _ in range(4)]
    for tid in ids:
        apply(b, sent(tid))
    changed = {r['snapshot']['task_id'] for r in b.take_records()}
    assert changed == set(ids[-2:])


def test_max_tasks_must_be_positive():
    with pytest.raises(ValueError):
        Board(max_tasks=0)


# -- load ------------------------------------------------------------------------------------
def test_load_restores_tasks_and_keeps_endings():
    src = board()
    done, running = new_id(), new_id()
    apply_all(src, life(done))
    run_to_progress(src, running, upto=2)
    src.cancel(running)
    records = [t.record() for t in src.tasks()]

    dst = board()
    dst.load(records)
    assert len(dst) == 2
    assert dst.get(done).state == "SUCCESS"
    assert dst.get(done).snapshot() == src.get(done).snapshot()
    # The store holds an ended task's final record: memory keeps only the state.
    assert dst.get(done).compacted and dst.get(done).ending is None
    assert dst.get(running).state == "CANCELLING"
    assert dst.get(running).cancel_requested
    assert dst.get(running).current == 2
    assert dst.get(running).worker == HOST
    assert [t.task_id for t in dst.open_tasks()] == [running]

    # An ended task stays ended: later events are ignored.
    assert apply(dst, progress(done, 5, total=5)).updates == []
    assert apply(dst, failed(done)).updates == []
    assert dst.get(done).state == "SUCCESS"
    # A restored open task goes on, still CANCELLING, and ends once.
    assert apply(dst, progress(running, 3)).updates[0].payload["state"] == "CANCELLING"
    assert apply(dst, progress(running, 1)).updates == []  # stale against the restored count
    assert len(terminals(apply(dst, our_cancelled(running, completed=3)).updates)) == 1


def test_load_round_trips_records_and_respects_the_bound():
    src = board()
    ids = [new_id() for _ in range(6)]
    for i, tid in enumerate(ids):
        b_events = [sent(tid, ts=100.0 + i), progress(tid, 1, ts=110.0 + i)]
        apply_all(src, b_events)
    records = [t.record() for t in src.tasks()]
    assert Task.from_record(records[0]).record() == records[0]

    dst = board(max_tasks=3)
    dst.load(reversed(records))  # load sorts by updated_at: the newest survive
    assert len(dst) == 3
    assert {t.task_id for t in dst.tasks()} == set(ids[-3:])


# -- malformed events ------------------------------------------------------------------------
MALFORMED = [
    None, 42, "task-progress", ["task-progress"],
    {},
    {"type": "task-progress"},
    {"type": "task-progress", "uuid": ""},
    {"type": "task-progress", "uuid": 123, "current": 1, "total": 2},
    {"type": 7, "uuid": "x"},
    {"type": "worker-heartbeat", "uuid": "x"},
    {"type": "task-unknown", "uuid": "x"},
]


@pytest.mark.parametrize("bad", MALFORMED, ids=repr)
def test_malformed_events_are_ignored(bad):
    b = board()
    assert apply(b, bad).updates == []
    assert len(b) == 0
    assert b.ignored == 1


@pytest.mark.parametrize("fields", [
    {"current": "3", "total": 4},
    {"current": 3, "total": "4"},
    {"current": None, "total": 4},
    {"current": True, "total": 4},
    {"current": -1, "total": 4},
    {"current": 3, "total": -4},
    {"current": [3], "total": 4},
    {"total": 4},
    {"current": float("nan"), "total": 4},
    {"current": 3, "total": float("inf")},
    {"current": 10 ** 400, "total": 4},
], ids=repr)
def test_malformed_progress_changes_nothing(fields):
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=2)
    before = b.get(tid).snapshot()
    assert apply(b, event(ev.TASK_PROGRESS, tid, 150.0, **fields)).updates == []
    assert b.get(tid).snapshot() == before


@pytest.mark.parametrize("fields", [
    {"eta": -5}, {"eta": "soon"}, {"eta": float("nan")}, {"eta": float("inf")},
    {"failed": "x"}, {"failed": float("nan")}, {"step": 12345}, {"job_id": "7"},
    {"owner": 5}, {"caption": 7}, {"image": None},
], ids=repr)
def test_odd_optional_progress_fields_do_not_break_progress(fields):
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    ups = apply(b, progress(tid, 2) | fields).updates
    payload = ups[0].payload
    assert payload["current"] == 2 and payload["state"] == "PROGRESS"
    eta = payload["estimated_completion"]
    assert eta is None or (isinstance(eta, float) and 0 <= eta < float("inf"))
    assert isinstance(payload["current_step"], str)
    assert payload["job_id"] == 7 and payload["owner"] == "alice"
    if "caption" in fields or "image" in fields:
        assert "last_caption" not in payload


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), "yesterday", None, -1e300, 10 ** 400])
def test_odd_timestamps_do_not_break_apply(ts):
    b, tid = board(), new_id()
    ups = apply(b, event(ev.TASK_STARTED, tid, ts)).updates
    assert ups[0].payload["state"] == "STARTED"
    assert b.get(tid).state == "STARTED"


def test_malformed_succeeded_results_still_end_once():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    ups = apply(b, event(ev.TASK_SUCCEEDED, tid, 150.0,
                        results={"count": 1, "failed": float("nan"), "total": 10 ** 400})).updates
    assert len(terminals(ups)) == 1
    assert b.get(tid).state == "SUCCESS"


# -- properties over permutations ---------------------------------------------------------------
ENDING_MAKERS = {
    "succeeded": lambda tid: succeeded(tid, ts=150.0),
    "failed": lambda tid: failed(tid, ts=151.0),
    "revoked": lambda tid: revoked(tid, ts=152.0),
    "our_cancelled": lambda tid: our_cancelled(tid, completed=1, ts=153.0),
    "rejected": lambda tid: event(ev.TASK_REJECTED, tid, 154.0, requeue=False),
}
NON_ENDING_MAKERS = {
    "sent": sent, "received": received, "started": started,
    "p1": lambda tid: progress(tid, 1), "p2": lambda tid: progress(tid, 2),
    "p3": lambda tid: progress(tid, 3), "p2dup": lambda tid: progress(tid, 2),
    "celery_cancelled": celery_cancelled,
    "requeued": lambda tid: event(ev.TASK_REJECTED, tid, 140.0, requeue=True),
    "retried": lambda tid: event(ev.TASK_RETRIED, tid, 141.0, exception="OSError('x')"),
    "bad_progress": lambda tid: event(ev.TASK_PROGRESS, tid, 142.0, current="x", total=4),
}


def check_one_ending(b: Board, tid: str, ops: list[str]) -> None:
    """Run ``ops`` (event names, or "cancel"/"terminate") and check the terminal rule."""
    seen_end = False
    ends = 0
    for op in ops:
        if op == "cancel":
            ups = b.cancel(tid).updates
        elif op == "terminate":
            ups = b.terminated(tid).updates
        elif op in ENDING_MAKERS:
            ups = apply(b, ENDING_MAKERS[op](tid)).updates
        else:
            ups = apply(b, NON_ENDING_MAKERS[op](tid)).updates
        if seen_end:
            assert ups == [], f"update after the ending: {op} -> {ups}"
        mine = [u for u in ups if u.task_id == tid]
        assert len(mine) == len(ups)
        ends_here = terminals(ups, tid)
        assert len(ends_here) <= 1
        if ends_here:
            # The terminal update is the task room's last word for this op.
            room_events = [u.event for u in ups if u.room == task_room(tid)]
            assert room_events[-1] in ENDINGS
            assert payloads.PROGRESS_UPDATE not in room_events
            assert ends_here[0].payload["state"] in payloads.TERMINAL_STATES
            seen_end = True
        ends += len(ends_here)
    assert ends <= 1
    if any(op in ENDING_MAKERS for op in ops):
        assert ends == 1
    task = b.get(tid)
    if ends:
        assert task.ended and task.ending is not None
        assert task.ending["payload"]["state"] == task.state
    elif task is not None:
        assert not task.ended


base_ops = st.lists(st.sampled_from(sorted(NON_ENDING_MAKERS)), max_size=12)
ending_ops = st.lists(st.sampled_from(sorted(ENDING_MAKERS)), max_size=3)
control_ops = st.lists(st.sampled_from(["cancel", "terminate"]), max_size=2)


@hsettings(max_examples=400, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), base=base_ops, ends=ending_ops)
def test_any_permutation_ends_at_most_once(data, base, ends):
    ops = data.draw(st.permutations(base + ends))
    check_one_ending(board(), new_id(), ops)


@hsettings(max_examples=300, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), base=base_ops, ends=ending_ops, controls=control_ops)
def test_any_permutation_with_cancel_requests_ends_at_most_once(data, base, ends, controls):
    ops = data.draw(st.permutations(base + ends + controls))
    check_one_ending(board(), new_id(), ops)


@pytest.mark.parametrize("seed", range(200))
def test_shuffled_full_life_ends_exactly_once(seed):
    rng = random.Random(seed)
    tid = new_id()
    evs = life(tid, n=5) + [failed(tid), revoked(tid), our_cancelled(tid), celery_cancelled(tid)]
    evs += rng.sample(evs, 4)  # some duplicates
    rng.shuffle(evs)
    b = board()
    out = apply_all(b, evs)
    ends = terminals(out, tid)
    assert len(ends) == 1
    last_end = max(i for i, u in enumerate(out) if u.terminal and u.event in ENDINGS)
    assert all(u.event != payloads.PROGRESS_UPDATE for u in out[last_end:])
    assert b.get(tid).ending["payload"] == ends[0].payload
    # Progress updates never go backwards in count.
    counts = [u.payload["current"] for u in out if u.event == payloads.PROGRESS_UPDATE]
    assert counts == sorted(counts)


def test_interleaved_tasks_are_independent():
    rng = random.Random(7)
    ids = [new_id() for _ in range(20)]
    evs = [e for tid in ids for e in life(tid, n=3)]
    rng.shuffle(evs)
    b = board()
    out = apply_all(b, evs)
    for tid in ids:
        assert len(terminals(out, tid)) == 1
        assert b.get(tid).state == "SUCCESS"


def test_malformed_event_for_unknown_task_leaves_no_phantom():
    b = board()
    tid = new_id()
    assert apply(b, event(ev.TASK_PROGRESS, tid, 100.0, current="3", total=4)).updates == []
    assert b.get(tid) is None and len(b) == 0


def test_negative_completed_is_not_an_ending():
    b = board()
    tid = new_id()
    run_to_progress(b, tid)
    assert apply(b, our_cancelled(tid, completed=-1)).updates == []
    assert b.get(tid).state == "PROGRESS"


def test_track_fills_in_what_events_did_not_say():
    b = board()
    tid = new_id()
    ups = b.track(tid, job_id=5, owner="ann", total=9).updates
    assert [u.event for u in ups] == [JOB_UPDATE]
    snap = b.get(tid).snapshot()
    assert (snap["job_id"], snap["owner"], snap["total"], snap["state"]) == (5, "ann", 9, "PENDING")
    assert b.track(tid, job_id=5, owner="ann", total=9).updates == []  # nothing new
    # Events keep their own values; tracking never overrides them.
    apply_all(b, [started(tid), progress(tid, 1, total=9, owner="ann", job_id=5)])
    assert b.track(tid, job_id=6, owner="bob", total=3).updates == []
    assert b.get(tid).owner == "ann" and b.get(tid).total == 9


def test_ended_tasks_are_compacted_once_recorded_and_never_rewritten():
    b = board()
    tid = new_id()
    apply_all(b, life(tid))
    records = b.take_records()
    assert [r["ending"]["event"] for r in records] == ["task_completed"]
    task = b.get(tid)
    assert task.compacted and task.ending is None and task.args is None
    assert task.snapshot()["state"] == "SUCCESS"
    # Nothing can make it write a record without its ending over the stored one.
    assert b.track(tid, job_id=1, owner="x", total=4).updates == []
    assert b.cancel(tid).updates == [] and apply(b, progress(tid, 4)).updates == []
    assert b.take_records() == []


# -- numbers and fields from any worker -------------------------------------------------------
HUGE = 10 ** 30


def test_huge_numbers_are_clamped_so_every_record_and_payload_encodes():
    """A worker event with 10**30 in every numeric field (orjson cannot encode an int past
    64 bits; the store write used to raise and the bridge stepped down)."""
    import orjson

    from bridge.task import MAX_INT

    b, tid = board(), new_id()
    out = apply_all(b, [
        event(ev.TASK_SENT, tid, HUGE, name=ev.CAPTION_TASK_NAME, args=f"({HUGE},)"),
        event(ev.TASK_RECEIVED, tid, 101.0, hostname=HUGE),
        event(ev.TASK_STARTED, tid, 102.0, hostname=HUGE),
        event(ev.TASK_PROGRESS, tid, 103.0, current=HUGE, total=HUGE, failed=HUGE, eta=HUGE,
              job_id=HUGE, owner=HUGE, caption=HUGE, image=HUGE, step=HUGE),
        event(ev.TASK_PROGRESS, tid, 104.0, current=float(HUGE), total=-HUGE, failed=-1)])
    out += b.apply(event(ev.TASK_SUCCEEDED, tid, 200.0, runtime=HUGE, result=HUGE),
                   {"count": HUGE, "failed": HUGE, "total": HUGE,
                    "captions": [{"image": "a", "caption": "b"}, {"image": HUGE, "caption": 1}]}).updates
    other = new_id()
    out += apply_all(b, [event(ev.TASK_CANCELLED, other, 1.0, completed=HUGE, total=HUGE)])
    for update in out:
        orjson.dumps(update.payload)
    for record in b.take_records():
        orjson.dumps(record)
    snap = b.get(tid).snapshot()
    assert snap["job_id"] is None  # an id out of range names nothing
    assert snap["current"] == snap["total"] == MAX_INT
    ending = terminals(out, tid)[0].payload
    assert ending["results"] == {"count": MAX_INT, "failed": MAX_INT,
                                 "captions": [{"image": "a", "caption": "b"}], "failed_images": []}
    assert terminals(out, other)[0].payload["completed"] == MAX_INT


def test_an_events_own_results_are_ignored():
    """A task-succeeded's results come from the result backend, never from the event."""
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    forged = event(ev.TASK_SUCCEEDED, tid, 150.0, result="x",
                   results={"count": 9, "failed": 0, "captions": [{"image": "x", "caption": "pwned"}]})
    [end, _job] = b.apply(forged).updates
    assert end.payload["results"]["captions"] == []


def test_captions_only_end_a_caption_job_any_other_task_ends_with_its_result():
    """A task of another application that returns a caption-shaped value is no caption job:
    its ending carries the value as ``results.result`` (PROTOCOL.md, "Watching any Celery task")."""
    b, tid = board(), new_id()
    apply(b, event(ev.TASK_RECEIVED, tid, 1.0, name="reports.build"))
    value = {"count": 1, "failed": 0, "captions": [{"image": "a", "caption": "b"}]}
    [end, _job] = b.apply(event(ev.TASK_SUCCEEDED, tid, 2.0, result="'ok'"), value).updates
    assert end.payload["results"] == {"result": value} and b.get(tid).outcome == "'ok'"


def test_stored_records_with_odd_values_load_safely():
    b = board()
    b.load([{"snapshot": {"task_id": "t1", "state": "NONSENSE", "current": HUGE, "job_id": HUGE,
                          "updated_at": "x", "owner": 5},
             "detail": {"name": 7, "failed": HUGE, "runtime": "long"}}])
    task = b.get("t1")
    assert (task.state, task.job_id, task.owner, task.name, task.runtime) == ("PENDING", None, None, None, None)
    assert task.current == task.failed == 2 ** 53 - 1


# -- transitions: what the operator view counts ----------------------------------------------------
def test_transitions_follow_each_bucket_change():
    b, tid = board(), new_id()
    assert [(t.before, t.after) for t in b.apply(started(tid)).transitions] == [
        (None, ("STARTED", None))]
    assert [(t.before, t.after) for t in apply(b, received(tid)).transitions] == [
        (("STARTED", None), ("STARTED", ev.CAPTION_TASK_NAME))]  # only the name was learnt
    assert apply(b, progress(tid, 1)).transitions[0].after == ("PROGRESS", ev.CAPTION_TASK_NAME)
    assert apply(b, progress(tid, 2)).transitions == []  # same bucket: nothing to count
    [end] = apply(b, succeeded(tid)).transitions
    assert (end.after, end.runtime, end.source) == (("SUCCESS", ev.CAPTION_TASK_NAME), 12.5, "event")
    assert apply(b, failed(tid)).transitions == []  # ignored: never counted twice


def test_a_failure_transition_has_its_runtime_from_started():
    b, tid = board(), new_id()
    apply(b, started(tid, ts=100.0))
    [end] = apply(b, failed(tid, ts=104.5)).transitions
    assert end.runtime == 4.5


def test_evicting_an_open_task_is_a_transition_out():
    b = board(max_tasks=2)
    ids = [new_id() for _ in range(3)]
    moves = [t for tid in ids for t in apply(b, sent(tid)).transitions]
    assert [(t.task_id, t.before, t.after) for t in moves if t.after is None] == [
        (ids[0], ("PENDING", ev.CAPTION_TASK_NAME), None)]


def test_cancel_terminate_track_and_load_transitions():
    b, queued, running = board(), new_id(), new_id()
    apply(b, sent(queued))
    run_to_progress(b, running, upto=1)
    [t] = b.cancel(queued).transitions
    assert (t.before[0], t.after[0], t.source) == ("PENDING", "REVOKED", "bridge")
    [t] = b.cancel(running).transitions
    assert (t.before[0], t.after[0]) == ("PROGRESS", "CANCELLING")
    [t] = b.terminated(running).transitions
    assert t.after[0] == "REVOKED"
    tracked = new_id()
    [t] = b.track(tracked, job_id=3, owner="ann", total=2).transitions
    assert (t.before, t.after) == (None, ("PENDING", ev.CAPTION_TASK_NAME))
    restored = board()
    moves = restored.load([task.record() for task in b.tasks()])
    assert [(t.task_id, t.before, t.after, t.source) for t in moves] == [
        (tracked, None, ("PENDING", ev.CAPTION_TASK_NAME), "store")]  # only the open one


def test_cancel_of_a_task_the_backend_says_started_waits_for_its_ending():
    b, tid = board(), new_id()
    b.track(tid, job_id=7, owner="alice", total=4)  # PENDING as far as the bridge saw
    ups = b.cancel(tid, started=True).updates
    assert terminals(ups) == [] and b.get(tid).state == "CANCELLING"


def test_snapshots_carry_the_failed_count():
    b, tid = board(), new_id()
    ups = apply(b, progress(tid, 1, 4, caption=False, step="Could not read img1.png", failed=1)).updates
    assert [u.payload["failed"] for u in ups if u.event == payloads.PROGRESS_UPDATE] == [1]


def test_an_ending_carries_the_jobs_failed_images_checked():
    b, tid = board(), new_id()
    run_to_progress(b, tid, upto=1)
    ups = b.apply(event(ev.TASK_SUCCEEDED, tid, 200.0), {
        "count": 1, "failed": 2, "captions": [],
        "failed_images": [{"image": "a.png", "error": "x" * 5000}, {"image": 7}, "junk"]}).updates
    failures = terminals(ups, tid)[0].payload["results"]["failed_images"]
    assert [f["image"] for f in failures] == ["a.png"] and len(failures[0]["error"]) <= 1200
