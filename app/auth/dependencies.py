"""What handlers ask for by name: the ClickHouse client, the caller, and the caller's workspace."""

from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide

from app.auth.service import Principal, WorkspaceAccess, implied_workspace
from app.events.service import EventStore


def provide_client(state: State) -> AsyncClient:
    return state.clickhouse


def provide_events(state: State) -> EventStore:
    return state.events


def provide_principal(request: Request) -> Principal:
    return request.user


async def provide_workspace(
    client: AsyncClient, principal: Principal, workspace_id: UUID | None = None
) -> WorkspaceAccess:
    return await implied_workspace(client, principal, workspace_id)


DEPENDENCIES = {
    "client": Provide(provide_client, sync_to_thread=False),
    "principal": Provide(provide_principal, sync_to_thread=False),
    "events": Provide(provide_events, sync_to_thread=False),
    "workspace": Provide(provide_workspace),
}
