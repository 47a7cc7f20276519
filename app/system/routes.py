import asyncio

import msgspec
from litestar import Response, get
from litestar.datastructures import State

HEALTH_TIMEOUT_SECONDS = 2.0


class Health(msgspec.Struct):
    status: str
    clickhouse: str
    redis: str


@get("/api/health", exclude_from_auth=True, tags=["system"])
async def health(state: State) -> Response[Health]:
    clickhouse = "ok" if await _answers(_clickhouse_ping(state)) else "unavailable"
    broker = state.broker
    redis = ("ok" if await _answers(broker.healthy()) else "unavailable") if broker.kind == "redis" else "absent"
    healthy = clickhouse == "ok" and redis != "unavailable"
    return Response(
        Health("ok" if healthy else "unavailable", clickhouse, redis),
        status_code=200 if healthy else 503,
        headers=None if healthy else {"Retry-After": "1"},
    )


async def _clickhouse_ping(state: State) -> bool:
    # A real query, not /ping: the store is ready only once it answers with its schema in place.
    result = await state.clickhouse.query("SELECT count() FROM _migrations")
    return result.result_rows[0][0] > 0


async def _answers(check: object) -> bool:
    try:
        return bool(await asyncio.wait_for(check, HEALTH_TIMEOUT_SECONDS))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - any failure means "not healthy", which is what the caller reports
        return False
