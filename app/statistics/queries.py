"""The SQL of the statistics time series. Every value is a bound parameter; the only text that varies is chosen
from the constants below (which rollup tables a plan reads, whether rows go to periods or to the whole range)."""

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from clickhouse_connect.driver.external import ExternalData

from app.customers.queries import distinct_customers_of_bitmaps, distinct_customers_of_numbers
from app.warehouse.client import column_tables

log = logging.getLogger(__name__)

# Must equal the quantile states of schema/0003_rollups.sql.
GK_ACCURACY = 200
QUANTILE_LEVELS = (0.1, 0.9, 0.99)
LEVELS = ", ".join(str(level) for level in QUANTILE_LEVELS)
MERGED_QUANTILES = f"quantilesGKMerge({GK_ACCURACY}, {LEVELS})(value_quantiles)"
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


def field_rows_sql(grains: Sequence[str], by_period: bool, selection: Selection) -> str:
    """The rows of field_stats_* that `grains` cover, each with the key of its period (or 0, the range)."""
    return " UNION ALL ".join(
        f"SELECT field, name, {period_sql(by_period, 'bucket')} AS key, value_count, value_total, exact_total, "
        f"value_quantiles FROM field_stats_{grain} "
        f"WHERE workspace_id = {{ws:UUID}} AND field IN {{fields:Array(String)}}{_names_filter(selection)} "
        f"AND {coverage_sql(grain, grains)}"
        for grain in grains
    )


def field_values_sql(grains: Sequence[str], by_period: bool, selection: Selection, with_totals: bool = False) -> str:
    return (
        f"SELECT field, name, key, sum(value_count), sum(value_total), sum(exact_total), "
        f"{MERGED_QUANTILES} FROM ({field_rows_sql(grains, by_period, selection)})"
        + _group_by("field, name", with_totals)
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
    return (
        f"SELECT field, name, {period_sql(by_period, 'timestamp')} AS key, count(), sum(num[field]), "
        f"sum(if(field = {{cost_field:String}}, cost_amount, toDecimal128(0, 12))), "
        f"quantilesExact({LEVELS})(num[field]) "
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


# Kept period quantiles (schema/0020) ----------------------------------------------------------------------

# A kept period's index among the request's periods (0: none of them), and that period's end. The last with
# its start, as PERIOD_SQL finds a row's: a local day a zone skipped (Apia's 2011-12-30) is an empty period
# starting where the next day does.
KEPT_KEY = "arrayLastIndex(start -> start = toUInt32(period_start), {starts:Array(UInt32)})"
PERIOD_END = "toDateTime(arrayConcat({starts:Array(UInt32)}, [{hi:UInt32}])[key + 1], 'UTC')"
# (field, name, period key, values) rows, sent as temporary tables: a long range has thousands.
PERIOD_KEYS = "field String, name String, key UInt32, count UInt64"


def period_keys(table: str, rows: list[tuple[str, str, int, int]]) -> ExternalData:
    columns = [list(column) for column in zip(*rows, strict=True)] or [[], [], [], []]
    return column_tables(PERIOD_KEYS, **{table: columns})


def kept_rows_sql(selection: Selection) -> str:
    """The kept quantiles of exactly the request's periods."""
    return (
        f"SELECT field, name, {KEPT_KEY} AS key, value_count, quantiles FROM field_period_quantiles "
        f"WHERE workspace_id = {{ws:UUID}} AND field IN {{fields:Array(String)}}{_names_filter(selection)} "
        f"AND period_start >= {RANGE_START} AND period_start < {RANGE_END} AND key > 0 AND period_end = {PERIOD_END}"
    )


def period_sums_sql(grains: Sequence[str], selection: Selection) -> str:
    return (
        "SELECT field, name, key, sum(value_count), sum(value_total), sum(exact_total) "
        f"FROM ({field_rows_sql(grains, True, selection)}) GROUP BY field, name, key"
    )


def period_quantiles_sql(grains: Sequence[str], selection: Selection) -> str:
    """Per (field, name, period): its kept quantiles where the temporary table `kept` names them with the count
    the rollups hold now, else merged from the rollups."""
    return (
        f"SELECT field, name, key, quantiles FROM ({kept_rows_sql(selection)}) "
        "WHERE (field, name, key, value_count) IN (SELECT field, name, key, count FROM kept) "
        "LIMIT 1 BY field, name, key "
        "UNION ALL "
        f"SELECT field, name, key, {MERGED_QUANTILES} FROM ({field_rows_sql(grains, True, selection)}) "
        "WHERE (field, name, key) NOT IN (SELECT field, name, key FROM kept) GROUP BY field, name, key"
    )


def keep_period_quantiles_sql(grains: Sequence[str], selection: Selection) -> str:
    """Keeps the quantiles of each (field, name, period) the temporary table `missing` names."""
    return (
        "INSERT INTO field_period_quantiles "
        "(workspace_id, field, name, period_start, period_end, value_count, quantiles) "
        f"SELECT {{ws:UUID}}, field, name, toDateTime({{starts:Array(UInt32)}}[key], 'UTC'), {PERIOD_END}, "
        f"sum(value_count), {MERGED_QUANTILES} FROM ({field_rows_sql(grains, True, selection)}) "
        "WHERE (field, name, key) IN (SELECT field, name, key FROM missing) GROUP BY field, name, key"
    )


async def field_values_keeping_periods(
    client: AsyncClient, grains: Sequence[str], splits: Mapping[str, Sequence[int]], selection: Selection,
    over_by: int,
) -> tuple[FieldValues, int]:
    """field_values by period, where each period's quantiles are those kept of it while the rollups hold as many
    values as they were merged from, else merged from the rollups; a period over by `over_by` (Unix seconds) and
    not kept yet is kept for the next request. Also: how many quantiles were kept ones."""
    parameters = {**selection.parameters(), **split_parameters(splits)}
    sums, kept = await asyncio.gather(
        client.query(period_sums_sql(grains, selection), parameters=parameters),
        client.query(f"SELECT field, name, key, value_count FROM ({kept_rows_sql(selection)})", parameters=parameters),
    )
    kept_counts = {tuple(row) for row in kept.result_rows}
    ends = [*selection.starts[1:], selection.hi]
    fresh, missing = [], []
    for field, name, key, count, _, _ in sums.result_rows:
        if (field, name, key, count) in kept_counts:
            fresh.append((field, name, key, count))
        elif ends[key - 1] <= over_by:
            missing.append((field, name, key, count))
    quantiles = _period_quantiles(client, grains, selection, parameters, fresh)
    if missing:
        merged, _ = await asyncio.gather(quantiles, _keep(client, grains, selection, parameters, missing))
    else:
        merged = await quantiles
    while any(item[:3] not in merged for item in fresh):
        # Kept again with a larger count by another request (late events), the matching row merged away
        # meanwhile: those periods are read from the rollups instead.
        fresh = [item for item in fresh if item[:3] in merged]
        merged = await _period_quantiles(client, grains, selection, parameters, fresh)
    values = {(field, name, key): (count, total, exact, merged[(field, name, key)])
              for field, name, key, count, total, exact in sums.result_rows}
    return values, len(fresh)


async def _period_quantiles(client: AsyncClient, grains: Sequence[str], selection: Selection,
                            parameters: dict[str, Any], fresh: list[tuple[str, str, int, int]]
                            ) -> dict[tuple[str, str, int], list[float]]:
    found = await client.query(period_quantiles_sql(grains, selection), parameters=parameters,
                               external_data=period_keys("kept", fresh))
    return {(field, name, key): list(levels) for field, name, key, levels in found.result_rows}


async def _keep(client: AsyncClient, grains: Sequence[str], selection: Selection, parameters: dict[str, Any],
                missing: list[tuple[str, str, int, int]]) -> None:
    # Only a saving for later requests: the answer at hand does not depend on it.
    try:
        await client.command(keep_period_quantiles_sql(grains, selection), parameters=parameters,
                             external_data=period_keys("missing", missing))
    except (DatabaseError, OperationalError) as error:
        log.warning("could not keep period quantiles: %s", error)
