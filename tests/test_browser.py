"""The job page in headless Chromium: upload, watch the bar move, click Cancel."""
from __future__ import annotations

import os

import pytest

from tests.support import CHROMIUM, make_image

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium")]



def login(page, url: str, name: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")


def test_upload_watch_and_cancel(stack, users, browser, tmp_path):
    user = users("browser-user", password="browser-pass-1")
    paths = [str(make_image(tmp_path / f"b{i}.png", i, (2400, 1800))) for i in range(30)]
    page = browser.new_page()
    requests_seen: list[str] = []
    page.on("request", lambda r: requests_seen.append(r.url))
    login(page, stack, user["name"], "browser-pass-1")
    page.set_input_files("[data-testid=images]", paths)
    page.click("[data-testid=submit]")
    page.wait_for_url(f"{stack}/jobs/*")
    page.wait_for_selector("[data-testid=conn]:has-text('live')")
    # The bar moves without a reload.
    page.wait_for_function("document.querySelector('[data-testid=bar]').value > 0", timeout=60_000)
    first = page.eval_on_selector("[data-testid=bar]", "b => b.value")
    assert 0 < first < 100
    page.wait_for_function("document.querySelectorAll('[data-testid=captions] li').length > 0")
    page.click("[data-testid=cancel]")
    page.wait_for_function("document.querySelector('[data-testid=state]').textContent.trim() === 'REVOKED'",
                           timeout=30_000)
    ending = page.inner_text("[data-testid=ending]")
    assert "Cancelled after" in ending
    assert page.is_disabled("[data-testid=cancel]")
    shown = page.eval_on_selector_all("[data-testid=captions] li", "els => els.length")
    assert 1 <= shown < 30
    # Everything the page loaded came from the app itself (no CDN).
    assert all(u.startswith(stack) or u.startswith("ws://127.0.0.1") for u in requests_seen), \
        [u for u in requests_seen if not u.startswith(stack)]
    page.close()


def test_reload_shows_the_ending(stack, users, browser, tmp_path):
    user = users("browser-user", password="browser-pass-1")
    page = browser.new_page()
    login(page, stack, user["name"], "browser-pass-1")
    page.set_input_files("[data-testid=images]", [str(make_image(tmp_path / "one.png", 2))])
    page.click("[data-testid=submit]")
    page.wait_for_url(f"{stack}/jobs/*")
    page.wait_for_function("document.querySelector('[data-testid=state]').textContent.trim() === 'SUCCESS'",
                           timeout=30_000)
    page.reload()
    page.wait_for_selector("[data-testid=ending]:has-text('Done')")
    assert page.inner_text("[data-testid=state]").strip() == "SUCCESS"
    assert page.eval_on_selector_all("[data-testid=captions] li", "els => els.length") == 1
    page.close()
