"""CONTRACT.md section 1, a test per row of who may do what."""

import asyncio
import hashlib
import uuid

import pytest
from litestar.testing import TestClient

from app.warehouse.client import connect
from tests.conftest import Tenant, bearer


def as_(api: TestClient, token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}


def new_user(api: TestClient) -> str:
    return api.post("/api/users", json={"email": f"{uuid.uuid4().hex}@example.com"}).json()["id"]


def test_health_needs_no_token_and_everything_else_does(api: TestClient) -> None:
    assert api.get("/api/health", headers={"Authorization": ""}).status_code == 200
    assert api.get("/api/health").json() == {"status": "ok", "clickhouse": "ok", "redis": "ok"}
    response = api.get("/api/workspaces", headers={"Authorization": ""})
    assert response.status_code == 401
    assert response.json()["status_code"] == 401
    assert api.get("/api/workspaces", headers=bearer("evt_unknown")).status_code == 401
    assert api.get("/api/workspaces", headers={"Authorization": "Basic abc"}).status_code == 401


def test_operator_creates_workspaces_users_tokens_and_memberships(api: TestClient) -> None:
    workspace = api.post("/api/workspaces", json={"name": "acme"})
    assert workspace.status_code == 201
    assert set(workspace.json()) == {"id", "name", "created_at"} and workspace.json()["created_at"].endswith("Z")
    # As created, so as read back: the store keeps milliseconds.
    assert workspace.json() in api.get("/api/workspaces").json()
    user = api.post("/api/users", json={"email": "ops@example.com", "name": "Ops"})
    assert user.status_code == 201 and set(user.json()) == {"id", "email", "name"}
    token = api.post(f"/api/users/{user.json()['id']}/tokens")
    assert token.status_code == 201 and token.json()["token"].startswith("evt_")
    member = api.put(f"/api/workspaces/{workspace.json()['id']}/members/{user.json()['id']}", json={"role": "viewer"})
    assert member.status_code == 200
    producer = api.post(f"/api/workspaces/{workspace.json()['id']}/tokens", json={"name": "ingest"})
    assert producer.status_code == 201


@pytest.mark.parametrize("who", ["admin", "member", "viewer", "token"])
def test_only_the_operator_creates_workspaces_and_users(api: TestClient, tenant: Tenant, who: str) -> None:
    headers = as_(api, getattr(tenant, who))
    assert api.post("/api/workspaces", json={"name": "x"}, headers=headers).status_code == 403
    assert api.post("/api/users", json={"email": "x@example.com"}, headers=headers).status_code == 403
    assert api.post(f"/api/users/{new_user(api)}/tokens", headers=headers).status_code == 403


def test_workspace_admin_manages_members_and_tokens_of_its_own_workspace(api: TestClient, tenant: Tenant) -> None:
    headers = as_(api, tenant.admin)
    user_id = new_user(api)
    assert api.put(f"/api/workspaces/{tenant.id}/members/{user_id}", json={"role": "member"}, headers=headers).status_code == 200
    assert api.post(f"/api/workspaces/{tenant.id}/tokens", json={}, headers=headers).status_code == 201


@pytest.mark.parametrize("who", ["member", "viewer", "token"])
def test_below_admin_may_not_manage_members_or_tokens(api: TestClient, tenant: Tenant, who: str) -> None:
    headers = as_(api, getattr(tenant, who))
    user_id = new_user(api)
    assert api.put(f"/api/workspaces/{tenant.id}/members/{user_id}", json={"role": "admin"}, headers=headers).status_code == 403
    assert api.post(f"/api/workspaces/{tenant.id}/tokens", json={}, headers=headers).status_code == 403


@pytest.mark.parametrize("who", ["admin", "member", "viewer", "token"])
def test_another_workspace_is_not_found(api: TestClient, tenant: Tenant, other_tenant: Tenant, who: str) -> None:
    headers = as_(api, getattr(tenant, who))
    user_id = new_user(api)
    assert api.put(f"/api/workspaces/{other_tenant.id}/members/{user_id}", json={"role": "viewer"}, headers=headers).status_code == 404
    assert api.post(f"/api/workspaces/{other_tenant.id}/tokens", json={}, headers=headers).status_code == 404
    listed = {row["id"] for row in api.get("/api/workspaces", headers=headers).json()}
    assert listed == {tenant.id}


def test_unknown_workspace_or_user_is_not_found(api: TestClient, tenant: Tenant) -> None:
    assert api.put(f"/api/workspaces/{uuid.uuid4()}/members/{new_user(api)}", json={"role": "viewer"}).status_code == 404
    assert api.put(f"/api/workspaces/{tenant.id}/members/{uuid.uuid4()}", json={"role": "viewer"}).status_code == 404
    assert api.post(f"/api/users/{uuid.uuid4()}/tokens").status_code == 404


def test_role_changes_and_removal_take_effect(api: TestClient, tenant: Tenant) -> None:
    user_id = new_user(api)
    token = api.post(f"/api/users/{user_id}/tokens").json()["token"]
    assert api.put(f"/api/workspaces/{tenant.id}/members/{user_id}", json={"role": "viewer"}).status_code == 200
    assert api.post(f"/api/workspaces/{tenant.id}/tokens", json={}, headers=as_(api, token)).status_code == 403
    assert api.put(f"/api/workspaces/{tenant.id}/members/{user_id}", json={"role": "admin"}).status_code == 200
    assert api.post(f"/api/workspaces/{tenant.id}/tokens", json={}, headers=as_(api, token)).status_code == 201
    assert api.delete(f"/api/workspaces/{tenant.id}/members/{user_id}").status_code == 204
    assert api.post(f"/api/workspaces/{tenant.id}/tokens", json={}, headers=as_(api, token)).status_code == 404
    assert api.get("/api/workspaces", headers=as_(api, token)).json() == []


def test_validation_and_conflicts(api: TestClient, tenant: Tenant) -> None:
    bad_role = api.put(f"/api/workspaces/{tenant.id}/members/{new_user(api)}", json={"role": "owner"})
    assert bad_role.status_code == 422 and bad_role.json()["extra"]
    assert api.post("/api/users", json={"email": "not-an-email"}).status_code == 422
    assert api.post("/api/workspaces", json={"name": ""}).status_code == 422
    email = f"{uuid.uuid4().hex}@example.com"
    assert api.post("/api/users", json={"email": email}).status_code == 201
    assert api.post("/api/users", json={"email": email.upper()}).status_code == 409


def test_tokens_are_stored_hashed(api: TestClient, clickhouse_url: str, tenant: Tenant) -> None:
    async def dump_tokens() -> str:
        client = await connect(clickhouse_url)
        try:
            return (await client.raw_query("SELECT * FROM tokens FORMAT TSV")).decode()
        finally:
            await client.close()

    stored = asyncio.run(dump_tokens())
    for token in (tenant.token, tenant.admin, tenant.member, tenant.viewer):
        assert token not in stored
        assert hashlib.sha256(token.encode()).hexdigest() in stored
