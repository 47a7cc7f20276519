"""Dense numbers for the customers of a workspace (app/events/numbers.py says how numbers are kept and allotted).

The rollups count distinct customers with Roaring bitmaps of these numbers (schema/0008). A number stands for one
customer: its keys (events.customer_key: 'c:<id>' for events sent by id before it had an external id, 'x:<external
id>' after) share it, so the raw table counts distinct customers by number too.
"""

from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.customers import queries
from app.customers.service import customer_key
from app.events.claims import LocalClaims, RedisClaims
from app.events.numbers import DenseNumbers, Numbering
from app.events.queries import stored_numbers

CUSTOMER_NUMBERING = Numbering("customer_numbers", "customer_key", "#customer-numbers")


class CustomerNumbers(DenseNumbers):
    def __init__(self, client: AsyncClient, claims: LocalClaims | RedisClaims) -> None:
        super().__init__(client, claims, CUSTOMER_NUMBERING)

    async def join(self, workspace_id: UUID, customer_id: UUID, external_id: str) -> None:
        """A customer just given an external id: events named it by id ('c:<id>') and by that external id
        before; when both were numbered apart, the id's number becomes an alias of the external id's (schema/0019),
        under which its events are numbered from now on. Under the numbering's claim, so that no round numbers
        either key meanwhile."""
        by_id, by_external = customer_key(customer_id, None), customer_key(None, external_id)
        async with self.claims.claim(workspace_id, [self.numbering.claim]):
            found = await stored_numbers(self.client, self.numbering, workspace_id, [by_id, by_external])
            if len(found) == 2 and found[by_id] != found[by_external]:
                await queries.insert_number_alias(self.client, workspace_id, found[by_id], found[by_external])

    async def _allot(self, workspace_id: UUID, keys: list[str]) -> dict[str, int]:
        """A customer given an external id after events named it by id keeps the number of those events
        ('c:<id>'), so they and the ones sent since are one customer to count."""
        external_ids = [key[2:] for key in keys if key.startswith("x:")]
        allotted = await queries.numbers_by_customer_id(self.client, workspace_id, external_ids) if external_ids else {}
        return allotted | await self._after_highest(workspace_id, (key for key in keys if key not in allotted))
