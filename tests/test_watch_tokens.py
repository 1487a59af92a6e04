"""Watch tokens (PROTOCOL.md, "Watching any Celery task") and who may watch a task of any
application: the one-file helper, the CLI, the HTTP progress endpoint in celery-progress's
shape and the Socket.IO events (web tier: create_app, real Redis, Celery's real result
backend; the stored states are written as Celery writes them, no worker)."""
from __future__ import annotations

import ast
import hashlib
import hmac
import string
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from celery.exceptions import Retry
from celery_progress.backend import Progress
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import protocol
import skald_watch_token as helper
from tests.support import ROOT

SECRET = helper.derive_secret("test-secret")  # the session's SECRET_KEY, no SKALD_WATCH_SECRET


def new_id() -> str:
    return str(uuid.uuid4())


# -- the token ------------------------------------------------------------------------------------------
def test_a_token_is_expires_dot_the_hmac_of_task_id_and_expires():
    tid = new_id()
    token = helper.mint(tid, "s3cret", minutes=5, now=1_000_000.0)
    expires, signature = token.split(".")
    assert expires == "1000300"
    assert signature == hmac.new(b"s3cret", f"{tid}:1000300".encode(), hashlib.sha256).hexdigest()
    assert helper.verify(token, tid, "s3cret", now=1_000_299.0) == helper.WATCH
    assert helper.verify(token, tid, "s3cret", now=1_000_301.0) is None       # expired
    assert helper.verify(token, new_id(), "s3cret", now=1_000_000.0) is None  # another task's
    assert helper.verify(token, tid, "other", now=1_000_000.0) is None        # another secret


def test_a_cancel_token_watches_too_and_cannot_be_made_from_a_plain_one():
    tid = new_id()
    plain = helper.mint(tid, "s3cret")
    cancel = helper.mint(tid, "s3cret", cancel=True)
    assert helper.verify(cancel, tid, "s3cret") == helper.CANCEL
    assert helper.verify(plain, tid, "s3cret") == helper.WATCH
    expires = cancel.split(".")[0]
    message = f"{tid}:{expires}:cancel".encode()
    assert cancel.split(".")[1] == hmac.new(b"s3cret", message, hashlib.sha256).hexdigest()
    assert plain.split(".")[0] == expires and plain != cancel


@pytest.mark.parametrize("bad", [None, 5, "", ".", "123", "abc.def", "12.xyz", "12." + "A" * 64,
                                 "99999999999999." + "a" * 64, "1." + "a" * 63, "x" * 500,
                                 "\u0661\u0662." + "a" * 64])
def test_malformed_tokens_allow_nothing(bad):
    assert helper.verify(bad, new_id(), "s3cret") is None


def test_the_helper_is_one_file_with_no_dependencies_beyond_the_standard_library(tmp_path):
    source = Path(helper.__file__).read_text()
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    copy = tmp_path / "skald_watch_token.py"
    copy.write_text(source)
    tid = new_id()
    # Copied alone into another application (isolated interpreter, nothing of Skald on the path).
    out = subprocess.run([sys.executable, "-I", str(copy), tid, "--minutes", "2", "--cancel"],
                         env={"SKALD_WATCH_SECRET": SECRET}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert helper.verify(out.stdout.strip(), tid, SECRET) == helper.CANCEL


def test_cli_watch_token_prints_a_token_web_accepts(env):
    tid = new_id()
    run = subprocess.run([sys.executable, "-m", "web", "watch-token", tid, "--minutes", "3"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip().splitlines()[-1]
    assert helper.verify(token, tid, SECRET) == helper.WATCH
    assert abs(int(token.split(".")[0]) - (time.time() + 180)) < 30
    cancel = subprocess.run([sys.executable, "-m", "web", "watch-token", tid, "--cancel"], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    token = cancel.stdout.strip().splitlines()[-1]
    assert helper.verify(token, tid, SECRET) == helper.CANCEL
    assert abs(int(token.split(".")[0]) - (time.time() + 3600)) < 30  # default: 60 minutes
    secret = subprocess.run([sys.executable, "-m", "web", "watch-token", tid], cwd=ROOT, timeout=60,
                            env={**env, "SKALD_WATCH_SECRET": "explicit"}, capture_output=True, text=True)
    assert helper.verify(secret.stdout.strip(), tid, "explicit") == helper.WATCH
    bad = subprocess.run([sys.executable, "-m", "web", "watch-token", "not a task id"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


# -- stored states, as Celery and the bridge write them ---------------------------------------------------
@pytest.fixture()
def backend(app):
    return app.extensions["skald"].celery.backend


def record(app, task_id: str, state: str = "PROGRESS", current: int = 0, total: int = 0,
           step: str = "", ending: dict | None = None, **extra) -> dict:
    """Store a record as the bridge does (``skald:task:<id>``)."""
    snap = protocol.snapshot(task_id, state=state, current=current, total=total, current_step=step,
                             updated_at=time.time(), failed=0, **extra)
    rec = {"snapshot": snap, "ending": ending, "detail": {"name": "other.work"}}
    app.extensions["skald"].redis.set(protocol.task_key(task_id), orjson.dumps(rec))
    return rec


def progress(client, task_id: str, token: str | None = None, **kw):
    query = f"?watch_token={token}" if token is not None else ""
    return client.get(f"/api/tasks/{task_id}/progress{query}", **kw)


def celery_progress(app, task_id: str) -> dict:
    """celery-progress's own answer for the task (its view is Progress(AsyncResult).get_info())."""
    return Progress(app.extensions["skald"].celery.AsyncResult(task_id)).get_info()


def same_as_celery_progress(ours: dict, theirs: dict) -> None:
    """Every field celery-progress answers, ours answers the same (progress field by field);
    ours also has every field of the contract's shape."""
    assert {"complete", "success", "progress", "result"} <= set(ours)
    assert {"pending", "current", "total", "percent", "description"} <= set(ours["progress"])
    for key, value in theirs.items():
        if key == "progress":
            for field, v in value.items():
                assert ours["progress"][field] == v, (field, ours, theirs)
        else:
            assert ours[key] == value, (key, ours, theirs)


def test_progress_endpoint_answers_as_celery_progress_for_every_stored_state(app, client, backend):
    tasks = {name: new_id() for name in ("progress", "started", "success", "failure", "revoked",
                                         "retry", "ignored", "pending")}
    backend.store_result(tasks["progress"], {"pending": False, "current": 3, "total": 7,
                                             "percent": 42.86, "description": "rows", "stage": "b"},
                         "PROGRESS")
    backend.store_result(tasks["started"], {"pid": 1, "hostname": "w@h"}, "STARTED")
    backend.store_result(tasks["success"], {"rows": [1, 2], "ok": True}, "SUCCESS")
    backend.mark_as_failure(tasks["failure"], ValueError("the input was empty"))
    backend.mark_as_revoked(tasks["revoked"], "terminated")
    backend.mark_as_retry(tasks["retry"], Retry("busy", when=7),
                          traceback="celery.exceptions.Retry: Retry in 7s: busy")
    backend.store_result(tasks["ignored"], "ignored", "IGNORED")
    record(app, tasks["pending"], state="PENDING")  # sent, known to the bridge, not received
    for name, tid in tasks.items():
        resp = progress(client, tid, helper.mint(tid, SECRET))
        assert resp.status_code == 200, (name, resp.get_json())
        assert resp.headers["Cache-Control"] == "no-store"
        same_as_celery_progress(resp.get_json(), celery_progress(app, tid))
    body = progress(client, tasks["success"], helper.mint(tasks["success"], SECRET)).get_json()
    assert body["result"] == {"rows": [1, 2], "ok": True} and body["complete"] is True
    assert progress(client, tasks["failure"], helper.mint(tasks["failure"], SECRET)).get_json()[
        "result"] == "the input was empty"
    assert progress(client, tasks["revoked"], helper.mint(tasks["revoked"], SECRET)).get_json()[
        "result"] == "Task terminated"
    body = progress(client, tasks["progress"], helper.mint(tasks["progress"], SECRET)).get_json()
    assert body["complete"] is False and body["result"] is None and body["progress"]["stage"] == "b"


def test_progress_from_events_is_shown_where_celery_progress_sees_none(app, client, backend):
    """A task reporting with task-progress events: the backend says STARTED only."""
    tid = new_id()
    backend.store_result(tid, {"pid": 1, "hostname": "w@h"}, "STARTED")
    record(app, tid, state="PROGRESS", current=3, total=8, step="page 3", extra={"phase": "ocr"})
    body = progress(client, tid, helper.mint(tid, SECRET)).get_json()
    assert body["progress"] == {"phase": "ocr", "pending": False, "current": 3, "total": 8,
                                "percent": 37.5, "description": "page 3"}
    assert celery_progress(app, tid)["progress"]["current"] == 0  # what celery-progress shows


def test_an_ending_only_the_bridge_recorded_is_answered(app, client):
    """A task with ignore_result: no backend entry, the bridge saw its task-succeeded."""
    tid = new_id()
    snap = protocol.snapshot(tid, state="SUCCESS", current=2, total=2)
    record(app, tid, state="SUCCESS", current=2, total=2,
           ending=protocol.ending(snap, results={"result": [1, 2]}))
    body = progress(client, tid, helper.mint(tid, SECRET)).get_json()
    assert (body["complete"], body["success"], body["result"]) == (True, True, [1, 2])
    assert body["progress"]["percent"] == 100


def test_progress_endpoint_refusals(app, client, backend, users):
    tid, other = new_id(), new_id()
    backend.store_result(tid, {"current": 1, "total": 2}, "PROGRESS")
    backend.store_result(other, {"current": 1, "total": 2}, "PROGRESS")
    assert progress(client, tid).status_code == 401  # no credentials at all
    refused = {"foreign": helper.mint(other, SECRET), "expired": helper.mint(tid, SECRET, minutes=-1),
               "wrong secret": helper.mint(tid, "not-the-secret"), "malformed": "123.abc",
               "huge": "9" * 300}
    for why, token in refused.items():
        resp = progress(client, tid, token)
        assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found", why
    user, viewer, admin = users("tok-user"), users("tok-viewer", role="viewer"), users("tok-admin", admin=True)
    assert progress(client, tid, headers=user["headers"]).status_code == 404   # not theirs
    assert progress(client, tid, headers=viewer["headers"]).status_code == 200
    assert progress(client, tid, headers=admin["headers"]).status_code == 200
    assert progress(client, tid, helper.mint(tid, SECRET), headers=user["headers"]).status_code == 200


def test_a_task_that_never_existed_is_not_found_after_the_backend_was_asked(client, users, backend):
    from web.access import UNKNOWN_WAIT

    tid = new_id()
    started = time.monotonic()
    resp = progress(client, tid, helper.mint(tid, SECRET))
    waited = time.monotonic() - started
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    assert waited >= UNKNOWN_WAIT - 0.1  # looked for, not refused at once
    admin = users("tok-admin", admin=True)
    assert progress(client, tid, headers=admin["headers"]).status_code == 404
    # Without the right, the answer comes before any look-up: the same, and as soon,
    # for a task that exists and one that never did.
    real = new_id()
    backend.store_result(real, {"current": 1, "total": 2}, "PROGRESS")
    user = users("tok-user")
    for task_id in (real, new_id()):
        for kw in ({"headers": user["headers"]}, {"token": helper.mint(new_id(), SECRET)}):
            started = time.monotonic()
            resp = progress(client, task_id, **kw)
            assert resp.status_code == 404 and resp.get_json() == {
                "error": {"code": "not_found", "message": "no such task"}}
            assert time.monotonic() - started < UNKNOWN_WAIT - 0.5  # never the wait above


def test_cross_origin_pages_may_read_progress_when_listed(settings, backend):
    from web import create_app

    tid = new_id()
    backend.store_result(tid, {"current": 1, "total": 2}, "PROGRESS")
    app = create_app(settings.with_overrides(cors_allowed_origins=("http://other.example",)))
    client = app.test_client()
    url = f"/api/tasks/{tid}/progress?watch_token={helper.mint(tid, SECRET)}"
    allowed = client.get(url, headers={"Origin": "http://other.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://other.example"
    assert "Access-Control-Allow-Origin" not in client.get(url, headers={"Origin": "http://evil.example"}).headers


# -- Socket.IO --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sio_app(settings):
    from web import create_app

    return create_app(settings, message_queue=False)


def token_client(sio_app, token):
    return sio_app.extensions["socketio"].test_client(sio_app, auth={"watch_token": token})


def test_the_backends_progress_wins_over_a_record_the_bridge_only_tracks(sio_app, backend):
    """The bridge records a task it is asked to follow as PENDING until its poll or its events
    say more; an update_state progress already in the result backend is what a watcher sees."""
    from bridge.records import RecordWriter

    tid = new_id()
    client = sio_app.extensions["skald"].redis
    pipe = client.pipeline()
    RecordWriter().put(pipe, {"snapshot": protocol.snapshot(tid), "ending": None, "detail": {}})
    pipe.execute()
    backend.store_result(tid, {"current": 3, "total": 4}, "PROGRESS")
    c = token_client(sio_app, helper.mint(tid, SECRET))
    try:
        snap = c.emit("get_task_status", {"task_id": tid}, callback=True)["snapshot"]
        assert (snap["state"], snap["current"], snap["total"]) == ("PROGRESS", 3, 4)
    finally:
        c.disconnect()


def test_a_token_only_connection_watches_its_one_task(sio_app, backend, users):
    tid, other = new_id(), new_id()
    backend.store_result(tid, {"pending": False, "current": 2, "total": 5, "percent": 40.0,
                               "description": "d"}, "PROGRESS")
    backend.store_result(other, {"current": 1, "total": 2}, "PROGRESS")
    token = helper.mint(tid, SECRET)
    c = token_client(sio_app, token)
    try:
        [connected] = [m["args"][0] for m in c.get_received() if m["name"] == "connected"]
        assert connected["user"] is None and connected["is_admin"] is False and connected["role"] is None
        assert connected["watch_only"] is True
        ack = c.emit("join_task", {"task_id": tid, "watch_token": token}, callback=True)
        assert ack["ok"] is True and ack["snapshot"]["task_id"] == tid
        assert (ack["snapshot"]["current"], ack["snapshot"]["total"]) == (2, 5)
        assert c.emit("join_task", {"task_id": tid}, callback=True)["ok"] is True  # its token by default
        assert c.emit("get_task_status", {"task_id": tid}, callback=True)["snapshot"]["state"] == "PROGRESS"
        # Another task, even with a valid token of its own: this connection is for one task.
        for payload in ({"task_id": other}, {"task_id": other, "watch_token": helper.mint(other, SECRET)},
                        {"task_id": tid, "watch_token": helper.mint(tid, SECRET, minutes=30)}):
            for event in ("join_task", "get_task_status", "cancel_task"):
                ack = c.emit(event, payload, callback=True)
                assert ack["ok"] is False and ack["error"]["code"] == "not_found", (event, payload, ack)
        assert c.emit("cancel_task", {"task_id": tid}, callback=True)["error"]["code"] == "forbidden"
        assert c.emit("join_admin_dashboard", {}, callback=True)["error"]["code"] == "unauthorized"
        assert c.emit("join_task", {"task_id": tid, "watch_token": 7}, callback=True)["error"]["code"] == "invalid"
        assert c.is_connected()
    finally:
        c.disconnect()


@pytest.mark.parametrize("why", ["expired", "foreign", "malformed"])
def test_bad_tokens_are_not_found(sio_app, backend, why):
    tid = new_id()
    backend.store_result(tid, {"current": 1, "total": 2}, "PROGRESS")
    token = {"expired": helper.mint(tid, SECRET, minutes=-1), "foreign": helper.mint(new_id(), SECRET),
             "malformed": "not-a-token"}[why]
    c = token_client(sio_app, token)
    try:
        for event in ("join_task", "get_task_status"):
            ack = c.emit(event, {"task_id": tid, "watch_token": token}, callback=True)
            assert ack == {"ok": False, "error": {"code": "not_found", "message": "no such task"}}, ack
        assert c.is_connected()
    finally:
        c.disconnect()


def test_connections_without_any_credentials_are_still_refused(sio_app):
    for auth in (None, {"watch_token": 5}, {"watch_token": ""}, {"watch_token": "x" * 300}, {"other": 1}):
        c = sio_app.extensions["socketio"].test_client(sio_app, auth=auth)
        assert not c.is_connected(), auth


def test_users_may_add_a_watch_token_and_operators_join_any_task(sio_app, backend, users):
    tid = new_id()
    backend.store_result(tid, {"current": 1, "total": 4}, "PROGRESS")
    sio = sio_app.extensions["socketio"]
    people = {"user": users("tok-user"), "viewer": users("tok-viewer", role="viewer"),
              "admin": users("tok-admin", admin=True)}
    clients = {who: sio.test_client(sio_app, auth={"token": p["token"]}) for who, p in people.items()}
    try:
        ask = lambda who, event, data: clients[who].emit(event, data, callback=True)  # noqa: E731
        assert ask("user", "join_task", {"task_id": tid})["error"]["code"] == "not_found"
        assert ask("user", "join_task", {"task_id": tid, "watch_token": helper.mint(tid, SECRET)})["ok"]
        assert ask("viewer", "join_task", {"task_id": tid})["ok"] is True
        assert ask("viewer", "cancel_task", {"task_id": tid})["error"]["code"] == "forbidden"
        assert ask("admin", "join_task", {"task_id": tid})["ok"] is True
        assert ask("admin", "cancel_task", {"task_id": tid}) == {"ok": True, "state": "CANCELLING"}
        cancel_token = helper.mint(tid, SECRET, cancel=True)
        assert ask("user", "cancel_task", {"task_id": tid, "watch_token": cancel_token})["ok"] is True
        backend.store_result(tid, {"done": 1}, "SUCCESS")
        ended = ask("admin", "cancel_task", {"task_id": tid})
        assert ended["ok"] is False and ended["error"]["code"] == "conflict"
    finally:
        for c in clients.values():
            c.disconnect()


def test_a_token_for_a_caption_job_watches_it_like_its_owner(sio_app, users, app):
    from tests.test_api import png_bytes, post_files

    owner = users("tok-owner")
    client = app.test_client()
    tid = post_files(client, owner, [("a.png", png_bytes())]).get_json()["task_id"]
    c = token_client(sio_app, helper.mint(tid, SECRET))
    try:
        ack = c.emit("join_task", {"task_id": tid}, callback=True)
        assert ack["ok"] is True and ack["snapshot"]["owner"] == "tok-owner"
        assert c.emit("cancel_task", {"task_id": tid}, callback=True)["error"]["code"] == "forbidden"
    finally:
        c.disconnect()
    resp = progress(client, tid, helper.mint(tid, SECRET))
    assert resp.status_code == 200 and set(resp.get_json()) >= {"complete", "success", "progress", "result"}


# -- bad input, fuzzed ---------------------------------------------------------------------------------------
token_texts = st.one_of(st.none(), st.text(max_size=80), st.integers(), st.lists(st.text(max_size=5), max_size=3),
                        st.builds(lambda e, s: f"{e}.{s}", st.integers(-10, 10**13),
                                  st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=66)))
task_ids = st.one_of(st.uuids().map(str), st.text(alphabet=string.printable, max_size=60))


@hsettings(max_examples=150, deadline=None, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task_id=task_ids, token=token_texts)
def test_fuzzed_progress_requests_are_refused_cleanly(client, task_id, token):
    query = {} if token is None else {"watch_token": str(token)}
    resp = client.get(f"/api/tasks/{quote(task_id, safe='')}/progress", query_string=query)
    if resp.status_code == 308:  # "/api/tasks//progress": the router merges the slashes
        return
    assert resp.status_code in (401, 404), (resp.status_code, resp.get_data()[:200])
    assert set(resp.get_json()["error"]) == {"code", "message"}


@hsettings(max_examples=150, deadline=None, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=st.sampled_from(["join_task", "get_task_status", "cancel_task", "leave_task"]),
       task_id=task_ids, token=token_texts)
def test_fuzzed_token_payloads_get_typed_acks(sio_app, event, task_id, token):
    commands = sio_app.extensions["skald"].redis
    before = commands.xlen("skald:commands")
    c = token_client(sio_app, helper.mint(new_id(), SECRET))
    try:
        payload = {"task_id": task_id} if token is None else {"task_id": task_id, "watch_token": token}
        ack = c.emit(event, payload, callback=True)
        assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), ack
        if not ack["ok"]:
            assert ack["error"]["code"] in ("invalid", "not_found"), ack
        assert c.is_connected()
        assert commands.xlen("skald:commands") == before  # nothing asked of the bridge
    finally:
        c.disconnect()
