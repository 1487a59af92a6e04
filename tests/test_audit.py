"""The audit log (PROTOCOL.md, ``GET /api/audit``): who did what, paged, bounded, readers only."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def people(users):
    return {"user": users("audit-user"), "viewer": users("audit-viewer", role="viewer"),
            "admin": users("audit-admin", admin=True)}


def test_maintenance_is_audited_and_paged(client, people):
    admin = people["admin"]["headers"]
    for active in (True, False, True, False):
        resp = client.post("/api/maintenance", headers=admin,
                           json={"active": active, "message": "audit test" if active else ""})
        assert resp.status_code == 200
    first = client.get("/api/audit?limit=2&action=maintenance_off", headers=admin).get_json()
    assert [e["action"] for e in first["entries"]] == ["maintenance_off", "maintenance_off"]
    assert all(e["user"] == "audit-admin" and e["target"] == "cluster" for e in first["entries"])
    page = client.get("/api/audit?limit=3", headers=admin).get_json()
    assert [e["action"] for e in page["entries"]][:3] == ["maintenance_off", "maintenance_on",
                                                          "maintenance_off"]
    assert page["entries"][1]["params"]["message"] == "audit test"
    assert page["next_cursor"] is not None
    rest = client.get(f"/api/audit?limit=500&cursor={page['next_cursor']}", headers=admin).get_json()
    ids = [e["id"] for e in page["entries"] + rest["entries"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    assert rest["next_cursor"] is None


@pytest.mark.parametrize("who, status", [("user", 403), ("viewer", 200), ("admin", 200)])
def test_audit_readers(client, people, who, status):
    assert client.get("/api/audit", headers=people[who]["headers"]).status_code == status


@pytest.mark.parametrize("query", ["cursor=abc", "cursor=-1", "limit=0", "limit=x", "action=" + "a" * 65])
def test_bad_audit_queries(client, people, query):
    resp = client.get(f"/api/audit?{query}", headers=people["admin"]["headers"])
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid"
