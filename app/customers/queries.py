"""SQL of the customers domain."""

from datetime import datetime
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.warehouse.client import string_sets

CUSTOMER_COLUMNS = "id, external_id, email, name, metadata, created_at"


async def customers_by_reference(
    client: AsyncClient, workspace_id: UUID, ids: list[UUID], external_ids: list[str]
) -> list[tuple[UUID, str | None]]:
    """(id, external_id) of the live customers named by any of these ids or external ids."""
    result = await client.query(
        "SELECT id, external_id FROM customers FINAL WHERE workspace_id = {workspace:UUID} AND NOT deleted "
        "AND (toString(id) IN (SELECT value FROM ids) OR external_id IN (SELECT value FROM external_ids))",
        parameters={"workspace": workspace_id},
        external_data=string_sets(ids=map(str, ids), external_ids=external_ids),
    )
    return [(row[0], row[1]) for row in result.result_rows]


async def customer_row(client: AsyncClient, workspace_id: UUID, reference: str) -> tuple | None:
    """A live customer by its id (in either case, as other routes take ids) or its external id."""
    result = await client.query(
        f"SELECT {CUSTOMER_COLUMNS} FROM customers FINAL WHERE workspace_id = {{workspace:UUID}} AND NOT deleted "
        "AND (toString(id) = lower({ref:String}) OR external_id = {ref:String}) "
        "ORDER BY toString(id) = lower({ref:String}) DESC LIMIT 1",
        parameters={"workspace": workspace_id, "ref": reference},
    )
    return tuple(result.result_rows[0]) if result.result_rows else None


async def external_id_taken(client: AsyncClient, workspace_id: UUID, external_id: str, other_than: UUID | None) -> bool:
    result = await client.query(
        "SELECT count() FROM customers FINAL WHERE workspace_id = {workspace:UUID} AND NOT deleted "
        "AND external_id = {external_id:String} AND id != {other:UUID}",
        parameters={"workspace": workspace_id, "external_id": external_id,
                    "other": other_than or UUID(int=0)},
    )
    return result.result_rows[0][0] > 0


async def customer_page(
    client: AsyncClient, workspace_id: UUID, after: tuple[datetime, UUID] | None, take: int
) -> list[tuple]:
    """Live customers, oldest first, keyset-paged by (created_at, id)."""
    keyset = "AND (created_at, id) > ({after_at:DateTime64(3, 'UTC')}, {after_id:UUID})" if after else ""
    result = await client.query(
        f"SELECT {CUSTOMER_COLUMNS} FROM customers FINAL WHERE workspace_id = {{workspace:UUID}} AND NOT deleted "
        f"{keyset} ORDER BY created_at, id LIMIT {{take:UInt32}}",
        parameters={"workspace": workspace_id, "take": take,
                    **({"after_at": after[0], "after_id": after[1]} if after else {})},
    )
    return [tuple(row) for row in result.result_rows]


async def insert_customer_version(
    client: AsyncClient, workspace_id: UUID, row: tuple, deleted: bool = False
) -> None:
    await client.insert(
        "customers",
        [[workspace_id, *row, deleted]],
        column_names=["workspace_id", "id", "external_id", "email", "name", "metadata", "created_at", "deleted"],
    )


def _aliases(workspace: str) -> str:
    """(aliases, their canonical numbers) of a workspace's customer numbers (schema/0019), as two constant arrays;
    `workspace` is the SQL of the bound workspace id."""
    return (f"(SELECT (groupArray(number), groupArray(canonical)) FROM customer_number_aliases FINAL "
            f"WHERE workspace_id = {workspace})")


def _aliases_by_canonical(workspace: str) -> str:
    """(canonical numbers, the aliases of each) of a workspace, as two constant arrays."""
    return (f"(SELECT (groupArray(canonical), groupArray(numbers)) FROM (SELECT canonical, groupArray(number) AS "
            f"numbers FROM customer_number_aliases FINAL WHERE workspace_id = {workspace} GROUP BY canonical))")


def distinct_customers_of_numbers(workspace: str) -> str:
    """The exact count of distinct customers among events' customer_number, one customer's aliases as one."""
    aliases = _aliases(workspace)
    return f"uniqExact(transform(customer_number, {aliases}.1, {aliases}.2, customer_number))"


def distinct_customers_of_bitmaps(workspace: str) -> str:
    """The same over rollup rows' bitmaps of customer numbers (`customers`), merged: the union's size, less,
    for each canonical number, all but one of it and its aliases where any is present. (bitmapTransform would
    say it shorter, but copies every bitmap, aliases or none: 6 ms more for 600 of them.)"""
    aliases = _aliases_by_canonical(workspace)
    return ("bitmapCardinality(groupBitmapMergeState(customers) AS merged) - arraySum(arrayMap((canonical, numbers) "
            "-> greatest(0, arrayCount(n -> bitmapContains(merged, n), numbers) + bitmapContains(merged, canonical) "
            f"- 1), {aliases}.1, {aliases}.2))")


async def insert_number_alias(client: AsyncClient, workspace_id: UUID, number: int, canonical: int) -> None:
    await client.insert("customer_number_aliases", [[workspace_id, number, canonical]],
                        column_names=["workspace_id", "number", "canonical"])


async def numbers_by_customer_id(client: AsyncClient, workspace_id: UUID, external_ids: list[str]) -> dict[str, int]:
    """For the live customers with these external ids whose events, sent by id before they had one, are
    numbered: 'x:<external id>' -> that number."""
    result = await client.query(
        "SELECT 'x:' || assumeNotNull(c.external_id), min(n.number) FROM customer_numbers AS n "
        "INNER JOIN (SELECT id, external_id FROM customers FINAL WHERE workspace_id = {workspace:UUID} "
        "            AND NOT deleted AND external_id IN (SELECT value FROM wanted)) AS c "
        "ON n.customer_key = 'c:' || toString(c.id) "
        "WHERE n.workspace_id = {workspace:UUID} GROUP BY c.external_id",
        parameters={"workspace": workspace_id},
        external_data=string_sets(wanted=external_ids),
    )
    return dict(result.result_rows)
