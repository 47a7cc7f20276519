"""Apps: registration, usage statistics from their events, and their own ClickHouse database."""

import asyncio
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from uuid import UUID, uuid4

from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from litestar.exceptions import ClientException, HTTPException, NotFoundException
from litestar.status_codes import HTTP_409_CONFLICT, HTTP_501_NOT_IMPLEMENTED

from app.apps import queries
from app.apps.schemas import (
    ApiHistory,
    ApiStats,
    App,
    AppStats,
    Column,
    DatabaseCredentials,
    DayCount,
    Field,
    Invocation,
    InvocationDay,
    Preview,
    StorageStats,
    Table,
)
from app.errors import invalid
from app.events.claims import LocalClaims, RedisClaims
from app.events.service import as_uuid
from app.warehouse import embedded
from app.warehouse.client import logs_in, stored_now

log = logging.getLogger(__name__)

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
VIEW_DAYS = 7
API_DAYS = 30
RECENT_INVOCATIONS = 100
DEFAULT_QUOTA_BYTES = 1024**3
EMBEDDED_RESTART_SECONDS = 60
MIGRATIONS_TABLE = "_migrations"
# Identifiers in an index expression: `quoted` ones, or bare (possibly dotted, as Nested columns are).
IDENTIFIER = re.compile(r"`((?:[^`\\]|\\.)*)`|'(?:[^'\\]|\\.)*'|([A-Za-z_][A-Za-z0-9_.]*)")
NOT_ORDERABLE = re.compile(r"(?<!Simple)AggregateFunction\(")


@dataclass(frozen=True, slots=True)
class AppRecord:
    workspace_id: UUID
    id: UUID
    slug: str
    name: str
    created_at: datetime
    database_name: str | None
    database_user: str | None
    quota_bytes: int | None

    @property
    def public(self) -> App:
        return App(self.id, self.slug, self.name)

    @property
    def event_refs(self) -> list[str]:
        """What producers may send as `app_id`: the UUID (compared lower-cased) or the slug."""
        return [str(self.id), self.slug]

    @property
    def database(self) -> str:
        """Derived from the id, never from a name a user typed."""
        return f"app_{self.id.hex}"

    @property
    def owner(self) -> str:
        return f"app_{self.id.hex}_owner"


# Apps ----------------------------------------------------------------------------------------------------


def checked_slug(slug: str) -> str:
    if not SLUG.fullmatch(slug):
        raise invalid("slug", "1 to 63 of a-z, 0-9 and '-', not starting with '-'")
    if as_uuid(slug) is not None:
        # `{id}` in a route is the UUID or the slug: a slug that reads as a UUID would be ambiguous.
        raise invalid("slug", "must not have the form of a UUID")
    return slug


async def create_app(client: AsyncClient, claims: LocalClaims | RedisClaims, workspace_id: UUID,
                     name: str, slug: str) -> App:
    slug = checked_slug(slug)
    # Check and insert under a claim on the slug, so two requests never both find it free.
    async with claims.claim(workspace_id, [f"app-slug:{slug}"]):
        if await queries.app_rows(client, workspace_id, slug=slug):
            raise ClientException(status_code=HTTP_409_CONFLICT, detail="An app of this workspace has this slug")
        record = AppRecord(workspace_id, uuid4(), slug, name, stored_now(), None, None, None)
        await queries.insert_app(client, workspace_id, _row(record))
    return record.public


async def list_apps(client: AsyncClient, workspace_id: UUID) -> list[App]:
    return [_record(workspace_id, row).public for row in await queries.app_rows(client, workspace_id)]


async def find_app(client: AsyncClient, workspace_id: UUID, reference: str) -> AppRecord:
    """An app of the workspace by its UUID or its slug; 404 otherwise (another workspace's app included)."""
    app_id = as_uuid(reference)
    if app_id is not None:
        rows = await queries.app_rows(client, workspace_id, app_id=app_id)
    elif SLUG.fullmatch(reference):
        rows = await queries.app_rows(client, workspace_id, slug=reference)
    else:
        rows = []
    if not rows:
        raise NotFoundException(detail="App not found")
    return _record(workspace_id, rows[0])


# Statistics ----------------------------------------------------------------------------------------------


async def app_stats(client: AsyncClient, app: AppRecord) -> AppStats:
    now = stored_now()
    today = now.date()
    week_start = _midnight(today - timedelta(days=VIEW_DAYS - 1))
    (views, viewers, views_7d, views_30d, last_view, (view_days, view_counts), calls, calls_7d, calls_30d,
     duration_sum, with_duration, errors, peak_memory) = await queries.app_stats(
        client, app.workspace_id, app.event_refs, now, week_start)
    per_day = dict(zip(view_days, view_counts, strict=True))
    api = ApiStats(
        total_invocations=calls,
        invocations_7d=calls_7d,
        invocations_30d=calls_30d,
        avg_duration_ms=_rounded(duration_sum / with_duration) if with_duration else 0,
        error_count_30d=errors,
        error_rate_30d=_percent(errors, calls_30d),
        peak_memory_bytes=_rounded(peak_memory),
        total_compute_ms=_rounded(duration_sum),
    )
    return AppStats(
        app_id=app.id,
        total_views=views,
        unique_viewers=viewers,
        views_7d=views_7d,
        views_30d=views_30d,
        last_viewed_at=_timestamp(last_view) if views else None,
        views_by_day=[DayCount(day.isoformat(), per_day.get(day, 0)) for day in _days_back(today, VIEW_DAYS)],
        api=api,
        storage=await storage_stats(client, app),
    )


async def storage_stats(client: AsyncClient, app: AppRecord) -> StorageStats:
    exists, size, tables = await queries.storage_usage(client, app.database)
    if not exists:
        return StorageStats(False, 0, 0, None, None)
    quota = app.quota_bytes or DEFAULT_QUOTA_BYTES
    return StorageStats(True, size, tables, quota, _percent(size, quota))


async def api_history(client: AsyncClient, app: AppRecord) -> ApiHistory:
    today = stored_now().date()
    recent = await queries.recent_invocations(client, app.workspace_id, app.event_refs, RECENT_INVOCATIONS)
    since = _midnight(today - timedelta(days=API_DAYS - 1))
    per_day = {row[0]: row[1:] for row in await queries.daily_invocations(client, app.workspace_id,
                                                                           app.event_refs, since)}
    daily = []
    for day in _days_back(today, API_DAYS):
        count, duration_sum, with_duration, errors = per_day.get(day, (0, 0.0, 0, 0))
        average = _rounded(duration_sum / with_duration) if with_duration else 0
        daily.append(InvocationDay(day.isoformat(), count, average, errors))
    return ApiHistory([_invocation(row) for row in recent], daily)


# The app's database --------------------------------------------------------------------------------------


async def provision_database(client: AsyncClient, app: AppRecord, quota_bytes: int,
                             users_folder: Path) -> DatabaseCredentials:
    """`users_folder` is where the embedded server of this API's DATA_DIR takes new users, when it has one."""
    if app.database_name is not None:
        raise _already_provisioned()
    if await queries.can_create_users(client):
        users = None
    elif users_folder.is_dir():
        users = users_folder
    else:
        raise HTTPException(
            status_code=HTTP_501_NOT_IMPLEMENTED,
            detail="This ClickHouse server cannot create users (it has no writable user directory and is not "
                   "this API's embedded server), so it cannot give an app its own database user",
        )
    # Shielded: a client that goes away mid-way must not leave a database without its user or record.
    return await asyncio.shield(_provision(client, app, quota_bytes, users))


async def _provision(client: AsyncClient, app: AppRecord, quota_bytes: int,
                     users_folder: Path | None) -> DatabaseCredentials:
    try:
        await queries.create_database(client, app.database)
    except DatabaseError as error:
        if "DATABASE_ALREADY_EXISTS" in str(error):
            raise _already_provisioned() from error
        raise
    password = secrets.token_urlsafe(24)
    try:
        if users_folder is None:
            await queries.create_owner(client, app.owner, password, app.database)
        else:
            await _add_embedded_user(client, users_folder, app, password)
        provisioned = AppRecord(app.workspace_id, app.id, app.slug, app.name, app.created_at, app.database,
                                app.owner, quota_bytes)
        await queries.insert_app(client, app.workspace_id, _row(provisioned, database_created_at=stored_now()))
    except Exception:
        # Nothing half-made stays behind: the next attempt starts from scratch instead of hitting a 409.
        log.warning("provisioning the database of app %s failed; rolling back", app.id)
        try:
            if users_folder is None:
                await queries.drop_owner(client, app.owner)
            else:
                await _remove_embedded_user(client, users_folder, app)
            await queries.drop_database(client, app.database)
        except Exception:
            log.exception("rolling back the database of app %s failed", app.id)
        raise
    return DatabaseCredentials(app.database, app.owner, password, client.url, quota_bytes)


async def _add_embedded_user(client: AsyncClient, folder: Path, app: AppRecord, password: str) -> None:
    """The embedded server restarts to read the new user: about a second in which ClickHouse answers no one.
    Done when the user logs in with this password: a server not yet restarted may know it with another."""
    await asyncio.to_thread(embedded.write_user, folder, app.owner, password, app.database,
                            queries.owner_grants(app.database))
    await _until_restarted(folder, lambda: logs_in(client.url, app.owner, password, app.database))


async def _remove_embedded_user(client: AsyncClient, folder: Path, app: AppRecord) -> None:
    embedded.remove_user(folder, app.owner)
    await _until_restarted(folder, client.ping)


async def _until_restarted(folder: Path, ready: Callable[[], Awaitable[bool]]) -> None:
    """Until the embedded server runs with the users folder as it is now, and is `ready`; so no restart
    follows our answer."""
    deadline = time.monotonic() + EMBEDDED_RESTART_SECONDS
    while not (embedded.serves_users_as_written(folder) and await ready()):
        if time.monotonic() > deadline:
            raise OperationalError(f"the embedded ClickHouse server did not start again with its users "
                                   f"within {EMBEDDED_RESTART_SECONDS} s")
        await asyncio.sleep(0.2)


async def list_tables(client: AsyncClient, app: AppRecord) -> list[Table]:
    """Tables of the app's database with their columns; empty when it has none (or no database)."""
    tables = await queries.catalog_tables(client, app.database)
    if not tables:
        return []
    columns: dict[str, list[tuple]] = {}
    for row in await queries.catalog_columns(client, app.database):
        columns.setdefault(row[0], []).append(row)
    indexed: dict[str, set[str]] = {}
    for table, expression in await queries.skip_index_expressions(client, app.database):
        indexed.setdefault(table, set()).update(_identifiers(expression))
    return [
        Table(
            name=name,
            row_count=int(rows or 0),
            size_bytes=int(size or 0),
            columns=[
                Column(column, type_name, _nullable(type_name), bool(primary),
                       bool(sorting) or column in indexed.get(name, set()))
                for _, column, type_name, primary, sorting, _ in columns.get(name, [])
            ],
        )
        for name, _, rows, size in tables
    ]


async def preview_table(client: AsyncClient, app: AppRecord, table: str, limit: int, offset: int) -> Preview:
    # The name is looked up in the app's own database before any SQL names it; _migrations is never shown,
    # nor is a table that reads other objects (its rows would be read with the API's grants).
    engine = await queries.table_engine(client, app.database, table) if table != MIGRATIONS_TABLE else None
    if engine is None or not queries.PREVIEWABLE_ENGINES.match(engine):
        raise NotFoundException(detail="Table not found")
    selected = [row for row in await queries.catalog_columns(client, app.database, table)
                if row[5] not in ("ALIAS", "MATERIALIZED", "EPHEMERAL")]
    orderable = [position for position, row in enumerate(selected, start=1) if not NOT_ORDERABLE.search(row[2])]
    page = await queries.preview_rows(client, app.database, table, orderable, limit, offset)
    total = await queries.count_rows(client, app.database, table)
    rows = page.get("data", [])
    return Preview(rows=rows, row_count=len(rows), total_rows=total,
                   fields=[Field(meta["name"], meta["type"]) for meta in page.get("meta", [])])


# Helpers -------------------------------------------------------------------------------------------------


def _already_provisioned() -> ClientException:
    return ClientException(status_code=HTTP_409_CONFLICT, detail="This app already has its database")


def _record(workspace_id: UUID, row: tuple) -> AppRecord:
    app_id, slug, name, created_at, database_name, database_user, quota_bytes = row
    return AppRecord(workspace_id, app_id, slug, name, created_at, database_name, database_user,
                     int(quota_bytes) if quota_bytes is not None else None)


def _row(app: AppRecord, database_created_at: datetime | None = None) -> tuple:
    return (app.id, app.slug, app.name, app.created_at, app.database_name, app.database_user, app.quota_bytes,
            database_created_at)


def _invocation(row: tuple) -> Invocation:
    started_at, method, path, username, duration, status, memory, error = row
    return Invocation(
        method=method,
        path=path,
        username=username,
        started_at=_timestamp(started_at),
        duration_ms=_number(duration),
        status_code=_rounded(status) if status is not None else None,
        memory_peak_bytes=_rounded(memory) if memory is not None else None,
        error=error,
    )


def _identifiers(expression: str) -> set[str]:
    names = set()
    for match in IDENTIFIER.finditer(expression):
        quoted, bare = match.group(1), match.group(2)
        if quoted is not None:
            names.add(re.sub(r"\\(.)", r"\1", quoted))
        elif bare is not None:
            names.add(bare)
    return names


def _nullable(type_name: str) -> bool:
    return type_name.startswith(("Nullable(", "LowCardinality(Nullable("))


def _days_back(today: date, days: int) -> list[date]:
    """`days` UTC days ending today, newest first (the order of the source's example)."""
    return [today - timedelta(days=offset) for offset in range(days)]


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as the source's examples write it."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _rounded(value: float | int) -> int:
    """Half away from zero, as people round (Python's round() goes to even)."""
    if isinstance(value, int):
        return value
    if not math.isfinite(value):
        return 0
    if abs(value) >= 2**52:  # a whole number already, with more digits than the decimal context rounds
        return int(value)
    return int(Decimal(repr(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _percent(part: int, whole: int) -> float:
    if not whole:
        return 0.0
    return float((Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _number(value: float | None) -> int | float | None:
    if value is None or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else value
