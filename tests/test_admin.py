"""The operator view over HTTP and Socket.IO.

Web tier: ``create_app`` on a Redis database of its own (db 3, so the running
bridge of the integration tests cannot overwrite what a test wrote) and
Flask's test clients. Integration: the real worker, bridge and web, real
python-socketio clients over websocket.
"""
from __future__ import annotations

import io
import re
import time
import uuid

import pytest
import redis
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import protocol
from bridge import records as bridge_records
from bridge.cluster import Cluster
from bridge.commands import STREAM
from bridge.records import RecordWriter
from bridge.state import Board
from protocol import METRIC_NAMES, SOCKETIO_CHANNEL
from tasks import events as ev
from tests.support import Watcher, submit_job, wait_for

ADMIN_APIS = [("get", "/api/workers"), ("get", "/api/tasks"), ("get", "/api/cluster"),
              ("get", f"/api/tasks/{uuid.uuid4()}"), ("post", f"/api/tasks/{uuid.uuid4()}/cancel"),
              ("post", "/api/maintenance")]
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


def error_of(resp) -> str:
    body = resp.get_json() if hasattr(resp, "get_json") else resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"]


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def record(task_id: str, state: str, name: str, updated_at: float, **detail) -> dict:
    snap = protocol.snapshot(task_id, state=state, updated_at=updated_at)
    ending = None
    if state == "FAILURE":
        ending = protocol.ending(snap, error=("ValueError", "bad input"))
    return {"snapshot": snap, "ending": ending,
            "detail": {"name": name, "worker": "celery@host", "runtime": 1.25,
                       "args": "(1, 2)", "outcome": detail.pop("outcome", None), **detail}}


# -- web tier: an app on a Redis database of its own ----------------------------------------
@pytest.fixture(scope="module")
def iso(redis_proc, settings):
    url = f"redis://127.0.0.1:{redis_proc.port}/3"
    client = redis.Redis.from_url(url)
    client.flushdb()
    from web import create_app

    app = create_app(settings.with_overrides(redis_url=url, broker_url=url))
    yield app, client
    client.flushdb()


@pytest.fixture()
def iso_client(iso):
    return iso[0].test_client()


@pytest.fixture()
def rclient(iso):
    return iso[1]


def put_records(client: redis.Redis, records: list[dict]) -> None:
    writer = RecordWriter()
    pipe = client.pipeline()
    for rec in records:
        writer.put(pipe, rec)
    pipe.execute()


def test_admin_apis_need_an_admin(iso_client, users):
    alice = users("alice")
    for method, path in ADMIN_APIS:
        resp = getattr(iso_client, method)(path)
        assert resp.status_code == 401 and error_of(resp) == "unauthorized", path
        resp = getattr(iso_client, method)(path, headers=alice["headers"])
        assert resp.status_code == 403 and error_of(resp) == "forbidden", path
    assert iso_client.get("/admin").status_code == 302  # to the login page
    assert iso_client.get("/admin", headers=alice["headers"]).status_code == 403


def test_task_list_rejects_bad_queries(iso_client, users):
    boss = users("boss", admin=True)
    for query in ("state=BOGUS", "state=success", "limit=0", "limit=1001", "limit=ten",
                  "name=" + "n" * 201, "q=" + "x" * 156):
        resp = iso_client.get(f"/api/tasks?{query}", headers=boss["headers"])
        assert resp.status_code == 400 and error_of(resp) == "invalid", query


def test_task_list_filters_and_detail(iso_client, users, rclient):
    boss = users("boss", admin=True)
    now = time.time()
    ids = [str(uuid.uuid4()) for _ in range(4)]
    put_records(rclient, [
        record(ids[0], "SUCCESS", ev.CAPTION_TASK_NAME, now - 40),
        record(ids[1], "FAILURE", "reports.build", now - 30,
               outcome="Traceback (most recent call last): ValueError: bad input"),
        record(ids[2], "STARTED", "reports.build", now - 20),
        record(ids[3], "SUCCESS", "mail.send", now - 10),
    ])
    get = lambda q: iso_client.get(f"/api/tasks{q}", headers=boss["headers"])  # noqa: E731
    listed = get("").get_json()["tasks"]
    assert [t["task_id"] for t in listed] == ids[::-1]  # newest first
    first = listed[0]
    assert {"task_id", "job_id", "owner", "state", "progress_percent", "current", "total",
            "current_step", "estimated_completion", "updated_at", "name", "worker",
            "runtime"} <= set(first)
    assert [t["task_id"] for t in get("?state=SUCCESS").get_json()["tasks"]] == [ids[3], ids[0]]
    assert [t["task_id"] for t in get("?name=reports.build").get_json()["tasks"]] == [ids[2], ids[1]]
    assert [t["task_id"] for t in get("?state=SUCCESS&limit=1").get_json()["tasks"]] == [ids[3]]
    assert [t["task_id"] for t in get(f"?q={ids[1][:13]}").get_json()["tasks"]] == [ids[1]]
    assert [t["task_id"] for t in get(f"?q={ids[2]}").get_json()["tasks"]] == [ids[2]]
    assert get("?state=REVOKED").get_json()["tasks"] == []

    detail = iso_client.get(f"/api/tasks/{ids[1]}", headers=boss["headers"]).get_json()["task"]
    assert detail["state"] == "FAILURE" and detail["name"] == "reports.build"
    assert detail["args"] == "(1, 2)" and detail["runtime"] == 1.25
    assert detail["worker"] == "celery@host" and "Traceback" in detail["outcome"]
    assert detail["error"] == {"type": "ValueError", "message": "bad input"}
    resp = iso_client.get(f"/api/tasks/{uuid.uuid4()}", headers=boss["headers"])
    assert resp.status_code == 404 and error_of(resp) == "not_found"


def _last_command(client: redis.Redis) -> dict:
    entries = client.xrevrange(STREAM, count=1)
    return {k.decode(): v.decode() for k, v in entries[0][1].items()} if entries else {}


def test_admin_cancel_goes_through_the_command_stream(iso_client, users, rclient):
    boss, alice = users("boss", admin=True), users("alice")
    # A task of another type (no Job row) that has not ended: cancelled by id.
    other = str(uuid.uuid4())
    done = str(uuid.uuid4())
    put_records(rclient, [record(other, "STARTED", "reports.build", time.time()),
                          record(done, "SUCCESS", "reports.build", time.time())])
    resp = iso_client.post(f"/api/tasks/{other}/cancel", headers=boss["headers"])
    assert resp.status_code == 202 and resp.get_json() == {"task_id": other, "state": "CANCELLING"}
    assert _last_command(rclient) | {"at": "x"} == {"type": "cancel", "task_id": other,
                                                    "by": "boss", "at": "x"}
    resp = iso_client.post(f"/api/tasks/{done}/cancel", headers=boss["headers"])
    assert resp.status_code == 409 and error_of(resp) == "conflict"
    resp = iso_client.post(f"/api/tasks/{uuid.uuid4()}/cancel", headers=boss["headers"])
    assert resp.status_code == 404 and error_of(resp) == "not_found"
    # Someone else's caption job (a Job row, queued on a broker no worker reads).
    job = iso_client.post("/api/jobs", headers=alice["headers"], content_type="multipart/form-data",
                          data={"images": [(io.BytesIO(png_bytes()), "a.png")]}).get_json()
    resp = iso_client.post(f"/api/tasks/{job['task_id']}/cancel", headers=boss["headers"])
    assert resp.status_code == 202
    assert _last_command(rclient)["task_id"] == job["task_id"]
    assert _last_command(rclient)["by"] == "boss"


def test_workers_and_cluster_read_what_the_bridge_stored(iso_client, users, rclient):
    boss = users("boss", admin=True)
    assert iso_client.get("/api/workers", headers=boss["headers"]).get_json() == {"workers": []}
    cluster = Cluster()
    cluster.observe([{"type": ev.WORKER_HEARTBEAT, "hostname": "celery@a", "timestamp": time.time(),
                     "active": 2, "processed": 9, "loadavg": [0.1, 0.2, 0.3], "freq": 2.0}])
    updates = cluster.tick()
    pipe = rclient.pipeline()
    bridge_records.put_cluster(pipe, metrics=updates[-1].payload["metrics"], workers=cluster.workers.as_list(),
                        stats=cluster.stats(), history=list(cluster.history),
                        alerts=[{"level": "info", "kind": "k", "message": "m", "at": 1.0}])
    pipe.execute()
    workers = iso_client.get("/api/workers", headers=boss["headers"]).get_json()["workers"]
    assert len(workers) == 1
    assert {k: workers[0][k] for k in ("hostname", "online", "active", "processed", "loadavg")} == \
        {"hostname": "celery@a", "online": True, "active": 2, "processed": 9,
         "loadavg": [0.1, 0.2, 0.3]}
    assert isinstance(workers[0]["last_heartbeat"], float)
    state = iso_client.get("/api/cluster", headers=boss["headers"]).get_json()
    assert set(METRIC_NAMES) <= set(state["metrics"]) and state["metrics"]["workers_online"] == 1
    assert len(state["history"]) == 1 and state["alerts"][0]["kind"] == "k"
    assert state["maintenance"]["active"] is False


def test_metrics_page_parses_with_bounded_labels(iso_client, rclient):
    cluster, board = Cluster(), Board()
    host = "celery@worker-host-1"
    ids = []
    events = [{"type": ev.WORKER_HEARTBEAT, "hostname": host, "timestamp": time.time()}]
    for i, end in enumerate([ev.TASK_SUCCEEDED, ev.TASK_SUCCEEDED, ev.TASK_FAILED]):
        tid = str(uuid.uuid4())
        ids.append(tid)
        name = ev.CAPTION_TASK_NAME if i < 2 else "reports.build"
        events += [{"type": ev.TASK_RECEIVED, "uuid": tid, "name": name, "hostname": host,
                    "timestamp": time.time()},
                   {"type": end, "uuid": tid, "runtime": 0.7, "hostname": host,
                    "timestamp": time.time()}]
    for event in events:  # as the bridge's processor feeds them
        cluster.observe([event])
        cluster.transitions(board.apply(event).transitions)
    cluster.set_queues({"celery": 3})
    cluster.tick()
    pipe = rclient.pipeline()
    bridge_records.put_cluster(pipe, stats=cluster.stats())
    pipe.execute()
    resp = iso_client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    text = resp.get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in [("skald_tasks", "counter"), ("skald_tasks_open", "gauge"),
                       ("skald_task_runtime_seconds", "histogram"),
                       ("skald_events_consumed", "counter"), ("skald_bridge_lag_seconds", "gauge"),
                       ("skald_watchers_connected", "gauge"), ("skald_workers_online", "gauge"),
                       ("skald_socket_events_rejected", "counter"), ("skald_queue_length", "gauge"),
                       ("skald_bridge_up", "gauge")]:
        assert name in families and families[name].type == kind, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("skald_tasks_total", (("name", ev.CAPTION_TASK_NAME), ("state", "SUCCESS")))] == 2
    assert samples[("skald_tasks_total", (("name", "reports.build"), ("state", "FAILURE")))] == 1
    assert samples[("skald_task_runtime_seconds_count", (("name", ev.CAPTION_TASK_NAME),))] == 2
    assert samples[("skald_task_runtime_seconds_bucket",
                    (("le", "1.0"), ("name", ev.CAPTION_TASK_NAME)))] == 2
    assert samples[("skald_workers_online", ())] == 1
    assert samples[("skald_queue_length", (("queue", "celery"),))] == 3
    assert samples[("skald_events_consumed_total", (("type", ev.TASK_SUCCEEDED),))] == 2
    assert samples[("skald_bridge_up", ())] == 1
    for f in families.values():
        if not f.name.startswith("skald_"):
            continue
        for s in f.samples:
            for value in s.labels.values():
                assert not UUID_RE.search(value) and "@" not in value, (s.name, s.labels)
    assert not any(tid in text for tid in ids) and host not in text


def test_metrics_page_without_a_bridge(iso_client, rclient):
    rclient.delete(protocol.STATS_KEY)
    families = {f.name: f for f in text_string_to_metric_families(
        iso_client.get("/metrics").get_data(as_text=True))}
    assert families["skald_bridge_up"].samples[0].value == 0


def test_maintenance_api(iso_client, users, rclient):
    boss, alice = users("boss", admin=True), users("alice")
    post = lambda body, who=boss: iso_client.post("/api/maintenance", json=body,  # noqa: E731
                                                  headers=who["headers"])
    for bad in [None, [], {"active": "yes"}, {"message": "x"}, {"active": True, "message": 5},
                {"active": True, "message": "m" * 501}, {"active": True, "until": "soon"},
                {"active": True, "until": time.time() - 10}, {"active": True, "extra": 1}]:
        resp = post(bad)
        assert resp.status_code == 400 and error_of(resp) == "invalid", bad
    assert post({"active": True}, alice).status_code == 403
    # The announce goes out on the Socket.IO message-queue channel (pub/sub is not
    # per database); its delivery to real clients is the integration test's part.
    pubsub = rclient.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(SOCKETIO_CHANNEL)
    try:
        until = time.time() + 600
        resp = post({"active": True, "message": "upgrading", "until": until})
        assert resp.status_code == 200
        assert resp.get_json() == {"active": True, "message": "upgrading", "until": until}
        assert iso_client.get("/healthz").get_json()["maintenance"] is True
        assert iso_client.get("/api/maintenance", headers=alice["headers"]).get_json()["active"]
        resp = iso_client.post("/api/jobs", headers=alice["headers"], content_type="multipart/form-data",
                               data={"images": [(io.BytesIO(png_bytes()), "a.png")]})
        assert resp.status_code == 503 and error_of(resp) == "maintenance"
        assert 0 < rclient.pttl("skald:maintenance") <= 600_000  # ends by itself

        def announced():
            msg = pubsub.get_message(timeout=0.2)
            return msg if msg and b"maintenance_status" in msg["data"] else None
        assert b"upgrading" in wait_for(announced, 5, what="the announce")["data"]
        resp = post({"active": False})
        assert resp.status_code == 200 and resp.get_json()["active"] is False
        assert iso_client.get("/healthz").get_json()["maintenance"] is False
    finally:
        post({"active": False})
        pubsub.close()


# -- integration: real worker, bridge and web --------------------------------------------------------
@pytest.fixture()
def watchers(stack, users):
    made: list[Watcher] = []

    def make(name: str, admin: bool = False) -> Watcher:
        w = Watcher(stack, users(name, admin=admin)["token"]).connect()
        made.append(w)
        return w
    yield make
    for w in made:
        w.close()


ADMIN_EVENTS = ("job_update", "system_metrics_update", "admin_alert")


def jobs_of(w: Watcher, task_id: str) -> list[dict]:
    return [d["job"] for n, d in w.events(names=("job_update",)) if d["job"]["task_id"] == task_id]


def test_admin_room_gets_job_updates_and_metrics(stack, users, images, watchers, settings):
    admin, user = watchers("boss", admin=True), watchers("alice")
    ack = admin.call("join_admin_dashboard", {})
    assert ack["ok"] is True and set(METRIC_NAMES) <= set(ack["metrics"])
    refused = user.call("join_admin_dashboard", {})
    assert refused["ok"] is False and refused["error"]["code"] == "unauthorized"
    job = submit_job(stack, users("alice"), images(3))
    task_id = job["task_id"]
    wait_for(lambda: any(j["state"] == "SUCCESS" for j in jobs_of(admin, task_id)), 60,
             what="job_update SUCCESS")
    updates = jobs_of(admin, task_id)
    assert updates[-1]["state"] == "SUCCESS" and updates[0]["state"] != "SUCCESS"
    assert [u["state"] for u in updates].count("SUCCESS") == 1
    last = updates[-1]
    assert last["name"] == ev.CAPTION_TASK_NAME and last["worker"].startswith("w1@")
    assert isinstance(last["runtime"], float) and last["job_id"] == job["job_id"]
    # A task of another type (the worker does not know it: it fails) shows up too.
    from tasks.app import make_celery

    other = make_celery(settings).send_task("skald.no_such_task", args=[1]).id
    wait_for(lambda: any(j["state"] == "FAILURE" for j in jobs_of(admin, other)), 30,
             what="job_update of another task type")
    assert jobs_of(admin, other)[-1]["name"] == "skald.no_such_task"
    # Metrics at least every 2 s.
    wait_for(lambda: len(admin.events(names=("system_metrics_update",))) >= 4, 10,
             what="system_metrics_update")
    stamps = [t for t, n, _ in list(admin.received) if n == "system_metrics_update"]
    assert max(b - a for a, b in zip(stamps, stamps[1:])) <= 2.5
    metrics = admin.events(names=("system_metrics_update",))[-1][1]["metrics"]
    assert set(METRIC_NAMES) <= set(metrics)
    assert metrics["workers_online"] >= 1 and metrics["completed_today"] >= 1
    # Watchers: every web process reports its count; the bridge sums them.
    wait_for(lambda: admin.events(names=("system_metrics_update",))[-1][1]["metrics"]["watchers"]
             >= 2, 10, what="watchers counted")
    assert user.events(names=ADMIN_EVENTS) == []
    # The HTTP side agrees.
    boss = users("boss", admin=True)
    listed = requests.get(f"{stack}/api/tasks?limit=50", headers=boss["headers"]).json()["tasks"]
    assert task_id in [t["task_id"] for t in listed] and other in [t["task_id"] for t in listed]
    failed = requests.get(f"{stack}/api/tasks?state=FAILURE&name=skald.no_such_task",
                          headers=boss["headers"]).json()["tasks"]
    assert [t["task_id"] for t in failed][:1] == [other]


def test_stopped_worker_alerts_and_admin_state_survives_a_bridge_restart(
        stack, users, watchers, procs, env, settings, bridge):
    boss = users("boss", admin=True)
    admin, user = watchers("boss", admin=True), watchers("alice")
    assert admin.call("join_admin_dashboard", {})["ok"]
    user.call("join_admin_dashboard", {})
    wx = procs.start_worker("wX", env, settings, concurrency=1)

    def workers() -> dict:
        got = requests.get(f"{stack}/api/workers", headers=boss["headers"]).json()["workers"]
        return {w["hostname"].split("@")[0]: w for w in got}
    try:
        wait_for(lambda: workers().get("wX", {}).get("online"), 20, what="wX online")
    finally:
        wx.stop()
    alert = wait_for(lambda: [d for n, d in admin.events(names=("admin_alert",))
                              if d["kind"] == "worker_offline" and "wX@" in d["message"]],
                     20, what="worker_offline alert")[0]
    assert alert["level"] in ("warning", "critical") and isinstance(alert["at"], float)
    assert alert["hostname"].startswith("wX@")
    wait_for(lambda: workers()["wX"]["online"] is False, 5, what="wX listed offline")
    assert user.events(names=ADMIN_EVENTS) == []
    before = requests.get(f"{stack}/api/cluster", headers=boss["headers"]).json()

    # Restart the bridge: the worker list (with the offline wX, which no event
    # will ever mention again), counters and alerts come back from the store.
    starts = bridge.log().count("bridge active")
    bridge.stop()
    bridge.start()
    try:
        wait_for(lambda: bridge.log().count("bridge active") > starts, 30, what="bridge back")
        wait_for(lambda: requests.get(f"{stack}/api/cluster", headers=boss["headers"]).json()
                 ["metrics"].get("updated_at", 0) > before["metrics"]["updated_at"] + 0.5, 10,
                 what="a tick of the new bridge")
        after = requests.get(f"{stack}/api/cluster", headers=boss["headers"]).json()
        listed = workers()
        assert listed["wX"]["online"] is False and listed["w1"]["online"] is True
        assert after["metrics"]["completed_today"] >= before["metrics"]["completed_today"]
        assert any(a["kind"] == "worker_offline" for a in after["alerts"])
        tasks = requests.get(f"{stack}/api/tasks", headers=boss["headers"]).json()["tasks"]
        assert tasks
    finally:
        if not bridge.alive():
            bridge.start()


def test_maintenance_reaches_watchers_and_refuses_new_jobs(stack, users, images, watchers, tmp_path):
    from tests.support import make_image

    boss, alice = users("boss", admin=True), users("alice")
    w = watchers("alice")
    running = submit_job(stack, alice, [make_image(tmp_path / f"m{i}.png", i, (1600, 1200))
                                    for i in range(6)])
    assert w.call("join_task", {"task_id": running["task_id"]})["ok"]
    try:
        resp = requests.post(f"{stack}/api/maintenance", headers=boss["headers"], timeout=10,
                             json={"active": True, "message": "database upgrade", "until": None})
        assert resp.status_code == 200
        assert resp.json() == {"active": True, "message": "database upgrade", "until": None}
        got = wait_for(lambda: w.events(names=("maintenance_status",)), 10,
                       what="maintenance_status")
        assert got[-1][1] == {"active": True, "message": "database upgrade", "until": None}
        resp = requests.post(f"{stack}/api/jobs", headers=alice["headers"], timeout=10,
                             files=[("images", ("a.png", open(images(1)[0], "rb"), "image/png"))])
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "maintenance"
        assert requests.get(f"{stack}/healthz", timeout=5).json()["maintenance"] is True
        late = watchers("alice")  # connects while it lasts: told on connect
        wait_for(lambda: late.events(names=("maintenance_status",)), 10, what="status on connect")
        # The running job finishes.
        ending = w.wait_ending(running["task_id"], 60)
        assert [n for n, _ in ending] == ["task_completed"]
    finally:
        resp = requests.post(f"{stack}/api/maintenance", headers=boss["headers"], timeout=10,
                             json={"active": False})
    assert resp.status_code == 200 and resp.json()["active"] is False
    wait_for(lambda: w.events(names=("maintenance_status",))[-1][1]["active"] is False, 10,
             what="maintenance off")


def test_live_metrics_page(stack, users, images):
    job = submit_job(stack, users("alice"), images(1))
    boss = users("boss", admin=True)
    wait_for(lambda: requests.get(f"{stack}/api/jobs/{job['task_id']}", headers=boss["headers"])
             .json()["state"] == "SUCCESS", 30, what="job done")
    time.sleep(1.5)  # a metrics tick after the ending
    text = requests.get(f"{stack}/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = lambda family, **labels: sum(  # noqa: E731
        s.value for s in families[family].samples
        if s.name.startswith(family) and all(s.labels.get(k) == v for k, v in labels.items()))
    assert value("skald_bridge_up") == 1
    assert value("skald_workers_online") >= 1
    assert families["skald_events_consumed"].samples and \
        sum(s.value for s in families["skald_events_consumed"].samples) > 0
    assert value("skald_tasks", state="SUCCESS", name=ev.CAPTION_TASK_NAME) >= 1
    assert [s for s in families["skald_task_runtime_seconds"].samples
            if s.name.endswith("_count") and s.value >= 1]
    assert "skald_watchers_connected" in families and "skald_bridge_lag_seconds" in families
    for f in families.values():
        for s in f.samples:
            if s.name.startswith("skald_"):
                assert all(not UUID_RE.search(v) and "@" not in v for v in s.labels.values())
    assert job["task_id"] not in text
