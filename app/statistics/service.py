"""Local calendar periods, the planner choosing the cheapest exact source, and the statistics time series.

Reused by the metrics dashboard: `time_range` (validation and limits), `periods`, `plan` and `RANGE_LIMITS`.
"""

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.customers.service import identity_keys
from app.errors import invalid
from app.statistics import queries
from app.statistics.queries import COST_FIELD, EventCounts, FieldValues, Selection
from app.statistics.schemas import PeriodStats, Stats, Timeseries

INTERVALS = ("hour", "day", "week", "month", "year")
# The longest range per interval, in local calendar days from start_date to end_date inclusive. Past it: 422.
RANGE_LIMITS: dict[str, int] = {"hour": 31, "day": 3 * 366, "week": 5 * 366, "month": 10 * 366, "year": 30 * 366}
# ClickHouse's DateTime ends in 2106; before 1972 some zones (Africa/Monrovia) had offsets off the 15-minute
# grid every rollup relies on.
EARLIEST_DATE = date(1972, 1, 1)
LATEST_DATE = date(2105, 12, 31)
DEFAULT_FIELDS = (COST_FIELD,)
MAX_NAMES = 100
MAX_FIELDS = 20
MAX_CUSTOMERS = 1000
MAX_FIELD_LENGTH = 200

# Every zone offset and transition of current tzdata is a multiple of 15 minutes; scanning at that step finds
# every local hour boundary, and every local period is a union of 15-minute UTC buckets.
GRID = timedelta(minutes=15)
GRAINS = ("1d", "1h", "15m")
GRAIN_LENGTH = {grain: timedelta(seconds=seconds) for grain, seconds in queries.ROLLUP_SECONDS.items()}
RAW = ("raw",)


@dataclass(frozen=True, slots=True)
class TimeRange:
    start_date: date
    end_date: date
    interval: str
    timezone: str
    zone: ZoneInfo


@dataclass(frozen=True, slots=True)
class Period:
    """One local calendar bucket: [start, end) as aware UTC instants."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Plan:
    """The sources answering one set of periods: rollup grains (coarsest first) or the raw table, and per grain
    the buckets (Unix seconds) that hold a period boundary, which the next finer grain serves instead."""

    grains: tuple[str, ...]
    splits: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        return "+".join(self.grains)


@dataclass(frozen=True, slots=True)
class Answer:
    timeseries: Timeseries
    periods_plan: Plan
    totals_plan: Plan
    # How many (field, name, period) quantiles were kept ones (schema/0020).
    kept: int = 0


# --------------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------------


def parse_date(field: str, value: str | None) -> date:
    if value is None or value == "":
        raise invalid(field, "required, as YYYY-MM-DD")
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise invalid(field, "expected a date as YYYY-MM-DD") from None
    if not EARLIEST_DATE <= parsed <= LATEST_DATE:
        raise invalid(field, f"must be between {EARLIEST_DATE} and {LATEST_DATE}")
    return parsed


def zone_of(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise invalid("timezone", f"unknown IANA time zone {timezone!r}") from None


def time_range(start_date: str | None, end_date: str | None, interval: str, timezone: str) -> TimeRange:
    """The validated range of a request: 422 naming the parameter when any is wrong."""
    if interval not in INTERVALS:
        raise invalid("interval", f"one of {', '.join(INTERVALS)}")
    zone = zone_of(timezone)
    start, end = parse_date("start_date", start_date), parse_date("end_date", end_date)
    if end < start:
        raise invalid("end_date", "is before start_date")
    days = (end - start).days + 1
    if days > RANGE_LIMITS[interval]:
        limit = RANGE_LIMITS[interval]
        raise invalid("end_date", f"the range is {days} days; interval {interval} allows at most {limit}")
    return TimeRange(start, end, interval, timezone, zone)


def field_list(aggregate_fields: list[str] | None) -> list[str]:
    fields = list(dict.fromkeys(aggregate_fields)) if aggregate_fields else list(DEFAULT_FIELDS)
    if len(fields) > MAX_FIELDS:
        raise invalid("aggregate_fields", f"at most {MAX_FIELDS} fields")
    for field in fields:
        if not field or len(field) > MAX_FIELD_LENGTH or "" in field.split("."):
            raise invalid("aggregate_fields", f"{field!r} is not a dotted metadata path")
    return fields


def name_list(names: list[str] | None) -> list[str] | None:
    if names is None:
        return None
    if len(names) > MAX_NAMES:
        raise invalid("name", f"at most {MAX_NAMES} names")
    return sorted(set(names))


def customer_id_list(customer_ids: list[str] | None) -> list[UUID] | None:
    if customer_ids is None:
        return None
    if len(customer_ids) > MAX_CUSTOMERS:
        raise invalid("customer_id", f"at most {MAX_CUSTOMERS} customers")
    try:
        return [UUID(value) for value in customer_ids]
    except ValueError:
        raise invalid("customer_id", "expected customer UUIDs") from None


def external_id_list(external_ids: list[str] | None) -> list[str] | None:
    if external_ids is not None and len(external_ids) > MAX_CUSTOMERS:
        raise invalid("external_customer_id", f"at most {MAX_CUSTOMERS} customers")
    return external_ids


# --------------------------------------------------------------------------------------------------------------
# Periods
# --------------------------------------------------------------------------------------------------------------


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    # fold=0 takes the first of two repeated midnights; a midnight skipped by DST maps to the transition,
    # the first real instant of that day.
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def period_start_date(day: date, interval: str) -> date:
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    if interval == "year":
        return day.replace(month=1, day=1)
    return day


def next_period_date(day: date, interval: str) -> date:
    if interval == "day":
        return day + timedelta(days=1)
    if interval == "week":
        return day + timedelta(days=7)
    if interval == "month":
        return date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return date(day.year + 1, 1, 1)


def _local_hour(instant: datetime, zone: ZoneInfo) -> tuple[datetime, timedelta | None]:
    local = instant.astimezone(zone)
    # With the offset, the hour a fall-back transition repeats is two periods, one per real hour.
    return local.replace(minute=0, second=0, microsecond=0, tzinfo=None), local.utcoffset()


def hour_periods(start: datetime, end: datetime, zone: ZoneInfo) -> list[Period]:
    boundaries = [start]
    current = _local_hour(start, zone)
    instant = start + GRID
    while instant < end:
        here = _local_hour(instant, zone)
        if here != current:
            boundaries.append(instant)
            current = here
        instant += GRID
    boundaries.append(end)
    return [Period(a, b) for a, b in zip(boundaries, boundaries[1:])]


def periods(span: TimeRange) -> list[Period]:
    """The local calendar buckets covering start_date..end_date, contiguous and in order. Weeks (from Monday),
    months and years start on or before start_date; the last holds end_date. Hours are real hours: a 25-hour
    local day has 25 of them."""
    zone = span.zone
    if span.interval == "hour":
        end = local_midnight(span.end_date + timedelta(days=1), zone)
        return hour_periods(local_midnight(span.start_date, zone), end, zone)
    buckets = []
    day = period_start_date(span.start_date, span.interval)
    while day <= span.end_date:
        following = next_period_date(day, span.interval)
        buckets.append(Period(local_midnight(day, zone), local_midnight(following, zone)))
        day = following
    return buckets


# --------------------------------------------------------------------------------------------------------------
# Planner
# --------------------------------------------------------------------------------------------------------------


def _floor(instant: datetime, length: timedelta) -> datetime:
    seconds = length.total_seconds()
    return datetime.fromtimestamp(math.floor(instant.timestamp() / seconds) * seconds, UTC)


def _ceil(instant: datetime, length: timedelta) -> datetime:
    seconds = length.total_seconds()
    return datetime.fromtimestamp(math.ceil(instant.timestamp() / seconds) * seconds, UTC)


def _cover(start: datetime, end: datetime, grains: Sequence[str], used: set[str], splits: dict[str, set[int]]) -> None:
    """Cover [start, end), a piece of one period, exactly: whole buckets of the coarsest grain that fit, and the
    rest (at most two edges) from the finer grains; every bucket an edge touches is recorded as split."""
    grain, finer = grains[0], grains[1:]
    length = GRAIN_LENGTH[grain]
    first, last = _ceil(start, length), _floor(end, length)
    if first < last:
        used.add(grain)
        edges = [(start, first), (last, end)]
    else:
        edges = [(start, end)]
    for edge_start, edge_end in edges:
        if edge_start >= edge_end:
            continue
        if not finer:
            raise ValueError(f"[{edge_start}, {edge_end}) is not a union of {grain} buckets")
        bucket = _floor(edge_start, length)
        while bucket < edge_end:
            splits[grain].add(int(bucket.timestamp()))
            bucket += length
        _cover(edge_start, edge_end, finer, used, splits)


def plan(spans: Sequence[tuple[datetime, datetime]], grains: Sequence[str] = GRAINS, raw: bool = False) -> Plan:
    """The cheapest exact source for these periods: the coarsest rollup buckets that lie wholly inside one period,
    finer ones at the edges (a day of New York is 24 hourly buckets; one of Kolkata 23 hourly and two
    15-minute ones), or the raw table when a filter the rollups do not keep (customers) is asked for.
    `grains` restricts the rollups (finest last), which is how tests prove every source agrees."""
    if raw or any(_floor(instant, GRID) != instant for span in spans for instant in span):
        return Plan(RAW)
    used: set[str] = set()
    splits: dict[str, set[int]] = {grain: set() for grain in grains}
    for start, end in spans:
        _cover(start, end, grains, used, splits)
    chosen = tuple(grain for grain in grains if grain in used)
    return Plan(chosen, {grain: tuple(sorted(splits[grain])) for grain in chosen})


# --------------------------------------------------------------------------------------------------------------
# The time series
# --------------------------------------------------------------------------------------------------------------


async def customer_filter(
    client: AsyncClient, workspace_id: UUID, customer_id: list[str] | None, external_customer_id: list[str] | None
) -> tuple[list[str] | None, list[UUID] | None]:
    """The identity keys (events.customer_key) and ids the `customer_id` / `external_customer_id` query
    parameters stand for; (None, None) for no filter. A customer's events are its own whether they named it by
    id or by external id."""
    customer_ids = customer_id_list(customer_id)
    external_ids = external_id_list(external_customer_id)
    if customer_ids is None and external_ids is None:
        return None, None
    keys = await identity_keys(client, workspace_id, customer_ids or [], external_ids or [])
    return keys, customer_ids or []


async def _aggregate(
    client: AsyncClient, source: Plan, selection: Selection, by_period: bool, with_totals: bool = False
) -> tuple[EventCounts, FieldValues]:
    return await asyncio.gather(
        queries.event_counts(client, source.grains, source.splits, by_period, selection, with_totals),
        queries.field_values(client, source.grains, source.splits, by_period, selection, with_totals),
    )


def _stats(name: str, period: int, fields: Sequence[str], counts: EventCounts, values: FieldValues) -> Stats:
    occurrences, customers = counts.get((name, period), (0, 0))
    stats = Stats(name, occurrences, customers, {}, {}, {}, {}, {})
    for field in fields:
        count, total, exact, quantiles = values.get((field, name, period), (0, 0.0, Decimal(0), [0.0, 0.0, 0.0]))
        stats.totals[field] = json_decimal(exact) if field == COST_FIELD else total
        stats.averages[field] = float(exact / count if field == COST_FIELD else total / count) if count else 0.0
        stats.p10[field], stats.p90[field], stats.p99[field] = quantiles
    return stats


def json_decimal(value: Decimal) -> Decimal:
    """The decimal without trailing zeros and never in exponent form (0.002500000000 -> 0.0025, 1E+2 -> 100)."""
    return Decimal(format(value.normalize(), "f")) if value else Decimal(0)


async def timeseries(
    client: AsyncClient,
    workspace_id: UUID,
    span: TimeRange,
    fields: Sequence[str],
    names: Sequence[str] | None = None,
    customer_keys: Sequence[str] | None = None,
    customer_ids: Sequence[UUID] | None = None,
    grains: Sequence[str] = GRAINS,
) -> Answer:
    """Per name and period: occurrences, distinct customers, and per field its total, average and p10/p90/p99.
    Periods and range totals are planned apart: the whole range usually takes coarser buckets than its periods."""
    buckets = periods(span)
    lo, hi = buckets[0].start, buckets[-1].end
    raw = customer_keys is not None or customer_ids is not None
    periods_plan = plan([(bucket.start, bucket.end) for bucket in buckets], grains, raw)
    totals_plan = plan([(lo, hi)], grains, raw)
    selection = Selection(
        workspace_id, int(lo.timestamp()), int(hi.timestamp()), fields, names, customer_keys, customer_ids,
        [int(bucket.start.timestamp()) for bucket in buckets],
    )
    kept = 0
    if periods_plan == totals_plan:
        # The same rows answer both: one pass, the totals as a second grouping set (period 0).
        counts, values = await _aggregate(client, periods_plan, selection, by_period=True, with_totals=True)
        total_counts, total_values = counts, values
    elif span.interval == "day" and periods_plan.grains != ("1d",):
        # Days that are not UTC days: each merges many hourly states, so once over it is kept merged.
        counts, (values, kept), (total_counts, total_values) = await asyncio.gather(
            queries.event_counts(client, periods_plan.grains, periods_plan.splits, True, selection),
            queries.field_values_keeping_periods(client, periods_plan.grains, periods_plan.splits, selection,
                                                 int(datetime.now(UTC).timestamp())),
            _aggregate(client, totals_plan, selection, by_period=False),
        )
    else:
        (counts, values), (total_counts, total_values) = await asyncio.gather(
            _aggregate(client, periods_plan, selection, by_period=True),
            _aggregate(client, totals_plan, selection, by_period=False),
        )
    stat_names = sorted(names) if names is not None else sorted({name for name, _ in total_counts})
    result = Timeseries(
        periods=[
            PeriodStats(bucket.start, bucket.end,
                        [_stats(name, index, fields, counts, values) for name in stat_names])
            for index, bucket in enumerate(buckets, start=1)
        ],
        totals=[_stats(name, 0, fields, total_counts, total_values) for name in stat_names],
    )
    return Answer(result, periods_plan, totals_plan, kept)
