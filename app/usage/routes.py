from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import Controller, Request, get
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from app.auth.service import WorkspaceAccess
from app.events import queries as event_queries
from app.events.service import Cursor, continued_position
from app.pagination import encode_cursor, listing_of
from app.usage import service
from app.usage.schemas import UsageRecord, UsageRecordPage, UsageSeries, UsageSnapshot

Take = Annotated[int, Parameter(ge=1, le=100)]


class UsageRecordController(Controller):
    """Records are immutable: only GET is routed, so every other method on these paths is a 405."""

    path = "/api/usage/records"
    tags = ["usage"]

    @get("/")
    async def list_records(
        self, request: Request, client: AsyncClient, workspace: WorkspaceAccess,
        types: Annotated[list[str] | None, Parameter(query="type")] = None,
        order: Literal["asc", "desc"] = "desc", take: Take = 20, cursor: str | None = None,
    ) -> UsageRecordPage:
        where = service.record_filter(types, dict(request.query_params.dict()))
        listing = listing_of(request, order)
        position = continued_position(cursor, listing)
        as_of = position.as_of if position else datetime.now(UTC)
        after = (position.timestamp, position.id) if position else None
        rows = await event_queries.event_page(
            client, workspace.workspace_id, where, order == "desc", after, as_of, take + 1
        )
        items = [service.record_from_row(row) for row in rows[:take]]
        next_cursor = (encode_cursor(Cursor(items[-1].created_at, items[-1].id, as_of, listing))
                       if len(rows) > take else None)
        return UsageRecordPage(items, next_cursor)

    # A str path parameter, not uuid: any id under this path exists as a path, so PUT/PATCH/DELETE are 405.
    @get("/{record_id:str}")
    async def get_record(self, client: AsyncClient, workspace: WorkspaceAccess, record_id: str) -> UsageRecord:
        try:
            event_id = UUID(record_id)
        except ValueError:
            raise NotFoundException(detail="Usage record not found") from None
        row = await event_queries.event_by_id(client, workspace.workspace_id, event_id)
        if row is None:
            raise NotFoundException(detail="Usage record not found")
        return service.record_from_row(row)


class UsageController(Controller):
    path = "/api/usage"
    tags = ["usage"]

    @get("/")
    async def usage_snapshot(self, client: AsyncClient, workspace: WorkspaceAccess) -> UsageSnapshot:
        return await service.month_snapshot(client, workspace.workspace_id, datetime.now(UTC))

    @get("/series")
    async def usage_series(self, client: AsyncClient, workspace: WorkspaceAccess) -> UsageSeries:
        return await service.usage_series(client, workspace.workspace_id, datetime.now(UTC))
