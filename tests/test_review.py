"""Reviewing captions over HTTP and Socket.IO (web tier: create_app, real Redis and SQLite).

Jobs here are written straight into the database as a worker would leave them
(never sent to Celery), so every row's status is known.
"""
from __future__ import annotations

import csv
import io
import json
import time
import uuid

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from tasks.db import session_scope
from tasks.models import AuditEntry, Caption, Image, Job, User
from web import create_app

LONG_SIDE = 320


@pytest.fixture(scope="module")
def review_app(settings):
    return create_app(settings, message_queue=False)


@pytest.fixture()
def http(review_app):
    return review_app.test_client()


def viewer(settings, users) -> dict:
    u = users("review-viewer")
    with session_scope(settings.database_url) as db:
        db.get(User, u["id"]).role = "viewer"
    return u


def make_job(settings, owner: dict, rows: list, *, state: str = "SUCCESS",
             size: tuple[int, int] = (640, 480)) -> tuple[str, list[int]]:
    """A job of len(rows) images; each row is None (pending) or (text, error[, status])."""
    task_id = str(uuid.uuid4())
    upload = settings.upload_dir
    upload.mkdir(parents=True, exist_ok=True)
    with session_scope(settings.database_url) as db:
        job = Job(task_id=task_id, owner_id=owner["id"], state=state, total=len(rows),
                  done=sum(r is not None for r in rows),
                  failed=sum(1 for r in rows if r is not None and r[1] is not None))
        for i, r in enumerate(rows):
            path = upload / f"{uuid.uuid4().hex}.png"
            PILImage.new("RGB", size, (40 * i % 255, 90, 160)).save(path)
            image = Image(position=i, name=f"photo-{i}.png", path=str(path), size=path.stat().st_size)
            if r is not None:
                image.caption = Caption(text=r[0], error=r[1], captioner="basic",
                                        **({"status": r[2]} if len(r) > 2 else {}))
            job.images.append(image)
        db.add(job)
        db.flush()
        ids = [img.id for img in job.images]
    return task_id, ids


def captions_of(http, user, task_id) -> list[dict]:
    resp = http.get(f"/api/jobs/{task_id}/captions", headers=user["headers"])
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["captions"]


def patch(http, user, task_id, image_id, body):
    return http.patch(f"/api/jobs/{task_id}/captions/{image_id}", headers=user["headers"],
                      data=json.dumps(body), content_type="application/json")


def code_of(resp) -> str:
    return resp.get_json()["error"]["code"]


def test_rows_list_every_image_in_upload_order(settings, users, http):
    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [("a red square", None), (None, "cannot identify image"),
                                              None, ("two", None, "approved")], state="PROGRESS")
    rows = captions_of(http, alice, task_id)
    assert [r["image_id"] for r in rows] == ids
    assert [r["image"] for r in rows] == [f"photo-{i}.png" for i in range(4)]
    assert [r["status"] for r in rows] == ["generated", "failed", "pending", "approved"]
    for r in rows:
        assert set(r) >= {"image_id", "image", "caption", "captioner", "status", "error",
                          "edited_by", "updated_at", "thumbnail_url"}
        assert r["thumbnail_url"] == f"/api/jobs/{task_id}/images/{r['image_id']}/thumbnail"
    assert rows[1]["caption"] is None and rows[1]["error"] == "cannot identify image"
    assert rows[2]["caption"] is None and rows[2]["captioner"] is None and rows[2]["error"] is None


def test_edit_then_approve_then_edit_again(settings, users, http):
    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [("a red square", None)])
    resp = patch(http, alice, task_id, ids[0], {"caption": "  A red square on a\r\nwhite wall  "})
    assert resp.status_code == 200
    row = resp.get_json()
    assert row["caption"] == "A red square on a\nwhite wall"
    assert row["status"] == "edited" and row["edited_by"] == "rev-alice"
    with session_scope(settings.database_url) as db:
        cap = db.scalar(select(Caption).where(Caption.image_id == ids[0]))
        assert cap.generated == "a red square"  # the captioner's text is kept
    assert patch(http, alice, task_id, ids[0], {"status": "approved"}).get_json()["status"] == "approved"
    again = patch(http, alice, task_id, ids[0], {"caption": "Changed once more"}).get_json()
    assert again["status"] == "edited"
    both = patch(http, alice, task_id, ids[0], {"caption": "Final words", "status": "approved"}).get_json()
    assert both["status"] == "approved" and both["caption"] == "Final words"
    with session_scope(settings.database_url) as db:
        assert db.scalar(select(Caption.generated).where(Caption.image_id == ids[0])) == "a red square"


@pytest.mark.parametrize("body", [
    {"caption": "x" * 1501}, {"caption": ""}, {"caption": "   \n "}, {"caption": "bell\x07"},
    {"caption": "tab\tinside"}, {"caption": "nul\x00"}, {"caption": "c1\x85inside"}, {"caption": 42},
    {"caption": None}, {"status": "generated"}, {"status": "APPROVED"}, {}, {"caption": "ok", "extra": 1},
    ["caption"], "caption",
])
def test_bad_edits_are_invalid_and_change_nothing(settings, users, http, body):
    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [("kept", None)])
    before = captions_of(http, alice, task_id)
    resp = patch(http, alice, task_id, ids[0], body)
    assert resp.status_code == 400 and code_of(resp) == "invalid", resp.get_data(as_text=True)
    assert captions_of(http, alice, task_id) == before


def test_limits_of_a_good_caption(settings, users, http):
    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [("kept", None)])
    longest = "é" * 1500
    assert patch(http, alice, task_id, ids[0], {"caption": longest}).get_json()["caption"] == longest
    lines = "line one\nline two"
    assert patch(http, alice, task_id, ids[0], {"caption": lines}).get_json()["caption"] == lines


def test_pending_and_uncaptioned_failures_conflict(settings, users, http):
    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [None, (None, "truncated file")], state="PROGRESS")
    resp = patch(http, alice, task_id, ids[0], {"caption": "too early"})
    assert resp.status_code == 409 and code_of(resp) == "conflict"
    resp = patch(http, alice, task_id, ids[1], {"status": "approved"})
    assert resp.status_code == 409 and code_of(resp) == "conflict"
    written = patch(http, alice, task_id, ids[1], {"caption": "A photo of a harbour at dusk"}).get_json()
    assert written["status"] == "edited" and written["error"] == "truncated file"
    assert [r["status"] for r in captions_of(http, alice, task_id)] == ["pending", "edited"]


def test_who_may_read_and_change(settings, users, http):
    alice, mallory, boss = users("rev-alice"), users("rev-mallory"), users("rev-boss", admin=True)
    watcher = viewer(settings, users)
    task_id, ids = make_job(settings, alice, [("one", None), ("two", None)])
    other_task, other_ids = make_job(settings, mallory, [("theirs", None)])
    paths = [("get", f"/api/jobs/{task_id}/captions"), ("get", f"/api/jobs/{task_id}/captions?format=csv"),
             ("patch", f"/api/jobs/{task_id}/captions/{ids[0]}"),
             ("post", f"/api/jobs/{task_id}/captions/approve"),
             ("get", f"/api/jobs/{task_id}/images/{ids[0]}/thumbnail")]
    for method, path in paths:
        resp = getattr(http, method)(path, headers=mallory["headers"], json={"caption": "mine now"})
        assert resp.status_code == 404 and code_of(resp) == "not_found", (method, path)
    assert captions_of(http, watcher, task_id)[0]["caption"] == "one"
    assert http.get(f"/api/jobs/{task_id}/images/{ids[0]}/thumbnail", headers=watcher["headers"]).status_code == 200
    resp = patch(http, watcher, task_id, ids[0], {"caption": "viewer was here"})
    assert resp.status_code == 403 and code_of(resp) == "forbidden"
    resp = http.post(f"/api/jobs/{task_id}/captions/approve", headers=watcher["headers"])
    assert resp.status_code == 403 and code_of(resp) == "forbidden"
    assert patch(http, boss, task_id, ids[0], {"caption": "fixed by an admin"}).get_json()["edited_by"] == "rev-boss"
    # An image of another job, an unknown one, a malformed one: not found.
    for image_id in (other_ids[0], 10 ** 9, "abc", "-1", "1" * 40):
        resp = patch(http, alice, task_id, image_id, {"caption": "x"})
        assert resp.status_code == 404 and code_of(resp) == "not_found", image_id
    assert captions_of(http, mallory, other_task)[0]["caption"] == "theirs"
    assert http.get(f"/api/jobs/{task_id}/captions").status_code == 401


def test_approve_all_approves_generated_and_edited_only(settings, users, http):
    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [("one", None), ("two", None), (None, "broken"), None,
                                              ("three", None, "approved")], state="PROGRESS")
    patch(http, alice, task_id, ids[1], {"caption": "two, edited"})
    resp = http.post(f"/api/jobs/{task_id}/captions/approve", headers=alice["headers"])
    assert resp.status_code == 200 and resp.get_json() == {"approved": 2}
    assert [r["status"] for r in captions_of(http, alice, task_id)] == \
        ["approved", "approved", "failed", "pending", "approved"]
    assert http.post(f"/api/jobs/{task_id}/captions/approve",
                     headers=alice["headers"]).get_json() == {"approved": 0}
    with session_scope(settings.database_url) as db:
        actions = db.scalars(select(AuditEntry.action).where(AuditEntry.target == task_id)).all()
    assert actions == ["captions_approve_all"]


def test_csv_carries_status_and_newest_text(settings, users, http):
    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [("old words", None), (None, "broken"), None])
    patch(http, alice, task_id, ids[0], {"caption": "=HYPERLINK(new words)"})
    resp = http.get(f"/api/jobs/{task_id}/captions?format=csv", headers=alice["headers"])
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    table = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert [r["status"] for r in table] == ["edited", "failed", "pending"]
    assert table[0]["caption"] == "'=HYPERLINK(new words)"  # newest text, formula neutralised
    assert table[0]["edited_by"] == "rev-alice" and table[1]["error"] == "broken"


def test_every_change_is_pushed_to_the_room(review_app, settings, users, http):
    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [("one", None), ("two", None)])
    sock = review_app.extensions["socketio"].test_client(review_app, auth={"token": alice["token"]})
    other = review_app.extensions["socketio"].test_client(review_app, auth={"token": alice["token"]})
    try:
        for client in (sock, other):
            # The job has ended: the join brings its ending, and the client stays for reviews.
            assert client.emit("join_task", {"task_id": task_id}, callback=True)["ok"]
            names = [m["name"] for m in client.get_received()]
            assert names.count("task_completed") == 1
        patch(http, alice, task_id, ids[0], {"caption": "one, better"})
        http.post(f"/api/jobs/{task_id}/captions/approve", headers=alice["headers"])
        for client in (sock, other):
            pushed = [m["args"][0] for m in client.get_received() if m["name"] == "caption_updated"]
            assert [(p["image_id"], p["status"]) for p in pushed] == \
                [(ids[0], "edited"), (ids[0], "approved"), (ids[1], "approved")]
            assert all(p["by"] == "rev-alice" and p["task_id"] == task_id for p in pushed)
            assert pushed[0]["caption"] == "one, better" and "thumbnail_url" in pushed[0]
        # A change that changes nothing is not pushed.
        patch(http, alice, task_id, ids[0], {"status": "approved"})
        assert not [m for m in sock.get_received() if m["name"] == "caption_updated"]
    finally:
        sock.disconnect()
        other.disconnect()


def test_ending_from_the_database_lists_failed_images(review_app, settings, users):
    alice = users("rev-alice")
    task_id, _ = make_job(settings, alice, [("one", None), (None, "cannot identify image file")])
    sock = review_app.extensions["socketio"].test_client(review_app, auth={"token": alice["token"]})
    try:
        sock.emit("join_task", {"task_id": task_id}, callback=True)
        ending = [m["args"][0] for m in sock.get_received() if m["name"] == "task_completed"][0]
        assert ending["results"]["failed_images"] == [{"image": "photo-1.png",
                                                       "error": "cannot identify image file"}]
        assert ending["results"]["count"] == 1 and ending["failed"] == 1
    finally:
        sock.disconnect()


def test_thumbnail_is_small_private_and_made_once(settings, users, http):
    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [("wide", None)], size=(2400, 1800))
    url = f"/api/jobs/{task_id}/images/{ids[0]}/thumbnail"
    first = http.get(url, headers=alice["headers"])
    assert first.status_code == 200 and first.mimetype in ("image/jpeg", "image/webp")
    assert "private" in first.headers["Cache-Control"]
    with PILImage.open(io.BytesIO(first.data)) as img:
        assert max(img.size) <= LONG_SIDE and img.size == (320, 240)
    with session_scope(settings.database_url) as db:
        image = db.get(Image, ids[0])
        stored, original = image.thumbnail, image.path
        assert (image.width, image.height) == (2400, 1800)
    assert stored and stored != original
    second = http.get(url, headers=alice["headers"])
    assert second.data == first.data
    with session_scope(settings.database_url) as db:
        assert db.get(Image, ids[0]).thumbnail == stored  # not made again
    assert first.data != open(original, "rb").read()


def test_thumbnail_of_an_unreadable_or_huge_image(settings, users, http, monkeypatch):
    from web import thumbnails

    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [(None, "broken"), ("big", None)], size=(400, 300))
    with session_scope(settings.database_url) as db:
        open(db.get(Image, ids[0]).path, "wb").write(b"not an image at all")
    resp = http.get(f"/api/jobs/{task_id}/images/{ids[0]}/thumbnail", headers=alice["headers"])
    assert resp.status_code == 415 and code_of(resp) == "unsupported"
    monkeypatch.setattr(thumbnails, "MAX_PIXELS", 400 * 300 - 1)
    resp = http.get(f"/api/jobs/{task_id}/images/{ids[1]}/thumbnail", headers=alice["headers"])
    assert resp.status_code == 415 and "too large" in resp.get_json()["error"]["message"]


def test_snapshot_carries_failed_and_waiting(settings, users, http):
    from web.jobs import waiting

    alice = users("rev-alice")
    done, _ = make_job(settings, alice, [("one", None), (None, "broken")])
    snap = http.get(f"/api/jobs/{done}", headers=alice["headers"]).get_json()
    assert snap["failed"] == 1 and snap["waiting"] is None
    queued, _ = make_job(settings, alice, [None], state="PENDING")
    assert http.get(f"/api/jobs/{queued}", headers=alice["headers"]).get_json()["waiting"] in ("queued", "no_worker")
    assert waiting("celery", "PENDING", []) == "no_worker"
    assert waiting("celery", "PENDING", [{"hostname": "w", "online": False}]) == "no_worker"
    assert waiting("celery", "PENDING", [{"hostname": "w", "online": True}]) == "queued"
    assert waiting("celery", "PENDING", [{"hostname": "w", "online": True, "queues": ["gpu"]}]) == "no_worker"
    assert waiting("gpu", "PENDING", [{"hostname": "w", "online": True, "queues": ["gpu"]}]) == "queued"
    assert waiting("celery", "STARTED", []) is None


def test_recent_jobs_are_named_paged_and_searchable(settings, users, http):
    pager = users(f"rev-pager-{uuid.uuid4().hex[:6]}")
    made = [make_job(settings, pager, [("x", None)] * (i + 1))[0] for i in range(5)]
    seen, cursor = [], None
    while True:
        query = "/api/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = http.get(query, headers=pager["headers"]).get_json()
        seen += [j["task_id"] for j in body["jobs"]]
        assert all(j["first_image"] == "photo-0.png" and j["created_at"] for j in body["jobs"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]
    found = http.get("/api/jobs?q=PHOTO-4", headers=pager["headers"]).get_json()["jobs"]
    assert [j["task_id"] for j in found] == [made[4]]
    assert http.get("/api/jobs?q=100%25_", headers=pager["headers"]).get_json()["jobs"] == []
    assert http.get("/api/jobs?cursor=abc", headers=pager["headers"]).status_code == 400


def test_error_pages_are_skald_pages(settings, users, review_app, http):
    from tests.support import csrf_token

    html = {"Accept": "text/html"}
    resp = http.get("/no/such/page", headers=html)
    assert resp.status_code == 404 and 'data-testid="error-page"' in resp.get_data(as_text=True)
    assert 'aria-label="Main"' in resp.get_data(as_text=True)  # the site's navigation
    assert http.get("/api/no/such").get_json()["error"]["code"] == "not_found"
    users("rev-plain", password="plain-pass-1")
    http.post("/login", data={"username": "rev-plain", "password": "plain-pass-1",
                              "csrf_token": csrf_token(http)})
    resp = http.get("/admin", headers=html)
    assert resp.status_code == 403 and "Not allowed" in resp.get_data(as_text=True)
    resp = http.get(f"/jobs/{uuid.uuid4()}", headers=html)
    assert resp.status_code == 404 and "Not found" in resp.get_data(as_text=True)

    broken = create_app(settings, message_queue=False)

    @broken.get("/boom")
    def boom():
        raise RuntimeError("a bug")
    resp = broken.test_client().get("/boom", headers=html)
    assert resp.status_code == 500 and "Something went wrong" in resp.get_data(as_text=True)


def test_maintenance_shows_on_login_and_disables_the_upload_form(settings, users, http, review_app):
    from tests.support import csrf_token
    from web.maintenance import set_maintenance

    redis = review_app.extensions["skald"].redis
    users("rev-maint", password="maint-pass-1")
    try:
        set_maintenance(redis, True, "moving to a bigger disk", time.time() + 600)
        login = http.get("/login").get_data(as_text=True)
        assert "moving to a bigger disk" in login and 'data-testid="login-maintenance"' in login
        http.post("/login", data={"username": "rev-maint", "password": "maint-pass-1",
                                  "csrf_token": csrf_token(http)})
        page = http.get("/").get_data(as_text=True)
        assert 'id="upload-fields" class="plain" disabled' in page and "moving to a bigger disk" in page
    finally:
        set_maintenance(redis, False)
    assert 'id="upload-fields" class="plain" >' in http.get("/").get_data(as_text=True)


def test_fuzzed_edits_never_5xx(settings, users, review_app):
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st

    alice = users("rev-alice")
    task_id, ids = make_job(settings, alice, [("fuzzed", None), None])
    http = review_app.test_client()
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                               lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                               max_leaves=8)
    bodies = st.dictionaries(st.sampled_from(["caption", "status", "other"]), json_values, max_size=3) | json_values

    @hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies, which=st.sampled_from([str(ids[0]), str(ids[1]), "0", "x", "9" * 30]))
    def run(body, which):
        resp = http.patch(f"/api/jobs/{task_id}/captions/{which}", headers=alice["headers"],
                          data=json.dumps(body), content_type="application/json")
        assert resp.status_code in (200, 400, 404, 409), resp.get_data(as_text=True)
        if resp.status_code != 200:
            assert set(resp.get_json()["error"]) == {"code", "message"}
    run()
