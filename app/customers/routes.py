from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated
from uuid import UUID, uuid4

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import Controller, delete, get, patch, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import Parameter
from litestar.status_codes import HTTP_409_CONFLICT

from app.auth.service import WorkspaceAccess
from app.customers import queries
from app.customers.schemas import Customer, CustomerCreate, CustomerPage, CustomerPatch
from app.errors import invalid
from app.events.service import EventStore
from app.pagination import decode_cursor, encode_cursor
from app.usage_metrics.schemas import CustomerUsagePage
from app.usage_metrics.service import customer_usage_page


class CustomerController(Controller):
    path = "/api/customers"
    tags = ["customers"]

    @post("/")
    async def create_customer(
        self, client: AsyncClient, workspace: WorkspaceAccess, events: EventStore, data: CustomerCreate
    ) -> Customer:
        workspace.require("member")
        async with events.claims.claim(workspace.workspace_id, _external_id_keys(data.external_id)):
            await _check_external_id_free(client, workspace.workspace_id, data.external_id, None)
            # A write like an event's: usage listings under way never see the customer appear between their pages.
            async with events.writes.writing([workspace.workspace_id]) as created_at:
                customer = Customer(uuid4(), data.external_id, data.email, data.name, data.metadata, created_at)
                await _save(client, workspace.workspace_id, customer)
        await events.record_customer_event(workspace.workspace_id, "customer.created", customer)
        return customer

    @patch("/{reference:str}")
    async def update_customer(
        self, client: AsyncClient, workspace: WorkspaceAccess, events: EventStore, reference: str, data: CustomerPatch
    ) -> Customer:
        workspace.require("member")
        changes = {name: value for name, value in msgspec.structs.asdict(data).items() if value is not msgspec.UNSET}
        async with _claimed(client, events, workspace.workspace_id, reference, changes.get("external_id")) as customer:
            new_external = changes.get("external_id", customer.external_id)
            if customer.external_id is not None and new_external != customer.external_id:
                # Events are counted under the external id once a customer has one; changing it would split them.
                raise invalid("external_id", "cannot change once set")
            updated = msgspec.structs.replace(customer, **changes)
            given = new_external if customer.external_id is None else None
            await _check_external_id_free(client, workspace.workspace_id, given, customer.id)
            await _save(client, workspace.workspace_id, updated)
        if given is not None:
            await events.numbers.join(workspace.workspace_id, customer.id, given)
        await events.record_customer_event(workspace.workspace_id, "customer.updated", updated)
        return updated

    @delete("/{reference:str}")
    async def delete_customer(
        self, client: AsyncClient, workspace: WorkspaceAccess, events: EventStore, reference: str
    ) -> None:
        workspace.require("member")
        async with _claimed(client, events, workspace.workspace_id, reference) as customer:
            await _save(client, workspace.workspace_id, customer, deleted=True)
        await events.record_customer_event(workspace.workspace_id, "customer.deleted", customer)

    @get("/")
    async def list_customers(
        self, client: AsyncClient, workspace: WorkspaceAccess, events: EventStore,
        take: Annotated[int, Parameter(ge=1, le=100)] = 20, cursor: str | None = None,
        usage_metric: UUID | None = None, sort: str | None = None,
    ) -> CustomerPage | CustomerUsagePage:
        if usage_metric is not None or sort is not None:
            settled = await events.writes.settled(workspace.workspace_id)
            return await customer_usage_page(client, workspace.workspace_id, usage_metric, sort, take, cursor,
                                             settled, _from_row)
        after = decode_cursor(cursor, tuple[datetime, UUID]) if cursor else None
        rows = await queries.customer_page(client, workspace.workspace_id, after, take + 1)
        items = [_from_row(row) for row in rows[:take]]
        next_cursor = encode_cursor((items[-1].created_at, items[-1].id)) if len(rows) > take else None
        return CustomerPage(items, next_cursor)

    @get("/{reference:str}")
    async def get_customer(self, client: AsyncClient, workspace: WorkspaceAccess, reference: str) -> Customer:
        return await _customer(client, workspace.workspace_id, reference)


async def _customer(client: AsyncClient, workspace_id: UUID, reference: str) -> Customer:
    row = await queries.customer_row(client, workspace_id, reference)
    if row is None:
        raise NotFoundException(detail="Customer not found")
    return _from_row(row)


def _external_id_keys(external_id: str | None) -> list[str]:
    """The claim held from the check that no customer has the external id to the write that gives it one, so two
    requests, in any API processes, never both find it free."""
    return [] if external_id is None else [f"customer-external-id:{external_id}"]


@asynccontextmanager
async def _claimed(
    client: AsyncClient, events: EventStore, workspace_id: UUID, reference: str, external_id: str | None = None
) -> AsyncIterator[Customer]:
    """The customer as it is once no other change to it is under way, in any API process: read again under a
    claim on its id (and on an external id it may be given), held until the change is written, so changes to
    one customer follow each other and none writes over another's (a deleted customer is a 404)."""
    found = await _customer(client, workspace_id, reference)
    async with events.claims.claim(workspace_id, [f"customer:{found.id}", *_external_id_keys(external_id)]):
        yield await _customer(client, workspace_id, str(found.id))


async def _check_external_id_free(client: AsyncClient, workspace_id: UUID, external_id: str | None,
                                  other_than: UUID | None) -> None:
    if external_id is not None and await queries.external_id_taken(client, workspace_id, external_id, other_than):
        raise ClientException(status_code=HTTP_409_CONFLICT, detail="A customer has this external_id")


async def _save(client: AsyncClient, workspace_id: UUID, customer: Customer, deleted: bool = False) -> None:
    row = (customer.id, customer.external_id, customer.email, customer.name,
           msgspec.json.encode(customer.metadata).decode(), customer.created_at)
    await queries.insert_customer_version(client, workspace_id, row, deleted)


def _from_row(row: tuple) -> Customer:
    return Customer(row[0], row[1], row[2], row[3], msgspec.json.decode(row[4] or "{}"), row[5])
