"""Customer usage metrics: their definitions, and their values per customer."""

import asyncio
import math
import re
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from typing import Literal
from uuid import UUID, uuid4

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar.exceptions import NotFoundException

from app.customers.queries import customer_row
from app.customers.service import customer_key
from app.customers.schemas import Customer
from app.errors import invalid
from app.pagination import decode_cursor, encode_cursor
from app.usage_metrics import queries
from app.usage_metrics.queries import CUSTOMER_ORDERS, MetricSql
from app.usage_metrics.schemas import (
    CustomerUsageMetric,
    CustomerUsagePage,
    CustomerWithUsage,
    EventMatcher,
    MetricFilter,
    SparklinePoint,
    UsageColumn,
    UsageMetric,
    UsageMetricCreate,
    UsageMetricPatch,
)
from app.warehouse.client import stored_now

DAY = timedelta(days=1)
# Dotted metadata path: non-empty keys separated by dots.
PROPERTY_PATH = re.compile(r"^[^.\s][^.]*(\.[^.\s][^.]*)*$")
ORDERING_OPERATORS = {"gt", "gte", "lt", "lte"}
FILTERS = msgspec.json.Decoder(list[MetricFilter])


# Definitions ---------------------------------------------------------------------------------------------

def check_definition(metric: UsageMetric) -> None:
    """The rules that span fields (the schemas check each field on its own); a 422 naming the field."""
    if metric.calculation == "sum" and metric.property is None:
        raise invalid("property", "required when calculation is sum: the dotted metadata path of a number to sum")
    if metric.property is not None and not PROPERTY_PATH.match(metric.property):
        raise invalid("property", "a dotted metadata path such as tokens or usage.tokens")
    for index, item in enumerate(metric.filters):
        if not PROPERTY_PATH.match(item.property):
            raise invalid(f"filters[{index}].property", "a dotted metadata path such as status or http.status")
        if item.operator in ORDERING_OPERATORS and isinstance(item.value, bool):
            raise invalid(f"filters[{index}].value", f"{item.operator} compares numbers or strings, not booleans")


def _normalized(metric: UsageMetric) -> UsageMetric:
    # The property only means something to a sum; a count keeps none, so switching back to sum asks for one.
    return metric if metric.calculation == "sum" else msgspec.structs.replace(metric, property=None)


async def create_metric(client: AsyncClient, workspace_id: UUID, data: UsageMetricCreate) -> UsageMetric:
    now = stored_now()
    metric = _normalized(UsageMetric(id=uuid4(), created_at=now, updated_at=now, **msgspec.structs.asdict(data)))
    check_definition(metric)
    await queries.insert_metric_version(client, workspace_id, _row(metric))
    return metric


async def update_metric(client: AsyncClient, workspace_id: UUID, metric_id: UUID, data: UsageMetricPatch) -> UsageMetric:
    current = await get_metric(client, workspace_id, metric_id)
    changes = {name: value for name, value in msgspec.structs.asdict(data).items() if value is not msgspec.UNSET}
    metric = _normalized(msgspec.structs.replace(current, **changes, updated_at=stored_now()))
    check_definition(metric)
    await queries.insert_metric_version(client, workspace_id, _row(metric))
    return metric


async def delete_metric(client: AsyncClient, workspace_id: UUID, metric_id: UUID) -> None:
    metric = await get_metric(client, workspace_id, metric_id)
    await queries.insert_metric_version(client, workspace_id, _row(metric), deleted=True)


async def get_metric(client: AsyncClient, workspace_id: UUID, metric_id: UUID) -> UsageMetric:
    rows = await queries.metric_rows(client, workspace_id, metric_id)
    if not rows:
        raise NotFoundException(detail="Usage metric not found")
    return _from_row(rows[0])


async def list_metrics(client: AsyncClient, workspace_id: UUID) -> list[UsageMetric]:
    return [_from_row(row) for row in await queries.metric_rows(client, workspace_id)]


def _row(metric: UsageMetric) -> list:
    return [
        metric.id, metric.name, metric.interval_days, metric.format, metric.display, metric.calculation,
        metric.property, [matcher.name for matcher in metric.match_events],
        msgspec.json.encode(metric.filters).decode(), metric.created_at, metric.updated_at,
    ]


def _from_row(row: tuple) -> UsageMetric:
    return UsageMetric(
        id=row[0], name=row[1], interval_days=row[2], format=row[3], display=row[4], calculation=row[5],
        property=row[6], match_events=[EventMatcher(name) for name in row[7]], filters=FILTERS.decode(row[8]),
        created_at=row[9], updated_at=row[10],
    )


def compile_metric(metric: UsageMetric, prefix: str) -> MetricSql:
    sql = MetricSql(prefix, [matcher.name for matcher in metric.match_events],
                    metric.property if metric.calculation == "sum" else None)
    for item in metric.filters:
        sql.add_filter(item.property, item.operator, item.value)
    return sql


# Values --------------------------------------------------------------------------------------------------

def change_percent(value: float, previous: float) -> float | None:
    """Relative to the size of the previous value, so a fall is negative whatever the sign of the values."""
    return None if previous == 0 else (value - previous) / abs(previous) * 100


def _total(metric: UsageMetric, values: Iterable[int | float]) -> int | float:
    """A count, or a sum to 12 significant digits: float sums vary in their last digits with the order of their
    terms, which the store does not fix (queries.SIGNIFICANT rounds the customer list's the same way)."""
    if metric.calculation == "count":
        return int(sum(values))
    return float(f"{math.fsum(values):.12g}")


async def customer_metrics(
    client: AsyncClient, workspace_id: UUID, reference: str, now: datetime
) -> list[CustomerUsageMetric]:
    """Every metric of the workspace for one customer: over the last `interval_days` days ending `now`, the
    equal span before, and for sparklines the UTC days ending today (today up to now)."""
    keys, metrics = await asyncio.gather(_customer_keys(client, workspace_id, reference),
                                         list_metrics(client, workspace_id))
    if not metrics:
        return []
    compiled = [compile_metric(metric, f"m{i}_") for i, metric in enumerate(metrics)]
    earliest = now - 2 * max(metric.interval_days for metric in metrics) * DAY
    halves = await queries.customer_half_days(client, workspace_id, keys, compiled, earliest, now)
    today = now.date()
    answers = []
    for metric, column in zip(metrics, _half_day_columns(compiled), strict=True):
        value = _over(metric, halves, column, _window(today, metric.interval_days))
        previous = _over(metric, halves, column, _window(today - metric.interval_days * DAY, metric.interval_days))
        sparkline = None
        if metric.display == "sparkline":
            sparkline = [
                SparklinePoint(day, _over(metric, halves, column, [(day, False), (day, True)]))
                for day in (today - offset * DAY for offset in range(metric.interval_days - 1, -1, -1))
            ]
        answers.append(CustomerUsageMetric(
            metric.id, metric.name, metric.format, metric.display, value, previous,
            change_percent(value, previous), sparkline,
        ))
    return answers


def _half_day_columns(compiled: list[MetricSql]) -> list[int]:
    """Which value of queries.customer_half_days' rows each metric adds up: a shared count or typed sum, or its own."""
    own = len(queries.HALF_DAY_COLUMNS)
    columns = []
    for sql in compiled:
        if sql.cell_column is None:
            columns.append(own)
            own += 1
        else:
            columns.append(queries.HALF_DAY_COLUMNS.index(sql.cell_column))
    return columns


def _over(metric: UsageMetric, halves: dict[tuple[date, bool, str], tuple], column: int,
          half_days: list[tuple[date, bool]]) -> int | float:
    """The metric over these half-days, from `column` of queries.customer_half_days' rows."""
    names = {matcher.name for matcher in metric.match_events}  # an event counts once, whatever matches it
    return _total(metric, (halves[(day, late, name)][column] for day, late in half_days for name in names
                           if (day, late, name) in halves))


def _window(ending: date, days: int) -> list[tuple[date, bool]]:
    """The half-days, (UTC day, at or after now's time of day), of the `days` days ending on `ending` at now's
    time of day: the late half of the first, the whole days between, the early half of `ending`."""
    first = ending - days * DAY
    return [(first, True)] + [(first + offset * DAY, late) for offset in range(1, days) for late in (False, True)] + [
        (ending, False)]


async def _customer_keys(client: AsyncClient, workspace_id: UUID, reference: str) -> list[str]:
    """The customer keys of a customer by id or external id: its id's, and its external id's once it has one
    (events sent before it had one are stored under its id). An external id no customer has yet, but events
    name, is a customer all the same."""
    row = await customer_row(client, workspace_id, reference)
    if row is not None:
        return [customer_key(row[0], None)] + ([customer_key(None, row[1])] if row[1] is not None else [])
    if await queries.customer_key_seen(client, workspace_id, customer_key(None, reference)):
        return [customer_key(None, reference)]
    raise NotFoundException(detail="Customer not found")


# The customer list's usage column ------------------------------------------------------------------------

class UsageCursor(msgspec.Struct, array_like=True):
    metric_id: UUID
    sort: str | None
    as_of: datetime
    # A sum past a float's range is infinite, which JSON cannot hold as a number: it is kept as its name.
    value: float | Literal["inf", "-inf", "nan"]
    created_at: datetime
    id: UUID
    # The metric's version the listing began with (absent from cursors issued before it was kept).
    metric_updated_at: datetime | None = None


async def customer_usage_page(
    client: AsyncClient, workspace_id: UUID, metric_id: UUID | None, sort: str | None, take: int,
    cursor: str | None, settled: datetime, to_customer: Callable[[tuple], Customer],
) -> CustomerUsagePage:
    """The customer list with one metric's value per customer, optionally sorted by it, cursor-paged; every page
    as of the first one's `settled` moment (app/events/writes.py), so each customer shows once."""
    if sort not in CUSTOMER_ORDERS:
        raise invalid("sort", "usage_metric or -usage_metric")
    if metric_id is None:
        raise invalid("usage_metric", "required to sort by usage_metric")
    metric = await _listed_metric(client, workspace_id, metric_id)
    position = decode_cursor(cursor, UsageCursor) if cursor else None
    if position is not None and (position.metric_id, position.sort) != (metric_id, sort):
        raise invalid("cursor", "belongs to a listing with another usage_metric or sort")
    if position is not None and position.metric_updated_at not in (None, metric.updated_at):
        # Its values would no longer be those the earlier pages were ordered by.
        raise invalid("cursor", "the usage metric has changed since this listing began; list again from the start")
    as_of = position.as_of if position else settled
    after = (float(position.value), position.created_at, position.id) if position else None
    sql = compile_metric(metric, "m_")
    rows = await queries.customers_with_value(
        client, workspace_id, sql, as_of - metric.interval_days * DAY, as_of, sort, after, take + 1,
        from_cells=sql.cell_column is not None,
    )
    items = [
        CustomerWithUsage(
            **msgspec.structs.asdict(to_customer(row[:6])),
            usage_metric=UsageColumn(metric.id, metric.name, metric.format, _total(metric, [row[8]])),
        )
        for row in rows[:take]
    ]
    next_cursor = None
    if len(rows) > take:
        last = rows[take - 1]
        value = last[8] if math.isfinite(last[8]) else repr(last[8])
        next_cursor = encode_cursor(UsageCursor(metric_id, sort, as_of, value, last[5], last[0], metric.updated_at))
    return CustomerUsagePage(items, next_cursor)


async def _listed_metric(client: AsyncClient, workspace_id: UUID, metric_id: UUID) -> UsageMetric:
    rows = await queries.metric_rows(client, workspace_id, metric_id)
    if not rows:
        raise invalid("usage_metric", "no such usage metric in this workspace")
    return _from_row(rows[0])
