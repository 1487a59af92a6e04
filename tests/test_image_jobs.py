"""Caption jobs on real workers with hostile and real images (issues 10 and 16, items 1-3).

Each stack here is private (its own Redis, database, worker and web
process): one worker runs ``local`` (the default) with its real models,
the other runs ``basic`` with a tiny ``IMAGE_TIME_BUDGET`` so that an image
over budget can be shown to fail alone.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import requests
from PIL import Image
from sqlalchemy import select

from tests import crafted
from tests.support import Stack, make_image, wait_for

FIXTURES = Path(__file__).parent / "fixtures"
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
pytestmark = pytest.mark.slow


def _stack(base: Path, env: dict[str, str], **overrides) -> Stack:
    stack = Stack(base, **overrides)
    stack.env.update(env)
    return stack.start(workers=1, bridges=0)


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory):
    stack = _stack(tmp_path_factory.mktemp("local"), {"CAPTIONER": "local"}, captioner="local")
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory):
    stack = _stack(tmp_path_factory.mktemp("budget"), {"CAPTIONER": "basic", "IMAGE_TIME_BUDGET": "0.25"},
                   captioner="basic", image_time_budget=0.25)
    yield stack
    stack.close()


def run_job(stack: Stack, user: dict, paths: list[Path], timeout: float = 120) -> tuple[str, dict, list]:
    """Submit over HTTP, wait for the ending; the task id, the job snapshot and its captions."""
    task_id = stack.submit(user, paths)
    url = f"{stack.web.url}/api/jobs/{task_id}"

    def ended():
        snap = requests.get(url, headers=user["headers"], timeout=10).json()
        return snap if snap.get("state") in TERMINAL else None
    snap = wait_for(ended, timeout, interval=0.2, what=f"job {task_id} to end")
    caps = requests.get(f"{url}/captions", headers=user["headers"], timeout=10).json()["captions"]
    return task_id, snap, caps


def result_of(stack: Stack, task_id: str) -> dict:
    from tasks.app import make_celery

    return make_celery(stack.settings).AsyncResult(task_id).get(timeout=30)


def good(tmp_path: Path, n: int) -> list[Path]:
    return [make_image(tmp_path / f"good{i}.png", i) for i in range(n)]


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buf, "JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


# -- local, end to end -------------------------------------------------------------------------
def test_local_worker_captions_a_cat_and_a_screenshot_offline(local_stack, tmp_path):
    from tasks.db import session_scope
    from tasks.models import Caption, Job
    from tasks.models import Image as ImageRow

    user = local_stack.user("ada")
    task_id, snap, caps = run_job(local_stack, user, [FIXTURES / "chelsea.png", FIXTURES / "screenshot.png"])
    assert snap["state"] == "SUCCESS", snap
    by_name = {c["image"]: c for c in caps}
    assert "cat" in by_name["chelsea.png"]["caption"]
    assert "The garden is closed on Monday for repairs." in by_name["screenshot.png"]["caption"]
    assert {c["captioner"] for c in caps} == {"local"}
    with session_scope(local_stack.settings.database_url) as db:
        job = db.scalar(select(Job).where(Job.task_id == task_id))
        rows = {img.name: (img, img.caption) for img in db.scalars(
            select(ImageRow).where(ImageRow.job_id == job.id))}
        cat_img, cat = rows["chelsea.png"]
        assert (cat_img.width, cat_img.height) == (451, 300)  # stored at upload
        assert cat.captioner == "local" and cat.status == "generated"
        assert "objects" in cat.stages.split(",") and cat.generated == cat.text
        assert cat.updated_at >= cat.created_at > 0
        shot = rows["screenshot.png"][1]
        assert shot.stages.split(",")[0] == "ocr"
        assert isinstance(db.get(Caption, shot.id).updated_at, float)
    assert result_of(local_stack, task_id)["failed_images"] == []


def test_truncated_image_fails_alone_and_is_listed(local_stack, tmp_path):
    """[good, crafted, good] ends SUCCESS with 2 captions and 1 failed image."""
    from tasks.db import session_scope
    from tasks.models import Image as ImageRow

    user = local_stack.user("bea")
    g = good(tmp_path, 2)
    task_id, snap, caps = run_job(local_stack, user, [g[0], truncated_jpeg(tmp_path / "cut.jpg"), g[1]])
    assert snap["state"] == "SUCCESS", snap
    made = [c for c in caps if c["caption"]]
    assert [c["image"] for c in made] == ["good0.png", "good1.png"]
    failed = result_of(local_stack, task_id)["failed_images"]
    assert [f["image"] for f in failed] == ["cut.jpg"] and "truncated" in failed[0]["error"]
    with session_scope(local_stack.settings.database_url) as db:
        row = db.scalar(select(ImageRow).where(ImageRow.name == "cut.jpg"))
        assert row.caption.status == "failed" and row.caption.text is None and row.caption.error


@pytest.mark.parametrize("name,make", [
    ("xmp.png", crafted.xmp_bomb),                      # item 1: the regex that took cubic time
    ("bad-ifd.tiff", crafted.tiff_with_bad_second_ifd),  # item 3: TypeError from n_frames
    ("frames.gif", crafted.many_frames_gif),             # 10 000 frames
])
def test_crafted_image_never_fails_the_job(local_stack, tmp_path, name, make):
    user = local_stack.user(f"cleo-{name.split('.')[0]}")
    g = good(tmp_path, 2)
    task_id, snap, caps = run_job(local_stack, user, [g[0], make(tmp_path / name), g[1]], timeout=90)
    assert snap["state"] == "SUCCESS", snap
    by_name = {c["image"]: c for c in caps}
    assert by_name["good0.png"]["caption"] and by_name["good1.png"]["caption"]
    crafted_row = by_name[name]
    assert crafted_row["caption"] or crafted_row.get("error")
    result = result_of(local_stack, task_id)
    assert result["count"] + result["failed"] == 3


# -- the time budget ---------------------------------------------------------------------------
def test_an_image_over_the_time_budget_fails_alone(budget_stack, tmp_path):
    user = budget_stack.user("dora")
    g = good(tmp_path, 2)
    task_id, snap, caps = run_job(budget_stack, user, [g[0], crafted.slow_png(tmp_path / "slow.png"), g[1]])
    assert snap["state"] == "SUCCESS", snap
    assert [c["image"] for c in caps if c["caption"]] == ["good0.png", "good1.png"]
    failed = result_of(budget_stack, task_id)["failed_images"]
    assert [f["image"] for f in failed] == ["slow.png"]
    assert "IMAGE_TIME_BUDGET (0.25 s)" in failed[0]["error"]
