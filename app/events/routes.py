from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import Controller, Request, get, patch, post
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from app.auth.service import WorkspaceAccess
from app.customers.service import identity_keys
from app.events import queries, service
from app.events.schemas import EventPage, EventType, EventTypePatch, IngestResult, StoredEvent
from app.events.service import Cursor, EventStore, event_type_id
from app.events.validation import BatchInvalid, batch_invalid, read_body, split_events, validate_events
from app.pagination import encode_cursor, listing_of

Take = Annotated[int, Parameter(ge=1, le=100)]


class EventController(Controller):
    path = "/api/events"
    tags = ["events"]
    exception_handlers = {BatchInvalid: batch_invalid}

    @post("/ingest", status_code=200)
    async def ingest(self, request: Request, workspace: WorkspaceAccess, events: EventStore) -> IngestResult:
        workspace.require("member")
        received_at = datetime.now(UTC)
        body = read_body(await request.body(), request.headers.get("content-encoding"))
        raws = split_events(body, request.headers.get("content-type") or "application/json")
        return await events.ingest(workspace.workspace_id, validate_events(raws, received_at), received_at)

    @get("/")
    async def list_events(
        self, request: Request, client: AsyncClient, workspace: WorkspaceAccess,
        name: list[str] | None = None, customer_id: UUID | None = None, external_customer_id: str | None = None,
        source: Literal["user", "system"] | None = None, start_timestamp: datetime | None = None,
        end_timestamp: datetime | None = None, parent_id: str | None = None,
        depth: Annotated[int | None, Parameter(ge=0, le=service.MAX_DEPTH)] = None,
        order: Literal["asc", "desc"] = "desc",
        take: Take = 20, cursor: str | None = None,
    ) -> EventPage:
        customers = await _customer_keys(client, workspace.workspace_id, customer_id, external_customer_id)
        parent = await _parent(client, workspace.workspace_id, parent_id) if parent_id else None
        where = service.listing_filter(
            name, customers, source, start_timestamp, end_timestamp, parent, depth,
            service.metadata_filters(dict(request.query_params.dict())),
        )
        listing = listing_of(request, order)
        position = service.continued_position(cursor, listing)
        as_of = position.as_of if position else datetime.now(UTC)
        after = (position.timestamp, position.id) if position else None
        rows = await queries.event_page(client, workspace.workspace_id, where, order == "desc", after, as_of, take + 1)
        items = [service.stored_event_from_row(row) for row in rows[:take]]
        next_cursor = (encode_cursor(Cursor(items[-1].timestamp, items[-1].id, as_of, listing))
                       if len(rows) > take else None)
        return EventPage(items, next_cursor)

    @get("/{event_id:uuid}")
    async def get_event(self, client: AsyncClient, workspace: WorkspaceAccess, event_id: UUID) -> StoredEvent:
        row = await queries.event_by_id(client, workspace.workspace_id, event_id)
        if row is None:
            raise NotFoundException(detail="Event not found")
        return service.stored_event_from_row(row, with_children=True)


class EventTypeController(Controller):
    path = "/api/event-types"
    tags = ["events"]

    @get("/")
    async def list_event_types(self, client: AsyncClient, workspace: WorkspaceAccess) -> list[EventType]:
        return [
            EventType(event_type_id(workspace.workspace_id, name), name, label, source, occurrences, first, last)
            for name, label, occurrences, first, last, source in await queries.event_types(client, workspace.workspace_id)
        ]

    @patch("/{type_id:uuid}")
    async def label_event_type(
        self, client: AsyncClient, workspace: WorkspaceAccess, type_id: UUID, data: EventTypePatch
    ) -> EventType:
        workspace.require("member")
        for name, _, occurrences, first, last, source in await queries.event_types(client, workspace.workspace_id):
            if event_type_id(workspace.workspace_id, name) == type_id:
                await queries.insert_event_type_label(client, workspace.workspace_id, name, data.label)
                return EventType(type_id, name, data.label, source, occurrences, first, last)
        raise NotFoundException(detail="Event type not found")


async def _customer_keys(
    client: AsyncClient, workspace_id: UUID, customer_id: UUID | None, external_customer_id: str | None
) -> list[str] | None:
    """The identity keys a customer filter stands for; None for no filter. Filters combine: with both, the keys
    of the one customer both name, none when they name two."""
    named = []
    if customer_id is not None:
        named.append(set(await identity_keys(client, workspace_id, [customer_id], [])))
    if external_customer_id is not None:
        named.append(set(await identity_keys(client, workspace_id, [], [external_customer_id])))
    return sorted(set.intersection(*named)) if named else None


async def _parent(client: AsyncClient, workspace_id: UUID, reference: str) -> UUID:
    """An event's id from its id or its external id; the nil UUID (no children) when there is none."""
    found = await queries.stored_keys(client, workspace_id, service.reference_keys(reference))
    match = service.stored_reference(reference, found)
    return match[0] if match else UUID(int=0)
