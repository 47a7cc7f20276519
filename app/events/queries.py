"""SQL of the events domain. Values are always bound parameters; the SQL text is built only from constants."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.warehouse.client import string_sets

if TYPE_CHECKING:
    from app.events.numbers import Numbering

# Each column of an insert as the API sends it; ClickHouse converts it to the table's type (Native format).
# clickhouse-connect writes strings and integers in C, but UUIDs, datetimes, decimals and LowCardinality keys
# value by value in Python; and with the types given, it sends no DESCRIBE before each insert.
EVENT_INSERT_TYPES = {
    "workspace_id": "String", "id": "String", "name": "String", "timestamp": "DateTime64(3, 'UTC')",
    "ingested_at": "DateTime64(3, 'UTC')", "source": "String", "customer_key": "String",
    "customer_number": "UInt32",
    "customer_id": "Nullable(String)", "external_customer_id": "Nullable(String)", "external_id": "Nullable(String)",
    "dedup_key": "String", "parent_id": "Nullable(String)", "root_id": "String", "depth": "UInt16",
    "metadata": "String", "num": "Map(String, Float64)", "str": "Map(String, String)", "bool": "Map(String, Bool)",
    "cost_amount": "String", "llm_total_tokens": "UInt64", "share_number": "UInt32",
}
EVENT_COLUMNS = list(EVENT_INSERT_TYPES)
# How far back from its position a newest-first page is looked for before reading on past it.
RECENT_WINDOW = timedelta(days=1)
# Events of one instant are listed by id as clients compare ids, as text: ClickHouse compares UUIDs by their
# second 64 bits first, so its order serves only to read the table in order.
ID_ORDER = "toString(id)"
OUTPUT_COLUMNS = (
    "id, name, timestamp, ingested_at, source, customer_id, external_customer_id, external_id, parent_id, "
    "root_id, depth, metadata"
)


async def stored_keys(client: AsyncClient, workspace_id: UUID, keys: list[str]) -> dict[str, tuple[UUID, UUID, int]]:
    """For each key ('i:<id>' or 'x:<external id>') already stored: (id, root_id, depth) of its event."""
    if not keys:
        return {}
    result = await client.query(
        "SELECT key, id, root_id, depth FROM event_keys_kv WHERE workspace_id = {workspace:UUID} "
        "AND key IN (SELECT value FROM wanted) LIMIT 1 BY key",
        parameters={"workspace": workspace_id},
        external_data=string_sets(wanted=keys),
    )
    return {row[0]: (row[1], row[2], row[3]) for row in result.result_rows}


def metadata_pair(key_parameter: str, kind: str, value_sql: str) -> str:
    """The hash events_by_time.meta_pairs keeps of a metadata leaf (schema/0012): its path, kind (s, n, b) and value."""
    return f"cityHash64({{{key_parameter}:String}}, '{kind}', {value_sql})"


@dataclass
class EventFilter:
    """The WHERE clause of an event listing, as SQL over named parameters."""

    conditions: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    # The end of the listing's own time range, where one is asked: newest first, pages start from there.
    until: datetime | None = None

    def add(self, condition: str, **parameters: Any) -> None:
        self.conditions.append(condition)
        self.parameters.update(parameters)

    def add_metadata_match(self, path: str, value: str) -> None:
        """`meta[path]=value`: a number or boolean compares as such, any value also as the string sent. Matched on
        meta_pairs (schema/0012), which holds only the leaves present, so an event without the leaf never matches
        (not even `meta[path]=`, which matches an empty string)."""
        n = len(self.parameters)
        key, text = f"mk{n}", f"mv{n}"
        parameters: dict[str, Any] = {key: path, text: value}
        pairs = [metadata_pair(key, "s", f"{{{text}:String}}")]
        number = _as_number(value)
        if number is not None:
            pairs.append(metadata_pair(key, "n", f"{{mn{n}:Float64}}"))
            parameters[f"mn{n}"] = number or 0.0  # -0 hashes as 0, as stored
        if value in ("true", "false"):
            pairs.append(metadata_pair(key, "b", f"{{mb{n}:Bool}}"))
            parameters[f"mb{n}"] = value == "true"
        self.add(f"hasAny(meta_pairs, [{', '.join(pairs)}])", **parameters)

    @property
    def sql(self) -> str:
        return " AND ".join(self.conditions) or "1"


async def event_page(
    client: AsyncClient, workspace_id: UUID, where: EventFilter, descending: bool,
    after: tuple[datetime, UUID] | None, as_of: datetime, take: int,
) -> list[tuple]:
    """One page of events in (timestamp, id) order, after the keyset position, as of a moment of ingestion; from
    events_by_time, the events in that order (schema/0009).

    Newest first, ClickHouse reads the newest granule of every part of the workspace, whatever times the part
    holds (bench/README.md, issue 3); a lower time bound prunes the parts that end before it. So the page is first
    looked for in the day before its position (the cursor's event, else the end of the listing's range or now),
    and only a page that comes up short reads on past that day."""
    if not descending:
        return await _event_rows(client, workspace_id, where, descending, after, as_of, take)
    newest = after[0] if after else min(as_of, where.until or as_of)
    bound = newest - RECENT_WINDOW
    recent = await _event_rows(client, workspace_id, where, descending, after, as_of, take, newer_than=bound)
    if len(recent) == take:
        return recent
    older = await _event_rows(client, workspace_id, where, descending, after, as_of, take - len(recent),
                              older_than=bound)
    return recent + older


async def _event_rows(
    client: AsyncClient, workspace_id: UUID, where: EventFilter, descending: bool,
    after: tuple[datetime, UUID] | None, as_of: datetime, take: int,
    newer_than: datetime | None = None, older_than: datetime | None = None,
) -> list[tuple]:
    direction = "DESC" if descending else "ASC"
    bounds = ""
    parameters = {**where.parameters, "workspace": workspace_id, "as_of": as_of}
    if after is not None:
        before = "<" if descending else ">"
        bounds += (f" AND timestamp {before}= {{after_ts:DateTime64(3, 'UTC')}} AND (timestamp {before} "
                   f"{{after_ts:DateTime64(3, 'UTC')}} OR {ID_ORDER} {before} {{after_id:String}})")
        parameters.update(after_ts=after[0], after_id=str(after[1]))
    if newer_than is not None:
        bounds += " AND timestamp >= {newer_than:DateTime64(3, 'UTC')}"
        parameters["newer_than"] = newer_than
    if older_than is not None:
        bounds += " AND timestamp < {older_than:DateTime64(3, 'UTC')}"
        parameters["older_than"] = older_than
    matching = (f"SELECT {OUTPUT_COLUMNS} FROM events_by_time WHERE workspace_id = {{workspace:UUID}} "
                f"AND ({where.sql}) AND ingested_at <= {{as_of:DateTime64(3, 'UTC')}}{bounds}")
    # In the table's own order ClickHouse reads only the newest (or oldest) granules and stops; one row more
    # than the page tells whether the events of its last instant go on past it.
    result = await client.query(f"{matching} ORDER BY timestamp {direction}, id {direction} LIMIT {{take:UInt32}}",
                                parameters={**parameters, "take": take + 1})
    rows = result.result_rows
    if len(rows) > take and rows[take][2] == rows[take - 1][2]:
        # They do, in ClickHouse's id order: the page ends with the first of them by id as text, so all are read.
        instant = rows[take - 1][2]
        tied = await client.query(f"{matching} AND timestamp = {{instant:DateTime64(3, 'UTC')}}",
                                  parameters={**parameters, "instant": instant})
        rows = [row for row in rows if row[2] != instant] + tied.result_rows
    rows = sorted(rows, key=lambda row: (row[2], str(row[0])), reverse=descending)
    return [tuple(row) for row in rows[:take]]


async def event_by_id(client: AsyncClient, workspace_id: UUID, event_id: UUID) -> tuple | None:
    result = await client.query(
        f"SELECT {OUTPUT_COLUMNS}, "
        "(SELECT count() FROM events WHERE workspace_id = {workspace:UUID} AND parent_id = {id:UUID}) "
        "FROM events WHERE workspace_id = {workspace:UUID} AND id = {id:UUID} LIMIT 1",
        parameters={"workspace": workspace_id, "id": event_id},
    )
    return tuple(result.result_rows[0]) if result.result_rows else None


async def event_types(client: AsyncClient, workspace_id: UUID) -> list[tuple[str, str, int, datetime, datetime, str]]:
    """(name, label, occurrences, first_seen, last_seen, source) of every event name of the workspace."""
    result = await client.query(
        "SELECT s.name, ifNull(l.label, s.name), s.occurrences, s.first_seen, s.last_seen, s.source FROM "
        "(SELECT name, sum(occurrences) AS occurrences, min(first_seen) AS first_seen, max(last_seen) AS last_seen, "
        "        anyLast(source) AS source "
        " FROM event_type_stats WHERE workspace_id = {workspace:UUID} GROUP BY name) AS s "
        "LEFT JOIN (SELECT name, argMax(label, version) AS label FROM event_type_labels "
        "           WHERE workspace_id = {workspace:UUID} GROUP BY name) AS l ON l.name = s.name "
        "ORDER BY s.name SETTINGS join_use_nulls = 1",
        parameters={"workspace": workspace_id},
    )
    return [tuple(row) for row in result.result_rows]  # type: ignore[misc]


async def insert_event_type_label(client: AsyncClient, workspace_id: UUID, name: str, label: str) -> None:
    await client.insert("event_type_labels", [[workspace_id, name, label]], column_names=["workspace_id", "name", "label"])


def _as_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


async def stored_numbers(
    client: AsyncClient, numbering: "Numbering", workspace_id: UUID, keys: list[str]
) -> dict[str, int]:
    """The numbers already allotted to these keys (app/events/numbers.py); table and column are constants."""
    result = await client.query(
        f"SELECT {numbering.key_column}, min(number) FROM {numbering.table} WHERE workspace_id = {{workspace:UUID}} "
        f"AND {numbering.key_column} IN (SELECT value FROM wanted) GROUP BY {numbering.key_column}",
        parameters={"workspace": workspace_id},
        external_data=string_sets(wanted=keys),
    )
    return dict(result.result_rows)


async def highest_number(client: AsyncClient, numbering: "Numbering", workspace_id: UUID) -> int:
    result = await client.query(
        f"SELECT max(number) FROM {numbering.table} WHERE workspace_id = {{workspace:UUID}}",
        parameters={"workspace": workspace_id},
    )
    return result.result_rows[0][0]


async def insert_numbers(
    client: AsyncClient, numbering: "Numbering", workspace_id: UUID, numbers: dict[str, int]
) -> None:
    await client.insert(numbering.table, [[workspace_id, key, number] for key, number in numbers.items()],
                        column_names=["workspace_id", numbering.key_column, "number"])
