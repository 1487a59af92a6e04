"""One worker's page (/admin/workers/<hostname>) in headless Chromium, against a real worker
of this module's own: fields, queues, registered tasks, control buttons with their replies,
shutdown behind a confirmation; a viewer's read-only page; no axe violation."""
from __future__ import annotations

import os

import pytest
import requests

from tests.a11y import check
from tests.support import CHROMIUM, wait_for

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason="headless Chromium not installed at /usr/bin/chromium")]
PASSWORD = "worker-page-pass"


@pytest.fixture(scope="module")
def opw(stack, procs, env, settings):
    proc = procs.start_worker("opw", env, settings, concurrency=1)
    yield proc
    proc.stop()


def login(browser, stack, name: str, target: str):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.errors = []
    page.urls = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("request", lambda r: page.urls.append(r.url))
    page.goto(f"{stack}/login?next={target}")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack}{target}")
    return page


def reply_text(page, action: str) -> str:
    sel = f"[data-testid=reply][data-action={action}]"
    page.wait_for_function("sel => { const r = document.querySelector(sel);"
                           " return r && !r.textContent.includes('sent…'); }", arg=sel, timeout=15_000)
    return page.inner_text(sel)


def test_the_worker_page_as_an_admin(stack, users, browser, opw, tmp_path):
    boss = users("page-admin", admin=True, password=PASSWORD)
    page = login(browser, stack, "page-admin", "/admin")
    try:
        link = page.locator("[data-testid^='worker-row-opw@'] [data-testid=worker-link]")
        link.wait_for(timeout=20_000)
        hostname = link.inner_text()
        link.click()
        page.wait_for_url("**/admin/workers/**")
        page.wait_for_selector("[data-testid=worker-status][data-online='1']", timeout=15_000)
        assert page.inner_text("[data-testid=worker-hostname]") == hostname
        page.wait_for_function("document.querySelector('[data-field=pool]').textContent.includes('prefork')")
        assert page.inner_text("[data-field=max_concurrency]") == "1"
        assert page.inner_text("[data-field=processes]").startswith("1 (")
        assert page.inner_text("[data-field=loadavg]").count("/") == 2
        assert "skald.caption_job" in page.inner_text("[data-testid=registered]")
        assert page.locator("[data-testid=queue-row-celery]").count() == 1
        assert "broker_url" in page.text_content("[data-testid=worker-conf]")
        check(page, "the worker page")

        page.click("[data-testid=action-pool_grow]")
        assert "pool will grow" in reply_text(page, "pool_grow")
        page.wait_for_function("document.querySelector('[data-field=processes]').textContent.startsWith('2 (')",
                               timeout=20_000)
        page.fill("[data-testid=consumer-queue]", "browser-q")
        page.click("[data-testid=action-add_consumer]")
        assert "browser-q" in reply_text(page, "add_consumer")
        page.wait_for_selector("[data-testid=queue-row-browser-q]", timeout=10_000)
        page.click("[data-testid=cancel-consumer-browser-q]")
        assert "no longer consuming" in reply_text(page, "cancel_consumer")
        page.wait_for_selector("[data-testid=queue-row-browser-q]", state="detached", timeout=10_000)
        page.click("[data-testid=action-autoscale]")  # refused: the worker runs without --autoscale
        page.wait_for_selector("[data-testid=reply][data-action=autoscale][data-ok='0']", timeout=15_000)
        assert "Autoscale not enabled" in reply_text(page, "autoscale")
        # Limits per task type, from the same page (and back to none).
        page.select_option("[data-testid=limit-task]", "skald.caption_job")
        page.fill("[data-testid=limit-rate]", "10/m")
        page.click("[data-testid=set-rate_limit]")
        assert "new rate limit set successfully" in reply_text(page, "rate_limit")
        page.fill("[data-testid=limit-rate]", "10/x")
        page.click("[data-testid=set-rate_limit]")
        page.wait_for_selector("[data-testid=reply][data-action=rate_limit][data-ok='0']", timeout=10_000)
        page.fill("[data-testid=limit-rate]", "")
        page.click("[data-testid=set-rate_limit]")
        page.wait_for_function("document.querySelector('[data-testid=reply][data-action=rate_limit]')"
                               ".textContent.includes('disabled')", timeout=15_000)
        page.fill("[data-testid=limit-soft]", "50")
        page.fill("[data-testid=limit-hard]", "60")
        page.click("[data-testid=set-time_limit]")
        assert "time limits set successfully" in reply_text(page, "time_limit")
        check(page, "the worker page with replies")
        page.screenshot(path=str(tmp_path / "worker.png"), full_page=True)

        # Shutdown asks first; "keep" leaves the worker running.
        page.click("[data-testid=action-shutdown]")
        assert page.is_visible("[data-testid=shutdown-confirm]")
        assert page.evaluate("document.activeElement.id") == "shutdown-question"
        check(page, "the shutdown confirmation")
        page.click("[data-testid=shutdown-no]")
        assert page.is_hidden("[data-testid=shutdown-confirm]")
        assert page.locator("[data-testid=reply][data-action=shutdown]").count() == 0
        assert opw.alive()
        page.click("[data-testid=action-shutdown]")
        page.click("[data-testid=shutdown-yes]")
        assert "shutdown requested" in reply_text(page, "shutdown")
        wait_for(lambda: not opw.alive(), 20, what="the worker to exit")
        assert all(u.startswith(stack) or u.startswith("ws://127.0.0.1") for u in page.urls), page.urls
        assert page.errors == []
    finally:
        page.close()
        for kind, body in (("time_limit", {"soft": None, "hard": None}), ("rate_limit", {"rate_limit": None})):
            requests.post(f"{stack}/api/task-types/skald.caption_job/{kind}", json=body,
                          headers=boss["headers"], timeout=20)


def test_the_worker_page_is_read_only_for_a_viewer(stack, users, browser, worker):
    users("page-viewer", role="viewer", password=PASSWORD)
    page = login(browser, stack, "page-viewer", "/admin")
    try:
        link = page.locator("[data-testid^='worker-row-w1@'] [data-testid=worker-link]")
        link.wait_for(timeout=20_000)
        link.click()
        page.wait_for_selector("[data-testid=worker-status][data-online='1']", timeout=15_000)
        assert page.is_visible("[data-testid=read-only]")
        assert page.locator("[data-testid=worker-controls]").count() == 0
        assert page.locator("[data-testid^=cancel-consumer-]").count() == 0
        page.wait_for_selector("[data-testid=queue-row-celery]")
        check(page, "the worker page of a viewer")
        assert page.errors == []
    finally:
        page.close()
