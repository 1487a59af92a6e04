"""Revoking credentials reaches live connections, on every web process (real processes).

Two web processes share the stack; a connection on each. Revoking a token,
rotating it, changing a role or logging out ends every session and Socket.IO
connection those credentials opened, at once (a broadcast every process hears)
and at the latest at the next event (each event re-checks).
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
import requests
import socketio

from tests.support import ROOT, make_image, submit_job, wait_for


@pytest.fixture(scope="module")
def web_procs(stack, web, procs, env):
    from devstack import free_port

    second = procs.start_web("web-revoke", env, free_port())
    yield [web, second]
    second.stop()


@pytest.fixture(scope="module")
def webs(web_procs):
    return [p.url for p in web_procs]


def cli(env, *args) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "web", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run


class Client:
    """A python-socketio client that does not reconnect by itself (we watch it drop)."""

    def __init__(self, url: str, token: str | None = None, cookie: str | None = None) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.received: list[tuple[str, object]] = []
        self.sio.on("*", lambda event, data=None: self.received.append((event, data)))
        self.sio.connect(url, auth={"token": token} if token else None, transports=["websocket"],
                         headers={"Cookie": f"session={cookie}"} if cookie else None, wait_timeout=10)

    def call(self, event: str, data: object) -> dict:
        return self.sio.call(event, data, timeout=10)

    def close(self) -> None:
        if self.sio.connected:
            self.sio.disconnect()


def refused(url: str, token: str) -> str | None:
    """The refusal message when connecting with ``token``, or None if it connected."""
    sio = socketio.Client(reconnection=False)
    errors: list = []
    sio.on("connect_error", errors.append)
    try:
        sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    except socketio.exceptions.ConnectionError:
        return (errors[0] or {}).get("message") if errors else "refused"
    sio.disconnect()
    return None


def browser_login(url: str, name: str, password: str) -> tuple[requests.Session, str]:
    """A logged-in requests session (like a browser's) and its CSRF token."""
    session = requests.Session()
    page = session.get(f"{url}/login").text
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    resp = session.post(f"{url}/login", data={"username": name, "password": password,
                                               "csrf_token": csrf}, allow_redirects=False)
    assert resp.status_code == 302, resp.text[:300]
    page = session.get(f"{url}/account").text
    return session, page.split('name="csrf_token" value="')[1].split('"')[0]


def test_revoke_drops_connections_on_every_web_process(webs, web_procs, users, env, tmp_path):
    boss, victim = users("rv-boss", admin=True), users("rv-victim")
    job = submit_job(webs[0], victim, [make_image(tmp_path / "v.png")])
    browser, _csrf = browser_login(webs[1], "rv-boss", boss["password"])
    clients = [Client(url, boss["token"]) for url in webs]
    try:
        for c in clients:
            assert c.call("join_admin_dashboard", {})["ok"] is True
        assert browser.get(f"{webs[0]}/api/jobs").status_code == 200
        cli(env, "user", "revoke", "rv-boss")
        wait_for(lambda: not any(c.sio.connected for c in clients), 15, interval=0.1,
                 what="both connections to drop")
        for url in webs:
            assert browser.get(f"{url}/api/jobs").status_code == 401  # its logins end too
            assert refused(url, boss["token"]) == "unauthorized"
            resp = requests.post(f"{url}/api/jobs/{job['task_id']}/cancel", headers=boss["headers"])
            assert resp.status_code == 401
        with pytest.raises(socketio.exceptions.SocketIOError):
            clients[0].call("cancel_task", {"task_id": job["task_id"]})
        # Each process heard the announcement (not just its periodic sweep).
        for proc in web_procs:
            assert f"credentials of user {boss['id']} changed: 1 connection(s) closed" in proc.log()
    finally:
        for c in clients:
            c.close()


def test_every_event_rechecks_even_without_the_broadcast(webs, users, settings):
    """An epoch bumped in the database alone (no announcement) still ends the connection."""
    boss = users("rv-quiet-boss", admin=True)
    clients = [Client(url, boss["token"]) for url in webs]
    try:
        assert all(c.call("join_admin_dashboard", {})["ok"] for c in clients)
        with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE users SET auth_epoch = auth_epoch + 1 WHERE name = 'rv-quiet-boss'")

        def refused_or_dropped(c: Client) -> bool:
            if not c.sio.connected:
                return True
            try:
                return c.call("join_admin_dashboard", {})["ok"] is False
            except socketio.exceptions.SocketIOError:
                return True
        wait_for(lambda: all(refused_or_dropped(c) for c in clients), 15, interval=0.2,
                 what="the events to be refused")
        wait_for(lambda: not any(c.sio.connected for c in clients), 20, interval=0.2,
                 what="the sweep to drop the connections")
    finally:
        for c in clients:
            c.close()


def test_logout_ends_the_session_and_its_connections_everywhere(webs, users):
    users("rv-browser", password="browser-password")
    session, csrf = browser_login(webs[0], "rv-browser", "browser-password")
    cookie = session.cookies.get("session")
    thief = requests.Session()
    thief.cookies.set("session", cookie)
    assert thief.get(f"{webs[1]}/api/jobs").status_code == 200
    clients = [Client(url, cookie=cookie) for url in webs]
    try:
        assert all(c.sio.connected for c in clients)
        assert session.post(f"{webs[0]}/logout", data={"csrf_token": csrf},
                            allow_redirects=False).status_code == 302
        wait_for(lambda: not any(c.sio.connected for c in clients), 15, interval=0.1,
                 what="the session's connections to drop")
        for url in webs:
            assert thief.get(f"{url}/api/jobs").status_code == 401
    finally:
        for c in clients:
            c.close()


def test_role_change_reaches_open_connections(webs, users, env, tmp_path):
    rolly, owner = users("rv-rolly"), users("rv-owner")
    job = submit_job(webs[0], owner, [make_image(tmp_path / "o.png")])
    first = Client(webs[1], rolly["token"])
    try:
        assert first.call("join_admin_dashboard", {})["error"]["code"] == "unauthorized"
        cli(env, "user", "role", "rv-rolly", "viewer")
        wait_for(lambda: not first.sio.connected, 15, interval=0.1, what="the connection to drop")
        again = Client(webs[1], rolly["token"])  # the token itself still holds
        try:
            wait_for(lambda: [d for e, d in again.received if e == "connected"], 5, what="connected")
            hello = [d for e, d in again.received if e == "connected"][0]
            assert hello["role"] == "viewer" and hello["is_admin"] is False
            assert again.call("join_admin_dashboard", {})["ok"] is True
            assert again.call("join_task", {"task_id": job["task_id"]})["ok"] is True
            assert again.call("cancel_task", {"task_id": job["task_id"]})["error"]["code"] == "forbidden"
        finally:
            again.close()
    finally:
        first.close()


def test_a_new_token_from_the_account_page_ends_old_token_connections(webs, users):
    me = users("rv-rotator", password="rotator-password")
    session, csrf = browser_login(webs[0], "rv-rotator", "rotator-password")
    old = [Client(url, me["token"]) for url in webs]
    via_cookie = Client(webs[1], cookie=session.cookies.get("session"))
    try:
        refused_page = requests.post(f"{webs[0]}/account/token", cookies=session.cookies)
        assert refused_page.status_code == 400  # no CSRF token: nothing changes
        assert requests.get(f"{webs[0]}/api/jobs", headers=me["headers"]).status_code == 200
        page = session.post(f"{webs[0]}/account/token", data={"csrf_token": csrf})
        assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
        new = page.text.split('data-testid="account-token"')[0].rsplit('value="', 1)[1].split('"')[0]
        assert new.startswith("sk_") and new != me["token"]
        wait_for(lambda: not any(c.sio.connected for c in old), 15, interval=0.1,
                 what="the old token's connections to drop")
        assert requests.get(f"{webs[1]}/api/jobs", headers=me["headers"]).status_code == 401
        assert requests.get(f"{webs[1]}/api/jobs",
                            headers={"Authorization": f"Bearer {new}"}).status_code == 200
        # The login that asked keeps working, and so does its own connection.
        assert session.get(f"{webs[1]}/api/jobs").status_code == 200
        assert via_cookie.sio.connected and via_cookie.call("get_task_status", {
            "task_id": "6f1c1f64-6a6b-4f7e-9f55-2f0b2f3b6a51"})["error"]["code"] == "not_found"
    finally:
        for c in (*old, via_cookie):
            c.close()
