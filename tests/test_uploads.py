"""Upload limits on pixels (issue 16, item 2) and the sizes stored with each image (web tier)."""
from __future__ import annotations

import io

from PIL import Image
from sqlalchemy import select

from tests import crafted


def post(client, user, files):
    return client.post("/api/jobs", headers=user["headers"], content_type="multipart/form-data",
                       data={"images": [(io.BytesIO(data), name) for name, data in files]})


def png(size, mode="RGB", colour=0) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


def stored_files(settings) -> set:
    return set(settings.upload_dir.glob("*")) if settings.upload_dir.exists() else set()


def test_a_decompression_bomb_is_refused_naming_the_limit(client, users, settings, tmp_path):
    user = users("uploader-bomb")
    bomb = crafted.pixel_bomb(tmp_path / "bomb.png").read_bytes()  # 13 000 x 13 000, ~20 KB
    assert len(bomb) < 100_000
    before = stored_files(settings)
    resp = post(client, user, [("ok.png", png((64, 48))), ("bomb.png", bomb)])
    assert resp.status_code == 413
    error = resp.get_json()["error"]
    assert error["code"] == "too_large"
    assert "bomb.png" in error["message"] and "50,000,000 pixels per image" in error["message"]
    assert stored_files(settings) == before  # nothing stored, no job


def test_far_past_pillows_own_guard_is_too_large_not_unsupported(client, users, tmp_path):
    user = users("uploader-huge")
    huge = crafted.pixel_bomb(tmp_path / "huge.png", side=20_000).read_bytes()  # 400 Mpx
    resp = post(client, user, [("huge.png", huge)])
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] == "too_large"
    assert "pixels per image" in resp.get_json()["error"]["message"]


def test_pixels_of_one_job_are_capped(client, users, settings):
    user = users("uploader-many")
    each = png((7000, 7000), mode="1")  # 49 Mpx in a few KB: allowed alone
    count = settings.max_job_pixels // (7000 * 7000) + 1  # one more than the job may hold
    resp = post(client, user, [(f"p{i}.png", each) for i in range(count)])
    assert resp.status_code == 413
    message = resp.get_json()["error"]["message"]
    assert f"{settings.max_job_pixels:,} pixels together" in message and f"p{count - 1}.png" in message
    ok = post(client, user, [(f"p{i}.png", each) for i in range(count - 1)])
    assert ok.status_code == 202, ok.get_json()
    from tasks.cancel import redis_client, set_cancel_flag

    # Up to the limit is accepted; no worker needs to spend time on it.
    set_cancel_flag(redis_client(settings.redis_url), ok.get_json()["task_id"], user["name"])


def test_width_and_height_are_stored_at_upload(client, users, settings):
    from tasks.db import session_scope
    from tasks.models import Job

    user = users("uploader-sizes")
    resp = post(client, user, [("wide.png", png((120, 40))), ("tall.png", png((30, 90)))])
    assert resp.status_code == 202
    with session_scope(settings.database_url) as db:
        job = db.scalar(select(Job).where(Job.task_id == resp.get_json()["task_id"]))
        sizes = [(i.name, i.width, i.height) for i in job.images]
    assert sizes == [("wide.png", 120, 40), ("tall.png", 30, 90)]


def test_a_crafted_tiff_is_accepted_or_refused_never_a_500(client, users, tmp_path):
    user = users("uploader-tiff")
    data = crafted.tiff_with_bad_second_ifd(tmp_path / "bad.tiff").read_bytes()
    resp = post(client, user, [("bad.tiff", data)])
    assert resp.status_code in (202, 415), resp.get_data(as_text=True)
