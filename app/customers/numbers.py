"""Dense numbers for the customers of a workspace, allotted as their first events are stored.

The rollups count distinct customers with Roaring bitmaps of these numbers (schema/0008): exact, and fast to
merge only while the numbers are dense, which hashes or UUIDs are not. A number stands for one customer: its
keys (events.customer_key: 'c:<id>' for events sent by id before it had an external id, 'x:<external id>'
after) share it, so the raw table counts distinct customers by number too. A number, once written, never
changes, so a process may keep what it has seen. New numbers are allotted under a claim on the workspace's
numbering: across API processes that is the same Redis claim as the dedup of external ids, with the same
guarantee (while Redis is away only the process's own claims hold).
"""

from collections.abc import Iterable
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.customers import queries
from app.events.claims import LocalClaims, RedisClaims

# Not an external id's claim key: those all start with "x:".
NUMBERING_CLAIM = "#customer-numbers"
# Past this many remembered numbers the memory starts over; they are read back from the store as needed.
REMEMBERED_NUMBERS = 500_000


class CustomerNumbers:
    def __init__(self, client: AsyncClient, claims: LocalClaims | RedisClaims) -> None:
        self.client = client
        self.claims = claims
        self._known: dict[tuple[str, str], int] = {}

    async def of(self, workspace_id: UUID, keys: Iterable[str]) -> dict[str, int]:
        """The number of each customer key, allotting those never seen before."""
        workspace = str(workspace_id)
        numbers, unknown = {}, []
        for key in set(keys):
            number = self._known.get((workspace, key))
            if number is None:
                unknown.append(key)
            else:
                numbers[key] = number
        if unknown:
            found = await self._stored_or_allotted(workspace_id, unknown)
            self._remember(workspace, found)
            numbers.update(found)
        return numbers

    async def _stored_or_allotted(self, workspace_id: UUID, keys: list[str]) -> dict[str, int]:
        found = await queries.customer_numbers(self.client, workspace_id, keys)
        if len(found) == len(keys):
            return found
        async with self.claims.claim(workspace_id, [NUMBERING_CLAIM]):
            # Another process may have allotted some while this one waited for the claim.
            found |= await queries.customer_numbers(self.client, workspace_id, [k for k in keys if k not in found])
            new = [key for key in keys if key not in found]
            if new:
                allotted = await self._allot(workspace_id, new)
                await queries.insert_customer_numbers(self.client, workspace_id, allotted)
                found |= allotted
        return found

    async def _allot(self, workspace_id: UUID, keys: list[str]) -> dict[str, int]:
        """Numbers for keys never numbered. A customer given an external id after events named it by id keeps
        the number of those events ('c:<id>'), so they and the ones sent since are one customer to count."""
        external_ids = [key[2:] for key in keys if key.startswith("x:")]
        allotted = await queries.numbers_by_customer_id(self.client, workspace_id, external_ids) if external_ids else {}
        fresh = sorted(key for key in keys if key not in allotted)
        first = await queries.highest_customer_number(self.client, workspace_id) + 1
        return allotted | dict(zip(fresh, range(first, first + len(fresh)), strict=True))

    def _remember(self, workspace: str, numbers: dict[str, int]) -> None:
        if len(self._known) + len(numbers) > REMEMBERED_NUMBERS:
            self._known.clear()
        self._known.update({(workspace, key): number for key, number in numbers.items()})
