"""SQL of customer usage metrics. A metric's matchers and filters compile to SQL over the typed metadata maps,
with property paths and values as bound parameters: the SQL text is built from constants and parameter names."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

METRIC_COLUMNS = [
    "workspace_id", "id", "name", "interval_days", "format", "display", "calculation", "property", "match_events",
    "filters", "created_at", "updated_at", "deleted",
]
COMPARISONS = {"eq": "=", "ne": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
# Per sort of the customer list: the order, and the keyset that continues after the cursor's row in it.
CUSTOMER_ORDERS = {
    None: ("created, cid", "(created, cid) > ({after_at:DateTime64(3, 'UTC')}, {after_id:UUID})"),
    "usage_metric": (
        "total, created, cid",
        "(total, created, cid) > ({after_value:Float64}, {after_at:DateTime64(3, 'UTC')}, {after_id:UUID})",
    ),
    "-usage_metric": (
        "total DESC, created, cid",
        "(total < {after_value:Float64} OR (total = {after_value:Float64} "
        "AND (created, cid) > ({after_at:DateTime64(3, 'UTC')}, {after_id:UUID})))",
    ),
}
TS = "DateTime64(3, 'UTC')"
# The cell sizes of customer_usage (schema/0011), finest first, each a whole number of the one before.
CELL_DAYS = (1, 7, 28)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Leaves the store also keeps in typed columns of their own: summed from those without reading the maps, and
# `_cost.amount` exactly, as a decimal.
TYPED_LEAVES = {"_llm.total_tokens": "llm_total_tokens", "_cost.amount": "cost_amount"}
# A float sum depends on the order of its terms, which parallel reads do not fix; rounded to 12 significant
# digits (`e` is the exponent of its 12th digit), the same events give the same value on every page, so the
# keyset of a listing sorted by it never skips or repeats a customer. Dividing by an exact power of ten keeps
# the result the double nearest to the rounded decimal.
SIGNIFICANT = (
    "if(isFinite(raw) AND raw != 0, "
    "if(e < 0, round(raw * exp10(-e)) / exp10(-e), round(raw / exp10(e)) * exp10(e)), raw)"
)


@dataclass
class MetricSql:
    """One metric's event condition and aggregate, with parameter names unique to its prefix."""

    prefix: str
    names: list[str]
    sum_path: str | None
    conditions: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.parameters[f"{self.prefix}names"] = self.names
        self.conditions.append(f"name IN {{{self.prefix}names:Array(String)}}")
        if self.sum_path is not None:
            self.parameters[f"{self.prefix}path"] = self.sum_path

    def add_filter(self, path: str, operator: str, value: bool | int | float | str) -> None:
        """`operator` holds only where the path holds a value of the filter value's type (numbers compare as
        numbers, strings as strings, booleans as booleans); `ne` is the negation of `eq`, so it also holds where
        the path is absent."""
        n = len(self.conditions)
        key, bound = f"{self.prefix}f{n}p", f"{self.prefix}f{n}v"
        if isinstance(value, bool):
            column, kind = "bool", "Bool"
        elif isinstance(value, (int, float)):
            column, kind, value = "num", "Float64", float(value)
        else:
            column, kind = "str", "String"
        condition = (f"(mapContains({column}, {{{key}:String}}) AND "
                     f"{column}[{{{key}:String}}] {COMPARISONS[operator]} {{{bound}:{kind}}})")
        self.conditions.append(f"NOT {condition}" if operator == "ne" else condition)
        self.parameters.update({key: path, bound: value})

    @property
    def cell_column(self) -> str | None:
        """The column of customer_usage (schema/0011) that adds up to this metric, if one does: a count or a sum of
        a typed leaf, over event names alone."""
        if len(self.conditions) > 1:
            return None
        return "events" if self.sum_path is None else TYPED_LEAVES.get(self.sum_path)

    @property
    def condition(self) -> str:
        return " AND ".join(self.conditions)

    def aggregate(self, window: str) -> str:
        """The metric over the rows where `window` holds too; a missing property sums as 0 (the map default)."""
        condition = f"{self.condition} AND {window}"
        if self.sum_path is None:
            return f"countIf({condition})"
        if self.sum_path in TYPED_LEAVES:
            return f"toFloat64(sumIf({TYPED_LEAVES[self.sum_path]}, {condition}))"
        return f"sumIf(num[{{{self.prefix}path:String}}], {condition})"


async def metric_rows(client: AsyncClient, workspace_id: UUID, metric_id: UUID | None = None) -> list[tuple]:
    """Live metrics of the workspace (one when `metric_id` is given), oldest first, in METRIC_COLUMNS[1:-1] order."""
    result = await client.query(
        f"SELECT {', '.join(METRIC_COLUMNS[1:-1])} FROM usage_metrics FINAL "
        "WHERE workspace_id = {workspace:UUID} AND NOT deleted "
        "AND ({metric:Nullable(UUID)} IS NULL OR id = {metric:Nullable(UUID)}) ORDER BY created_at, id",
        parameters={"workspace": workspace_id, "metric": metric_id},
    )
    return [tuple(row) for row in result.result_rows]


async def insert_metric_version(client: AsyncClient, workspace_id: UUID, row: Sequence[Any], deleted: bool = False) -> None:
    await client.insert("usage_metrics", [[workspace_id, *row, deleted]], column_names=METRIC_COLUMNS)


async def customer_key_seen(client: AsyncClient, workspace_id: UUID, key: str) -> bool:
    """Whether any event names this customer key: events may name an external id no customer has yet."""
    result = await client.query(
        "SELECT count() FROM (SELECT 1 FROM events_by_customer WHERE workspace_id = {workspace:UUID} "
        "AND customer_key = {key:String} LIMIT 1)",
        parameters={"workspace": workspace_id, "key": key},
    )
    return result.result_rows[0][0] > 0


# What customer_half_days gives first for each (UTC day, half, name), named as customer_usage's columns: a metric
# with a cell_column adds up one of these; the others (filters, another property) get a column of their own.
HALF_DAY_COLUMNS = ("events", "llm_total_tokens", "cost_amount")
DAY_MS = 86_400_000


async def customer_half_days(
    client: AsyncClient, workspace_id: UUID, keys: list[str], metrics: list[MetricSql], earliest: datetime,
    now: datetime,
) -> dict[tuple[date, bool, str], tuple]:
    """The customer's events in [earliest, now) per (UTC day, whether at or after now's time of day, name): their
    count, their sums of the typed leaves, and each metric without a cell_column of its own (in `metrics` order).

    Every window of a metric ends at `now` and spans whole days, so its edges split days at now's time of day:
    half days add up to any window without a condition per window (one read of events_by_customer,
    schema/0010, in (workspace, customer, time) order)."""
    own = [metric for metric in metrics if metric.cell_column is None]
    parameters = {name: value for metric in own for name, value in metric.parameters.items()}
    columns = ["count()", "sum(llm_total_tokens)", "toFloat64(sum(cost_amount))"]
    columns += [metric.aggregate("1") for metric in own]
    result = await client.query(
        f"SELECT toDate(timestamp) AS day, toUnixTimestamp64Milli(timestamp) % {DAY_MS} >= {{time_of_day:UInt32}} "
        f"AS late, name, {', '.join(columns)} FROM events_by_customer "
        "WHERE workspace_id = {workspace:UUID} AND customer_key IN {keys:Array(String)} "
        "AND name IN {all_names:Array(String)} "
        f"AND timestamp >= {{earliest:{TS}}} AND timestamp < {{now:{TS}}} GROUP BY day, late, name",
        parameters={
            **parameters, "workspace": workspace_id, "keys": keys, "now": now, "earliest": earliest,
            "time_of_day": int(now.timestamp() * 1000) % DAY_MS,
            "all_names": sorted({name for metric in metrics for name in metric.names}),
        },
    )
    return {(day, bool(late), name): tuple(values) for day, late, name, *values in result.result_rows}


def cell_boundaries(start: datetime) -> list[datetime]:
    """For each size of CELL_DAYS, the first cell boundary (a UTC midnight) at or after the one before (the first:
    after `start`): a window from `start` reads raw events up to the first, then cells of each size up to the next."""
    boundaries, edge = [], start
    for days in CELL_DAYS:
        size = timedelta(days=days)
        edge = EPOCH - (EPOCH - edge) // size * size
        boundaries.append(edge)
    return boundaries


def values_from_events(metric: MetricSql) -> str:
    """Per customer key, the metric over [start, as_of) from the events ingested by `as_of`."""
    return (
        f"SELECT customer_key, toFloat64({metric.aggregate('1')}) AS value FROM events "
        f"WHERE workspace_id = {{workspace:UUID}} AND name IN {{{metric.prefix}names:Array(String)}} "
        f"AND timestamp >= {{start:{TS}}} AND timestamp < {{as_of:{TS}}} AND ingested_at <= {{as_of:{TS}}} "
        "GROUP BY customer_key"
    )


def values_from_cells(metric: MetricSql) -> str:
    """The same as values_from_events, from customer_usage: the cells from the first boundary after `start` on
    (cell_boundaries, as parameters c1, c7 and c28), plus the raw events before it, minus the cells' events at
    or after `as_of` and those ingested after it. Summed in the column's own type (exact decimals for cost)."""
    column = metric.cell_column
    kind = "Decimal128(12)" if column == "cost_amount" else "Int64"
    each = "1" if column == "events" else column
    events = f"FROM events WHERE workspace_id = {{workspace:UUID}} AND name IN {{{metric.prefix}names:Array(String)}}"
    return (
        "SELECT customer_key, toFloat64(sum(part)) AS value FROM ("
        f"  SELECT customer_key, CAST(sum({column}) AS {kind}) AS part FROM customer_usage "
        f"  WHERE workspace_id = {{workspace:UUID}} AND name IN {{{metric.prefix}names:Array(String)}} "
        "  AND ((days = 1 AND bucket >= {c1:Date} AND bucket < {c7:Date}) "
        "    OR (days = 7 AND bucket >= {c7:Date} AND bucket < {c28:Date}) OR (days = 28 AND bucket >= {c28:Date})) "
        "  GROUP BY customer_key"
        "  UNION ALL"
        f"  SELECT customer_key, CAST(sum(if(timestamp < {{as_of:{TS}}}, 1, -1) * {each}) AS {kind}) {events} "
        f"  AND ((timestamp >= {{start:{TS}}} AND timestamp < {{c1_at:{TS}}} AND ingested_at <= {{as_of:{TS}}}) "
        f"    OR timestamp >= {{as_of:{TS}}}) GROUP BY customer_key"
        "  UNION ALL"
        f"  SELECT customer_key, CAST(-sum({each}) AS {kind}) {events} AND timestamp >= {{c1_at:{TS}}} "
        f"  AND timestamp < {{as_of:{TS}}} AND ingested_at > {{as_of:{TS}}} GROUP BY customer_key"
        ") GROUP BY customer_key"
    )


async def customers_with_value(
    client: AsyncClient, workspace_id: UUID, metric: MetricSql, start: datetime, as_of: datetime,
    sort: str | None, after: tuple[float, datetime, UUID] | None, take: int, from_cells: bool,
) -> list[tuple]:
    """Live customers created by `as_of` with the metric over [start, as_of) from the events ingested by then,
    as rows of app.customers.queries.CUSTOMER_COLUMNS plus (raw, e, value), keyset-paged in the order of `sort`;
    the values from customer_usage (`from_cells`, for metrics with a cell_column) or from `events`.

    Freezing both ends at `as_of` keeps every page of one listing on the same numbers, so each customer shows
    once. A customer's events are those under its id and, once it has one, its external id.
    """
    order, keyset = CUSTOMER_ORDERS[sort]
    parameters = {**metric.parameters, "workspace": workspace_id, "start": start, "as_of": as_of, "take": take}
    if after is not None:
        parameters.update(after_value=after[0], after_at=after[1], after_id=after[2])
    if from_cells:
        c1, c7, c28 = cell_boundaries(start)
        parameters.update(c1=c1.date(), c7=c7.date(), c28=c28.date(), c1_at=c1)
    result = await client.query(
        "SELECT cid, any(cext), any(cemail), any(cname), any(cmeta), any(cat) AS created, "
        f"sum(value) AS raw, floor(log10(abs(raw))) - 11 AS e, {SIGNIFICANT if metric.sum_path else 'raw'} AS total FROM ("
        "  SELECT k.cid AS cid, k.cext AS cext, k.cemail AS cemail, k.cname AS cname, k.cmeta AS cmeta, "
        "         k.cat AS cat, v.value AS value FROM ("
        "    SELECT id AS cid, external_id AS cext, email AS cemail, name AS cname, metadata AS cmeta, "
        "           created_at AS cat, arrayJoin(arrayConcat(['c:' || toString(id)], "
        "           if(isNull(external_id), [], ['x:' || assumeNotNull(external_id)]))) AS ckey "
        f"    FROM customers FINAL WHERE workspace_id = {{workspace:UUID}} AND NOT deleted AND created_at <= {{as_of:{TS}}}"
        f"  ) AS k LEFT JOIN ({values_from_cells(metric) if from_cells else values_from_events(metric)}) AS v "
        "  ON v.customer_key = k.ckey"
        f") GROUP BY cid {'HAVING ' + keyset if after is not None else ''} ORDER BY {order} LIMIT {{take:UInt32}}",
        parameters=parameters,
    )
    return [tuple(row) for row in result.result_rows]
