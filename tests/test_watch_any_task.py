"""Watching tasks of another application through Skald, with real processes: the example
app (examples/watch_app: its own Flask process, its own Celery worker on the same broker)
beside Skald's worker, bridge and web; python-socketio watchers holding only a watch token.

The celery-progress comparisons call celery-progress's own ``Progress(AsyncResult(id))
.get_info()`` (what its Django view returns, minus Django) on the same result backend at
the same moment as Skald's ``GET /api/tasks/<id>/progress`` and compare every field it
answers, the ``progress`` object field by field.
"""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import requests
from celery_progress.backend import Progress

import skald_watch_token as helper
from devstack import free_port
from tests.support import ROOT, Stack, Watcher, wait_for, wait_http
from tests.test_watch_tokens import same_as_celery_progress

SECRET = helper.derive_secret("test-secret")  # Skald's, derived from its SECRET_KEY


class TokenWatcher(Watcher):
    """A python-socketio client that connects with only a watch token."""

    def __init__(self, url: str, watch_token: str) -> None:
        super().__init__(url)
        self.watch_token = watch_token

    def connect(self) -> TokenWatcher:
        self.sio.connect(self.url, auth={"watch_token": self.watch_token}, transports=["websocket"],
                         wait_timeout=10)
        return self

    def join(self, task_id: str, token: str | None = None) -> dict:
        return self.call("join_task", {"task_id": task_id, "watch_token": token or self.watch_token})


def start_example_worker(procs, env: dict, name: str = "example") -> object:
    argv = [sys.executable, "-m", "celery", "-A", "examples.watch_app.tasks", "worker", "-E",
            "-Q", "example", "-n", f"{name}@%h", "-c", "2", "--without-mingle", "--without-gossip",
            "--loglevel=INFO"]
    proc = procs.start(name, argv, env)
    wait_for(lambda: "ready." in proc.log() or not proc.alive(), 60, what="the example worker")
    assert proc.alive(), proc.log()
    return proc


def start_example_app(procs, env: dict, skald_url: str, name: str = "example-app",
                      secret: str = SECRET):
    port = free_port()
    proc = procs.start(name, [sys.executable, "-m", "examples.watch_app"],
                       {**env, "EXAMPLE_PORT": str(port), "SKALD_URL": skald_url,
                        "SKALD_WATCH_SECRET": secret})
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, url, 30, "the example app")
    proc.url = url
    return proc


@pytest.fixture(scope="module")
def example(stack, procs, env):
    """The example application (worker and Flask app) beside Skald's stack; its URL."""
    start_example_worker(procs, env)
    return start_example_app(procs, env, stack).url


def start(example_url: str, kind: str, **params) -> dict:
    resp = requests.post(f"{example_url}/api/start/{kind}", data=params, timeout=10)
    assert resp.status_code == 202, resp.text
    return resp.json()


@pytest.fixture()
def watchers():
    made: list[Watcher] = []

    def make(url: str, token: str) -> TokenWatcher:
        w = TokenWatcher(url, token).connect()
        made.append(w)
        return w
    yield make
    for w in made:
        w.close()


def ours(url: str, task_id: str, token: str) -> dict:
    resp = requests.get(f"{url}/api/tasks/{task_id}/progress", params={"watch_token": token}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def theirs(settings, task_id: str) -> dict:
    from tasks.app import make_celery

    return Progress(make_celery(settings).AsyncResult(task_id)).get_info()


def ordered_progress_then_one_ending(w: TokenWatcher, task_id: str) -> tuple[list[dict], tuple]:
    w.wait_ending(task_id, 60)
    time.sleep(0.5)  # anything that would wrongly follow the ending
    seen = w.events(task_id)
    names = [n for n, _ in seen]
    assert sum(n in Watcher.ENDINGS for n in names) == 1, names
    assert names[-1] in Watcher.ENDINGS, "nothing after the ending"
    updates = [d for n, d in seen if n == "progress_update"]
    currents = [d["current"] for d in updates]
    assert currents == sorted(currents), currents
    return updates, seen[-1]


def test_event_progress_of_another_app_reaches_a_token_watcher(stack, example, settings, watchers):
    started = start(example, "count", total=8, delay=0.15)
    tid, token = started["task_id"], started["watch_token"]
    w = watchers(stack, token)
    connected = wait_for(lambda: w.events(names=("connected",)), 5, what="connected")
    assert connected[0][1]["user"] is None
    ack = w.join(tid)
    assert ack["ok"] is True and ack["snapshot"]["task_id"] == tid, ack
    updates, (name, end) = ordered_progress_then_one_ending(w, tid)
    assert name == "task_completed" and end["state"] == "SUCCESS"
    assert end["results"]["result"]["counted"] == 8 and end["results"]["result"]["by"].startswith("example@")
    live = [u for u in updates if u["state"] == "PROGRESS"]
    assert len(live) >= 3, updates  # one per step at most every 100 ms (coalesced)
    assert all(u["current_step"] == f"counted {u['current']} of 8" for u in live)
    assert all(u["extra"]["phase"] in ("counting", "done") for u in live)
    same_as_celery_progress(ours(stack, tid, token), theirs(settings, tid))


def test_update_state_progress_of_another_app_reaches_a_token_watcher(stack, example, settings, watchers):
    """celery-progress's way (``update_state(state="PROGRESS")``): no event carries it; the
    bridge polls the backend for the watched task. Mid-run, Skald's endpoint and
    celery-progress's view agree field by field."""
    started = start(example, "crunch", total=6, delay=0.6)
    tid, token = started["task_id"], started["watch_token"]
    w = watchers(stack, token)
    assert w.join(tid)["ok"] is True
    compared = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and compared < 2:
        mine, their = ours(stack, tid, token), theirs(settings, tid)
        if their["state"] == "PROGRESS" and mine["progress"].get("current") == their["progress"]["current"]:
            same_as_celery_progress(mine, their)
            assert mine["progress"]["description"].startswith("crunched ")
            compared += 1
        time.sleep(0.25)
    assert compared == 2, "never caught the task mid-run"
    updates, (name, end) = ordered_progress_then_one_ending(w, tid)
    assert name == "task_completed" and end["results"] == {"result": {"crunched": 6}}
    polled = [u for u in updates if u["state"] == "PROGRESS"]
    assert len({u["current"] for u in polled}) >= 3, updates  # one per poll that saw a change
    assert all(u["current_step"] == f"crunched {u['current']} of 6" for u in polled)
    assert all("extra" not in u for u in polled)  # the meta had nothing beyond its five keys
    same_as_celery_progress(ours(stack, tid, token), theirs(settings, tid))


def test_a_failing_task_of_another_app_ends_with_its_error(stack, example, settings, watchers):
    started = start(example, "count", total=5, delay=0.05, fail_at=2)
    tid, token = started["task_id"], started["watch_token"]
    w = watchers(stack, token)
    assert w.join(tid)["ok"] is True
    _, (name, end) = ordered_progress_then_one_ending(w, tid)
    assert name == "task_error" and end["error"] == {"type": "RuntimeError", "message": "gave up at 2"}
    mine = ours(stack, tid, token)
    assert (mine["complete"], mine["success"], mine["result"]) == (True, False, "gave up at 2")
    same_as_celery_progress(mine, theirs(settings, tid))


def test_expired_foreign_and_unknown_tokens_are_refused(stack, example, watchers):
    started = start(example, "count", total=3, delay=0.05)
    tid = started["task_id"]
    other = start(example, "count", total=3, delay=0.05)["task_id"]
    refused = {"expired": helper.mint(tid, SECRET, minutes=-1), "foreign": helper.mint(other, SECRET),
               "wrong secret": helper.mint(tid, "guess"), "malformed": "1234.abcd"}
    for why, token in refused.items():
        w = watchers(stack, token)
        for event in ("join_task", "get_task_status", "cancel_task"):
            ack = w.call(event, {"task_id": tid, "watch_token": token})
            assert ack["ok"] is False and ack["error"]["code"] == "not_found", (why, event, ack)
        resp = requests.get(f"{stack}/api/tasks/{tid}/progress", params={"watch_token": token}, timeout=10)
        assert resp.status_code == 404, why
        assert w.sio.connected
        assert w.endings(tid) == [] and w.events(tid) == []
    never = str(uuid.uuid4())
    w = watchers(stack, helper.mint(never, SECRET))
    ack = w.join(never)
    assert ack["ok"] is False and ack["error"]["code"] == "not_found"
    # A valid token works on its own connection, never on another task's.
    w = watchers(stack, started["watch_token"])
    assert w.join(other, helper.mint(other, SECRET))["error"]["code"] == "not_found"
    assert w.join(tid)["ok"] is True


def test_a_cancel_token_revokes_a_task_that_has_not_started(stack, example, watchers):
    started = start(example, "count", total=3, delay=0.05, countdown=60)  # held by the worker
    tid = started["task_id"]
    plain = watchers(stack, started["watch_token"])
    assert plain.join(tid)["ok"] is True
    assert plain.call("cancel_task", {"task_id": tid})["error"]["code"] == "forbidden"
    canceller = watchers(stack, started["cancel_token"])
    assert canceller.join(tid)["ok"] is True
    assert canceller.call("cancel_task", {"task_id": tid}) == {"ok": True, "state": "CANCELLING"}
    for w in (plain, canceller):
        [(name, end)] = w.wait_ending(tid, 30)
        assert name == "task_cancelled" and end["state"] == "REVOKED"
    again = canceller.call("cancel_task", {"task_id": tid})
    assert again["ok"] is False and again["error"]["code"] == "conflict"


def test_the_terminal_watcher_takes_a_watch_token(stack, example, env):
    started = start(example, "count", total=4, delay=0.1)
    run = subprocess.run([sys.executable, "-m", "web", "watch", started["task_id"],
                          "--watch-token", started["watch_token"]], cwd=ROOT, timeout=60,
                         env={**env, "SKALD_URL": stack, "SKALD_TOKEN": ""}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "'counted': 4" in run.stdout


@pytest.mark.slow
def test_a_task_that_ignores_the_cancel_is_terminated_after_the_grace_period(tmp_path):
    """Another app's task does not check Skald's cancel flag: the revoke cannot stop it
    while it runs, so after CANCEL_GRACE_SECONDS it is terminated, as a caption job would be."""
    stack = Stack(tmp_path, cancel_grace_seconds=1.0).start()
    try:
        start_example_worker(stack.procs, stack.env, "example-t")
        app = start_example_app(stack.procs, stack.env, stack.web.url, "example-app-t",
                                secret=helper.derive_secret(stack.settings.secret_key))
        started = start(app.url, "count", total=600, delay=0.1)
        tid = started["task_id"]
        w = TokenWatcher(stack.web.url, started["cancel_token"]).connect()
        try:
            assert w.join(tid)["ok"] is True
            w.wait_progress(tid, 2, 30)
            assert w.call("cancel_task", {"task_id": tid}) == {"ok": True, "state": "CANCELLING"}
            [(name, end)] = w.wait_ending(tid, 30)
            assert name == "task_cancelled" and end["state"] == "REVOKED" and end["terminated"] is True
            assert end["current"] < 600
        finally:
            w.close()
    finally:
        stack.close()


@pytest.mark.browser
def test_the_example_page_and_celery_progress_js_watch_through_skald(browser, procs, env, stack, example):
    """In Chromium: the example app's page (another origin) watches its task live with
    Skald's live.js and only a watch token; celery-progress's own JavaScript client,
    unchanged, polls Skald's progress endpoint for a task in its style."""
    import celery_progress

    port = free_port()
    example_origin = f"http://127.0.0.1:{port}"
    web = procs.start_web("web-cors", {**env, "CORS_ALLOWED_ORIGINS": example_origin}, free_port())
    app = procs.start("example-app-b", [sys.executable, "-m", "examples.watch_app"],
                      {**env, "EXAMPLE_PORT": str(port), "SKALD_URL": web.url, "SKALD_WATCH_SECRET": SECRET})
    wait_for(lambda: _answers(example_origin) or not app.alive(), 30, what="the example app")
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    try:
        page.goto(example_origin + "/")
        page.get_by_test_id("start-count").click()
        page.wait_for_url("**/watch/**")
        status = page.get_by_test_id("status")
        for state in ("PROGRESS", "SUCCESS"):
            try:
                page.wait_for_function(f"document.querySelector('[data-testid=status]').dataset.state "
                                       f"=== '{state}'", timeout=30_000)
            except Exception as exc:
                raise AssertionError(f"{state}: {status.inner_text()!r}, console {console}") from exc
        assert status.inner_text() == "Done"
        assert '"counted":10' in page.get_by_test_id("result").inner_text()

        started = start(example_origin, "crunch", total=4, delay=0.4)
        script = (__import__("pathlib").Path(celery_progress.__file__).parent
                  / "static" / "celery_progress" / "celery_progress.js")
        page.add_script_tag(path=str(script))
        url = f"{web.url}/api/tasks/{started['task_id']}/progress?watch_token={started['watch_token']}"
        seen = page.evaluate("""url => new Promise(resolve => {
            const seen = {progress: [], success: null};
            const bar = new CeleryProgressBar(url, {
              pollInterval: 200,
              onProgress: (el, msg, progress) => seen.progress.push(progress.current),
              onSuccess: (el, msg, result) => { seen.success = result; resolve(seen); },
              onError: (el, msg, err) => resolve({error: String(err)}),
            });
            bar.connect();
        })""", url)
        assert seen.get("success") == {"crunched": 4}, seen
        assert any(0 < c < 100 for c in seen["progress"]), seen  # it saw the task mid-run
    finally:
        page.close()
        app.stop()
        web.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False
