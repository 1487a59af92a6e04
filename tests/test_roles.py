"""Roles (PROTOCOL.md, "Roles"): user, viewer, admin on every HTTP route and Socket.IO event.

A viewer reads everything an admin reads and acts on nothing (``403 forbidden``,
Socket.IO ``forbidden``); what a user may not see is ``404 not_found``; the
admin room refuses a plain user with ``unauthorized`` (the contract's code).
"""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from tests.support import ROOT

READS = ("/api/workers", "/api/cluster", "/api/tasks", "/api/jobs?all=1")
ACTIONS = (("POST", "/api/maintenance", {"active": False}),)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 99, 199)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def people(users):
    return {"user": users("role-user"), "other": users("role-other"),
            "viewer": users("role-viewer", role="viewer"), "admin": users("role-admin", admin=True)}


@pytest.fixture(scope="module")
def others_job(app, people):
    client = app.test_client()
    resp = client.post("/api/jobs", headers=people["other"]["headers"], content_type="multipart/form-data",
                       data={"images": [(io.BytesIO(png()), "x.png")]})
    assert resp.status_code == 202
    return resp.get_json()["task_id"]


def code(resp) -> str:
    return resp.get_json()["error"]["code"]


@pytest.mark.parametrize("who, status", [("user", 403), ("viewer", 200), ("admin", 200)])
def test_operator_reads(client, people, who, status):
    for path in READS:
        resp = client.get(path, headers=people[who]["headers"])
        assert resp.status_code == status, (who, path, resp.status_code)
        if status == 403:
            assert code(resp) == "forbidden"
    page = client.get("/admin", headers=people[who]["headers"])
    assert page.status_code == status


@pytest.mark.parametrize("who, status", [("user", 403), ("viewer", 403), ("admin", 200)])
def test_operator_actions(client, people, who, status):
    for method, path, body in ACTIONS:
        resp = client.open(path, method=method, json=body, headers=people[who]["headers"])
        assert resp.status_code == status, (who, path)
        if status == 403:
            assert code(resp) == "forbidden"


def test_other_users_jobs(client, people, others_job):
    # Not the user's business: not found. A viewer sees it and may not act on it.
    for path in (f"/api/jobs/{others_job}", f"/api/jobs/{others_job}/captions"):
        assert code(client.get(path, headers=people["user"]["headers"])) == "not_found"
        assert client.get(path, headers=people["viewer"]["headers"]).status_code == 200
        assert client.get(path, headers=people["admin"]["headers"]).status_code == 200
    cancel = f"/api/jobs/{others_job}/cancel"
    assert code(client.post(cancel, headers=people["user"]["headers"])) == "not_found"
    assert code(client.post(cancel, headers=people["viewer"]["headers"])) == "forbidden"
    admin_cancel = f"/api/tasks/{others_job}/cancel"
    assert code(client.post(admin_cancel, headers=people["viewer"]["headers"])) == "forbidden"
    # An admin may: accepted, or a conflict when a worker already finished it.
    assert client.post(cancel, headers=people["admin"]["headers"]).status_code in (202, 409)


def test_a_viewer_acts_on_their_own_jobs(client, people):
    viewer = people["viewer"]["headers"]
    resp = client.post("/api/jobs", headers=viewer, content_type="multipart/form-data",
                       data={"images": [(io.BytesIO(png()), "mine.png")]})
    assert resp.status_code == 202
    cancel = client.post(f"/api/jobs/{resp.get_json()['task_id']}/cancel", headers=viewer)
    assert cancel.status_code in (202, 409)  # 409: a worker already finished it


@pytest.fixture(scope="module")
def sockets(settings, people):
    from web import create_app

    app = create_app(settings, message_queue=False)
    sio = app.extensions["socketio"]
    made = {who: sio.test_client(app, auth={"token": people[who]["token"]}) for who in people}
    yield made
    for c in made.values():
        c.disconnect()


def test_socket_roles(sockets, others_job):
    for who, client in sockets.items():
        connected = [m for m in client.get_received() if m["name"] == "connected"]
        assert connected[0]["args"][0]["role"] == {"other": "user"}.get(who, who)
        assert connected[0]["args"][0]["is_admin"] is (who == "admin")
    ask = lambda who, event, data: sockets[who].emit(event, data, callback=True)  # noqa: E731
    assert ask("user", "join_admin_dashboard", {})["error"]["code"] == "unauthorized"
    assert ask("viewer", "join_admin_dashboard", {})["ok"] is True
    assert ask("admin", "join_admin_dashboard", {})["ok"] is True
    task = {"task_id": others_job}
    for event in ("join_task", "get_task_status"):
        assert ask("user", event, task)["error"]["code"] == "not_found"
        assert ask("viewer", event, task)["ok"] is True
    assert ask("user", "cancel_task", task)["error"]["code"] == "not_found"
    assert ask("viewer", "cancel_task", task)["error"]["code"] == "forbidden"


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "web", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_roles(env, app):
    from tasks.models import User

    added = cli(env, "user", "add", "cli-viewer", "--role", "viewer", "--password", "pw-12345678")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("sk_")
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert client.post("/api/maintenance", json={"active": False}, headers=auth).status_code == 403
    again = cli(env, "user", "add", "cli-viewer", "--role", "admin")
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    both = cli(env, "user", "add", "cli-both", "--admin", "--role", "viewer")
    assert both.returncode != 0
    promoted = cli(env, "user", "role", "cli-viewer", "admin")
    assert promoted.returncode == 0, promoted.stderr
    assert client.post("/api/maintenance", json={"active": False}, headers=auth).status_code == 200
    assert cli(env, "user", "role", "nobody-at-all", "admin").returncode == 1
    assert cli(env, "user", "role", "cli-viewer", "emperor").returncode == 2
    with app.extensions["skald"].db() as db:
        row = db.query(User).filter_by(name="cli-viewer").one()
        assert row.role == "admin" and row.auth_epoch == 1


@pytest.mark.parametrize("who", ["user", "viewer", "admin"])
def test_pages_offer_only_what_the_role_may_do(client, people, who):
    nav = client.get("/", headers=people[who]["headers"]).get_data(as_text=True)
    assert ('href="/admin"' in nav) == (who != "user")
    assert 'href="/account"' in nav
    if who == "user":
        return
    page = client.get("/admin", headers=people[who]["headers"]).get_data(as_text=True)
    form = page.split('id="maintenance-form"', 1)[1].split(">", 1)[0]
    cancel = page.split('id="task-cancel"', 1)[1].split(">", 1)[0]
    assert ("hidden" in form) == (who == "viewer") and ("hidden" in cancel) == (who == "viewer")
