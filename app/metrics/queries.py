"""The SQL of the metrics dashboard, over the rollups of schema/0003, 0006, 0014 and 0015 where they keep what an
aggregate needs, and over the raw events table otherwise. Every value is a bound parameter; the only text that
varies is parameter names the engine numbers, rollup table names and comparison operators from catalog.Where's
closed set."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.customers.queries import distinct_customers_of_bitmaps, distinct_customers_of_numbers
from app.metrics.catalog import Aggregate, ActiveSessions, Cost, Count, Converted, DistinctCustomers, Sum, Where
from app.statistics.queries import COST_FIELD, coverage_sql, split_parameters

# The events' metadata `share_id` as a column of its own (schema/0013), NULL where the metadata has none.
SHARE_COLUMN = "share_id"
# Larger than any event's Unix milliseconds: "never ended".
NEVER_MS = 2**62
# Slot sizes (ms, largest first) a period's bounds may be whole numbers of, and at most how many slots a range maps
# (a bound parameter of that many numbers stays far inside ClickHouse's limit on a URL).
SLOT_MS = (86_400_000, 3_600_000, 900_000)
MAX_SLOTS = 10_000
# Where history starts: everything before a period's end is a union of buckets from here.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A raw row's instant in Unix milliseconds.
ROW_MS = "toUnixTimestamp64Milli(timestamp)"
OPERATORS = frozenset({"=", ">", ">=", "<", "<="})
# The rollup tables (one per grain, e.g. event_stats_1h) and the columns an aggregate reads from them.
EVENT_STATS = "event_stats"
FIELD_STATS = "field_stats"
SHARE_SETS = "share_sets"
SHARE_FIELD_SETS = "share_field_sets"
# The rollups of shares, which answer Converted (converted_from_sets).
SET_TABLES = (SHARE_SETS, SHARE_FIELD_SETS)
# A request reads its rollups side by side, a few hundred rows each: one thread a read leaves the other cores to
# the other reads instead of splitting each small one (the dashboard at 10M events: 36.9 -> 33.3 ms). The
# statistics' quantile merges, which do parallelize, keep the default.
ROLLUP_SETTINGS = {"max_threads": 1}
ROLLUP_COLUMNS = {
    EVENT_STATS: "name, bucket, occurrences, customers",
    FIELD_STATS: "field, name, bucket, sign, value_count, value_total, exact_total",
}


def unix_ms(instant: datetime) -> int:
    return round(instant.timestamp() * 1000)


@dataclass(slots=True)
class Params:
    """Bound parameters of one statement, named as the SQL text refers to them."""

    values: dict[str, Any] = field(default_factory=dict)

    def bind(self, prefix: str, value: Any, type_: str) -> str:
        name = f"{prefix}{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{type_}}}"


@dataclass(frozen=True, slots=True)
class Scope:
    """Which events every query of one request reads: one workspace and the optional filters (None = none)."""

    workspace_id: UUID
    share_ids: Sequence[str] | None
    customer_keys: Sequence[str] | None
    customer_ids: Sequence[UUID] | None

    def where(self, params: Params) -> str:
        clauses = [f"workspace_id = {params.bind('ws', self.workspace_id, 'UUID')}"]
        if self.share_ids is not None:
            clauses.append(f"{SHARE_COLUMN} IN {params.bind('shares', list(self.share_ids), 'Array(String)')}")
        if self.customer_keys is not None or self.customer_ids is not None:
            keys = params.bind("ck", list(self.customer_keys or []), "Array(String)")
            ids = params.bind("ci", list(self.customer_ids or []), "Array(UUID)")
            # A customer's events are its own whether they named it by id or by external id.
            clauses.append(f"(customer_key IN {keys} OR customer_id IN {ids})")
        return " AND ".join(clauses)


def _condition(where: Where | None, params: Params) -> str:
    if where is None:
        return ""
    if where.op not in OPERATORS:
        raise ValueError(f"operator {where.op!r}")
    path = params.bind("path", where.path, "String")
    return f" AND mapContains(num, {path}) AND num[{path}] {where.op} {params.bind('v', where.value, 'Float64')}"


def aggregate_sql(aggregate: Aggregate, scope: Scope, params: Params, share_sets: bool) -> str:
    """One aggregate over the events of a period, as a ClickHouse expression; with `share_sets`, shares are
    tested against the bitmaps of share_sets (schema/0014) instead of the raw events' share ids."""
    match aggregate:
        case Count(event, where):
            return f"countIf(name = {params.bind('n', event, 'String')}{_condition(where, params)})"
        case Sum(event, path, where):
            leaf = params.bind("path", path, "String")
            name = params.bind("n", event, "String")
            return f"sumIf(num[{leaf}], name = {name}{_condition(where, params)})"
        case DistinctCustomers():
            return distinct_customers_of_numbers(params.bind("ws", scope.workspace_id, "UUID"))
        case Cost():
            return "sum(cost_amount)"
        case Converted(event, payment, where) if share_sets:
            name = params.bind("n", event, "String")
            return (f"countIf(name = {name}{_condition(where, params)} "
                    f"AND bitmapContains(({paid_shares_sql(scope.workspace_id, payment, params)}), share_number))")
        case Converted(event, payment, where):
            # Payments at any time up to now, under the same filters as everything else.
            paid = (
                f"SELECT {SHARE_COLUMN} FROM events WHERE {scope.where(params)} "
                f"AND name = {params.bind('n', payment, 'String')} AND {SHARE_COLUMN} IS NOT NULL "
                "AND timestamp <= now64(3)"
            )
            name = params.bind("n", event, "String")
            return f"countIf(name = {name}{_condition(where, params)} AND {SHARE_COLUMN} IN ({paid}))"
    raise TypeError(f"not an aggregate: {aggregate!r}")


def paid_shares_sql(workspace_id: UUID, payment: str, params: Params) -> str:
    """The bitmap of the shares with a `payment` event up to now: the daily share sets before today, today's
    events up to now from the raw table."""
    ws, name = params.bind("ws", workspace_id, "UUID"), params.bind("n", payment, "String")
    return (
        "SELECT groupBitmapMergeState(shares) FROM ("
        f"SELECT shares FROM {SHARE_SETS}_1d WHERE workspace_id = {ws} AND name = {name} "
        f"AND bucket < toStartOfDay(now64(3), 'UTC') "
        f"UNION ALL SELECT groupBitmapState(share_number) FROM events WHERE workspace_id = {ws} AND name = {name} "
        "AND share_number > 0 AND timestamp >= toStartOfDay(now64(3), 'UTC') AND timestamp <= now64(3))"
    )


def _compares_with_zero(where: Where | None) -> bool:
    return where is None or (where.value == 0 and where.op in OPERATORS)


def rollup_table(aggregate: Aggregate) -> str | None:
    """The rollup keeping what this aggregate needs, or None when only the raw table does. Per-field rollups
    keep each value's sign, so a comparison with zero selects whole rows of them."""
    match aggregate:
        case Count(_, None) | DistinctCustomers():
            return EVENT_STATS
        case Count(_, where) | Sum(_, _, where) if _compares_with_zero(where):
            return FIELD_STATS
        case Cost():
            return FIELD_STATS
        case Converted(_, _, where) if _compares_with_zero(where):
            return SHARE_SETS if where is None else SHARE_FIELD_SETS
    return None


def shares_counted(converted: Converted) -> Count:
    """The events whose shares `converted_from_sets` unites: while each share has at most one of them in a period,
    the union's size is their count there, and the union's shares counted are the events counted."""
    return Count(converted.event, converted.where)


def _sign_condition(where: Where | None) -> str:
    return "" if where is None else f" AND sign {where.op} 0"


async def converted_from_sets(
    client: AsyncClient, workspace_id: UUID, converted: Converted, grains: Sequence[str],
    splits: dict[str, tuple[int, ...]], starts: Sequence[datetime], end: datetime,
) -> dict[int, tuple[int, int]]:
    """Per period (keyed as period_aggregates keys them, without the range's key 0): how many shares with a
    `converted.event` meeting its condition in the period have a payment up to now, and how many such shares
    there are; from the share sets (schema/0014, 0015) at the grains of a plan."""
    params = Params()
    where = (f"workspace_id = {params.bind('ws', workspace_id, 'UUID')} "
             f"AND name = {params.bind('n', converted.event, 'String')}")
    table = rollup_table(converted)
    if table == SHARE_FIELD_SETS:
        where += f" AND field = {params.bind('path', converted.where.path, 'String')}{_sign_condition(converted.where)}"
    parts = _grains_union(table, "bucket, shares", where, grains)
    paid = paid_shares_sql(workspace_id, converted.payment, params)
    sql = (
        f"SELECT period, bitmapAndCardinality(shares, ({paid})), bitmapCardinality(shares) FROM ("
        f"SELECT {_period_of_bucket(starts, params)} AS period, groupBitmapMergeState(shares) AS shares "
        f"FROM ({parts}) GROUP BY period)"
    )
    result = await client.query(sql, parameters=_plan_parameters(params, splits, starts[0], end),
                                settings=ROLLUP_SETTINGS)
    return {row[0]: (row[1], row[2]) for row in result.result_rows}


def rollup_column(aggregate: Aggregate, params: Params, workspace: str) -> str:
    """One aggregate over the rollup rows of a period, as a ClickHouse expression (see rollup_table); `workspace`
    is the SQL of the bound workspace id."""
    match aggregate:
        case Count(event, None):
            return f"sumIf(occurrences, name = {params.bind('n', event, 'String')})"
        case DistinctCustomers():
            # Bitmaps of customer numbers merge into the exact count of the union.
            return distinct_customers_of_bitmaps(workspace)
        case Count(event, where) if where is not None:
            field = params.bind("path", where.path, "String")
            return f"sumIf(value_count, field = {field} AND name = {params.bind('n', event, 'String')}{_sign_condition(where)})"
        case Sum(event, path, where):
            field = params.bind("path", path, "String")
            return f"sumIf(value_total, field = {field} AND name = {params.bind('n', event, 'String')}{_sign_condition(where)})"
        case Cost():
            return f"sumIf(exact_total, field = {params.bind('path', COST_FIELD, 'String')})"
    raise TypeError(f"not kept by a rollup: {aggregate!r}")


def _rollup_filter(table: str, aggregates: Sequence[Aggregate], params: Params) -> str:
    """The rows of the rollup the aggregates read: only their fields, or their names (all for distinct
    customers, who may be known from any event)."""
    if table == FIELD_STATS:
        fields = sorted({COST_FIELD if isinstance(a, Cost) else a.path if isinstance(a, Sum) else a.where.path
                         for a in aggregates})
        return f" AND field IN {params.bind('fields', fields, 'Array(String)')}"
    names = _event_names(aggregates)
    return "" if names is None else f" AND name IN {params.bind('names', names, 'Array(String)')}"


async def rollup_aggregates(
    client: AsyncClient, workspace_id: UUID, table: str, grains: Sequence[str], splits: dict[str, tuple[int, ...]],
    starts: Sequence[datetime], end: datetime, aggregates: Sequence[Aggregate],
) -> dict[int, tuple[Any, ...]]:
    """Every aggregate per period, keyed as period_aggregates keys them, from the rollup `table` at the grains
    of a plan (app/statistics/service.plan): each bucket lies wholly inside one period, the one whose start is
    the last at or before the bucket's."""
    params = Params()
    workspace = params.bind("ws", workspace_id, "UUID")
    columns = ", ".join(rollup_column(aggregate, params, workspace) for aggregate in aggregates)
    where = f"workspace_id = {workspace}{_rollup_filter(table, aggregates, params)}"
    parts = _grains_union(table, ROLLUP_COLUMNS[table], where, grains)
    sql = (
        f"SELECT {_period_of_bucket(starts, params)} AS period, {columns} "
        f"FROM ({parts}) GROUP BY GROUPING SETS ((period), ())"
    )
    result = await client.query(sql, parameters=_plan_parameters(params, splits, starts[0], end),
                                settings=ROLLUP_SETTINGS)
    return {row[0]: tuple(row[1:]) for row in result.result_rows}


def _period_of_bucket(starts: Sequence[datetime], params: Params) -> str:
    """SQL of the 1-based period of a rollup row: the last start at or before its bucket (which lies wholly in
    that period when the buckets come from a plan)."""
    bounds = params.bind("bounds", [round(start.timestamp()) for start in starts], "Array(UInt32)")
    return f"arrayLastIndex(b -> b <= toUInt32(bucket), {bounds})"


def _plan_parameters(params: Params, splits: dict[str, tuple[int, ...]], lo: datetime, hi: datetime
                     ) -> dict[str, Any]:
    """The statement's parameters with those of the plan's coverage conditions over [lo, hi) (_grains_union)."""
    return {**params.values, **split_parameters(splits), "lo": round(lo.timestamp()), "hi": round(hi.timestamp())}


def _grains_union(table: str, columns: str, where: str, grains: Sequence[str]) -> str:
    """The rows of a rollup (`table`_<grain>) a plan takes at each of its grains, as one UNION ALL."""
    return " UNION ALL ".join(
        f"SELECT {columns} FROM {table}_{grain} WHERE {where} AND {coverage_sql(grain, grains)}" for grain in grains
    )


def _event_names(aggregates: Sequence[Aggregate]) -> list[str] | None:
    """The event names the aggregates read, or None when some read every event (costs, distinct customers)."""
    if any(isinstance(aggregate, (Cost, DistinctCustomers)) for aggregate in aggregates):
        return None
    return sorted({aggregate.event for aggregate in aggregates})


async def period_aggregates(
    client: AsyncClient, scope: Scope, starts: Sequence[datetime], end: datetime, aggregates: Sequence[Aggregate],
    share_sets: bool,
) -> dict[int, tuple[Any, ...]]:
    """Every aggregate per period, keyed by the period's index + 1, and over the whole range under key 0.
    Periods come from Python (zone and DST rules live there): each event goes to the last start at or before it."""
    params = Params()
    columns = ", ".join(aggregate_sql(aggregate, scope, params, share_sets) for aggregate in aggregates)
    lo = params.bind("lo", unix_ms(starts[0]), "Int64")
    hi = params.bind("hi", unix_ms(end), "Int64")
    names = _event_names(aggregates)
    # The table's order starts (workspace, name): aggregates of some names read only those names' rows.
    only = "" if names is None else f"AND name IN {params.bind('names', names, 'Array(String)')} "
    sql = (
        f"SELECT {_period_of_row(starts, end, lo, params)} AS period, {columns} "
        f"FROM events WHERE {scope.where(params)} {only}"
        f"AND timestamp >= fromUnixTimestamp64Milli({lo}, 'UTC') AND timestamp < fromUnixTimestamp64Milli({hi}, 'UTC') "
        "GROUP BY GROUPING SETS ((period), ())"
    )
    result = await client.query(sql, parameters=params.values)
    return {row[0]: tuple(row[1:]) for row in result.result_rows}


def _period_of_row(starts: Sequence[datetime], end: datetime, lo: str, params: Params) -> str:
    """SQL of the 1-based period of a raw row of [starts[0], end): the last start at or before it. Where every
    bound is a whole number of slots of some size (a day, an hour, 15 minutes: local midnights and hours are),
    a bound array maps each slot of the range to its period, one lookup a row; otherwise a search of the starts,
    which costs a lambda over every start for every row (10-13 of 60 ms for 172k rows and 30 periods)."""
    bounds, end_ms = [unix_ms(start) for start in starts], unix_ms(end)
    for slot in SLOT_MS:
        if all(bound % slot == 0 for bound in (*bounds, end_ms)):
            count = (end_ms - bounds[0]) // slot
            if count <= MAX_SLOTS:
                slots = params.bind("slots", [bisect_right(bounds, bounds[0] + i * slot) for i in range(count)],
                                    "Array(UInt32)")
                return f"{slots}[intDiv({ROW_MS} - {lo}, {slot}) + 1]"
            break
    return f"arrayLastIndex(b -> b <= {ROW_MS}, {params.bind('bounds', bounds, 'Array(Int64)')})"


async def active_sessions(
    client: AsyncClient, scope: Scope, definition: ActiveSessions, ends: Sequence[datetime]
) -> list[int]:
    """Per period end: shares created before it and neither ended before it, from the first event ever."""
    params = Params()
    created = params.bind("n", definition.created, "String")
    ended = params.bind("n", list(definition.ended), "Array(String)")
    boundaries = params.bind("ends", [unix_ms(end) for end in ends], "Array(Int64)")
    hi = params.bind("hi", unix_ms(ends[-1]), "Int64")
    sql = (
        f"SELECT sumForEach(arrayMap(b -> toUInt64(created < b AND ended >= b), {boundaries})) FROM ("
        f"SELECT assumeNotNull({SHARE_COLUMN}) AS share, minIf({ROW_MS}, name = {created}) AS created, "
        f"ifNull(minIfOrNull({ROW_MS}, name IN {ended}), {NEVER_MS}) AS ended "
        f"FROM events WHERE {scope.where(params)} AND (name = {created} OR name IN {ended}) "
        f"AND {SHARE_COLUMN} IS NOT NULL AND timestamp < fromUnixTimestamp64Milli({hi}, 'UTC') "
        f"GROUP BY share HAVING countIf(name = {created}) > 0)"
    )
    result = await client.query(sql, parameters=params.values)
    counts = list(result.result_rows[0][0]) if result.result_rows else []
    # No share at all: ClickHouse answers an empty array.
    return [int(count) for count in counts] if counts else [0] * len(ends)


async def active_sessions_from_sets(
    client: AsyncClient, workspace_id: UUID, definition: ActiveSessions, ends: Sequence[datetime],
    grains: Sequence[str], splits: dict[str, tuple[int, ...]],
) -> list[int]:
    """Per period end b: |shares created before b| - |shares created and ended before b|, from share_sets
    (schema/0014) at the grains of a plan of [epoch, end 1), [end 1, end 2), ... (app/statistics/service.plan):
    each bucket lies wholly before some ends, so the shares before b are a union of whole buckets."""
    params = Params()
    created = params.bind("n", definition.created, "String")
    ended = params.bind("n", list(definition.ended), "Array(String)")
    where = f"workspace_id = {params.bind('ws', workspace_id, 'UUID')} AND (name = {created} OR name IN {ended})"
    parts = _grains_union(SHARE_SETS, "name, bucket, shares", where, grains)
    boundaries = params.bind("ends", [round(end.timestamp()) for end in ends], "Array(UInt32)")
    sql = (
        "SELECT period, "
        "bitmapAndnotCardinality(groupBitmapMergeState(c) OVER upto, groupBitmapMergeState(e) OVER upto) "
        f"FROM (SELECT arrayFirstIndex(b -> toUInt32(bucket) < b, {boundaries}) AS period, "
        f"groupBitmapMergeStateIf(shares, name = {created}) AS c, "
        f"groupBitmapMergeStateIf(shares, name IN {ended}) AS e "
        f"FROM ({parts}) GROUP BY period) "
        "WINDOW upto AS (ORDER BY period ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) ORDER BY period"
    )
    result = await client.query(sql, parameters=_plan_parameters(params, splits, EPOCH, ends[-1]),
                                settings=ROLLUP_SETTINGS)
    counts = dict(result.result_rows)
    # A period without a bucket of its own adds no share: it keeps the count of the one before.
    answer, last = [], 0
    for period in range(1, len(ends) + 1):
        last = counts.get(period, last)
        answer.append(int(last))
    return answer
