"""Who is calling, and what they may do in a workspace."""

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Literal
from uuid import UUID, uuid4

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar.exceptions import NotFoundException, PermissionDeniedException

from app.auth import queries
from app.errors import invalid
from app.warehouse.client import stored_now

ROLE_RANK = {"viewer": 0, "member": 1, "admin": 2}
TOKEN_PREFIX = "evt_"


class Principal(msgspec.Struct, frozen=True):
    kind: Literal["operator", "user", "workspace"]
    user_id: UUID | None = None
    workspace_id: UUID | None = None


class WorkspaceAccess(msgspec.Struct, frozen=True):
    """The caller's standing in one workspace."""

    workspace_id: UUID
    role: str
    principal: Principal

    def require(self, role: str) -> "WorkspaceAccess":
        if ROLE_RANK[self.role] < ROLE_RANK[role]:
            raise PermissionDeniedException(detail=f"This needs the {role} role in the workspace")
        return self


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class KnownTokens:
    """Tokens already looked up by this process. A token's owner never changes and no route revokes a token,
    so a hit needs no query; what a user may do is still read from memberships on every request."""

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._owners: dict[str, Principal] = {}

    def get(self, token_hash: str) -> Principal | None:
        return self._owners.get(token_hash)

    def add(self, token_hash: str, principal: Principal) -> None:
        if len(self._owners) >= self.max_size:
            self._owners.clear()
        self._owners[token_hash] = principal


async def authenticate(client: AsyncClient, known: KnownTokens, operator_token: str, token: str) -> Principal | None:
    if hmac.compare_digest(token.encode(), operator_token.encode()):
        return Principal("operator")
    token_hash = hash_token(token)
    if (principal := known.get(token_hash)) is not None:
        return principal
    owner = await queries.token_owner(client, token_hash)
    if owner is None:
        return None
    kind, user_id, workspace_id = owner
    principal = Principal(kind, user_id=user_id, workspace_id=workspace_id)  # type: ignore[arg-type]
    known.add(token_hash, principal)
    return principal


async def readable_workspaces(client: AsyncClient, principal: Principal) -> dict[UUID, str]:
    """Every workspace the principal can read, with its role there."""
    if principal.kind == "operator":
        return {row[0]: "admin" for row in await queries.all_workspaces(client)}
    if principal.kind == "workspace":
        assert principal.workspace_id is not None
        return {principal.workspace_id: "member"}
    assert principal.user_id is not None
    return await queries.workspaces_of_user(client, principal.user_id)


async def workspace_access(client: AsyncClient, principal: Principal, workspace_id: UUID) -> WorkspaceAccess:
    """The caller's role in the workspace; 404 when it cannot read it, so existence does not leak."""
    role: str | None
    if principal.kind == "operator":
        role = "admin" if await queries.workspace_by_id(client, workspace_id) else None
    elif principal.kind == "workspace":
        # A producer's token acts within its own workspace: it ingests and reads, it does not administer.
        role = "member" if principal.workspace_id == workspace_id else None
    else:
        assert principal.user_id is not None
        role = (await queries.workspaces_of_user(client, principal.user_id)).get(workspace_id)
    if role is None:
        raise NotFoundException(detail="Workspace not found")
    return WorkspaceAccess(workspace_id, role, principal)


async def implied_workspace(client: AsyncClient, principal: Principal, workspace_id: UUID | None) -> WorkspaceAccess:
    """Resolve the `workspace_id` query parameter of a workspace-scoped route."""
    if workspace_id is None:
        if principal.kind == "workspace":
            workspace_id = principal.workspace_id
        elif principal.kind == "user":
            assert principal.user_id is not None
            memberships = await queries.workspaces_of_user(client, principal.user_id)
            if len(memberships) == 1:
                workspace_id = next(iter(memberships))
        if workspace_id is None:
            raise invalid("workspace_id", "required: the caller can read more than one workspace, or none")
    return await workspace_access(client, principal, workspace_id)


def require_operator(principal: Principal) -> None:
    if principal.kind != "operator":
        raise PermissionDeniedException(detail="Only the operator may do this")


async def create_workspace(client: AsyncClient, name: str) -> tuple[UUID, str, datetime]:
    workspace = (uuid4(), name, stored_now())
    await queries.insert_workspace(client, *workspace)
    return workspace


async def create_user(client: AsyncClient, email: str, name: str | None) -> tuple[UUID, str, str | None]:
    user_id = uuid4()
    await queries.insert_user(client, user_id, email, name, stored_now())
    return user_id, email, name


async def issue_user_token(client: AsyncClient, user_id: UUID) -> str:
    token = new_token()
    await queries.insert_token(client, hash_token(token), "user", user_id, None, "", stored_now())
    return token


async def issue_workspace_token(client: AsyncClient, workspace_id: UUID, name: str) -> str:
    token = new_token()
    await queries.insert_token(client, hash_token(token), "workspace", None, workspace_id, name, stored_now())
    return token
