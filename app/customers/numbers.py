"""Dense numbers for the customers of a workspace, allotted as their first events are stored.

The rollups count distinct customers with Roaring bitmaps of these numbers (schema/0008): exact, and fast to
merge only while the numbers are dense, which hashes or UUIDs are not. A number, once written, never changes,
so a process may keep what it has seen. New numbers are allotted under a claim on the workspace's numbering:
across API processes that is the same Redis claim as the dedup of external ids, with the same guarantee (while
Redis is away only the process's own claims hold).
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
            new = sorted(key for key in keys if key not in found)
            if new:
                first = await queries.highest_customer_number(self.client, workspace_id) + 1
                allotted = dict(zip(new, range(first, first + len(new)), strict=True))
                await queries.insert_customer_numbers(self.client, workspace_id, allotted)
                found |= allotted
        return found

    def _remember(self, workspace: str, numbers: dict[str, int]) -> None:
        if len(self._known) + len(numbers) > REMEMBERED_NUMBERS:
            self._known.clear()
        self._known.update({(workspace, key): number for key, number in numbers.items()})
