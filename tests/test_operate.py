"""Operating the cluster against real workers (PROTOCOL.md, "Operating the cluster").

Two workers of this module's own (``opa``, ``opb`` with ``--autoscale=2,1``) beside the
session's ``w1``: actions target one and the other is checked untouched. The real web process
answers over HTTP; the real bridge supplies the stored worker fields.
"""
from __future__ import annotations

import time
import uuid

import pytest
import requests
from kombu import Queue

from tasks.app import make_celery
from tests.support import wait_for
from tests.test_backends import AMQP_URL, answers
from web import control

TASK = "skald.caption_job"


@pytest.fixture(scope="module")
def people(users):
    return {"admin": users("op-admin", admin=True)["headers"],
            "viewer": users("op-viewer", role="viewer")["headers"],
            "user": users("op-user")["headers"]}


@pytest.fixture(scope="module")
def hosts(stack, procs, env, settings, people):
    """``{"a": hostname, "b": hostname}`` once the bridge lists both online."""
    started = [procs.start_worker("opa", env, settings, concurrency=2),
               procs.start_worker("opb", env, settings, concurrency=1, extra=["--autoscale=2,1"])]

    def online() -> dict[str, str] | None:
        workers = requests.get(f"{stack}/api/workers", headers=people["viewer"], timeout=5).json()["workers"]
        found = {w["hostname"].split("@")[0][-1]: w["hostname"] for w in workers
                 if w["online"] and w["hostname"].split("@")[0] in ("opa", "opb")}
        return found if len(found) == 2 else None
    yield wait_for(online, 30, what="both workers online")
    for proc in started:
        proc.stop()


def get(stack, path, who="viewer", people=None, **kw):
    return requests.get(f"{stack}{path}", headers=people[who], timeout=20, **kw)


def act(stack, people, host, body, who="admin"):
    return requests.post(f"{stack}/api/workers/{host}/control", json=body, headers=people[who], timeout=20)


def detail(stack, people, host) -> dict:
    resp = get(stack, f"/api/workers/{host}", people=people)
    assert resp.status_code == 200, resp.text
    return resp.json()["worker"]


def audit_entries(stack, people, action) -> list[dict]:
    return get(stack, f"/api/audit?action={action}", people=people).json()["entries"]


def test_inspection_fields(stack, people, hosts):
    w = detail(stack, people, hosts["a"])
    assert w["hostname"] == hosts["a"] and w["online"] is True
    assert time.time() - w["last_heartbeat"] < 15
    assert isinstance(w["active"], int) and isinstance(w["processed"], int)
    assert len(w["loadavg"]) == 3 and all(isinstance(x, float) for x in w["loadavg"])
    assert "prefork" in w["pool"]["implementation"].lower()
    assert w["pool"]["max_concurrency"] == 2 and len(w["pool"]["processes"]) == 2
    assert {"name": "celery", "exchange": "celery", "routing_key": "celery"} in w["queues"]
    assert TASK in w["registered"] and w["registered"] == sorted(w["registered"])
    assert w["stats"]["pid"] > 0 and "total" in w["stats"]
    assert w["conf"]["worker_pool_restarts"] is True and w["conf"]["task_acks_late"] is True
    assert "redis://" in w["conf"]["broker_url"]
    # An admin reads the same; a plain user may not.
    assert get(stack, f"/api/workers/{hosts['a']}", "admin", people).status_code == 200
    for path in (f"/api/workers/{hosts['a']}", "/api/queues", f"/admin/workers/{hosts['a']}"):
        assert get(stack, path, "user", people).status_code == 403, path
    assert act(stack, people, hosts["a"], {"action": "pool_grow", "n": 1}, who="user").status_code == 403


def test_unknown_worker(stack, people, hosts):
    resp = get(stack, "/api/workers/nobody@nowhere", people=people)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = act(stack, people, "nobody@nowhere", {"action": "pool_grow", "n": 1})
    assert resp.status_code == 404


def test_masking():
    conf = {"broker_url": "redis://user:hunter2@redis:6379/0", "result_backend": "redis://:pw@h/1",
            "broker_transport_options": {"sentinel_kwargs": {"password": "s3"}, "visibility_timeout": 5},
            "security_key": "PRIVATE", "aws_secret_access_key": "x", "task_default_routing_key": "celery",
            "oauth_token": "abc", "list": ["amqp://guest:guest@rabbit//"], "timeout": 3}
    masked = control.mask(conf)
    text = repr(masked)
    for secret in ("hunter2", ":pw@", "s3", "PRIVATE", "abc", "guest@"):
        assert secret not in text, secret
    assert masked["broker_url"] == "redis://user:********@redis:6379/0"
    assert masked["task_default_routing_key"] == "celery" and masked["timeout"] == 3
    assert masked["broker_transport_options"]["visibility_timeout"] == 5


def test_pool_grow_and_shrink(stack, people, hosts):
    before_b = len(detail(stack, people, hosts["b"])["pool"]["processes"])
    resp = act(stack, people, hosts["a"], {"action": "pool_grow", "n": 1})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ok": True, "reply": {"ok": "pool will grow"}}
    wait_for(lambda: len(detail(stack, people, hosts["a"])["pool"]["processes"]) == 3, 15,
             interval=0.5, what="a third process")
    assert len(detail(stack, people, hosts["b"])["pool"]["processes"]) == before_b  # the other: untouched
    resp = act(stack, people, hosts["a"], {"action": "pool_shrink", "n": 1})
    assert resp.status_code == 200 and resp.json()["reply"] == {"ok": "pool will shrink"}
    wait_for(lambda: len(detail(stack, people, hosts["a"])["pool"]["processes"]) == 2, 15,
             interval=0.5, what="back to two processes")
    entry = audit_entries(stack, people, "pool_grow")[0]
    assert (entry["user"], entry["target"], entry["params"]) == ("op-admin", hosts["a"], {"n": 1})
    assert entry["result"] == "ok: pool will grow"
    assert audit_entries(stack, people, "pool_shrink")[0]["target"] == hosts["a"]


def queue(stack, people, name) -> dict | None:
    resp = get(stack, "/api/queues", people=people)
    assert resp.status_code == 200, resp.text
    return next((q for q in resp.json()["queues"] if q["name"] == name), None)


def test_consumers_and_queues(stack, people, hosts):
    default = queue(stack, people, "celery")
    assert {hosts["a"], hosts["b"]} <= set(default["consumers"]) and isinstance(default["messages"], int)
    resp = act(stack, people, hosts["a"], {"action": "add_consumer", "queue": "op-extra"})
    assert resp.status_code == 200, resp.text
    assert "op-extra" in resp.json()["reply"]["ok"]
    extra = queue(stack, people, "op-extra")
    assert extra == {"name": "op-extra", "messages": 0, "consumers": [hosts["a"]]}
    assert "op-extra" in [q["name"] for q in detail(stack, people, hosts["a"])["queues"]]
    assert "op-extra" not in [q["name"] for q in detail(stack, people, hosts["b"])["queues"]]
    resp = act(stack, people, hosts["a"], {"action": "cancel_consumer", "queue": "op-extra"})
    assert resp.status_code == 200 and "op-extra" in resp.json()["reply"]["ok"]
    gone = queue(stack, people, "op-extra")
    assert gone is None or gone["consumers"] == []
    for name, target in (("add_consumer", hosts["a"]), ("cancel_consumer", hosts["a"])):
        entry = audit_entries(stack, people, name)[0]
        assert entry["target"] == target and entry["params"] == {"queue": "op-extra"}


def test_priority_messages_counted(settings):
    app = make_celery(settings)
    for priority in (0, 5, 9):
        app.send_task("nobody.runs.this", queue="op-waiting", priority=priority)
    assert control.queue_lengths(app, ["op-waiting", "op-absent"]) == {"op-waiting": 3, "op-absent": 0}


def test_pool_restart_and_refusals(stack, people, hosts):
    resp = act(stack, people, hosts["a"], {"action": "pool_restart"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["reply"] == {"ok": "reload started"}
    # The worker runs without --autoscale: it refuses, and the refusal is audited.
    resp = act(stack, people, hosts["a"], {"action": "autoscale", "max": 4, "min": 1})
    assert resp.status_code == 409 and "Autoscale not enabled" in resp.json()["error"]["message"]
    assert audit_entries(stack, people, "autoscale")[0]["result"].startswith("refused: ")
    assert audit_entries(stack, people, "pool_restart")[0]["result"] == "ok: reload started"


def test_autoscale(stack, people, hosts):
    resp = act(stack, people, hosts["b"], {"action": "autoscale", "max": 3, "min": 2})
    assert resp.status_code == 200, resp.text
    assert resp.json()["reply"] == {"ok": "autoscale now max=3 min=2"}
    wait_for(lambda: len(detail(stack, people, hosts["b"])["pool"]["processes"]) == 2, 15,
             interval=0.5, what="the new minimum of processes")
    # An autoscaled pool is not grown by hand: the worker says so.
    resp = act(stack, people, hosts["b"], {"action": "pool_grow", "n": 1})
    assert resp.status_code == 409 and "autoscale" in resp.json()["error"]["message"]
    entry = audit_entries(stack, people, "autoscale")[0]
    assert (entry["target"], entry["params"], entry["result"]) == (
        hosts["b"], {"max": 3, "min": 2}, "ok: autoscale now max=3 min=2")


BAD_ACTIONS = [
    {"action": "explode"}, {}, {"action": "pool_grow"}, {"action": "pool_grow", "n": 0},
    {"action": "pool_grow", "n": "1"}, {"action": "pool_grow", "n": True},
    {"action": "pool_shrink", "n": 10_000}, {"action": "autoscale", "max": 2, "min": 3},
    {"action": "autoscale", "max": 2}, {"action": "add_consumer", "queue": "has space"},
    {"action": "add_consumer"}, {"action": "cancel_consumer", "queue": ""},
    {"action": "shutdown", "force": True},
]


def test_bad_input_refused(stack, people, hosts):
    for body in BAD_ACTIONS:
        resp = act(stack, people, hosts["a"], body)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid", (body, resp.text)
    resp = requests.post(f"{stack}/api/workers/{hosts['a']}/control", data="not json",
                         headers=people["admin"], timeout=10)
    assert resp.status_code == 400
    for body in ({"rate_limit": "10/x"}, {"rate_limit": "abc"}, {"rate_limit": 10}, {"rate_limit": "-1/m"},
                 {"rate": "10/m"}):
        resp = requests.post(f"{stack}/api/task-types/{TASK}/rate_limit", json=body,
                             headers=people["admin"], timeout=20)
        assert resp.status_code == 400, (body, resp.text)
    for body in ({}, {"soft": -1}, {"hard": "5"}, {"soft": 10, "hard": 5}, {"soft": 1, "other": 2}):
        resp = requests.post(f"{stack}/api/task-types/{TASK}/time_limit", json=body,
                             headers=people["admin"], timeout=20)
        assert resp.status_code == 400, (body, resp.text)
    resp = requests.post(f"{stack}/api/task-types/no.such.task/rate_limit", json={"rate_limit": "1/s"},
                         headers=people["admin"], timeout=20)
    assert resp.status_code == 400 and "no.such.task" in resp.json()["error"]["message"]


def test_limits_per_task_type(stack, people, hosts):
    url = f"{stack}/api/task-types/{TASK}"
    try:
        resp = requests.post(f"{url}/rate_limit", json={"rate_limit": "10/m"}, headers=people["admin"], timeout=20)
        assert resp.status_code == 200, resp.text
        replies = resp.json()["replies"]
        assert resp.json()["ok"] is True and {hosts["a"], hosts["b"]} <= set(replies)
        assert all("ok" in r for r in replies.values()), replies
        resp = requests.post(f"{url}/time_limit", json={"soft": 50, "hard": 60}, headers=people["admin"], timeout=20)
        assert resp.status_code == 200 and {hosts["a"], hosts["b"]} <= set(resp.json()["replies"])
        entry = audit_entries(stack, people, "rate_limit")[0]
        assert (entry["target"], entry["params"]) == (TASK, {"rate_limit": "10/m"})
        assert entry["result"].startswith("ok on ")
        assert audit_entries(stack, people, "time_limit")[0]["params"] == {"soft": 50.0, "hard": 60.0}
    finally:
        requests.post(f"{url}/rate_limit", json={"rate_limit": None}, headers=people["admin"], timeout=20)
        requests.post(f"{url}/time_limit", json={"soft": None, "hard": None}, headers=people["admin"], timeout=20)


def test_viewer_refused_on_each_action(stack, people, hosts):
    before = len(get(stack, "/api/audit?limit=500", people=people).json()["entries"])
    bodies = [{"action": "shutdown"}, {"action": "pool_restart"}, {"action": "pool_grow", "n": 1},
              {"action": "pool_shrink", "n": 1}, {"action": "autoscale", "max": 2, "min": 1},
              {"action": "add_consumer", "queue": "q"}, {"action": "cancel_consumer", "queue": "q"}]
    for body in bodies:
        resp = act(stack, people, hosts["a"], body, who="viewer")
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden", body
    for path, body in (("rate_limit", {"rate_limit": "1/s"}), ("time_limit", {"soft": 1})):
        resp = requests.post(f"{stack}/api/task-types/{TASK}/{path}", json=body, headers=people["viewer"],
                             timeout=10)
        assert resp.status_code == 403
    # ...and a viewer reads everything.
    assert get(stack, "/api/queues", people=people).status_code == 200
    assert len(get(stack, "/api/audit?limit=500", people=people).json()["entries"]) == before


def test_shutdown_one_worker(stack, people, hosts, procs):
    resp = act(stack, people, hosts["b"], {"action": "shutdown"})
    assert resp.status_code == 200 and resp.json() == {"ok": True, "reply": {"ok": "shutdown requested"}}
    proc = next(p for p in procs.procs if p.name == "opb")
    wait_for(lambda: not proc.alive(), 20, what="opb to exit")
    assert audit_entries(stack, people, "shutdown")[0]["target"] == hosts["b"]
    assert detail(stack, people, hosts["a"])["online"] is True  # the other one still answers
    # Known but gone: 504 timeout, with what the bridge last stored.
    wait_for(lambda: not next(w for w in get(stack, "/api/workers", people=people).json()["workers"]
                              if w["hostname"] == hosts["b"])["online"], 15, what="opb offline")
    resp = get(stack, f"/api/workers/{hosts['b']}", people=people)
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
    assert resp.json()["worker"]["online"] is False
    assert act(stack, people, hosts["b"], {"action": "pool_grow", "n": 1}).status_code == 504


def test_queue_lengths_on_rabbitmq(settings):
    """The same passive queue_declare on AMQP: the server's count; an absent queue is 0
    (the error closes the channel there, and the next queue gets a fresh one)."""
    if not answers(5672):
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    app = make_celery(settings.with_overrides(broker_url=AMQP_URL))
    name = f"op-amqp-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        Queue(name, channel=conn.default_channel, auto_delete=False).declare()
        try:
            for _ in range(2):
                app.send_task("nobody.runs.this", queue=name, connection=conn)
            wait_for(lambda: control.queue_lengths(app, [name])[name] == 2, 5, what="the count")
            assert control.queue_lengths(app, [f"{name}-absent", name]) == {f"{name}-absent": 0, name: 2}
        finally:
            conn.default_channel.queue_delete(name)
