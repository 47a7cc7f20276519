"""SQL of the apps domain: the apps table, app events, and the catalog of each app's own database.

Values always travel as bound parameters. Identifiers appear in SQL text in two places only, both built
from names that cannot come from a request as typed: `app_<hex of the app's UUID>` (checked against
DERIVED_NAME before use), and a table name that was first found in `system.tables` of the app's database.
"""

import re
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient

from app.events.queries import ID_ORDER

DERIVED_NAME = re.compile(r"app_[0-9a-f]{32}(_owner)?")
APP_COLUMNS = "id, slug, name, created_at, database_name, database_user, quota_bytes"
# Engines that keep their own rows. Anything else (views, Merge, Buffer, Distributed, dictionaries, URL...)
# reads other objects, and a preview runs as the API's all-powerful user: it must not be a way around the
# grants of the app's own user.
PREVIEWABLE_ENGINES = re.compile(r"^(\w*MergeTree|Memory|Log|TinyLog|StripeLog)$")
# What the app's user may create tables with, on servers that require a grant per engine.
GRANTED_ENGINES = (
    "MergeTree", "ReplacingMergeTree", "SummingMergeTree", "AggregatingMergeTree", "CollapsingMergeTree",
    "VersionedCollapsingMergeTree", "Memory", "Log", "TinyLog", "StripeLog", "View", "MaterializedView",
)
# What an app's own user may do: anything with tables and views in its database, nothing outside it. No
# dictionaries: a dictionary's ClickHouse source queries as another user of the server, outside these grants.
OWNER_PRIVILEGES = "SHOW, SELECT, INSERT, ALTER, CREATE TABLE, CREATE VIEW, DROP TABLE, DROP VIEW, TRUNCATE, OPTIMIZE"
# Storages where CREATE USER can write; `users_xml` is read-only.
WRITABLE_USER_STORAGES = ["local_directory", "memory", "replicated"]
PREVIEW_SETTINGS = {
    # Even a preview of a hostile table only reads, and not for long.
    "readonly": 2,
    "max_execution_time": 20,
    "allow_suspicious_types_in_order_by": 1,
    "date_time_output_format": "iso",
    # 64-bit (and wider) integers and decimals as strings, so a JavaScript client loses no digit.
    "output_format_json_quote_64bit_integers": 1,
    "output_format_json_quote_decimals": 1,
    "output_format_json_quote_denormals": 0,
    "output_format_json_named_tuples_as_objects": 1,
}

# The events of one app: both of its names, sent with its UUID (any case) or its slug as `app_id`.
APP_EVENTS = (
    "workspace_id = {workspace:UUID} AND name IN ('app.viewed', 'app.api_invoked') "
    "AND lower(str['app_id']) IN {refs:Array(String)}"
)
# A failed invocation: status >= 500, or an `error` that is not null: a leaf `error` (text, number or
# boolean) or an object with a leaf under it, `error.*` (null leaves are not stored in the maps).
FAILED = (
    "((mapContains(num, 'status_code') AND num['status_code'] >= 500) "
    "OR arrayExists(key -> key = 'error' OR startsWith(key, 'error.'), "
    "arrayConcat(mapKeys(str), mapKeys(num), mapKeys(bool))))"
)
# The error as text: a string as it is, anything else non-null as its JSON. Read from the metadata as
# sent, which only the page of recent invocations pays for.
ERROR_TEXT = (
    "multiIf(JSONType(metadata, 'error') = 'Null', NULL, JSONType(metadata, 'error') = 'String', "
    "JSONExtractString(metadata, 'error'), JSONExtractRaw(metadata, 'error'))"
)
VIEWER = (
    "multiIf(mapContains(str, 'viewer_id'), str['viewer_id'], "
    "mapContains(num, 'viewer_id'), toString(num['viewer_id']), NULL)"
)
HAS_DURATION = "mapContains(num, 'duration_ms')"


def quoted(identifier: str) -> str:
    """A backquoted identifier; only ever given a derived name or a name read from system.tables."""
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


def derived(name: str) -> str:
    if not DERIVED_NAME.fullmatch(name):
        raise ValueError("not a derived app database or user name")
    return name


# Apps ----------------------------------------------------------------------------------------------------


async def insert_app(client: AsyncClient, workspace_id: UUID, app: tuple) -> None:
    """One version of an app row: (id, slug, name, created_at, database_name, database_user, quota_bytes,
    database_created_at)."""
    await client.insert(
        "apps",
        [[workspace_id, *app]],
        column_names=["workspace_id", "id", "slug", "name", "created_at", "database_name", "database_user",
                      "quota_bytes", "database_created_at"],
    )


async def app_rows(client: AsyncClient, workspace_id: UUID, app_id: UUID | None = None,
                   slug: str | None = None) -> list[tuple]:
    """Apps of the workspace, oldest first; narrowed to one id or one slug when given."""
    conditions = ["workspace_id = {workspace:UUID}"]
    parameters: dict[str, Any] = {"workspace": workspace_id}
    if app_id is not None:
        conditions.append("id = {id:UUID}")
        parameters["id"] = app_id
    if slug is not None:
        conditions.append("slug = {slug:String}")
        parameters["slug"] = slug
    result = await client.query(
        f"SELECT {APP_COLUMNS} FROM apps FINAL WHERE {' AND '.join(conditions)} ORDER BY created_at, id",
        parameters=parameters,
    )
    return [tuple(row) for row in result.result_rows]


# App events ----------------------------------------------------------------------------------------------


async def app_stats(client: AsyncClient, workspace_id: UUID, refs: list[str], now: datetime,
                    week_start: datetime) -> tuple:
    """Every figure of the stats answer in one pass over the app's events."""
    result = await client.query(
        f"""
        WITH name = 'app.viewed' AS is_view,
             name = 'app.api_invoked' AS is_call,
             timestamp >= {{now:DateTime64(3, 'UTC')}} - INTERVAL 7 DAY AS in_7d,
             timestamp >= {{now:DateTime64(3, 'UTC')}} - INTERVAL 30 DAY AS in_30d
        SELECT
            countIf(is_view),
            uniqExactIf({VIEWER}, is_view),
            countIf(is_view AND in_7d),
            countIf(is_view AND in_30d),
            maxIf(timestamp, is_view),
            sumMapIf([toDate(timestamp)], [toUInt64(1)], is_view AND timestamp >= {{week_start:DateTime64(3, 'UTC')}}),
            countIf(is_call),
            countIf(is_call AND in_7d),
            countIf(is_call AND in_30d),
            sumIf(num['duration_ms'], is_call AND in_30d AND {HAS_DURATION}),
            countIf(is_call AND in_30d AND {HAS_DURATION}),
            countIf(is_call AND in_30d AND {FAILED}),
            maxIf(num['memory_peak_bytes'], is_call AND in_30d AND mapContains(num, 'memory_peak_bytes'))
        FROM events
        WHERE {APP_EVENTS}
        """,
        parameters={"workspace": workspace_id, "refs": refs, "now": now, "week_start": week_start},
    )
    return tuple(result.result_rows[0])


async def recent_invocations(client: AsyncClient, workspace_id: UUID, refs: list[str], take: int) -> list[tuple]:
    """(timestamp, method, path, username, duration, status, memory peak, error) of the newest invocations."""
    result = await client.query(
        f"""
        SELECT timestamp,
               if(mapContains(str, 'method'), str['method'], NULL),
               if(mapContains(str, 'path'), str['path'], NULL),
               if(mapContains(str, 'username'), str['username'], NULL),
               if({HAS_DURATION}, num['duration_ms'], NULL),
               if(mapContains(num, 'status_code'), num['status_code'], NULL),
               if(mapContains(num, 'memory_peak_bytes'), num['memory_peak_bytes'], NULL),
               {ERROR_TEXT}
        FROM events
        WHERE {APP_EVENTS} AND name = 'app.api_invoked'
        ORDER BY timestamp DESC, {ID_ORDER} DESC
        LIMIT {{take:UInt32}}
        """,
        parameters={"workspace": workspace_id, "refs": refs, "take": take},
    )
    return [tuple(row) for row in result.result_rows]


async def daily_invocations(client: AsyncClient, workspace_id: UUID, refs: list[str],
                            since: datetime) -> list[tuple]:
    """(day, count, duration sum, count with a duration, error count) per UTC day since `since`."""
    result = await client.query(
        f"""
        SELECT toDate(timestamp) AS day, count(), sumIf(num['duration_ms'], {HAS_DURATION}),
               countIf({HAS_DURATION}), countIf({FAILED})
        FROM events
        WHERE {APP_EVENTS} AND name = 'app.api_invoked' AND timestamp >= {{since:DateTime64(3, 'UTC')}}
        GROUP BY day
        """,
        parameters={"workspace": workspace_id, "refs": refs, "since": since},
    )
    return [tuple(row) for row in result.result_rows]


# The app's database --------------------------------------------------------------------------------------


async def storage_usage(client: AsyncClient, database: str) -> tuple[bool, int, int]:
    """(exists, bytes on disk of its tables, tables other than _migrations) of a database."""
    result = await client.query(
        "SELECT (SELECT count() FROM system.databases WHERE name = {db:String}), "
        "       ifNull(sum(total_bytes), 0), countIf(name != '_migrations') "
        "FROM system.tables WHERE database = {db:String} AND NOT is_temporary",
        parameters={"db": database},
    )
    exists, size, tables = result.result_rows[0]
    return bool(exists), int(size), int(tables)


async def catalog_tables(client: AsyncClient, database: str) -> list[tuple[str, str, int | None, int | None]]:
    """(name, engine, total_rows, total_bytes) of every table of the database but _migrations."""
    result = await client.query(
        "SELECT name, engine, total_rows, total_bytes FROM system.tables "
        "WHERE database = {db:String} AND NOT is_temporary AND name != '_migrations' ORDER BY name",
        parameters={"db": database},
    )
    return [tuple(row) for row in result.result_rows]  # type: ignore[misc]


async def catalog_columns(client: AsyncClient, database: str,
                          table: str | None = None) -> list[tuple[str, str, str, bool, bool, str]]:
    """(table, column, type, in primary key, in sorting key, default kind), in table order; of one table
    when given."""
    result = await client.query(
        "SELECT table, name, type, is_in_primary_key, is_in_sorting_key, default_kind FROM system.columns "
        "WHERE database = {db:String} AND table != '_migrations' "
        "AND ({table:Nullable(String)} IS NULL OR table = {table:Nullable(String)}) ORDER BY table, position",
        parameters={"db": database, "table": table},
    )
    return [tuple(row) for row in result.result_rows]  # type: ignore[misc]


async def skip_index_expressions(client: AsyncClient, database: str) -> list[tuple[str, str]]:
    """(table, expression) of every data-skipping index of the database."""
    result = await client.query(
        "SELECT table, expr FROM system.data_skipping_indices WHERE database = {db:String}",
        parameters={"db": database},
    )
    return [tuple(row) for row in result.result_rows]  # type: ignore[misc]


async def table_engine(client: AsyncClient, database: str, table: str) -> str | None:
    """The engine of a table of the database, or None when the database has no table of that name."""
    result = await client.query(
        "SELECT engine FROM system.tables WHERE database = {db:String} AND name = {table:String} "
        "AND NOT is_temporary LIMIT 1",
        parameters={"db": database, "table": table},
    )
    return result.result_rows[0][0] if result.result_rows else None


async def count_rows(client: AsyncClient, database: str, table: str) -> int:
    """Rows of a table found in system.tables of the app's database (the caller checked it)."""
    result = await client.query(
        f"SELECT count() FROM {quoted(derived(database))}.{quoted(table)}", settings=PREVIEW_SETTINGS
    )
    return int(result.result_rows[0][0])


async def preview_rows(client: AsyncClient, database: str, table: str, order_positions: list[int],
                       limit: int, offset: int) -> dict[str, Any]:
    """One page of a checked table as ClickHouse's JSON format ({"meta", "data", ...}): the server turns
    every type (UUIDs, dates, maps, decimals, NaN) into JSON itself. Ordered by column positions, so pages
    follow one order without naming a column."""
    order = f"ORDER BY {', '.join(str(position) for position in order_positions)} " if order_positions else ""
    raw = await client.raw_query(
        f"SELECT * FROM {quoted(derived(database))}.{quoted(table)} {order}"
        "LIMIT {limit:UInt32} OFFSET {offset:UInt64}",
        parameters={"limit": limit, "offset": offset},
        settings=PREVIEW_SETTINGS,
        fmt="JSON",
    )
    return msgspec.json.decode(raw)


# Provisioning --------------------------------------------------------------------------------------------


async def can_create_users(client: AsyncClient) -> bool:
    result = await client.query(
        "SELECT count() FROM system.user_directories WHERE type IN {types:Array(String)}",
        parameters={"types": WRITABLE_USER_STORAGES},
    )
    return result.result_rows[0][0] > 0


async def create_database(client: AsyncClient, database: str) -> None:
    """Fails with DATABASE_ALREADY_EXISTS when it exists: the one atomic claim ClickHouse offers."""
    await client.command(f"CREATE DATABASE {quoted(derived(database))}")


def owner_grants(database: str) -> list[str]:
    """The grants of an app's own user, without their grantee (users.xml takes them so)."""
    target = quoted(derived(database))
    return [f"GRANT {OWNER_PRIVILEGES} ON {target}.*", *(f"GRANT TABLE ENGINE ON {engine}" for engine in GRANTED_ENGINES)]


async def create_owner(client: AsyncClient, user: str, password: str, database: str) -> None:
    """The app's own user, on a server with a writable user directory."""
    # Access DDL takes no query parameters for names (the password is bound); both names are derived.
    grantee, target = quoted(derived(user)), quoted(derived(database))
    await client.command(
        f"CREATE USER OR REPLACE {grantee} IDENTIFIED WITH sha256_password BY {{password:String}} "
        f"DEFAULT DATABASE {target}",
        parameters={"password": password},
    )
    for grant in owner_grants(database):
        await client.command(f"{grant} TO {grantee}")


async def drop_owner(client: AsyncClient, user: str) -> None:
    await client.command(f"DROP USER IF EXISTS {quoted(derived(user))}")


async def drop_database(client: AsyncClient, database: str) -> None:
    await client.command(f"DROP DATABASE IF EXISTS {quoted(derived(database))} SYNC")
