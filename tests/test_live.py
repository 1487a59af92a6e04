"""Real Redis, worker, bridge and web; python-socketio clients over websocket."""
from __future__ import annotations

import time

import pytest
import requests
import socketio

from tests.support import Watcher, make_image, submit_job, wait_for


@pytest.fixture()
def watcher_for(stack, users):
    made: list[Watcher] = []

    def make(name: str = "alice", url: str | None = None) -> Watcher:
        w = Watcher(url or stack, users(name)["token"]).connect()
        made.append(w)
        return w
    yield make
    for w in made:
        w.close()


def big_images(tmp_path, n: int, size=(2400, 1800)):
    return [make_image(tmp_path / f"big{i}.png", i, size) for i in range(n)]


def test_watcher_sees_ordered_progress_and_exactly_one_ending(stack, users, images, watcher_for):
    alice = users("alice")
    w = watcher_for("alice")
    connected = wait_for(lambda: w.events(names=("connected",)), 5, what="connected")
    assert connected[0][1]["user"] == "alice" and connected[0][1]["is_admin"] is False
    job = submit_job(stack, alice, images(6))
    task_id = job["task_id"]
    ack = w.call("join_task", {"task_id": task_id})
    assert ack["ok"] is True and ack["snapshot"]["task_id"] == task_id
    w.wait_ending(task_id)
    time.sleep(0.5)  # anything that would wrongly follow the ending
    seen = w.events(task_id)
    names = [n for n, _ in seen]
    assert names.count("task_completed") == 1
    assert set(names) <= {"progress_update", "task_completed"}
    assert names[-1] == "task_completed", "no progress_update after the ending"
    currents = [d["current"] for n, d in seen if n == "progress_update"]
    assert currents == sorted(currents)
    done = seen[-1][1]
    assert done["state"] == "SUCCESS" and done["progress_percent"] == 100
    assert done["results"]["count"] == 6 and done["results"]["failed"] == 0
    assert [c["image"] for c in done["results"]["captions"]] == [f"img{i}.png" for i in range(6)]
    for key in ("task_id", "job_id", "owner", "state", "progress_percent", "current", "total",
                "current_step", "estimated_completion", "updated_at"):
        assert key in done
    assert done["owner"] == "alice" and done["job_id"] == job["job_id"]


def test_late_joiner_gets_the_ending(stack, users, images, watcher_for):
    alice = users("alice")
    job = submit_job(stack, alice, images(2))
    task_id = job["task_id"]
    wait_for(lambda: requests.get(f"{stack}/api/jobs/{task_id}", headers=alice["headers"]).json()
             ["state"] == "SUCCESS", 30, what="job done")
    late = watcher_for("alice")
    ack = late.call("join_task", {"task_id": task_id})
    assert ack["ok"] and ack["snapshot"]["state"] == "SUCCESS"
    ending = late.wait_ending(task_id, 5)
    assert [n for n, _ in ending] == ["task_completed"]
    assert ending[0][1]["results"]["count"] == 2
    assert late.call("get_task_status", {"task_id": task_id})["snapshot"]["state"] == "SUCCESS"


def test_cancel_mid_job(stack, users, tmp_path, watcher_for):
    alice = users("alice")
    job = submit_job(stack, alice, big_images(tmp_path, 40))
    task_id = job["task_id"]
    w = watcher_for("alice")
    assert w.call("join_task", {"task_id": task_id})["ok"]
    w.wait_progress(task_id, 1)
    ack = w.call("cancel_task", {"task_id": task_id})
    assert ack == {"ok": True, "state": "CANCELLING"}
    ending = w.wait_ending(task_id, 30)
    assert [n for n, _ in ending] == ["task_cancelled"]
    data = ending[0][1]
    assert data["state"] == "REVOKED" and 1 <= data["completed"] < 40
    again = w.call("cancel_task", {"task_id": task_id})
    assert again["ok"] is False and again["error"]["code"] == "conflict"
    caps = requests.get(f"{stack}/api/jobs/{task_id}/captions", headers=alice["headers"]).json()
    assert len([c for c in caps["captions"] if c["status"] != "pending"]) == data["completed"]


def test_http_cancel_of_ended_job_is_conflict(stack, users, images):
    alice = users("alice")
    task_id = submit_job(stack, alice, images(1))["task_id"]
    wait_for(lambda: requests.get(f"{stack}/api/jobs/{task_id}", headers=alice["headers"]).json()
             ["state"] == "SUCCESS", 30, what="job done")
    resp = requests.post(f"{stack}/api/jobs/{task_id}/cancel", headers=alice["headers"])
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "conflict"


def test_cancel_made_while_bridge_down_is_honoured(stack, users, tmp_path, procs, env, bridge):
    alice = users("alice")
    job = submit_job(stack, alice, big_images(tmp_path, 60))
    task_id = job["task_id"]
    w = Watcher(stack, alice["token"]).connect()
    try:
        w.call("join_task", {"task_id": task_id})
        w.wait_progress(task_id, 1)
        bridge.stop()
        resp = requests.post(f"{stack}/api/jobs/{task_id}/cancel", headers=alice["headers"])
        assert resp.status_code == 202 and resp.json() == {"task_id": task_id, "state": "CANCELLING"}
        starts = bridge.log().count("event stream connected")
        bridge.start()
        wait_for(lambda: bridge.log().count("event stream connected") > starts, 30,
                 what="bridge back")
        ending = w.wait_ending(task_id, 60)
        assert [n for n, _ in ending] == ["task_cancelled"]
        assert ending[0][1]["completed"] < 60
    finally:
        w.close()
        if not bridge.alive():
            bridge.start()


def test_two_web_processes_share_rooms(stack, users, images, procs, env):
    from devstack import free_port

    second = procs.start_web("web2", env, free_port())
    alice = users("alice")
    w1 = Watcher(stack, alice["token"]).connect()
    w2 = Watcher(second.url, alice["token"]).connect()
    try:
        job = submit_job(stack, alice, images(4))
        task_id = job["task_id"]
        assert w1.call("join_task", {"task_id": task_id})["ok"]
        assert w2.call("join_task", {"task_id": task_id})["ok"]
        e1 = w1.wait_ending(task_id)
        e2 = w2.wait_ending(task_id)
        assert [n for n, _ in e1] == [n for n, _ in e2] == ["task_completed"]
        assert e1[0][1]["results"] == e2[0][1]["results"]
    finally:
        w1.close()
        w2.close()
        second.stop()


def test_socket_rejects_bad_input_and_keeps_the_connection(stack, users, images, watcher_for):
    _alice, bob = users("alice"), users("bob")
    w = watcher_for("alice")
    for payload in ["not-an-object", 42, None, [], {"task_id": "nope"},
                    {"task_id": "0" * 20000}, {"task_id": "6f1c1f64-6a6b-4f7e-9f55-2f0b2f3b6a51", "x": 1}]:
        ack = w.call("join_task", payload)
        assert ack["ok"] is False and ack["error"]["code"] == "invalid", (payload, ack)
    # Bob's job does not exist for Alice.
    bob_job = submit_job(stack, bob, images(1))
    for event in ("join_task", "get_task_status", "cancel_task"):
        ack = w.call(event, {"task_id": bob_job["task_id"]})
        assert ack["error"]["code"] == "not_found", (event, ack)
    ack = w.call("join_admin_dashboard", {})
    assert ack["ok"] is False and ack["error"]["code"] == "unauthorized"
    assert w.sio.connected
    assert w.call("leave_task", {"task_id": bob_job["task_id"]}) == {"ok": True}


def test_connection_without_credentials_is_refused(stack):
    for auth in (None, {"token": "wrong"}):
        sio = socketio.Client(reconnection=False)
        refusals: list = []
        sio.on("connect_error", refusals.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            sio.connect(stack, auth=auth, transports=["websocket"], wait_timeout=5)
        assert refusals and refusals[0]["message"] == "unauthorized"


def test_ending_missed_while_bridge_down_reaches_earlier_watchers(stack, users, images, bridge):
    alice = users("alice")
    bridge.stop()
    w = Watcher(stack, alice["token"]).connect()
    try:
        job = submit_job(stack, alice, images(3))
        task_id = job["task_id"]
        assert w.call("join_task", {"task_id": task_id})["ok"]
        already = [n for n, _ in w.endings(task_id)]
        # The whole job runs while no bridge is up.
        wait_for(lambda: requests.get(f"{stack}/api/jobs/{task_id}", headers=alice["headers"])
                 .json()["state"] == "SUCCESS", 30, what="job done without a bridge")
        bridge.start()
        ending = w.wait_ending(task_id, 30)
        time.sleep(1.0)
        names = [n for n, _ in w.endings(task_id)]
        assert names == ["task_completed"], (already, names)
        assert ending[0][1]["results"]["count"] == 3
    finally:
        w.close()
        if not bridge.alive():
            bridge.start()
