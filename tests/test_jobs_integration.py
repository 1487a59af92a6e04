"""A real worker on a real Redis: caption jobs, their events, cancel, bad images."""
from __future__ import annotations

import io
import time

import pytest

from tasks import events
from tasks.cancel import redis_client, set_cancel_flag
from tests.support import EventLog, wait_for


def submit(client, user, paths):
    files = [(open(p, "rb"), p.name) for p in paths]
    resp = client.post("/api/jobs", headers=user["headers"], data={"images": files},
                       content_type="multipart/form-data")
    return resp


def job_state(client, user, task_id):
    return client.get(f"/api/jobs/{task_id}", headers=user["headers"]).get_json()


def wait_state(client, user, task_id, states, timeout=60):
    return wait_for(lambda: (s := job_state(client, user, task_id))["state"] in states and s,
                    timeout, what=f"{task_id} in {states}")


@pytest.fixture(scope="module")
def event_log(settings, worker):
    log = EventLog(settings).start()
    yield log
    log.stop()


def test_job_sends_exact_event_sequence(client, users, images, worker, event_log):
    alice = users("alice")
    resp = submit(client, alice, images(3))
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["state"] == "PENDING" and body["total"] == 3
    task_id = body["task_id"]
    snap = wait_state(client, alice, task_id, {"SUCCESS"})
    assert snap["progress_percent"] == 100 and snap["current"] == 3

    assert event_log.job_sequence(task_id) == [
        events.TASK_RECEIVED, events.TASK_STARTED,
        events.TASK_PROGRESS, events.TASK_PROGRESS, events.TASK_PROGRESS, events.TASK_SUCCEEDED]
    progress = [e for e in event_log.for_task(task_id) if e["type"] == events.TASK_PROGRESS]
    assert [p["current"] for p in progress] == [1, 2, 3]
    for p in progress:
        assert p["total"] == 3
        assert p["image"].startswith("img") and p["caption"]
        assert "step" in p and "eta" in p
    assert progress[-1]["eta"] == 0

    caps = client.get(f"/api/jobs/{task_id}/captions", headers=alice["headers"]).get_json()
    assert [c["image"] for c in caps["captions"]] == ["img0.png", "img1.png", "img2.png"]
    assert all(c["caption"] and c["captioner"] == "basic" for c in caps["captions"])
    assert "red" in caps["captions"][0]["caption"]

    csv = client.get(f"/api/jobs/{task_id}/captions?format=csv", headers=alice["headers"])
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    lines = csv.get_data(as_text=True).strip().splitlines()
    assert lines[0] == "image,caption,captioner,error,status,edited_by" and len(lines) == 4


def test_corrupt_image_fails_only_that_image(client, users, images, worker, tmp_path):
    bob = users("bob")
    good = images(2)
    # A JPEG whose header decodes (so the upload check passes) but whose data
    # is cut off: the worker cannot read it.
    buf = io.BytesIO()
    from PIL import Image
    Image.effect_noise((256, 256), 60).convert("RGB").save(buf, "JPEG", quality=95)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    resp = submit(client, bob, [good[0], broken, good[1]])
    assert resp.status_code == 202, resp.get_json()
    task_id = resp.get_json()["task_id"]
    snap = wait_state(client, bob, task_id, {"SUCCESS", "FAILURE"})
    assert snap["state"] == "SUCCESS"
    caps = client.get(f"/api/jobs/{task_id}/captions", headers=bob["headers"]).get_json()["captions"]
    by_name = {c["image"]: c for c in caps}
    assert by_name["broken.jpg"]["caption"] is None and "cannot read" in by_name["broken.jpg"]["error"]
    assert by_name["img0.png"]["caption"] and by_name["img1.png"]["caption"]


def test_cooperative_cancel_keeps_partial_captions(client, users, images, worker, settings,
                                                   event_log):
    carol = users("carol")
    paths = images(40, size=(1600, 1200))
    resp = submit(client, carol, paths)
    task_id = resp.get_json()["task_id"]
    wait_for(lambda: any(e["type"] == events.TASK_PROGRESS for e in event_log.for_task(task_id)),
             60, what="first progress")
    set_cancel_flag(redis_client(settings.redis_url), task_id, "carol")
    snap = wait_state(client, carol, task_id, {"REVOKED", "SUCCESS"})
    assert snap["state"] == "REVOKED"
    cancelled = wait_for(lambda: [e for e in event_log.for_task(task_id)
                                  if e["type"] == events.TASK_CANCELLED], 10, what="task-cancelled")
    assert 1 <= cancelled[0]["completed"] < 40 and cancelled[0]["total"] == 40
    caps = client.get(f"/api/jobs/{task_id}/captions", headers=carol["headers"]).get_json()["captions"]
    assert len([c for c in caps if c["status"] != "pending"]) == cancelled[0]["completed"]
    assert len(caps) == 40  # every image is listed, the ones never reached as pending
    from tasks.app import make_celery
    assert make_celery(settings).AsyncResult(task_id).state == "REVOKED"
    # Nothing after the stop: no success event for this task.
    time.sleep(0.5)
    assert not any(e["type"] == events.TASK_SUCCEEDED for e in event_log.for_task(task_id))
