"""The operator page (/admin) in headless Chromium: rows change state by push, cancel works."""
from __future__ import annotations

import os

import pytest
import requests

from tests.a11y import check
from tests.support import CHROMIUM, make_image

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason="headless Chromium not installed at /usr/bin/chromium")]
PASSWORD = "admin-pass-1"

# Records every state each task row's state cell shows, from before the row exists.
RECORD_STATES = """
() => {
  window.__states = {};
  const tbody = document.getElementById('tasks');
  const note = () => {
    for (const row of tbody.querySelectorAll('tr[data-task-id]')) {
      const id = row.getAttribute('data-task-id');
      const state = row.querySelector('[data-testid=task-state]').textContent.trim();
      const seen = window.__states[id] || (window.__states[id] = []);
      if (seen[seen.length - 1] !== state) seen.push(state);
    }
  };
  new MutationObserver(note).observe(tbody, {subtree: true, childList: true, characterData: true});
}
"""



@pytest.fixture()
def admin_page(stack, users, browser):
    users("browser-admin", admin=True, password=PASSWORD)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.errors = []
    page.urls = []
    page.navigations = 0
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("request", lambda r: page.urls.append(r.url))
    page.goto(f"{stack}/login?next=/admin")
    page.fill("input[name=username]", "browser-admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack}/admin")
    page.on("framenavigated", lambda frame: setattr(page, "navigations", page.navigations + 1))
    page.wait_for_selector("[data-testid=conn][data-conn=live]", timeout=15_000)
    yield page
    page.close()


def submit(url: str, user: dict, paths) -> str:
    files = [("images", (p.name, open(p, "rb"), "image/png")) for p in paths]
    resp = requests.post(f"{url}/api/jobs", headers=user["headers"], files=files, timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()["task_id"]


def state_of(page, task_id: str) -> str:
    return page.inner_text(f"[data-testid='task-row-{task_id}'] [data-testid=task-state]").strip()


def test_task_row_changes_state_without_reload(stack, users, admin_page, tmp_path):
    page = admin_page
    page.evaluate(RECORD_STATES)
    paths = [make_image(tmp_path / f"a{i}.png", i, (1600, 1200)) for i in range(8)]
    task_id = submit(stack, users("alice"), paths)
    row = f"[data-testid='task-row-{task_id}']"
    page.wait_for_selector(row, timeout=15_000)  # arrived by push
    page.wait_for_function(
        f"document.querySelector(\"{row} [data-testid=task-state]\").textContent.trim() === 'SUCCESS'",
        timeout=60_000)
    seen = page.evaluate(f"window.__states['{task_id}']")
    assert seen[-1] == "SUCCESS" and len(seen) >= 2, seen
    assert set(seen[:-1]) <= {"PENDING", "RECEIVED", "STARTED", "PROGRESS"}, seen
    assert page.navigations == 0, "the page was reloaded"
    # Workers and tiles came by push too.
    page.wait_for_selector("[data-testid^='worker-row-w1@'] [data-testid=worker-status]:text('online')")
    assert int(page.inner_text("[data-testid=metric-workers_online]")) >= 1
    page.wait_for_function(  # the next metrics tick (at most 2 s) counts the ending
        "Number(document.querySelector('[data-testid=metric-completed_today]').textContent) >= 1",
        timeout=5_000)
    page.wait_for_function(  # the page itself is a watcher (web -> Redis -> bridge -> page)
        "Number(document.querySelector('[data-testid=metric-watchers]').textContent) >= 1",
        timeout=10_000)
    # The task's detail.
    page.click(row)
    page.wait_for_selector("[data-testid=task-detail]:not([hidden])")
    page.wait_for_function("document.querySelector('[data-testid=detail-message]').textContent === ''")
    assert page.inner_text("[data-testid=detail-state]") == "SUCCESS"
    assert page.inner_text("[data-testid=detail-name]") == "skald.caption_job"
    assert page.inner_text("[data-testid=detail-worker]").startswith("w1@")
    assert page.inner_text("[data-testid=detail-runtime]").endswith(" s")
    assert "8 captions" in page.inner_text("[data-testid=detail-outcome]")
    assert page.get_attribute("[data-testid=task-cancel]", "aria-disabled") == "true"
    # Filters: by state, by name, by id.
    page.select_option("[data-testid=filter-state]", "FAILURE")
    assert page.is_hidden(row)
    page.select_option("[data-testid=filter-state]", "SUCCESS")
    assert page.is_visible(row)
    page.select_option("[data-testid=filter-name]", "skald.caption_job")
    page.fill("[data-testid=filter-search]", task_id[:8])
    assert page.is_visible(row)
    page.fill("[data-testid=filter-search]", "ffffffff-no-such-task")
    assert page.is_hidden(row)
    # Charts drawn with the vendored uPlot; nothing came from another origin.
    assert page.locator("[data-testid=chart-throughput] canvas").count() == 1
    assert all(u.startswith(stack) or u.startswith("ws://127.0.0.1") for u in page.urls), page.urls
    assert page.errors == []
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)


def test_cancel_a_running_task_from_the_page(stack, users, admin_page, tmp_path):
    page = admin_page
    paths = [make_image(tmp_path / f"b{i}.png", i, (2400, 1800)) for i in range(30)]
    task_id = submit(stack, users("alice"), paths)
    row = f"[data-testid='task-row-{task_id}']"
    page.wait_for_selector(row, timeout=15_000)
    page.wait_for_function(
        f"document.querySelector(\"{row} [data-testid=task-state]\").textContent.trim() === 'PROGRESS'",
        timeout=60_000)
    page.click(row)
    page.wait_for_selector("[data-testid=task-cancel]:not([aria-disabled=true])")
    page.click("[data-testid=task-cancel]")
    page.wait_for_function(
        f"document.querySelector(\"{row} [data-testid=task-state]\").textContent.trim() === 'REVOKED'",
        timeout=30_000)
    assert page.inner_text("[data-testid=detail-state]") == "REVOKED"
    assert page.get_attribute("[data-testid=task-cancel]", "aria-disabled") == "true"
    assert page.errors == []


def test_maintenance_from_the_page(stack, users, admin_page):
    page = admin_page
    boss = users("browser-admin", admin=True, password=PASSWORD)
    try:
        page.fill("[data-testid=maintenance-text]", "back in 5 minutes")
        page.fill("[data-testid=maintenance-minutes]", "10")
        page.click("[data-testid=maintenance-on]")
        # Pushed back to this page like to every client: the banner of base.html shows it.
        page.wait_for_selector("[data-testid=maintenance-banner]:not([hidden])", timeout=10_000)
        assert "back in 5 minutes" in page.inner_text("[data-testid=maintenance-banner]")
        assert page.get_attribute("[data-testid=maintenance-state]", "data-active") == "1"
        health = requests.get(f"{stack}/healthz", timeout=5).json()
        assert health["maintenance"] is True
        page.click("[data-testid=maintenance-off]")
        page.wait_for_selector("[data-testid=maintenance-banner]", state="hidden", timeout=10_000)
        assert page.get_attribute("[data-testid=maintenance-state]", "data-active") == "0"
        assert requests.get(f"{stack}/healthz", timeout=5).json()["maintenance"] is False
        assert page.errors == []
    finally:
        requests.post(f"{stack}/api/maintenance", json={"active": False},
                      headers=boss["headers"], timeout=10)


def test_keyboard_and_screen_reader_use(stack, users, admin_page, tmp_path):
    """Rows are buttons with names; the detail takes focus and gives it back; charts have
    a text alternative; scrolled regions take focus; no axe violation, light or dark."""
    page = admin_page
    task_id = submit(stack, users("alice"), [make_image(tmp_path / "k.png", 1)])
    row = f"[data-testid='task-row-{task_id}']"
    page.wait_for_selector(f"{row} [data-testid=task-state][data-state=SUCCESS]", timeout=60_000)
    page.wait_for_function("document.querySelector('[data-testid=summary-throughput]').textContent !== 'No data yet.'",
                           timeout=10_000)
    check(page, "the operator view")
    opener = page.locator(f"{row} [data-testid=task-open]")
    assert opener.evaluate("b => b.tagName") == "BUTTON"
    assert task_id[:8] in opener.inner_text() and "details" in opener.text_content()
    opener.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'detail-heading'")
    page.wait_for_function("document.querySelector('[data-testid=detail-message]').textContent === ''")
    check(page, "the operator view with a task's detail open")
    page.keyboard.press("Escape")
    assert page.is_hidden("[data-testid=task-detail]")
    assert page.evaluate("document.activeElement.getAttribute('data-testid')") == "task-open"
    for wrap in ("workers-wrap", "tasks-wrap"):
        assert page.get_attribute(f"[data-testid={wrap}]", "tabindex") == "0"
    page.click("summary:has-text('Throughput as a table')")
    assert page.locator("[data-testid=table-throughput] tbody tr").count() >= 1
    check(page, "the operator view with a chart's table open")
    assert page.errors == []
