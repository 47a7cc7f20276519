from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import Controller, delete, get, post, put
from litestar.exceptions import ClientException, NotFoundException
from litestar.status_codes import HTTP_409_CONFLICT

from app.auth import queries, service
from app.auth.schemas import (
    Membership,
    MembershipPut,
    TokenCreated,
    User,
    UserCreate,
    Workspace,
    WorkspaceCreate,
    WorkspaceTokenCreate,
)
from app.auth.service import Principal
from app.events.service import EventStore


class WorkspaceController(Controller):
    path = "/api/workspaces"
    tags = ["auth"]

    @post("/")
    async def create_workspace(self, client: AsyncClient, principal: Principal, data: WorkspaceCreate) -> Workspace:
        service.require_operator(principal)
        return Workspace(*await service.create_workspace(client, data.name))

    @get("/")
    async def list_workspaces(self, client: AsyncClient, principal: Principal) -> list[Workspace]:
        readable = await service.readable_workspaces(client, principal)
        return [Workspace(*row) for row in await queries.workspaces_by_ids(client, list(readable))]

    @put("/{workspace_id:uuid}/members/{user_id:uuid}")
    async def put_member(
        self, client: AsyncClient, principal: Principal, workspace_id: UUID, user_id: UUID, data: MembershipPut
    ) -> Membership:
        (await service.workspace_access(client, principal, workspace_id)).require("admin")
        if await queries.user_by_id(client, user_id) is None:
            raise NotFoundException(detail="User not found")
        await queries.insert_membership(client, workspace_id, user_id, data.role, removed=False)
        return Membership(workspace_id, user_id, data.role)

    @delete("/{workspace_id:uuid}/members/{user_id:uuid}")
    async def remove_member(self, client: AsyncClient, principal: Principal, workspace_id: UUID, user_id: UUID) -> None:
        (await service.workspace_access(client, principal, workspace_id)).require("admin")
        await queries.insert_membership(client, workspace_id, user_id, "viewer", removed=True)

    @post("/{workspace_id:uuid}/tokens")
    async def create_workspace_token(
        self, client: AsyncClient, principal: Principal, workspace_id: UUID, data: WorkspaceTokenCreate | None = None
    ) -> TokenCreated:
        (await service.workspace_access(client, principal, workspace_id)).require("admin")
        name = data.name if data and data.name else ""
        return TokenCreated(await service.issue_workspace_token(client, workspace_id, name))


class UserController(Controller):
    path = "/api/users"
    tags = ["auth"]

    @post("/")
    async def create_user(
        self, client: AsyncClient, principal: Principal, events: EventStore, data: UserCreate
    ) -> User:
        service.require_operator(principal)
        # Users belong to no workspace: their claims live under the nil one. Emails compare without case.
        async with events.claims.claim(UUID(int=0), [f"user-email:{data.email.lower()}"]):
            if await queries.email_taken(client, data.email):
                raise ClientException(status_code=HTTP_409_CONFLICT, detail="A user with this email exists")
            return User(*await service.create_user(client, data.email, data.name))

    @post("/{user_id:uuid}/tokens")
    async def create_user_token(self, client: AsyncClient, principal: Principal, user_id: UUID) -> TokenCreated:
        service.require_operator(principal)
        if await queries.user_by_id(client, user_id) is None:
            raise NotFoundException(detail="User not found")
        return TokenCreated(await service.issue_user_token(client, user_id))
