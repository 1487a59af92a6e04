"""Acting on tasks over real HTTP against the real worker, bridge and web (PROTOCOL.md,
"Operating the cluster"): apply, retry, terminate, resuming a caption job, the explorer
over what the bridge recorded, roles and the audit log; the task page in Chromium.

Plain Celery tasks come from the example application's worker (examples/watch_app,
queue ``example``), which registers ``example.count``.
"""
from __future__ import annotations

import os
import time

import pytest
import requests

from tests.a11y import check
from tests.support import CHROMIUM, submit_job, wait_for
from tests.test_watch_any_task import start_example_worker

PASSWORD = "task-admin-pass-1"


@pytest.fixture(scope="module")
def cluster(stack, procs, env):
    worker = start_example_worker(procs, env, name="explorer-ex")
    yield stack
    worker.stop()  # the example queue's consumer is test_watch_any_task's own worker there


@pytest.fixture(scope="module")
def people(users):
    return {"admin": users("tasks-admin", admin=True, password=PASSWORD),
            "viewer": users("tasks-viewer", role="viewer"), "user": users("tasks-user")}


def api(url: str, who: dict, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{url}{path}", headers=who["headers"], timeout=30, **kw)


def detail(url: str, who: dict, task_id: str) -> dict | None:
    resp = api(url, who, "get", f"/api/tasks/{task_id}")
    return resp.json()["task"] if resp.status_code == 200 else None


def wait_state(url: str, who: dict, task_id: str, states: tuple[str, ...], timeout: float = 30) -> dict:
    found: dict = {}

    def ready() -> bool:
        found["task"] = detail(url, who, task_id)
        return bool(found["task"]) and found["task"]["state"] in states
    wait_for(ready, timeout, what=f"{task_id} in {states}")
    return found["task"]


def apply(url: str, who: dict, **body) -> requests.Response:
    return api(url, who, "post", "/api/tasks/apply", json=body)


def audit_actions(url: str, admin: dict) -> list[dict]:
    return api(url, admin, "get", "/api/audit?limit=200").json()["entries"]


def test_apply_runs_a_registered_task_with_its_detail_kept(cluster, people):
    admin = people["admin"]
    resp = apply(cluster, admin, name="example.count", kwargs={"total": 2, "delay": 0.0137})
    assert resp.status_code == 202, resp.text
    task_id = resp.json()["task_id"]
    task = wait_state(cluster, admin, task_id, ("SUCCESS",))
    assert task["name"] == "example.count" and task["kwargs"] == "{'total': 2, 'delay': 0.0137}"
    assert task["args"] == "[]" and task["queue"] == "example" and task["retries"] == 0
    assert task["received"] and task["started"] and task["succeeded"] and "counted" in task["result"]
    assert task["root_id"] == task_id
    found = api(cluster, people["viewer"], "get", "/api/tasks?q=0.0137&name=example.count").json()
    assert [t["task_id"] for t in found["tasks"]] == [task_id]  # found by a kwarg value
    assert any(e["action"] == "apply" and e["result"] == task_id for e in audit_actions(cluster, admin))


@pytest.mark.parametrize("body", [
    {"name": "no.such.task"}, {"name": ""}, {"name": "example.count", "args": {"a": 1}},
    {"name": "example.count", "kwargs": [1]}, {"name": "example.count", "countdown": -1},
    {"name": "example.count", "queue": 5}, {"name": "example.count", "bogus": 1},
])
def test_apply_refuses_bad_requests(cluster, people, body):
    resp = apply(cluster, people["admin"], **body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid", resp.text


def test_retry_sends_the_same_task_again_and_it_succeeds(cluster, people):
    admin = people["admin"]
    old = apply(cluster, admin, name="example.count", args=[1, 0.01]).json()["task_id"]
    wait_state(cluster, admin, old, ("SUCCESS",))
    resp = api(cluster, admin, "post", f"/api/tasks/{old}/retry")
    assert resp.status_code == 202, resp.text
    new = resp.json()
    assert new["retry_of"] == old and new["task_id"] != old
    task = wait_state(cluster, admin, new["task_id"], ("SUCCESS",))
    assert task["name"] == "example.count" and task["args"] == "[1, 0.01]" and task["queue"] == "example"
    assert any(e["action"] == "retry" and e["target"] == old and e["result"] == new["task_id"]
               for e in audit_actions(cluster, admin))


def test_terminate_ends_a_running_task_within_seconds(cluster, people):
    admin = people["admin"]
    task_id = apply(cluster, admin, name="example.count", kwargs={"total": 300, "delay": 0.1}).json()["task_id"]
    wait_state(cluster, admin, task_id, ("STARTED", "PROGRESS"))
    bad = api(cluster, admin, "post", f"/api/tasks/{task_id}/terminate", json={"signal": "SIGBOGUS"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"
    began = time.monotonic()
    resp = api(cluster, admin, "post", f"/api/tasks/{task_id}/terminate", json={"signal": "SIGTERM"})
    assert resp.status_code == 202, resp.text
    task = wait_state(cluster, admin, task_id, ("REVOKED", "FAILURE"), timeout=10)
    assert task["state"] == "REVOKED" and time.monotonic() - began < 8
    again = api(cluster, admin, "post", f"/api/tasks/{task_id}/terminate")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert any(e["action"] == "terminate" and e["target"] == task_id
               and e["params"] == {"signal": "SIGTERM"} for e in audit_actions(cluster, admin))


def test_a_caption_job_is_retried_over_the_images_not_captioned(cluster, people, images, settings):
    from sqlalchemy import delete, select

    from tasks.db import session_scope
    from tasks.models import Caption, Image, Job

    owner, admin = people["user"], people["admin"]
    job = submit_job(cluster, owner, images(3))
    wait_state(cluster, admin, job["task_id"], ("SUCCESS",))
    resp = api(cluster, owner, "post", f"/api/jobs/{job['task_id']}/resume")
    assert resp.status_code == 409  # every image has its caption
    with session_scope(settings.database_url) as db:  # as if two images were never captioned
        ids = db.scalars(select(Image.id).where(Image.job_id == job["job_id"])
                         .order_by(Image.position)).all()
        db.execute(delete(Caption).where(Caption.image_id.in_(ids[1:])))
        db.commit()
    viewer = api(cluster, people["viewer"], "post", f"/api/jobs/{job['task_id']}/resume")
    assert viewer.status_code == 403
    resp = api(cluster, owner, "post", f"/api/jobs/{job['task_id']}/resume")
    assert resp.status_code == 202, resp.text
    resumed = resp.json()
    assert resumed["retry_of"] == job["task_id"] and resumed["total"] == 2
    wait_state(cluster, admin, resumed["task_id"], ("SUCCESS",))
    with session_scope(settings.database_url) as db:
        row = db.scalar(select(Job).where(Job.task_id == resumed["task_id"]))
        assert row.owner_id == owner["id"] and row.retry_of == job["task_id"]
    # The admin's retry of the same (ended) job: a new job over what is still missing.
    with session_scope(settings.database_url) as db:
        db.execute(delete(Caption).where(Caption.image_id == ids[0]))
        db.commit()
    retried = api(cluster, admin, "post", f"/api/tasks/{job['task_id']}/retry").json()
    assert retried["retry_of"] == job["task_id"] and retried["total"] == 1
    page = requests.get(f"{cluster}/jobs/{job['task_id']}", headers=owner["headers"], timeout=10).text
    assert "Caption the rest" in page
    entries = audit_actions(cluster, admin)
    assert any(e["action"] == "resume" and e["user"] == owner["name"] for e in entries)


def test_a_viewer_is_refused_every_action(cluster, people):
    viewer, admin = people["viewer"], people["admin"]
    task_id = apply(cluster, admin, name="example.count", args=[1, 0.01]).json()["task_id"]
    wait_state(cluster, admin, task_id, ("SUCCESS",))
    for method, path, body in [("post", f"/api/tasks/{task_id}/terminate", {}),
                               ("post", f"/api/tasks/{task_id}/retry", None),
                               ("post", "/api/tasks/apply", {"name": "example.count"})]:
        for who in (viewer, people["user"]):
            resp = api(cluster, who, method, path, json=body)
            assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden", path
    assert detail(cluster, viewer, task_id)["state"] == "SUCCESS"  # viewers may read


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no Chromium")
def test_the_task_page_shows_the_detail_and_terminates(cluster, people, browser):
    admin = people["admin"]
    task_id = apply(cluster, admin, name="example.count", kwargs={"total": 300, "delay": 0.1013}).json()["task_id"]
    wait_state(cluster, admin, task_id, ("STARTED", "PROGRESS"))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{cluster}/login?next=/admin/tasks/{task_id}")
    page.fill("input[name=username]", admin["name"])
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{cluster}/admin/tasks/{task_id}")
    page.goto(f"{cluster}/admin")  # the list finds it by a kwarg value, and links to its page
    page.fill("[data-testid=filter-search]", "0.1013")
    page.wait_for_selector(f"[data-testid=task-row-{task_id}]:visible", timeout=10_000)
    # the newest task is already in the unfiltered list: wait for the search's answer
    page.wait_for_function("() => [...document.querySelectorAll('#tasks tr')]"
                           ".filter(r => r.offsetParent !== null).length === 1", timeout=10_000)
    assert page.locator("#tasks tr:visible").count() == 1
    page.click(f"[data-testid=task-row-{task_id}]")  # the row as the search drew it
    page.wait_for_selector(f"[data-testid=detail-page][href='/admin/tasks/{task_id}']")
    page.click("[data-testid=detail-page]")
    page.wait_for_url(f"{cluster}/admin/tasks/{task_id}")
    assert page.inner_text("[data-testid=task-name]") == "example.count"
    assert "'total': 300" in page.inner_text("[data-testid=task-kwargs]")
    check(page, "the task page")
    page.select_option("[data-testid=terminate-signal]", "SIGKILL")
    page.click("[data-testid=task-terminate]")
    page.wait_for_selector("[data-testid=task-state][data-state=REVOKED]", timeout=10_000)
    page.click("[data-testid=task-retry]")
    page.wait_for_selector("[data-testid=retry-link]", timeout=10_000)
    check(page, "the task page after the actions")
    assert not errors
    page.close()


# -- web tier: an app on a Redis database of its own, no worker ------------------------------------
@pytest.fixture(scope="module")
def iso_client(redis_proc, settings):
    import redis as redis_lib

    from web import create_app

    url = f"redis://127.0.0.1:{redis_proc.port}/6"
    client = redis_lib.Redis.from_url(url)
    client.flushdb()
    app = create_app(settings.with_overrides(redis_url=url, broker_url=url))
    yield app.test_client(), client
    client.flushdb()


def test_kept_reprs_become_json_arguments_only_when_whole():
    from web.taskactions import literal

    assert literal("[1, 'a', {'b': None}]", list) == [1, "a", {"b": None}]
    assert literal("(1,)", list) == [1] and literal("", dict) == {}
    assert literal("{'k': [1.5, True]}", dict) == {"k": [1.5, True]}
    for cut in ("[1, 2, ...]", "[1, 2", "(datetime.datetime(2024, 1, 1),)", "{'a': b'x'}", "7"):
        assert literal(cut, list) is None and literal(cut, dict) is None


def test_retry_is_a_conflict_when_the_arguments_were_not_kept(iso_client, users):
    import uuid

    import protocol
    from bridge.records import RecordWriter

    client, rc = iso_client
    admin = users("tasks-admin", admin=True, password=PASSWORD)
    task_id = str(uuid.uuid4())
    snap = protocol.snapshot(task_id, state="FAILURE", updated_at=time.time())
    record = {"snapshot": snap, "ending": protocol.ending(snap), "detail": {
        "name": "reports.build", "args": "['" + "x" * 50 + "', ...]", "kwargs": "{}"}}
    pipe = rc.pipeline()
    RecordWriter().put(pipe, record)
    pipe.execute()
    resp = client.post(f"/api/tasks/{task_id}/retry", headers=admin["headers"])
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "conflict"
    resp = client.post(f"/api/tasks/{uuid.uuid4()}/retry", headers=admin["headers"])
    assert resp.status_code == 404
    resp = client.post(f"/api/tasks/{task_id}/terminate", headers=admin["headers"])
    assert resp.status_code == 409  # it ended
    for bad in ("state=NOPE", "sort=colour", "order=up", "cursor=zzz", "received_after=soon",
                "received_before=nan", "worker=" + "w" * 201):
        resp = client.get(f"/api/tasks?{bad}", headers=admin["headers"])
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid", bad
    listed = client.get("/api/tasks?q=xxxxxxxxxx&sort=updated", headers=admin["headers"]).get_json()
    assert [t["task_id"] for t in listed["tasks"]] == [task_id] and listed["next_cursor"] is None


def test_terminate_ends_a_running_caption_job_and_the_rest_can_be_captioned(cluster, people, tmp_path):
    from tests.crafted import slow_png

    owner, admin = people["user"], people["admin"]
    slow = slow_png(tmp_path / "slow.png")
    job = submit_job(cluster, owner, [slow] * 24)  # a few tenths of a second each
    wait_state(cluster, admin, job["task_id"], ("STARTED", "PROGRESS"))
    began = time.monotonic()
    resp = api(cluster, admin, "post", f"/api/tasks/{job['task_id']}/terminate")
    assert resp.status_code == 202, resp.text
    task = wait_state(cluster, admin, job["task_id"], ("REVOKED", "FAILURE", "SUCCESS"), timeout=10)
    assert task["state"] == "REVOKED" and time.monotonic() - began < 8
    resumed = api(cluster, owner, "post", f"/api/jobs/{job['task_id']}/resume")
    assert resumed.status_code == 202, resumed.text
    assert 0 < resumed.json()["total"] <= 24
    api(cluster, owner, "post", f"/api/jobs/{resumed.json()['task_id']}/cancel")  # not needed further
