"""SQL of the usage domain. Records are read with the events domain's queries; here only the daily totals."""

from datetime import date, datetime
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

CONVERSATION_CREATED = "conversation.created"
MESSAGE_CREATED = "message.created"
TOKENS_FIELD = "_llm.total_tokens"


async def daily_usage(
    client: AsyncClient, workspace_id: UUID, start: datetime, end: datetime
) -> dict[date, tuple[int, int, int]]:
    """(tokens, conversations, messages) per UTC day in [start, end), both midnights; days without are absent.

    From the daily rollups of schema/0003_rollups.sql: whole UTC days are their buckets, and they hold every
    stored event once, so they give the raw table's numbers. Tokens are a Float64 sum there, exact for integer
    totals below 2**53.
    """
    result = await client.query(
        "SELECT day, sum(tokens), sum(conversations), sum(messages) FROM ("
        "  SELECT toDate(bucket) AS day, toFloat64(0) AS tokens, "
        "         sumIf(occurrences, name = {conversation:String}) AS conversations, "
        "         sumIf(occurrences, name = {message:String}) AS messages "
        "  FROM event_stats_1d WHERE workspace_id = {workspace:UUID} "
        "  AND name IN ({conversation:String}, {message:String}) "
        "  AND bucket >= {start:DateTime('UTC')} AND bucket < {end:DateTime('UTC')} GROUP BY day "
        "  UNION ALL "
        "  SELECT toDate(bucket) AS day, sum(value_total), toUInt64(0), toUInt64(0) "
        "  FROM field_stats_1d WHERE workspace_id = {workspace:UUID} AND field = {tokens:String} "
        "  AND bucket >= {start:DateTime('UTC')} AND bucket < {end:DateTime('UTC')} GROUP BY day"
        ") GROUP BY day",
        parameters={"workspace": workspace_id, "start": start, "end": end, "tokens": TOKENS_FIELD,
                    "conversation": CONVERSATION_CREATED, "message": MESSAGE_CREATED},
    )
    return {row[0]: (round(row[1]), int(row[2]), int(row[3])) for row in result.result_rows}
