"""The Litestar application: routes, dependencies, error handlers, and the lifespan of its connections."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from redis.asyncio import BlockingConnectionPool, Redis

from app.apps.routes import AppController
from app.auth.dependencies import DEPENDENCIES
from app.auth.middleware import BearerTokenMiddleware
from app.auth.routes import UserController, WorkspaceController
from app.auth.service import KnownTokens
from app.customers.routes import CustomerController
from app.events.claims import LocalClaims, RedisClaims
from app.events.writes import LocalWrites, RedisWrites
from app.events.routes import EventController, EventTypeController
from app.events.service import EventStore
from app.events.validation import MAX_BODY_BYTES
from app.config import Settings, secret_file
from app.errors import EXCEPTION_HANDLERS
from app.metrics.routes import MetricsController
from app.statistics.routes import statistics_timeseries
from app.stream.broker import make_broker
from app.stream.routes import StreamController
from app.system.routes import health
from app.usage.routes import UsageController, UsageRecordController
from app.usage_metrics.routes import CustomerUsageMetricController, UsageMetricController
from app.warehouse.client import connect
from app.warehouse.embedded import EmbeddedServer
from app.warehouse.migrations import migrate

log = logging.getLogger("app")
REDIS_TIMEOUT_SECONDS = 2.0

ROUTES = [health, WorkspaceController, UserController, EventController, EventTypeController, CustomerController, StreamController,
          UsageController, UsageRecordController, UsageMetricController, CustomerUsageMetricController,
          AppController, statistics_timeseries, MetricsController]


def operator_token(settings: Settings) -> str:
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_path / "admin_token"
    token = secret_file(path)
    log.info("operator token: in %s (set ADMIN_TOKEN to choose your own)", path)
    return token


@asynccontextmanager
async def clickhouse_lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    server = None
    url = settings.clickhouse_url
    if url is None:
        server = EmbeddedServer(settings.data_path, settings.clickhouse_http_port, settings.clickhouse_tcp_port)
        await asyncio.to_thread(server.start)
        server.supervise()
        url = server.url
    client = await connect(url)
    try:
        await migrate(client)
        app.state.clickhouse = client
        app.state.operator_token = operator_token(settings)
        app.state.known_tokens = KnownTokens()
        yield
    finally:
        await client.close()
        if server is not None:
            await asyncio.to_thread(server.stop)


@asynccontextmanager
async def ingest_lifespan(app: Litestar) -> AsyncIterator[None]:
    """The live-event broker and the ingest pipeline, which publishes to it; Redis carries both across processes."""
    settings: Settings = app.state.settings
    broker = make_broker(settings.redis_url, settings.stream_queue_size)
    if broker.kind == "absent":
        log.info("no REDIS_URL: live streams use an in-process broker (one API process only)")
    await broker.start()
    # A blocking pool: past its size a claim waits for a connection. A Redis that does not answer within
    # REDIS_TIMEOUT_SECONDS fails the claim, a 503, rather than holding ingestion for as long as it hangs.
    redis = (Redis(connection_pool=BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=64, timeout=10, socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS)) if settings.redis_url else None)
    events = EventStore(app.state.clickhouse, RedisClaims(redis) if redis else LocalClaims(),
                        RedisWrites(redis) if redis else LocalWrites(), broker)
    await events.start()
    app.state.broker = broker
    app.state.events = events
    # What startup made lives as long as the process: out of the collector's way, so a full collection walks
    # only the requests in flight (thousands of events each), not every module, route and type again.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        await events.stop()
        if redis is not None:
            await redis.aclose()
        await broker.stop()


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    return Litestar(
        route_handlers=ROUTES,
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[DefineMiddleware(BearerTokenMiddleware, exclude=["^/schema"])],
        lifespan=[clickhouse_lifespan, ingest_lifespan],
        request_max_body_size=MAX_BODY_BYTES,
        state=State({"settings": settings}),
        cors_config=CORSConfig(allow_origins=["*"]),
        openapi_config=None,
    )
