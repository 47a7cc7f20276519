from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import Controller, get, post
from litestar.datastructures import State

from app.apps import service
from app.apps.schemas import (
    ApiHistory,
    App,
    AppCreate,
    AppStats,
    DatabaseCreate,
    DatabaseCredentials,
    Preview,
    PreviewRequest,
    Table,
)
from app.auth.service import WorkspaceAccess
from app.events.service import EventStore
from app.warehouse.embedded import users_folder


class AppController(Controller):
    """`{reference}` is the app's UUID or its slug, within the caller's workspace."""

    path = "/api/apps"
    tags = ["apps"]

    @post("/")
    async def create_app(
        self, client: AsyncClient, workspace: WorkspaceAccess, events: EventStore, data: AppCreate
    ) -> App:
        workspace.require("member")
        return await service.create_app(client, events.claims, workspace.workspace_id, data.name, data.slug)

    @get("/")
    async def list_apps(self, client: AsyncClient, workspace: WorkspaceAccess) -> list[App]:
        return await service.list_apps(client, workspace.workspace_id)

    @get("/{reference:str}")
    async def get_app(self, client: AsyncClient, workspace: WorkspaceAccess, reference: str) -> App:
        return (await service.find_app(client, workspace.workspace_id, reference)).public

    @get("/{reference:str}/stats")
    async def app_stats(self, client: AsyncClient, workspace: WorkspaceAccess, reference: str) -> AppStats:
        app = await service.find_app(client, workspace.workspace_id, reference)
        return await service.app_stats(client, app)

    @post("/{reference:str}/database")
    async def create_database(
        self, client: AsyncClient, workspace: WorkspaceAccess, state: State, reference: str,
        data: DatabaseCreate | None = None,
    ) -> DatabaseCredentials:
        workspace.require("admin")
        app = await service.find_app(client, workspace.workspace_id, reference)
        return await service.provision_database(client, app, (data or DatabaseCreate()).quota_bytes,
                                                users_folder(state.settings.data_path))

    @get("/{reference:str}/stats/tables")
    async def list_tables(self, client: AsyncClient, workspace: WorkspaceAccess, reference: str) -> list[Table]:
        workspace.require("member")
        app = await service.find_app(client, workspace.workspace_id, reference)
        return await service.list_tables(client, app)

    @post("/{reference:str}/stats/tables/{table:str}/preview", status_code=200)
    async def preview_table(
        self, client: AsyncClient, workspace: WorkspaceAccess, reference: str, table: str,
        data: PreviewRequest | None = None,
    ) -> Preview:
        workspace.require("member")
        app = await service.find_app(client, workspace.workspace_id, reference)
        page = data or PreviewRequest()
        return await service.preview_table(client, app, table, page.limit, page.offset)

    @get("/{reference:str}/stats/api")
    async def api_history(self, client: AsyncClient, workspace: WorkspaceAccess, reference: str) -> ApiHistory:
        workspace.require("member")
        app = await service.find_app(client, workspace.workspace_id, reference)
        return await service.api_history(client, app)
