"""``bridge.emitter.Coalescer``: at most one progress_update per task per window, never
dropping or delaying the end. The clock is the injected ``now``; no sleeping.

Times are multiples of 1/8 s so that float arithmetic is exact.
"""
from __future__ import annotations

import pytest

import protocol as payloads
from bridge.emitter import RECENT_CAPTIONS_CAP, Coalescer
from bridge.state import Board, Update
from protocol import ADMIN_ROOM, JOB_UPDATE, task_room
from tasks import events as ev

WINDOW = 0.5
T0 = 1000.0


def prog(tid: str, current: int, caption: str | None = None, captions: list | None = None) -> Update:
    payload = payloads.snapshot(tid, state="PROGRESS", current=current, total=100,
                                updated_at=T0 + current)
    if caption is not None:
        last = {"image": f"img{current}.png", "caption": caption}
        payload["last_caption"] = last
        payload["recent_captions"] = [last]
    if captions is not None:
        payload["recent_captions"] = captions
    return Update(payloads.PROGRESS_UPDATE, task_room(tid), tid, payload)


def job(tid: str, state: str = "PROGRESS", terminal: bool = False) -> Update:
    return Update(JOB_UPDATE, ADMIN_ROOM, tid,
                  {"job": payloads.snapshot(tid, state=state, updated_at=T0)}, terminal=terminal)


def ending(tid: str, event: str = payloads.TASK_COMPLETED) -> Update:
    payload = payloads.ending(payloads.snapshot(tid, state="SUCCESS", updated_at=T0),
                              results={"count": 1, "failed": 0, "captions": []})["payload"]
    return Update(event, task_room(tid), tid, payload, terminal=True)


@pytest.fixture()
def c() -> Coalescer:
    return Coalescer(window=WINDOW)


def test_first_progress_goes_at_once(c):
    u = prog("a", 1)
    assert c.offer(u, T0) == [u]
    assert len(c) == 0
    assert c.next_due() is None


def test_later_ones_wait_and_the_newest_replaces_the_waiting_one(c):
    c.offer(prog("a", 1), T0)
    assert c.offer(prog("a", 2), T0 + 0.125) == []
    newest = prog("a", 3)
    assert c.offer(newest, T0 + 0.25) == []
    assert len(c) == 1  # one waiting update, not two
    assert c.due(T0 + 0.375) == []  # the window has not passed
    released = c.due(T0 + WINDOW)
    assert released == [newest]
    assert released[0].payload["current"] == 3
    assert len(c) == 0
    assert c.due(T0 + 10) == []  # released only once


def test_window_restarts_when_a_waiting_update_is_released(c):
    c.offer(prog("a", 1), T0)
    c.offer(prog("a", 2), T0 + 0.25)
    assert [u.payload["current"] for u in c.due(T0 + 0.5)] == [2]
    # Sent at T0 + 0.5: the next one waits for T0 + 1.0.
    assert c.offer(prog("a", 3), T0 + 0.625) == []
    assert c.next_due() == T0 + 1.0
    assert c.due(T0 + 0.875) == []
    assert [u.payload["current"] for u in c.due(T0 + 1.0)] == [3]


def test_after_a_quiet_window_the_next_goes_at_once(c):
    c.offer(prog("a", 1), T0)
    u = prog("a", 2)
    assert c.offer(u, T0 + WINDOW) == [u]
    u = prog("a", 3)
    assert c.offer(u, T0 + 5.0) == [u]
    assert len(c) == 0


def test_at_most_one_update_per_window_under_a_flood(c):
    sent_at: list[float] = []
    now = T0
    for i in range(1, 201):  # one progress every 1/16 s for 12.5 s
        now = T0 + i / 16
        for u in c.offer(prog("a", i), now) + c.due(now):
            sent_at.append(now)
            last = u
    for u in c.due(now + WINDOW):
        sent_at.append(now + WINDOW)
        last = u
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:])]
    assert min(gaps) >= WINDOW
    assert last.payload["current"] == 200  # the newest is never lost
    assert 20 <= len(sent_at) <= 27


def test_terminal_flushes_the_waiting_update_first(c):
    c.offer(prog("a", 1), T0)
    c.offer(prog("a", 2), T0 + 0.125)
    end = ending("a")
    out = c.offer(end, T0 + 0.25)
    assert [u.event for u in out] == [payloads.PROGRESS_UPDATE, payloads.TASK_COMPLETED]
    assert out[0].payload["current"] == 2
    assert out[1] is end
    assert len(c) == 0
    assert c.next_due() is None
    assert c.due(T0 + 10) == []  # nothing left to follow the ending


def test_terminal_is_never_delayed(c):
    c.offer(prog("a", 1), T0)
    end = ending("a")
    assert c.offer(end, T0) == [end]  # same instant as the last progress
    other = ending("b", payloads.TASK_ERROR)
    assert c.offer(other, T0) == [other]  # no progress before it at all


@pytest.mark.parametrize("event", [payloads.TASK_COMPLETED, payloads.TASK_CANCELLED,
                                   payloads.TASK_ERROR])
def test_every_ending_event_flushes(c, event):
    c.offer(prog("a", 1), T0)
    c.offer(prog("a", 2), T0 + 0.125)
    out = c.offer(ending("a", event), T0 + 0.25)
    assert [u.event for u in out] == [payloads.PROGRESS_UPDATE, event]


def test_terminal_flushes_only_its_own_task_and_room(c):
    c.offer(prog("a", 1), T0)
    c.offer(prog("a", 2), T0 + 0.125)
    c.offer(prog("b", 1), T0)
    waiting_b = prog("b", 2)
    c.offer(waiting_b, T0 + 0.125)
    c.offer(job("a"), T0)
    waiting_job_a = job("a", state="CANCELLING")
    c.offer(waiting_job_a, T0 + 0.125)
    assert len(c) == 3

    out = c.offer(ending("a"), T0 + 0.25)
    assert [(u.event, u.task_id) for u in out] == [
        (payloads.PROGRESS_UPDATE, "a"), (payloads.TASK_COMPLETED, "a")]
    assert len(c) == 2  # b's progress and a's admin job_update still wait

    # The admin room's own terminal job_update flushes a's waiting job_update.
    final_job = job("a", state="SUCCESS", terminal=True)
    out = c.offer(final_job, T0 + 0.25)
    assert out == [waiting_job_a, final_job]
    assert c.due(T0 + WINDOW) == [waiting_b]


def test_different_tasks_are_independent(c):
    a1, b1 = prog("a", 1), prog("b", 1)
    assert c.offer(a1, T0) == [a1]
    assert c.offer(b1, T0 + 0.125) == [b1]  # b's first goes at once despite a's window
    assert c.offer(prog("a", 2), T0 + 0.25) == []
    assert c.offer(prog("b", 2), T0 + 0.375) == []
    assert c.next_due() == T0 + WINDOW
    first = c.due(T0 + WINDOW)
    assert [(u.task_id, u.payload["current"]) for u in first] == [("a", 2)]
    assert c.next_due() == T0 + 0.125 + WINDOW
    second = c.due(T0 + 0.625)
    assert [(u.task_id, u.payload["current"]) for u in second] == [("b", 2)]


def test_progress_and_job_updates_of_one_task_have_separate_windows(c):
    p, j = prog("a", 1), job("a")
    assert c.offer(p, T0) == [p]
    assert c.offer(j, T0) == [j]
    assert c.offer(prog("a", 2), T0 + 0.125) == []
    assert c.offer(job("a"), T0 + 0.125) == []
    assert len(c) == 2
    assert {u.event for u in c.due(T0 + WINDOW)} == {payloads.PROGRESS_UPDATE, JOB_UPDATE}


def test_recent_captions_of_replaced_updates_are_merged(c):
    c.offer(prog("a", 1, caption="one"), T0)
    c.offer(prog("a", 2, caption="two"), T0 + 0.0625)
    c.offer(prog("a", 3), T0 + 0.125)  # no caption (an image failed)
    c.offer(prog("a", 4, caption="four"), T0 + 0.25)
    [released] = c.due(T0 + WINDOW)
    assert released.payload["current"] == 4
    assert released.payload["last_caption"] == {"image": "img4.png", "caption": "four"}
    assert released.payload["recent_captions"] == [
        {"image": "img2.png", "caption": "two"}, {"image": "img4.png", "caption": "four"}]
    assert released.event == payloads.PROGRESS_UPDATE and not released.terminal


def test_merged_captions_survive_a_newer_update_without_captions(c):
    c.offer(prog("a", 1), T0)
    c.offer(prog("a", 2, caption="two"), T0 + 0.125)
    c.offer(prog("a", 3), T0 + 0.25)
    [released] = c.due(T0 + WINDOW)
    assert released.payload["current"] == 3
    assert released.payload["recent_captions"] == [{"image": "img2.png", "caption": "two"}]


def test_merged_captions_are_flushed_before_the_ending(c):
    c.offer(prog("a", 1), T0)
    c.offer(prog("a", 2, caption="two"), T0 + 0.125)
    c.offer(prog("a", 3, caption="three"), T0 + 0.25)
    out = c.offer(ending("a"), T0 + 0.375)
    assert [x["caption"] for x in out[0].payload["recent_captions"]] == ["two", "three"]


def test_merged_captions_are_bounded(c):
    c.offer(prog("a", 0), T0)
    n = RECENT_CAPTIONS_CAP + 30
    for i in range(1, n + 1):
        c.offer(prog("a", i, caption=f"c{i}"), T0 + 0.25)
    [released] = c.due(T0 + WINDOW)
    captions = released.payload["recent_captions"]
    assert len(captions) == RECENT_CAPTIONS_CAP
    assert captions[-1]["caption"] == f"c{n}"  # the newest are kept
    assert captions[0]["caption"] == f"c{n - RECENT_CAPTIONS_CAP + 1}"


def test_merge_does_not_change_the_offered_updates(c):
    c.offer(prog("a", 1), T0)
    second = prog("a", 2, caption="two")
    third = prog("a", 3, caption="three")
    c.offer(second, T0 + 0.125)
    c.offer(third, T0 + 0.25)
    c.due(T0 + WINDOW)
    assert second.payload["recent_captions"] == [{"image": "img2.png", "caption": "two"}]
    assert third.payload["recent_captions"] == [{"image": "img3.png", "caption": "three"}]


def test_next_due(c):
    assert c.next_due() is None
    c.offer(prog("a", 1), T0)
    assert c.next_due() is None  # nothing waits
    c.offer(prog("a", 2), T0 + 0.125)
    assert c.next_due() == T0 + WINDOW
    c.offer(prog("b", 1), T0 + 0.25)
    c.offer(prog("b", 2), T0 + 0.375)
    assert c.next_due() == T0 + WINDOW  # the earliest of the two
    c.due(T0 + WINDOW)
    assert c.next_due() == T0 + 0.25 + WINDOW
    c.due(T0 + 0.25 + WINDOW)
    assert c.next_due() is None


def test_default_window_is_100_ms():
    c = Coalescer()
    assert c.window == 0.1
    c.offer(prog("a", 1), 100.0)
    assert c.offer(prog("a", 2), 100.05) == []
    assert c.due(100.09) == []
    assert [u.payload["current"] for u in c.due(100.2)] == [2]


def test_many_tasks_do_not_lose_a_waiting_update():
    c = Coalescer(window=WINDOW)
    for i in range(10_050):
        c.offer(prog(f"t{i}", 1), T0)
    c.offer(prog("t0", 2), T0 + 0.25)
    released = c.due(T0 + 0.625)  # also trims what it remembers of old windows
    assert [(u.task_id, u.payload["current"]) for u in released] == [("t0", 2)]
    # t0 was just sent: its window holds; t1's window is long over.
    assert c.offer(prog("t0", 3), T0 + 0.75) == []
    assert c.offer(prog("t1", 2), T0 + 0.75) != []


def test_board_life_through_the_coalescer_ends_with_one_terminal_per_room():
    """Board + Coalescer: a burst of progress keeps the newest and ends exactly once."""
    board, c, tid = Board(clock=lambda: T0), Coalescer(window=WINDOW), "t-1"
    evs = [{"type": ev.TASK_STARTED, "uuid": tid, "timestamp": T0}]
    evs += [{"type": ev.TASK_PROGRESS, "uuid": tid, "timestamp": T0 + i / 64,
             **ev.progress_fields(current=i, total=20, step=f"img{i}", image=f"img{i}.png",
                                  caption=f"cap {i}", job_id=1, owner="alice")}
            for i in range(1, 21)]
    evs.append({"type": ev.TASK_SUCCEEDED, "uuid": tid, "timestamp": T0 + 0.375,
                "results": {"count": 20, "failed": 0, "captions": [], "total": 20}})
    sent: list[Update] = []
    for e in evs:
        for u in board.apply(e).updates:
            sent += c.offer(u, e["timestamp"])
        sent += c.due(e["timestamp"])
    sent += c.due(T0 + 100)

    room = [u for u in sent if u.room == task_room(tid)]
    admin = [u for u in sent if u.room == ADMIN_ROOM]
    assert room[-1].event == payloads.TASK_COMPLETED
    assert sum(u.terminal for u in room) == 1
    assert room[-2].event == payloads.PROGRESS_UPDATE
    assert room[-2].payload["current"] == 20  # the pending newest went out before the end
    assert len(room) < 10  # 21 updates coalesced
    # Every caption reached the room, first-sent or merged.
    seen = set()
    for u in room:
        for item in u.payload.get("recent_captions", []):
            seen.add(item["caption"])
    assert seen == {f"cap {i}" for i in range(1, 21)}
    assert admin[-1].terminal and admin[-1].payload["job"]["state"] == "SUCCESS"
    assert sum(u.terminal for u in admin) == 1
