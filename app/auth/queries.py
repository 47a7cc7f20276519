"""SQL of the auth domain: each function answers one question, with bound parameters only."""

from datetime import datetime
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient


async def token_owner(client: AsyncClient, token_hash: str) -> tuple[str, UUID | None, UUID | None] | None:
    """(kind, user_id, workspace_id) of the token with this hash."""
    result = await client.query(
        "SELECT kind, user_id, workspace_id FROM tokens FINAL WHERE token_hash = {hash:String} LIMIT 1",
        parameters={"hash": token_hash},
    )
    return tuple(result.result_rows[0]) if result.result_rows else None  # type: ignore[return-value]


async def workspace_by_id(client: AsyncClient, workspace_id: UUID) -> tuple[UUID, str, datetime] | None:
    result = await client.query(
        "SELECT id, name, created_at FROM workspaces FINAL WHERE id = {id:UUID}", parameters={"id": workspace_id}
    )
    return tuple(result.result_rows[0]) if result.result_rows else None  # type: ignore[return-value]


async def workspaces_of_user(client: AsyncClient, user_id: UUID) -> dict[UUID, str]:
    """The workspaces the user belongs to, with the user's role in each."""
    result = await client.query(
        "SELECT workspace_id, role FROM memberships FINAL WHERE user_id = {user:UUID} AND NOT removed",
        parameters={"user": user_id},
    )
    return {row[0]: row[1] for row in result.result_rows}


async def all_workspaces(client: AsyncClient) -> list[tuple[UUID, str, datetime]]:
    result = await client.query("SELECT id, name, created_at FROM workspaces FINAL ORDER BY created_at, id")
    return [tuple(row) for row in result.result_rows]  # type: ignore[misc]


async def workspaces_by_ids(client: AsyncClient, ids: list[UUID]) -> list[tuple[UUID, str, datetime]]:
    result = await client.query(
        "SELECT id, name, created_at FROM workspaces FINAL WHERE id IN {ids:Array(UUID)} ORDER BY created_at, id",
        parameters={"ids": ids},
    )
    return [tuple(row) for row in result.result_rows]  # type: ignore[misc]


async def user_by_id(client: AsyncClient, user_id: UUID) -> tuple[UUID, str, str | None] | None:
    result = await client.query(
        "SELECT id, email, name FROM users FINAL WHERE id = {id:UUID}", parameters={"id": user_id}
    )
    return tuple(result.result_rows[0]) if result.result_rows else None  # type: ignore[return-value]


async def email_taken(client: AsyncClient, email: str) -> bool:
    result = await client.query(
        "SELECT count() FROM users FINAL WHERE lowerUTF8(email) = lowerUTF8({email:String})",
        parameters={"email": email},
    )
    return result.result_rows[0][0] > 0


async def insert_workspace(client: AsyncClient, workspace_id: UUID, name: str, created_at: datetime) -> None:
    await client.insert("workspaces", [[workspace_id, name, created_at]], column_names=["id", "name", "created_at"])


async def insert_user(client: AsyncClient, user_id: UUID, email: str, name: str | None, created_at: datetime) -> None:
    await client.insert(
        "users", [[user_id, email, name, created_at]], column_names=["id", "email", "name", "created_at"]
    )


async def insert_membership(client: AsyncClient, workspace_id: UUID, user_id: UUID, role: str, removed: bool) -> None:
    await client.insert(
        "memberships",
        [[workspace_id, user_id, role, removed]],
        column_names=["workspace_id", "user_id", "role", "removed"],
    )


async def insert_token(
    client: AsyncClient, token_hash: str, kind: str, user_id: UUID | None, workspace_id: UUID | None, name: str,
    created_at: datetime,
) -> None:
    await client.insert(
        "tokens",
        [[token_hash, kind, user_id, workspace_id, name, created_at]],
        column_names=["token_hash", "kind", "user_id", "workspace_id", "name", "created_at"],
    )
