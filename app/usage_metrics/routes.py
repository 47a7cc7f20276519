from contextlib import AbstractAsyncContextManager
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import Controller, delete, get, patch, post

from app.auth.service import WorkspaceAccess
from app.events.service import EventStore
from app.usage_metrics import service
from app.usage_metrics.schemas import CustomerUsageMetric, UsageMetric, UsageMetricCreate, UsageMetricPatch
from app.warehouse.client import stored_now


class UsageMetricController(Controller):
    path = "/api/usage-metrics"
    tags = ["usage metrics"]

    @post("/")
    async def create_usage_metric(
        self, client: AsyncClient, workspace: WorkspaceAccess, data: UsageMetricCreate
    ) -> UsageMetric:
        workspace.require("member")
        return await service.create_metric(client, workspace.workspace_id, data)

    @get("/")
    async def list_usage_metrics(self, client: AsyncClient, workspace: WorkspaceAccess) -> list[UsageMetric]:
        return await service.list_metrics(client, workspace.workspace_id)

    @get("/{metric_id:uuid}")
    async def get_usage_metric(self, client: AsyncClient, workspace: WorkspaceAccess, metric_id: UUID) -> UsageMetric:
        return await service.get_metric(client, workspace.workspace_id, metric_id)

    @patch("/{metric_id:uuid}")
    async def update_usage_metric(
        self, client: AsyncClient, workspace: WorkspaceAccess, events: EventStore, metric_id: UUID,
        data: UsageMetricPatch,
    ) -> UsageMetric:
        workspace.require("member")
        async with _metric_claim(events, workspace.workspace_id, metric_id):
            return await service.update_metric(client, workspace.workspace_id, metric_id, data)

    @delete("/{metric_id:uuid}")
    async def delete_usage_metric(
        self, client: AsyncClient, workspace: WorkspaceAccess, events: EventStore, metric_id: UUID
    ) -> None:
        workspace.require("member")
        async with _metric_claim(events, workspace.workspace_id, metric_id):
            await service.delete_metric(client, workspace.workspace_id, metric_id)


def _metric_claim(events: EventStore, workspace_id: UUID, metric_id: UUID) -> AbstractAsyncContextManager:
    """A change reads the metric and writes a whole new version of it: under this claim, in any API process,
    changes to one metric follow each other, so none writes over another's or brings a deleted metric back."""
    return events.claims.claim(workspace_id, [f"usage-metric:{metric_id}"])


class CustomerUsageMetricController(Controller):
    path = "/api/customers/{reference:str}/usage-metrics"
    tags = ["usage metrics"]

    @get("/")
    async def customer_usage_metrics(
        self, client: AsyncClient, workspace: WorkspaceAccess, reference: str
    ) -> list[CustomerUsageMetric]:
        return await service.customer_metrics(client, workspace.workspace_id, reference, stored_now())
