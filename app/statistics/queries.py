"""The SQL of the statistics time series. Every value is a bound parameter; the only text that varies is chosen
from the constants below (which rollup tables a plan reads, whether rows go to periods or to the whole range)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.customers.queries import distinct_customers_of_bitmaps, distinct_customers_of_numbers

# Must equal the quantile states of schema/0003_rollups.sql.
GK_ACCURACY = 200
QUANTILE_LEVELS = (0.1, 0.9, 0.99)
COST_FIELD = "_cost.amount"

# The rollup grains, coarsest first, with their bucket length in seconds and the function that finds the
# bucket of this grain holding an instant.
ROLLUP_SECONDS = {"1d": 86_400, "1h": 3_600, "15m": 900}
ROLLUP_BUCKET = {"1d": "toStartOfDay", "1h": "toStartOfHour", "15m": "toStartOfFifteenMinutes"}

# What names a row's period in SQL: the 1-based index of the last period start at or before it, the starts
# (Unix seconds) coming from Python's zone rules; 0 names the whole range. ClickHouse's calendar functions are
# not used for it: its own time zone data can lag Python's (in ClickHouse 26.9, Africa/Casablanca falls back to
# UTC+0 from 2026-09-20 where tzdata 2025b keeps UTC+1).
PERIOD_SQL = "arrayLastIndex(start -> start <= toUnixTimestamp({instant}), {{starts:Array(UInt32)}})"
RANGE_SQL = "toUInt32(0)"

RANGE_START = "toDateTime({lo:UInt32}, 'UTC')"
RANGE_END = "toDateTime({hi:UInt32}, 'UTC')"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which events a query aggregates: one workspace, [lo, hi) in Unix seconds, optional filters; and the
    periods they fall in, by their starts (Unix seconds, ascending)."""

    workspace_id: UUID
    lo: int
    hi: int
    fields: Sequence[str]
    names: Sequence[str] | None = None
    customer_keys: Sequence[str] | None = None
    customer_ids: Sequence[UUID] | None = None
    starts: Sequence[int] = ()

    def parameters(self) -> dict[str, Any]:
        return {
            "ws": self.workspace_id, "lo": self.lo, "hi": self.hi, "starts": list(self.starts),
            "fields": list(self.fields), "names": list(self.names or []),
            "customer_keys": list(self.customer_keys or []), "customer_ids": list(self.customer_ids or []),
            "cost_field": COST_FIELD,
        }


# (name, period: its index from 1, or 0 for the range) -> (occurrences, distinct customers)
EventCounts = dict[tuple[str, int], tuple[int, int]]
# (field, name, period) -> (values, float total, exact total, [p10, p90, p99])
FieldValues = dict[tuple[str, str, int], tuple[int, float, Decimal, list[float]]]


def period_sql(by_period: bool, instant: str) -> str:
    return PERIOD_SQL.format(instant=instant) if by_period else RANGE_SQL


def _names_filter(selection: Selection) -> str:
    return " AND name IN {names:Array(String)}" if selection.names is not None else ""


def coverage_sql(grain: str, grains: Sequence[str]) -> str:
    """The rows of `grain` a plan reading `grains` (coarsest first) takes, as the planner chose them: inside the
    range, inside a bucket the next coarser grain of the plan left split, and not split itself (the finest
    grain takes all it is given)."""
    conditions = ["bucket >= " + RANGE_START, "bucket < " + RANGE_END]
    position = grains.index(grain)
    if position > 0:
        parent = grains[position - 1]
        conditions.append(f"toUInt32({ROLLUP_BUCKET[parent]}(bucket)) IN {{split_{parent}:Array(UInt32)}}")
    if position < len(grains) - 1:
        conditions.append(f"toUInt32(bucket) NOT IN {{split_{grain}:Array(UInt32)}}")
    return " AND ".join(conditions)


def split_parameters(splits: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """The split buckets of each grain (Unix seconds), as the coverage conditions name them."""
    return {f"split_{grain}": list(splits.get(grain, ())) for grain in ROLLUP_SECONDS}


def _group_by(keys: str, with_totals: bool) -> str:
    # The range totals in the same pass, where they read the same rows: their rows carry key 0, which no
    # period has (periods count from 1).
    return f" GROUP BY GROUPING SETS (({keys}, key), ({keys}))" if with_totals else f" GROUP BY {keys}, key"


def event_counts_sql(grains: Sequence[str], by_period: bool, selection: Selection, with_totals: bool = False) -> str:
    parts = [
        f"SELECT name, {period_sql(by_period, 'bucket')} AS key, occurrences, customers FROM event_stats_{grain} "
        f"WHERE workspace_id = {{ws:UUID}}{_names_filter(selection)} AND {coverage_sql(grain, grains)}"
        for grain in grains
    ]
    return (
        f"SELECT name, key, sum(occurrences), {distinct_customers_of_bitmaps('{ws:UUID}')} FROM ("
        + " UNION ALL ".join(parts)
        + ")" + _group_by("name", with_totals)
    )


def field_values_sql(grains: Sequence[str], by_period: bool, selection: Selection, with_totals: bool = False) -> str:
    parts = [
        f"SELECT field, name, {period_sql(by_period, 'bucket')} AS key, value_count, value_total, exact_total, "
        f"value_quantiles FROM field_stats_{grain} "
        f"WHERE workspace_id = {{ws:UUID}} AND field IN {{fields:Array(String)}}{_names_filter(selection)} "
        f"AND {coverage_sql(grain, grains)}"
        for grain in grains
    ]
    levels = ", ".join(str(level) for level in QUANTILE_LEVELS)
    return (
        f"SELECT field, name, key, sum(value_count), sum(value_total), sum(exact_total), "
        f"quantilesGKMerge({GK_ACCURACY}, {levels})(value_quantiles) FROM ("
        + " UNION ALL ".join(parts)
        + ")" + _group_by("field, name", with_totals)
    )


def _raw_filter(selection: Selection) -> str:
    customers = ""
    if selection.customer_keys is not None or selection.customer_ids is not None:
        customers = (
            " AND (customer_key IN {customer_keys:Array(String)} OR customer_id IN {customer_ids:Array(UUID)})"
        )
    return (
        "workspace_id = {ws:UUID} AND timestamp >= toDateTime64({lo:UInt32}, 3, 'UTC') "
        "AND timestamp < toDateTime64({hi:UInt32}, 3, 'UTC')" + _names_filter(selection) + customers
    )


def raw_event_counts_sql(by_period: bool, selection: Selection, with_totals: bool = False) -> str:
    return (
        f"SELECT name, {period_sql(by_period, 'timestamp')} AS key, count(), "
        f"{distinct_customers_of_numbers('{ws:UUID}')} "
        f"FROM events WHERE {_raw_filter(selection)}" + _group_by("name", with_totals)
    )


def raw_field_values_sql(by_period: bool, selection: Selection, with_totals: bool = False) -> str:
    levels = ", ".join(str(level) for level in QUANTILE_LEVELS)
    return (
        f"SELECT field, name, {period_sql(by_period, 'timestamp')} AS key, count(), sum(num[field]), "
        f"sum(if(field = {{cost_field:String}}, cost_amount, toDecimal128(0, 12))), "
        f"quantilesExact({levels})(num[field]) "
        f"FROM events ARRAY JOIN {{fields:Array(String)}} AS field "
        f"WHERE {_raw_filter(selection)} AND mapContains(num, field)" + _group_by("field, name", with_totals)
    )


async def event_counts(
    client: AsyncClient, grains: Sequence[str], splits: Mapping[str, Sequence[int]], by_period: bool,
    selection: Selection, with_totals: bool = False,
) -> EventCounts:
    """Occurrences and distinct customers per (name, period), from the rollups of `grains` or ("raw",); per
    (name, 0) over the whole range instead without `by_period`, or as well with `with_totals`."""
    sql = (raw_event_counts_sql(by_period, selection, with_totals) if grains == ("raw",)
           else event_counts_sql(grains, by_period, selection, with_totals))
    result = await client.query(sql, parameters={**selection.parameters(), **split_parameters(splits)})
    return {(name, key): (occurrences, customers) for name, key, occurrences, customers in result.result_rows}


async def field_values(
    client: AsyncClient, grains: Sequence[str], splits: Mapping[str, Sequence[int]], by_period: bool,
    selection: Selection, with_totals: bool = False,
) -> FieldValues:
    """Per (field, name, period): how many events carry the field, its totals and its quantiles; per period 0,
    the whole range, instead without `by_period`, or as well with `with_totals`."""
    sql = (raw_field_values_sql(by_period, selection, with_totals) if grains == ("raw",)
           else field_values_sql(grains, by_period, selection, with_totals))
    result = await client.query(sql, parameters={**selection.parameters(), **split_parameters(splits)})
    return {
        (field, name, key): (count, total, exact, list(quantiles))
        for field, name, key, count, total, exact, quantiles in result.result_rows
    }
