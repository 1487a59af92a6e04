"""The pages in headless Chromium: upload, watch, review (edit, approve, copy), cancel.

Every page and state visited is checked with axe-core in the light and dark
themes (tests/a11y.py); the keyboard-only test presses keys and nothing else.
"""
from __future__ import annotations

import os

import pytest
import requests

from tests.a11y import check
from tests.support import CHROMIUM, make_image, submit_job, wait_for

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium")]
PASSWORD = "browser-pass-1"


def login(page, url: str, name: str, password: str = PASSWORD) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")


@pytest.fixture()
def page(stack, users, browser):
    users("browser-user", password=PASSWORD)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack)
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    login(pg, stack, "browser-user")
    yield pg
    context.close()


def state_is(page, raw: str, timeout: float = 60_000) -> None:
    page.wait_for_selector(f"[data-testid=state][data-state={raw}]", timeout=timeout)


def focused_testid(page) -> str | None:
    return page.evaluate("document.activeElement && document.activeElement.getAttribute('data-testid')")


def test_upload_watch_and_cancel(stack, page, tmp_path):
    paths = [str(make_image(tmp_path / f"b{i}.png", i, (2400, 1800))) for i in range(30)]
    requests_seen: list[str] = []
    page.on("request", lambda r: requests_seen.append(r.url))
    check(page, "the New job page")
    page.set_input_files("[data-testid=images]", paths)
    assert page.inner_text("[data-testid=selection]").startswith("30 files chosen")
    check(page, "the New job page with 30 files chosen")
    page.click("[data-testid=submit]")
    page.wait_for_url(f"{stack}/jobs/*")
    page.wait_for_selector("[data-testid=conn]:has-text('live')")
    page.wait_for_function("document.querySelector('[data-testid=bar]').value > 0", timeout=60_000)
    first = page.eval_on_selector("[data-testid=bar]", "b => b.value")
    assert 0 < first < 100
    assert page.inner_text("[data-testid=state]") == "Working"
    assert " of 30 captioned" in page.get_attribute("[data-testid=bar]", "aria-valuetext")
    page.wait_for_selector("[data-testid=caption-row][data-status=generated]")
    check(page, "a running job")
    page.click("[data-testid=cancel]")
    state_is(page, "REVOKED", 30_000)
    assert page.inner_text("[data-testid=state]") == "Cancelled"
    assert "Cancelled after" in page.inner_text("[data-testid=ending]")
    assert page.get_attribute("[data-testid=cancel]", "aria-disabled") == "true"
    made = page.locator("[data-testid=caption-row]:not([data-status=pending])").count()
    assert 1 <= made < 30
    assert page.locator("[data-testid=caption-row]").count() == 30  # every image is listed
    check(page, "a cancelled job")
    assert all(u.startswith(stack) or u.startswith("ws://127.0.0.1") for u in requests_seen), \
        [u for u in requests_seen if not u.startswith(stack)]
    assert page.errors == []


def test_reload_shows_the_ending(stack, page, tmp_path):
    page.set_input_files("[data-testid=images]", [str(make_image(tmp_path / "one.png", 2))])
    page.click("[data-testid=submit]")
    page.wait_for_url(f"{stack}/jobs/*")
    state_is(page, "SUCCESS", 30_000)
    page.reload()
    page.wait_for_selector("[data-testid=ending]:has-text('Done')")
    assert page.inner_text("[data-testid=state]") == "Done"
    assert page.locator("[data-testid=caption-row]").count() == 1
    assert page.errors == []


def test_twenty_photos_reviewed_and_copied(stack, page, users, tmp_path):
    """The issue's "done when": upload 20 photos, watch them arrive with thumbnails,
    fix two captions, approve all, copy them."""
    paths = [str(make_image(tmp_path / f"photo{i:02}.png", i, (1600, 1200))) for i in range(20)]
    page.set_input_files("[data-testid=images]", paths)
    page.click("[data-testid=submit]")
    page.wait_for_url(f"{stack}/jobs/*")
    task_id = page.get_attribute("[data-testid=job]", "data-task-id")
    assert page.inner_text("[data-testid=job-title]") == "photo00.png and 19 more images"
    # Captions arrive by push while the job runs, each beside its thumbnail.
    page.wait_for_selector("[data-testid=caption-row][data-status=generated]", timeout=60_000)
    state_is(page, "SUCCESS")
    page.wait_for_function("[...document.querySelectorAll('[data-testid=caption-row]')]"
                           ".every(r => r.dataset.status === 'generated')")
    for i in range(20):  # thumbnails load lazily, as they scroll into view
        page.locator("[data-testid=thumb]").nth(i).scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('[data-testid=thumb]')]"
                           ".every(i => i.complete && i.naturalWidth > 0 && i.naturalWidth <= 320)")
    assert page.locator("[data-testid=caption-row]").count() == 20
    assert page.inner_text("[data-testid=ending]").startswith("Done: 20 captions")
    check(page, "a finished job under review")
    # A second reviewer (another tab) sees every change at once.
    other = page.context.new_page()
    other.goto(page.url)
    other.wait_for_selector("[data-testid=ending]:not([hidden])")
    other.wait_for_function("document.querySelectorAll('[data-testid=caption-row]').length === 20")
    # Fix two captions.
    fixes = {3: "Four friends on a yellow sofa, laughing.", 11: "A black cat asleep in a sunbeam."}
    for index, text in fixes.items():
        row = page.locator("[data-testid=caption-row]").nth(index)
        row.locator("[data-testid=edit]").click()
        check(page, "a caption editor") if index == 3 else None
        area = row.locator("[data-testid=edit-text]")
        area.fill(text)
        assert row.locator("[data-testid=counter]").inner_text() == f"{len(text)} of 1500 characters"
        row.locator("[data-testid=save]").click()
        page.wait_for_selector(f"[data-testid=caption-row]:nth-child({index + 1})[data-status=edited]")
        assert row.locator("[data-testid=caption-text]").inner_text() == text
    for index, text in fixes.items():
        other.wait_for_function(
            f"document.querySelectorAll('[data-testid=caption-row]')[{index}]"
            f".querySelector('[data-testid=caption-text]').textContent === {text!r}")
    # Approve all, then copy all.
    page.click("[data-testid=approve-all]")
    page.wait_for_function("[...document.querySelectorAll('[data-testid=caption-row]')]"
                           ".every(r => r.dataset.status === 'approved')")
    other.wait_for_function("[...document.querySelectorAll('[data-testid=caption-row]')]"
                            ".every(r => r.dataset.status === 'approved')")
    page.click("[data-testid=copy-all]")
    page.wait_for_selector("[data-testid=live-status]:has-text('Copied 20 captions')")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.count("\n\n") == 19 and fixes[3] in copied and fixes[11] in copied
    page.locator("[data-testid=caption-row]").nth(0).locator("[data-testid=copy]").click()
    first = requests.get(f"{stack}/api/jobs/{task_id}/captions",
                         headers=users("browser-user")["headers"]).json()["captions"]
    wait_for(lambda: page.evaluate("navigator.clipboard.readText()") == first[0]["caption"], 5,
             what="one caption copied")
    assert [c["status"] for c in first] == ["approved"] * 20
    assert first[3]["caption"] == fixes[3] and first[3]["edited_by"] == "browser-user"
    check(page, "an approved job")
    assert page.errors == []
    other.close()


def test_keyboard_only(stack, page, tmp_path):
    """Upload, watch, edit, approve and cancel with keys alone."""
    paths = [str(make_image(tmp_path / f"k{i}.png", i, (2400, 1800))) for i in range(25)]
    page.focus("[data-testid=images]")
    page.set_input_files("[data-testid=images]", paths)  # the one thing a file dialog does
    tab_to(page, "submit")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{stack}/jobs/*")
    page.wait_for_selector("[data-testid=caption-row][data-status=generated]", timeout=60_000)
    # Edit the first caption made.
    tab_to(page, "edit", within="[data-testid=caption-row][data-status=generated]")
    page.keyboard.press("Enter")
    assert focused_testid(page) == "edit-text"
    page.keyboard.press("Control+A")
    page.keyboard.type("Typed with keys alone.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("[data-testid=caption-row][data-status=edited]")
    focus_on(page, "edit")  # back where the user was, once the save is answered
    # Escape discards an edit and returns focus.
    page.keyboard.press("Enter")
    page.keyboard.type(" not kept")
    page.keyboard.press("Escape")
    assert focused_testid(page) == "edit"
    edited = page.locator("[data-testid=caption-row][data-status=edited]")
    assert edited.locator("[data-testid=caption-text]").inner_text() == "Typed with keys alone."
    # Approve it.
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert focused_testid(page) == "approve"
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=caption-row][data-status=approved]")
    assert focused_testid(page) == "approve"
    check(page, "a running job after keyboard edits")
    # Cancel: focus stays on the button while it is inert, then moves to the ending.
    page.focus("[data-testid=approve-all]")
    tab_to(page, "cancel", backwards=True)
    page.keyboard.press("Enter")
    assert page.get_attribute("[data-testid=cancel]", "aria-disabled") == "true"
    state_is(page, "REVOKED", 30_000)
    page.wait_for_function("document.activeElement && document.activeElement.id === 'ending'")
    assert page.errors == []


def focus_on(page, testid: str) -> None:
    page.wait_for_function("id => document.activeElement && document.activeElement.getAttribute('data-testid') === id",
                           arg=testid, timeout=10_000)


def tab_to(page, testid: str, within: str | None = None, backwards: bool = False, limit: int = 200) -> None:
    """Press Tab (or Shift+Tab) until the element with ``testid`` (inside ``within``) has focus."""
    target = f"{within} [data-testid={testid}]" if within else f"[data-testid={testid}]"
    for _ in range(limit):
        if page.evaluate("sel => { const el = document.querySelector(sel);"
                         " return !!el && el === document.activeElement; }", target):
            return
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
    raise AssertionError(f"Tab never reached {target}")


def test_files_are_checked_before_sending(stack, page, tmp_path):
    good = [str(make_image(tmp_path / f"g{i}.png", i)) for i in range(2)]
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG" + b"\0" * (21 * 1024 * 1024))
    page.set_input_files("[data-testid=images]", [*good, str(text), str(huge)])
    problems = page.locator("[data-testid=file-problem]")
    assert problems.count() == 2
    assert "not an image" in problems.nth(0).inner_text() and "larger than 20 MB" in problems.nth(1).inner_text()
    check(page, "the New job page with files that cannot be sent")
    page.click("[data-testid=submit]")
    assert page.is_visible("[data-testid=upload-error]")
    assert focused_testid(page) == "upload-error"
    page.locator("[data-testid=file-item][data-name='notes.txt'] [data-testid=file-remove]").click()
    assert focused_testid(page) == "file-remove"
    page.click("[data-testid=remove-problems]")
    assert page.locator("[data-testid=file-item]").count() == 2
    page.click("[data-testid=submit]")
    page.wait_for_url(f"{stack}/jobs/*")


def test_maintenance_disables_the_form_live(stack, page, users):
    boss = users("browser-boss", admin=True)
    try:
        requests.post(f"{stack}/api/maintenance", json={"active": True, "message": "new disks"},
                      headers=boss["headers"], timeout=10)
        page.wait_for_selector("[data-testid=maintenance-notice]:not([hidden])", timeout=10_000)
        assert page.is_disabled("[data-testid=images]")
        assert "new disks" in page.inner_text("[data-testid=maintenance-notice]")
        check(page, "the New job page in maintenance")
        fresh = page.context.new_page()
        fresh.goto(f"{stack}/login")
        assert "new disks" in fresh.inner_text("[data-testid=login-maintenance]")
        check(fresh, "the login page in maintenance")
        fresh.close()
    finally:
        requests.post(f"{stack}/api/maintenance", json={"active": False}, headers=boss["headers"], timeout=10)
    page.wait_for_selector("[data-testid=maintenance-notice]", state="hidden", timeout=10_000)
    assert page.is_enabled("[data-testid=images]")


def test_recent_jobs_and_error_pages(stack, page, users, tmp_path):
    user = users("browser-user")
    paths = [make_image(tmp_path / f"r{i}.png", i) for i in range(2)]
    for _ in range(21):
        submit_job(stack, user, paths)
    marked = tmp_path / "harbour-at-dusk.png"
    make_image(marked, 3)
    submit_job(stack, user, [marked])
    page.reload()
    page.wait_for_selector("[data-testid=job-item]")
    assert page.locator("[data-testid=job-item]").count() == 20
    assert page.locator("[data-testid=job-item] a").first.inner_text() == "harbour-at-dusk.png"
    page.click("[data-testid=jobs-more]")
    page.wait_for_function("document.querySelectorAll('[data-testid=job-item]').length > 20")
    assert page.evaluate("document.activeElement.closest('[data-testid=job-item]') !== null")
    check(page, "the New job page with recent jobs")
    page.fill("[data-testid=jobs-search]", "HARBOUR")
    page.wait_for_function("document.querySelectorAll('[data-testid=job-item]').length === 1")
    page.goto(f"{stack}/no/such/page")
    assert page.is_visible("[data-testid=error-page]") and page.is_visible("nav[aria-label=Main]")
    check(page, "the 404 page")
    page.goto(f"{stack}/admin")
    assert page.get_attribute("[data-testid=error-page]", "data-status") == "403"
    check(page, "the 403 page")


def test_waiting_for_a_worker_is_said_and_updated(browser, tmp_path):
    """No worker consumes the queue: the page says so, and moves on when one starts."""
    from tests.support import Stack

    stack = Stack(tmp_path).start(workers=0)
    try:
        from tasks.db import session_scope
        from web.auth import create_user

        with session_scope(stack.settings.database_url) as db:
            _, token = create_user(db, "lonely", password=PASSWORD)
        user = {"headers": {"Authorization": f"Bearer {token}"}}
        task_id = submit_job(stack.web.url, user, [make_image(tmp_path / "w.png", 1)])["task_id"]
        page = browser.new_page()
        login(page, stack.web.url, "lonely")
        page.goto(f"{stack.web.url}/jobs/{task_id}")
        page.wait_for_selector("[data-testid=waiting]:has-text('Waiting for a worker: none is online')")
        assert page.inner_text("[data-testid=state]") == "Queued"
        check(page, "a job waiting for a worker")
        stack.procs.start_worker("late", stack.env, stack.settings, concurrency=1)
        state_is(page, "SUCCESS", 60_000)
        assert page.is_hidden("[data-testid=waiting]")
        page.close()
    finally:
        stack.close()
