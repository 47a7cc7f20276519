"""Which events are a customer's: one identity, whether they named it by id or by external id."""

from collections.abc import Sequence
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.customers.queries import customers_by_reference


def customer_key(customer_id: UUID | None, external_id: str | None) -> str:
    """One identity per customer: its external id once it has one, else its id."""
    return f"x:{external_id}" if external_id is not None else f"c:{customer_id}"


async def identity_keys(
    client: AsyncClient, workspace_id: UUID, customer_ids: Sequence[UUID], external_ids: Sequence[str]
) -> list[str]:
    """The events.customer_key values of the customers named by these ids and external ids: a customer's
    events sent by id before it had an external id are under its id ('c:'), the others under its external id
    ('x:'), which events may name before any customer has it."""
    keys = {customer_key(customer_id, None) for customer_id in customer_ids}
    keys |= {customer_key(None, external_id) for external_id in external_ids}
    for customer_id, external_id in await customers_by_reference(client, workspace_id, list(customer_ids),
                                                                   list(external_ids)):
        keys.add(customer_key(customer_id, None))
        if external_id is not None:
            keys.add(customer_key(None, external_id))
    return sorted(keys)
