"""GET /api/metrics and GET /api/metrics/limits (CONTRACT.md section 4)."""

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import Controller, MediaType, Response, get

from app.auth.service import WorkspaceAccess
from app.metrics import service
from app.metrics.schemas import IntervalLimit, Limits
from app.statistics import service as statistics

# Which rollup grains answered the per-period aggregates ("1d", "1h+15m", ...) or "raw". For tests and operators.
SOURCE_HEADER = "X-Metrics-Source"
# Litestar writes Decimals as strings; costs are exact and the contract wants JSON numbers.
ENCODER = msgspec.json.Encoder(decimal_format="number")


class MetricsController(Controller):
    path = "/api/metrics"
    tags = ["metrics"]

    @get("/")
    async def metrics_dashboard(
        self,
        client: AsyncClient,
        workspace: WorkspaceAccess,
        start_date: str | None = None,
        end_date: str | None = None,
        interval: str = "day",
        timezone: str = "UTC",
        share_id: list[str] | None = None,
        customer_id: list[str] | None = None,
        external_customer_id: list[str] | None = None,
        metrics: list[str] | None = None,
    ) -> Response[bytes]:
        """The requested metrics (all by default) per local calendar period, with range totals."""
        span = statistics.time_range(start_date, end_date, interval, timezone)
        selected = service.metric_list(metrics)
        share_ids = service.share_list(share_id)
        customer_keys, customer_ids = await statistics.customer_filter(
            client, workspace.workspace_id, customer_id, external_customer_id
        )
        answer, source = await service.dashboard(
            client, workspace.workspace_id, span, selected, share_ids, customer_keys, customer_ids
        )
        return Response(ENCODER.encode(answer), media_type=MediaType.JSON, headers={SOURCE_HEADER: source})

    @get("/limits")
    async def metrics_limits(self, workspace: WorkspaceAccess) -> Limits:
        """The longest range each interval allows; the workspace dependency keeps it to callers who may read one."""
        return Limits([IntervalLimit(interval, days) for interval, days in statistics.RANGE_LIMITS.items()])
