"""Dense numbers per workspace for keys that rollups count distinct of, allotted as their first events are stored.

Roaring bitmaps of these numbers (groupBitmap) merge exactly, and fast only while the numbers are dense, which
hashes or UUIDs are not: customers (schema/0008, app/customers/numbers.py) and file shares (schema/0014). A
number, once written, never changes, so a process may keep what it has seen. New numbers are allotted under a
claim on the workspace's numbering: across API processes that is the same Redis claim as the dedup of external
ids, with the same guarantee (while Redis is away only the process's own claims hold).
"""

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.events import queries
from app.events.claims import LocalClaims, RedisClaims

# Past this many remembered numbers the memory starts over; they are read back from the store as needed.
REMEMBERED_NUMBERS = 500_000


@dataclass(frozen=True, slots=True)
class Numbering:
    """Where a kind of key gets its numbers: a table (workspace_id, <key column>, number), and the claim its
    allotment runs under (no external id's claim key: those all start with "x:")."""

    table: str
    key_column: str
    claim: str


class DenseNumbers:
    def __init__(self, client: AsyncClient, claims: LocalClaims | RedisClaims, numbering: Numbering) -> None:
        self.client = client
        self.claims = claims
        self.numbering = numbering
        self._known: dict[tuple[str, str], int] = {}

    async def of(self, workspace_id: UUID, keys: Iterable[str]) -> dict[str, int]:
        """The number of each key, allotting those never seen before."""
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

    async def per_workspace(self, keys: dict[UUID, set[str]]) -> dict[UUID, dict[str, int]]:
        """`of` for the keys of several workspaces at once."""
        found = await asyncio.gather(*(self.of(workspace_id, named) for workspace_id, named in keys.items()))
        return dict(zip(keys, found, strict=True))

    async def _stored_or_allotted(self, workspace_id: UUID, keys: list[str]) -> dict[str, int]:
        found = await queries.stored_numbers(self.client, self.numbering, workspace_id, keys)
        if len(found) == len(keys):
            return found
        async with self.claims.claim(workspace_id, [self.numbering.claim]):
            # Another process may have allotted some while this one waited for the claim.
            found |= await queries.stored_numbers(self.client, self.numbering, workspace_id,
                                                  [key for key in keys if key not in found])
            new = [key for key in keys if key not in found]
            if new:
                allotted = await self._allot(workspace_id, new)
                await queries.insert_numbers(self.client, self.numbering, workspace_id, allotted)
                found |= allotted
        return found

    async def _allot(self, workspace_id: UUID, keys: list[str]) -> dict[str, int]:
        """Numbers for keys never numbered: the next ones after the workspace's highest."""
        return await self._after_highest(workspace_id, keys)

    async def _after_highest(self, workspace_id: UUID, keys: Iterable[str]) -> dict[str, int]:
        fresh = sorted(keys)
        first = await queries.highest_number(self.client, self.numbering, workspace_id) + 1
        return dict(zip(fresh, range(first, first + len(fresh)), strict=True))

    def _remember(self, workspace: str, numbers: dict[str, int]) -> None:
        if len(self._known) + len(numbers) > REMEMBERED_NUMBERS:
            self._known.clear()
        self._known.update({(workspace, key): number for key, number in numbers.items()})


# File shares: the metadata's string `share_id` (events.share_id, schema/0013) numbered per workspace (0014).
SHARE_NUMBERING = Numbering("share_numbers", "share_id", "#share-numbers")
SHARE_KEY = "share_id"
