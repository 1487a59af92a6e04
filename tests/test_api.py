"""HTTP API errors and rights (web tier: create_app with a test config, real Redis)."""
from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from tests.support import csrf_token
from web import create_app


def png_bytes(size=(8, 8), colour=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def post_files(client, user, files, **kw):
    data = {"images": [(io.BytesIO(b), name) for name, b in files]}
    return client.post("/api/jobs", headers=user["headers"] if user else {}, data=data,
                       content_type="multipart/form-data", **kw)


def error_of(resp):
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"]


def test_requires_authentication(client):
    for method, path in [("get", "/api/jobs"), ("post", "/api/jobs"),
                         ("get", f"/api/jobs/{uuid.uuid4()}")]:
        resp = getattr(client, method)(path)
        assert resp.status_code == 401 and error_of(resp) == "unauthorized"
    resp = client.get("/api/jobs", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401


def test_submit_returns_pending_job(client, users):
    u = users("api-user")
    resp = post_files(client, u, [("a.png", png_bytes()), ("b.png", png_bytes())])
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["state"] == "PENDING" and body["total"] == 2
    assert uuid.UUID(body["task_id"]) and isinstance(body["job_id"], int)
    listed = client.get("/api/jobs", headers=u["headers"]).get_json()["jobs"]
    assert listed[0]["task_id"] == body["task_id"] and listed[0]["owner"] == "api-user"
    snap = client.get(f"/api/jobs/{body['task_id']}", headers=u["headers"]).get_json()
    assert snap["total"] == 2 and snap["state"] in {"PENDING", "RECEIVED", "STARTED", "PROGRESS", "SUCCESS"}


def test_other_users_job_is_not_found(client, users):
    owner, other = users("owner1"), users("other1")
    task_id = post_files(client, owner, [("a.png", png_bytes())]).get_json()["task_id"]
    for method, path in [("get", f"/api/jobs/{task_id}"), ("get", f"/api/jobs/{task_id}/captions"),
                         ("post", f"/api/jobs/{task_id}/cancel")]:
        resp = getattr(client, method)(path, headers=other["headers"])
        assert resp.status_code == 404 and error_of(resp) == "not_found"
    resp = client.get("/api/jobs", headers=other["headers"])
    assert all(j["task_id"] != task_id for j in resp.get_json()["jobs"])
    admin = users("boss", admin=True)
    assert client.get(f"/api/jobs/{task_id}", headers=admin["headers"]).status_code == 200
    every = client.get("/api/jobs?all=1", headers=admin["headers"]).get_json()["jobs"]
    assert any(j["task_id"] == task_id for j in every)
    assert client.get("/api/jobs?all=1", headers=other["headers"]).status_code == 403


def test_unknown_and_malformed_ids(client, users):
    u = users("api-user")
    for tid in ("not-a-uuid", str(uuid.uuid4()), "../../etc/passwd"):
        assert client.get(f"/api/jobs/{tid}", headers=u["headers"]).status_code == 404


def test_not_an_image_is_refused_and_nothing_stored(client, users, settings):
    u = users("api-user")
    before = set(settings.upload_dir.glob("*")) if settings.upload_dir.exists() else set()
    count = len(client.get("/api/jobs", headers=u["headers"]).get_json()["jobs"])
    resp = post_files(client, u, [("ok.png", png_bytes()), ("evil.png", b"#!/bin/sh\nrm -rf /\n")])
    assert resp.status_code == 415 and error_of(resp) == "unsupported"
    after = set(settings.upload_dir.glob("*")) if settings.upload_dir.exists() else set()
    assert after == before
    assert len(client.get("/api/jobs", headers=u["headers"]).get_json()["jobs"]) == count


def test_no_files_is_invalid(client, users):
    u = users("api-user")
    resp = client.post("/api/jobs", headers=u["headers"], data={},
                       content_type="multipart/form-data")
    assert resp.status_code == 400 and error_of(resp) == "invalid"


def test_filename_is_never_a_path(client, users, settings):
    u = users("api-user")
    resp = post_files(client, u, [("../../../../tmp/pwned.png", png_bytes())])
    assert resp.status_code == 202
    assert not __import__("os").path.exists("/tmp/pwned.png")
    stored = list(settings.upload_dir.glob("*.png"))
    assert stored and all(len(p.stem) == 32 for p in stored)


@pytest.fixture()
def small_app(settings):
    return create_app(settings.with_overrides(max_image_bytes=2000, max_request_bytes=6000,
                                              max_images_per_job=3))


@pytest.fixture()
def strict_app(settings):
    return create_app(settings.with_overrides(uploads_per_minute=2))


def test_size_and_count_limits(small_app, users):
    client = small_app.test_client()
    u = users("limits")
    big = png_bytes((300, 300), (1, 2, 3))
    noisy = io.BytesIO()
    Image.effect_noise((64, 64), 80).convert("RGB").save(noisy, "PNG")
    resp = post_files(client, u, [("big.png", noisy.getvalue())])
    assert resp.status_code == 413 and error_of(resp) == "too_large"
    resp = post_files(client, u, [(f"{i}.png", png_bytes()) for i in range(4)])
    assert resp.status_code == 413 and error_of(resp) == "too_large"
    resp = post_files(client, u, [(f"{i}.png", big) for i in range(40)])
    assert resp.status_code == 413 and error_of(resp) == "too_large"


def test_upload_rate_limit(strict_app, users):
    client = strict_app.test_client()
    u = users("ratey")
    codes = [post_files(client, u, [("a.png", png_bytes())]).status_code for _ in range(3)]
    assert codes[:2] == [202, 202] and codes[2] == 429


def test_captions_format_and_healthz(client, users):
    u = users("api-user")
    task_id = post_files(client, u, [("a.png", png_bytes())]).get_json()["task_id"]
    resp = client.get(f"/api/jobs/{task_id}/captions?format=xml", headers=u["headers"])
    assert resp.status_code == 400 and error_of(resp) == "invalid"
    body = client.get("/healthz").get_json()
    assert body["ok"] is True and body["maintenance"] is False


def test_session_post_needs_csrf(client, users):
    users("sessiony", password="correct horse")
    resp = client.post("/login", data={"username": "sessiony", "password": "correct horse"})
    assert resp.status_code == 400  # no CSRF token
    token = csrf_token(client)
    resp = client.post("/login", data={"username": "sessiony", "password": "correct horse",
                                       "csrf_token": token})
    assert resp.status_code == 302
    assert client.get("/api/jobs").status_code == 200
    # A session-authenticated API POST without the CSRF header is refused.
    resp = client.post("/api/jobs", data={"images": [(io.BytesIO(png_bytes()), "a.png")]},
                       content_type="multipart/form-data")
    assert resp.status_code == 400
    resp = client.post("/api/jobs", data={"images": [(io.BytesIO(png_bytes()), "a.png")]},
                       content_type="multipart/form-data", headers={"X-CSRFToken": token})
    assert resp.status_code == 202


def test_wrong_password(client, users):
    users("pw-user", password="right-password")
    token = csrf_token(client)
    resp = client.post("/login", data={"username": "pw-user", "password": "wrong",
                                       "csrf_token": token})
    assert resp.status_code == 401
    assert client.get("/api/jobs").status_code == 401
