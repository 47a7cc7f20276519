"""Events read as usage records, and the daily usage series and monthly snapshot."""

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient

from app.events.queries import EventFilter, metadata_pair
from app.events.service import listing_filter, metadata_filters
from app.usage import queries
from app.usage.schemas import UsageRecord, UsageSeries, UsageSnapshot

# Metadata keys that become the record's relation ids (the source document's names, camelCase).
RELATION_KEYS = (
    "conversationId", "messageId", "taskId", "contactId", "blueprintId", "botId", "datasetId", "skillsetId", "abilityId",
)
SERIES_DAYS = 90
DAY = timedelta(days=1)


def record_from_row(row: tuple) -> UsageRecord:
    """A row of the events domain's OUTPUT_COLUMNS as a usage record.

    What becomes a field of the record (a string relation id, a numeric `count`) leaves `meta`; everything else
    stays there as sent, `_llm` and `_cost` included.
    """
    metadata: dict[str, Any] = msgspec.json.decode(row[11] or "{}")
    relations = {key: metadata.pop(key) for key in RELATION_KEYS if isinstance(metadata.get(key), str)}
    count = _count(metadata)
    return UsageRecord(
        id=row[0], type=row[1], count=count,
        conversation_id=relations.get("conversationId"), message_id=relations.get("messageId"),
        task_id=relations.get("taskId"), contact_id=relations.get("contactId"),
        blueprint_id=relations.get("blueprintId"), bot_id=relations.get("botId"),
        dataset_id=relations.get("datasetId"), skillset_id=relations.get("skillsetId"),
        ability_id=relations.get("abilityId"),
        meta=metadata, created_at=row[2], updated_at=row[2],  # immutable: never updated after creation
    )


def _count(metadata: dict[str, Any]) -> int | float:
    """`count` if numeric (taken out of the metadata), else `_llm.total_tokens`, else 1."""
    if _is_number(metadata.get("count")):
        return metadata.pop("count")
    llm = metadata.get("_llm")
    if isinstance(llm, dict) and _is_number(llm.get("total_tokens")):
        return llm["total_tokens"]
    return 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def record_filter(types: list[str] | None, query: dict[str, list[str]]) -> EventFilter:
    """`type`, the relation ids (camelCase query parameters, repeatable) and `meta[...]`, all combined."""
    where = listing_filter(types, None, None, None, None, None, None, metadata_filters(query))
    for index, key in enumerate(RELATION_KEYS):
        values = query.get(key)
        if values:
            # A relation id is a string value of its key.
            pair = metadata_pair(f"rel_key{index}", "s", "value")
            where.add(f"hasAny(meta_pairs, arrayMap(value -> {pair}, {{rel_values{index}:Array(String)}}))",
                      **{f"rel_key{index}": key, f"rel_values{index}": values})
    return where


def utc_today(now: datetime) -> date:
    return now.astimezone(UTC).date()


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _unix_ms(day: date) -> int:
    return int(midnight(day).timestamp()) * 1000


async def usage_series(client: AsyncClient, workspace_id: UUID, now: datetime) -> UsageSeries:
    """The last 90 UTC days, today included, oldest first, days without usage as zeros."""
    first = utc_today(now) - (SERIES_DAYS - 1) * DAY
    days = [first + offset * DAY for offset in range(SERIES_DAYS)]
    totals = await queries.daily_usage(client, workspace_id, midnight(first), midnight(days[-1] + DAY))
    rows = [(_unix_ms(day), totals.get(day, (0, 0, 0))) for day in days]
    return UsageSeries(
        tokens=[(ms, values[0]) for ms, values in rows],
        conversations=[(ms, values[1]) for ms, values in rows],
        messages=[(ms, values[2]) for ms, values in rows],
    )


async def month_snapshot(client: AsyncClient, workspace_id: UUID, now: datetime) -> UsageSnapshot:
    today = utc_today(now)
    start = today.replace(day=1)
    end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    totals = (await queries.daily_usage(client, workspace_id, midnight(start), midnight(end))).values()
    return UsageSnapshot(
        start=midnight(start), end=midnight(end),
        tokens=sum(day[0] for day in totals), conversations=sum(day[1] for day in totals),
        messages=sum(day[2] for day in totals),
    )
