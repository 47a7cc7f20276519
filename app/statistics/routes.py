"""GET /api/events/statistics/timeseries (CONTRACT.md section 3)."""

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import MediaType, Response, get

from app.auth.service import WorkspaceAccess
from app.statistics import service

# Which sources answered: rollup grains joined by "+" (e.g. "1h+15m") or "raw". For tests and operators.
SOURCE_HEADER = "X-Statistics-Source"
TOTALS_SOURCE_HEADER = "X-Statistics-Totals-Source"
# How many (field, name, period) percentiles were kept ones of past local days (schema/0020).
KEPT_HEADER = "X-Statistics-Kept-Periods"
# Litestar writes Decimals as strings; the contract wants `_cost.amount` totals as exact JSON numbers.
ENCODER = msgspec.json.Encoder(decimal_format="number")


@get("/api/events/statistics/timeseries", tags=["statistics"])
async def statistics_timeseries(
    client: AsyncClient,
    workspace: WorkspaceAccess,
    start_date: str | None = None,
    end_date: str | None = None,
    interval: str = "day",
    timezone: str = "UTC",
    name: list[str] | None = None,
    customer_id: list[str] | None = None,
    external_customer_id: list[str] | None = None,
    aggregate_fields: list[str] | None = None,
) -> Response[bytes]:
    """Per event name and local calendar period: occurrences, customers, totals, averages and percentiles."""
    span = service.time_range(start_date, end_date, interval, timezone)
    fields = service.field_list(aggregate_fields)
    names = service.name_list(name)
    customer_keys, customer_ids = await service.customer_filter(
        client, workspace.workspace_id, customer_id, external_customer_id
    )
    answer = await service.timeseries(client, workspace.workspace_id, span, fields, names, customer_keys, customer_ids)
    return Response(
        ENCODER.encode(answer.timeseries),
        media_type=MediaType.JSON,
        headers={SOURCE_HEADER: answer.periods_plan.label, TOTALS_SOURCE_HEADER: answer.totals_plan.label,
                 KEPT_HEADER: str(answer.kept)},
    )
