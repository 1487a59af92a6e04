"""Trust: who may connect and act, limits on input, no pickle, and fuzzed input.

The property tests fire random and malformed payloads at every Socket.IO
event and HTTP endpoint: never a 5xx, never a dropped connection, never a
state change from a rejected request.
"""
from __future__ import annotations

import io
import os
import stat
import string
import uuid

import pytest
import socketio
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import func, select

from tests.support import Watcher, csrf_token, wait_for

CODES = {"invalid", "unauthorized", "not_found", "conflict", "too_large", "unsupported",
         "rate_limited", "unavailable", "forbidden", "maintenance"}
EVENTS = ("join_task", "leave_task", "cancel_task", "get_task_status", "join_admin_dashboard")


# -- configuration: JSON only, secrets -------------------------------------------------
def test_no_pickle_on_any_wire(settings, app):
    from tasks.app import make_celery

    conf = make_celery(settings).conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
    manager = app.extensions["socketio"].server.manager
    assert manager.json.__name__ in {"json", "flask.json"} or hasattr(manager.json, "dumps")
    assert "pickle" not in type(manager).__module__
    assert manager.json.dumps({"a": 1}).startswith("{")


def test_secret_key_file_is_private(tmp_path, settings):
    from web.app import secret_key

    s = settings.with_overrides(secret_key=None, var_dir=tmp_path)
    key = secret_key(s)
    path = tmp_path / "secret_key"
    assert len(key) >= 64 and path.read_text() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secret_key(s) == key  # stable across restarts


def test_cookies_are_flagged(app, client, users):
    users("cookie-user", password="cookie-pass")
    token = csrf_token(client)
    resp = client.post("/login", data={"username": "cookie-user", "password": "cookie-pass",
                                       "csrf_token": token})
    cookie = resp.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True


def test_passwords_and_tokens_are_stored_hashed(app, users):
    from tasks.db import session_scope
    from tasks.models import User

    u = users("hashy", password="plain-text-pw")
    with session_scope(app.extensions["skald"].settings.database_url) as db:
        row = db.scalar(select(User).where(User.name == "hashy"))
        assert row.password_hash and "plain-text-pw" not in row.password_hash
        assert row.password_hash.startswith(("scrypt:", "pbkdf2:"))
        assert row.token_hash and u["token"] not in row.token_hash and len(row.token_hash) == 64


# -- Socket.IO limits over a real websocket -----------------------------------------------
@pytest.fixture(scope="module")
def strict_web(procs, env, worker, bridge):
    from devstack import free_port

    strict_env = {**env, "SOCKET_RATE": "5", "SOCKET_BURST": "5", "CONNECTIONS_PER_USER": "2"}
    proc = procs.start_web("web-strict", strict_env, free_port())
    yield proc
    proc.stop()


def test_rate_limit_answers_and_keeps_the_connection(strict_web, users):
    u = users("rate-socket")
    w = Watcher(strict_web.url, u["token"]).connect()
    try:
        acks = [w.call("get_task_status", {"task_id": str(uuid.uuid4())}) for _ in range(12)]
        codes = [a["error"]["code"] for a in acks]
        assert "rate_limited" in codes and codes[0] == "not_found"
        assert w.sio.connected
        wait_for(lambda: w.call("get_task_status", {"task_id": str(uuid.uuid4())})["error"]["code"]
                 == "not_found", 5, interval=0.3, what="bucket refill")
    finally:
        w.close()


def test_connections_per_user_are_capped(strict_web, users):
    u = users("many-tabs")
    first = [Watcher(strict_web.url, u["token"]).connect() for _ in range(2)]
    try:
        third = socketio.Client(reconnection=False)
        refusals: list = []
        third.on("connect_error", refusals.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            third.connect(strict_web.url, auth={"token": u["token"]}, transports=["websocket"],
                          wait_timeout=5)
        assert refusals[0]["message"] == "rate_limited"
        first[0].close()
        wait_for(lambda: _can_connect(strict_web.url, u["token"]), 5, interval=0.2,
                 what="a free slot")
    finally:
        for w in first:
            w.close()


def _can_connect(url: str, token: str) -> bool:
    c = socketio.Client(reconnection=False)
    try:
        c.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=3)
    except socketio.exceptions.ConnectionError:
        return False
    c.disconnect()
    return True


def test_foreign_origin_is_refused(stack, users):
    u = users("origin-user")
    c = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        c.connect(stack, auth={"token": u["token"]}, transports=["websocket"], wait_timeout=5,
                  headers={"Origin": "http://evil.example"})
    # (Same-origin pages connect: the browser tests do so from the app's own pages.)


# -- fuzzing ------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
payloads = (json_values
            | st.fixed_dictionaries({"task_id": st.text(max_size=60) | st.integers() | st.none()})
            | st.fixed_dictionaries({"task_id": st.uuids().map(str)})
            | st.fixed_dictionaries({"task_id": st.uuids().map(str)},
                                    optional={"extra": json_values}))


@pytest.fixture(scope="module")
def queue_free_app(settings):
    from web import create_app

    return create_app(settings, message_queue=False)


@pytest.fixture(scope="module")
def sock(queue_free_app, users):
    """Flask-SocketIO's test client on the web app (the same handlers as the server)."""
    u = users("fuzzer")
    app = queue_free_app
    client = app.extensions["socketio"].test_client(app, auth={"token": u["token"]})
    assert client.is_connected()
    return client


def job_count(app) -> int:
    from tasks.models import Job

    with app.extensions["skald"].db() as db:
        return db.scalar(select(func.count(Job.id)))


@hsettings(max_examples=300, deadline=None, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=st.sampled_from(EVENTS), payload=payloads)
def test_fuzzed_socket_events_get_typed_acks(sock, queue_free_app, event, payload):
    app = queue_free_app
    jobs_before = job_count(app)
    commands_before = app.extensions["skald"].redis.xlen("skald:commands")
    ack = sock.emit(event, payload, callback=True)
    assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), ack
    if not ack["ok"]:
        assert set(ack["error"]) == {"code", "message"} and ack["error"]["code"] in CODES, ack
        assert app.extensions["skald"].redis.xlen("skald:commands") == commands_before
    assert sock.is_connected()
    assert job_count(app) == jobs_before


http_paths = st.sampled_from([
    "/api/jobs", "/api/jobs/{id}", "/api/jobs/{id}/cancel", "/api/jobs/{id}/captions",
    "/api/workers", "/api/tasks", "/api/maintenance", "/healthz", "/metrics", "/login", "/",
    "/jobs/{id}", "/admin", "/account", "/account/token", "/account/logout-others", "/logout"])
ids = st.one_of(st.uuids().map(str), st.text(alphabet=string.printable, max_size=40))


@hsettings(max_examples=300, deadline=None, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), path=http_paths,
       task_id=ids, query=st.dictionaries(st.sampled_from(["all", "limit", "state", "name", "format"]),
                                          st.text(max_size=12), max_size=3),
       body=st.one_of(st.none(), st.binary(max_size=300), json_values),
       auth=st.sampled_from(["none", "user", "bad"]))
def test_fuzzed_http_never_5xx(app, users, method, path, task_id, query, body, auth):
    client = app.test_client()
    user = users("http-fuzzer")
    headers = {"user": user["headers"], "bad": {"Authorization": "Bearer x"}, "none": {}}[auth]
    url = path.replace("{id}", task_id.replace("/", "%2F").replace("?", "%3F").replace("#", "%23"))
    jobs_before = job_count(app)
    kwargs: dict = {"headers": headers, "query_string": query}
    if isinstance(body, bytes):
        kwargs["data"] = body
    elif body is not None:
        kwargs["json"] = body
    resp = client.open(url, method=method, **kwargs)
    assert resp.status_code < 500, (method, url, resp.status_code, resp.get_data()[:300])
    if url.startswith("/api/") and resp.status_code >= 400:
        assert resp.get_json()["error"]["code"] in CODES
    if resp.status_code != 202:
        assert job_count(app) == jobs_before


def test_fuzzed_uploads_never_5xx(app, users):
    client = app.test_client()
    user = users("upload-fuzzer")
    samples = [b"", b"GIF89a", b"\x89PNG\r\n\x1a\n" + os.urandom(100), os.urandom(2000),
               b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"BM" + os.urandom(60)]
    jobs_before = job_count(app)
    for data in samples:
        resp = client.post("/api/jobs", headers=user["headers"], content_type="multipart/form-data",
                           data={"images": [(io.BytesIO(data), "x.png")]})
        assert resp.status_code in (400, 415), (data[:10], resp.status_code)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    resp = client.post("/api/jobs", headers=user["headers"], content_type="multipart/form-data",
                       data={"images": [(io.BytesIO(buf.getvalue()), "ok.png")], "other": "x"})
    assert resp.status_code == 202
    assert job_count(app) == jobs_before + 1


# -- credentials: bearer vs cookie, logins, redirects, headers, Redis away -------------------------
def _logged_in(client, name: str, password: str) -> str:
    """Log ``client`` in through the form; returns the session's CSRF token."""
    token = csrf_token(client)
    resp = client.post("/login", data={"username": name, "password": password, "csrf_token": token})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return token


def test_a_bad_bearer_never_falls_back_to_the_session_cookie(app, users, rclient_app):
    boss = users("bearer-boss", admin=True, password="boss-password")
    client = app.test_client()
    csrf = _logged_in(client, "bearer-boss", "boss-password")
    junk = {"Authorization": "Bearer junk"}
    resp = client.post("/api/maintenance", json={"active": True}, headers=junk)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/api/jobs", headers=junk).status_code == 401
    assert client.get("/api/maintenance").get_json()["active"] is False  # nothing changed
    # The cookie alone still needs its CSRF token; a real bearer token needs none.
    assert client.post("/api/maintenance", json={"active": False}).status_code == 400
    assert client.post("/api/maintenance", json={"active": False},
                       headers={"X-CSRFToken": csrf}).status_code == 200
    assert app.test_client().post("/api/maintenance", json={"active": False},
                                  headers=boss["headers"]).status_code == 200


@pytest.fixture()
def rclient_app(app):
    yield app.extensions["skald"].redis
    app.extensions["skald"].redis.delete("skald:maintenance")


@pytest.mark.parametrize("target", ["/\r\nSet-Cookie: evil=1", "/%0d%0aX: y\r\n", "//evil.example/",
                                    "/\\evil.example", "https://evil.example/", "/ok\x00"])
def test_login_redirect_stays_local_and_never_breaks_headers(app, users, target):
    users("next-user", password="next-password")
    client = app.test_client()
    token = csrf_token(client)
    resp = client.post("/login", data={"username": "next-user", "password": "next-password",
                                       "csrf_token": token, "next": target})
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert "\r" not in location and "\n" not in location and "evil" not in location
    assert location in ("/", "http://localhost/") or location.startswith("/%0d")


def test_login_redirect_keeps_a_local_path(app, users):
    users("next-user", password="next-password")
    client = app.test_client()
    token = csrf_token(client)
    resp = client.post("/login", data={"username": "next-user", "password": "next-password",
                                       "csrf_token": token, "next": "/jobs/abc?x=1"})
    assert resp.headers["Location"].endswith("/jobs/abc?x=1")


def test_answers_carry_security_headers(client, users):
    u = users("header-user")
    for resp in (client.get("/api/jobs", headers=u["headers"]), client.get("/healthz"),
                 client.get("/api/jobs/nope", headers=u["headers"]), client.get("/api/jobs"),
                 client.get("/login")):
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", resp.status_code
        assert resp.headers.get("X-Frame-Options") == "DENY"


def test_logout_makes_a_copied_cookie_useless(app, users):
    users("copy-user", password="copy-password")
    client = app.test_client()
    csrf = _logged_in(client, "copy-user", "copy-password")
    stolen = client.get_cookie("session").value
    thief = app.test_client()
    thief.set_cookie("session", stolen)
    assert thief.get("/api/jobs").status_code == 200
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302
    assert thief.get("/api/jobs").status_code == 401
    assert client.get("/api/jobs").status_code == 401
    # A new login is a new session; the stolen one stays dead.
    _logged_in(client, "copy-user", "copy-password")
    assert client.get("/api/jobs").status_code == 200
    assert thief.get("/api/jobs").status_code == 401


@pytest.fixture(scope="module")
def redisless_app(settings):
    """The web app pointed at a Redis that is not there (a port nothing listens on)."""
    from devstack import free_port
    from web import create_app

    return create_app(settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                              broker_url=f"redis://127.0.0.1:{free_port()}/0"),
                      message_queue=False)


def test_redis_away_is_503_unavailable_never_a_bare_500(redisless_app, users):
    u, boss = users("no-redis-user"), users("no-redis-boss", admin=True)
    client = redisless_app.test_client()
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    before = job_count(redisless_app)
    resp = client.post("/api/jobs", headers=u["headers"], content_type="multipart/form-data",
                       data={"images": [(io.BytesIO(buf.getvalue()), "a.png")]})
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "unavailable"
    assert job_count(redisless_app) == before
    for path in ("/api/cluster", "/api/workers", "/api/tasks", "/api/maintenance", "/healthz"):
        resp = client.get(path, headers=boss["headers"])
        assert resp.status_code == 503, (path, resp.status_code)
        if path != "/healthz":
            assert resp.get_json()["error"]["code"] == "unavailable", path
    assert client.get("/api/jobs", headers=u["headers"]).status_code == 200  # the database answers
    assert client.post("/api/maintenance", json={"active": True},
                       headers=boss["headers"]).status_code == 503


def test_login_works_while_redis_is_away(redisless_app, users):
    users("no-redis-login", password="login-password")
    client = redisless_app.test_client()
    _logged_in(client, "no-redis-login", "login-password")
    assert client.get("/api/jobs").status_code == 200


def test_logins_per_user_are_bounded(app, users, monkeypatch):
    from web import sessions

    monkeypatch.setattr(sessions, "SESSIONS_PER_USER", 2)
    users("many-logins", password="many-password")
    clients = [app.test_client() for _ in range(3)]
    for c in clients:
        _logged_in(c, "many-logins", "many-password")
    assert [c.get("/api/jobs").status_code for c in clients] == [401, 200, 200]  # the oldest went
