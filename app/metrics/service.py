"""The engine of the metrics dashboard: turns the catalog's declarations into the few queries a request needs
(one for every per-period aggregate, one per stateful metric) and evaluates derived metrics from their results."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.asyncclient import AsyncClient

from app.errors import invalid
from app.metrics import queries
from app.metrics.catalog import (
    BY_SLUG, CATALOG, ActiveSessions, Aggregate, Cost, Count, Converted, Definition, Difference, DistinctCustomers,
    Metric, Ratio, Running, Sum,
)
from app.metrics.queries import Scope
from app.metrics.schemas import MetricDescription, MetricsAnswer
from app.statistics.service import GRAINS, RAW, Period, Plan, TimeRange, json_decimal, periods, plan

Value = int | float | Decimal
AGGREGATES = (Count, Sum, DistinctCustomers, Cost, Converted)
MAX_SHARES = 1000


def metric_list(slugs: list[str] | None) -> list[Metric]:
    """The requested metrics in catalog order (all by default); 422 for a slug the catalog does not know."""
    if not slugs:
        return list(CATALOG)
    unknown = sorted(set(slugs) - BY_SLUG.keys())
    if unknown:
        raise invalid("metrics", f"unknown metric {unknown[0]!r}; known: {', '.join(BY_SLUG)}")
    wanted = set(slugs)
    return [metric for metric in CATALOG if metric.slug in wanted]


def share_list(share_ids: list[str] | None) -> list[str] | None:
    if share_ids is not None and len(share_ids) > MAX_SHARES:
        raise invalid("share_id", f"at most {MAX_SHARES} shares")
    return share_ids


def _resolve(operand: Definition | str) -> Definition:
    return BY_SLUG[operand].definition if isinstance(operand, str) else operand


def _operands(definition: Definition) -> tuple[Definition, ...]:
    match definition:
        case Ratio(numerator, denominator, _):
            return _resolve(numerator), _resolve(denominator)
        case Difference(minuend, subtrahend):
            return _resolve(minuend), _resolve(subtrahend)
        case Running(of):
            return (_resolve(of),)
    return ()


def _needed(definitions: Sequence[Definition]) -> list[Definition]:
    """Every definition the requested ones depend on, themselves included, each once."""
    seen: dict[Definition, None] = {}
    stack = list(definitions)
    while stack:
        definition = stack.pop()
        if definition not in seen:
            seen[definition] = None
            stack.extend(_operands(definition))
    return list(seen)


def _zero(aggregate: Aggregate) -> Value:
    if isinstance(aggregate, Cost):
        return Decimal(0)
    return 0.0 if isinstance(aggregate, Sum) else 0


def _add(a: Value, b: Value) -> Value:
    if isinstance(a, float) or isinstance(b, float):
        return float(a) + float(b)
    return a + b


def _subtract(a: Value, b: Value) -> Value:
    if isinstance(a, float) or isinstance(b, float):
        return float(a) - float(b)
    return a - b


@dataclass(slots=True)
class Results:
    """What the queries answered: per aggregate its value per period index (None = the whole range), and per
    stateful metric its value per period."""

    count: int
    aggregates: dict[Aggregate, dict[int | None, Value]]
    states: dict[ActiveSessions, list[int]]
    # The rollup grains that answered the periods ("1d", "1h+15m", ...) or "raw".
    source: str
    running: dict[Running, list[Value]] = dataclasses.field(default_factory=dict)

    def value(self, definition: Definition, index: int | None) -> Value:
        """`index` is a period's position, or None for the range total."""
        match definition:
            case Ratio(numerator, denominator, scale):
                num, den = self.value(_resolve(numerator), index), self.value(_resolve(denominator), index)
                return float(num) / float(den) * scale if den else 0.0
            case Difference(minuend, subtrahend):
                return _subtract(self.value(_resolve(minuend), index), self.value(_resolve(subtrahend), index))
            case Running():
                return self._running(definition)[self.count - 1 if index is None else index]
            case ActiveSessions():
                return self.states[definition][self.count - 1 if index is None else index]
        return self.aggregates[definition].get(index, _zero(definition))


    def _running(self, definition: Running) -> list[Value]:
        # Computed once per request: an hourly month has 744 periods, and re-summing per period is quadratic.
        if definition not in self.running:
            totals: list[Value] = []
            for index in range(self.count):
                value = self.value(_resolve(definition.of), index)
                totals.append(_add(totals[-1], value) if totals else value)
            self.running[definition] = totals
        return self.running[definition]


def _reads_rollups(scope: Scope, grains: Sequence[str]) -> bool:
    """Whether the rollups may answer: not under filters by share or customer (they keep neither), nor when
    `grains` = RAW."""
    filtered = scope.share_ids is not None or scope.customer_keys is not None or scope.customer_ids is not None
    return not filtered and tuple(grains) != RAW


def _sources(buckets: list[Period], aggregates: list[Aggregate], grains: Sequence[str], raw: bool
             ) -> tuple[Plan, dict[str | None, list[Aggregate]]]:
    """The plan of the periods and which aggregates each source answers (None: the raw table). With `raw`, and
    for aggregates the rollups do not keep, the raw table."""
    source = plan([(bucket.start, bucket.end) for bucket in buckets], GRAINS if raw else grains, raw)
    groups: dict[str | None, list[Aggregate]] = {}
    for aggregate in aggregates:
        table = None if source.grains == RAW else queries.rollup_table(aggregate)
        groups.setdefault(table, []).append(aggregate)
    return source, groups


async def _query(client: AsyncClient, scope: Scope, buckets: list[Period], needed: list[Definition],
                 grains: Sequence[str]) -> Results:
    aggregates = [definition for definition in needed if isinstance(definition, AGGREGATES)]
    states = [definition for definition in needed if isinstance(definition, ActiveSessions)]
    starts, ends = [bucket.start for bucket in buckets], [bucket.end for bucket in buckets]
    share_sets = _reads_rollups(scope, grains)
    source, groups = _sources(buckets, aggregates, grains, not share_sets)
    converted = [aggregate for table in queries.SET_TABLES for aggregate in groups.pop(table, [])]
    for check in dict.fromkeys(map(queries.shares_counted, converted)):
        if check not in aggregates:
            groups.setdefault(queries.rollup_table(check), []).append(check)
    state_answers, group_answers, set_answers = await asyncio.gather(
        asyncio.gather(*(_active_sessions(client, scope, state, ends, grains, not share_sets) for state in states)),
        asyncio.gather(*(
            queries.period_aggregates(client, scope, starts, ends[-1], members, share_sets) if table is None else
            queries.rollup_aggregates(client, scope.workspace_id, table, source.grains, source.splits, starts,
                                      ends[-1], members)
            for table, members in groups.items()
        )),
        asyncio.gather(*(queries.converted_from_sets(client, scope.workspace_id, aggregate, source.grains,
                                                     source.splits, starts, ends[-1]) for aggregate in converted)),
    )
    by_aggregate: dict[Aggregate, dict[int | None, Value]] = {}
    for members, rows in zip(groups.values(), group_answers, strict=True):
        for position, aggregate in enumerate(members):
            by_aggregate[aggregate] = {index: row[position] for index, row in _by_period(rows).items()}
    for aggregate, sets in zip(converted, set_answers, strict=True):
        events = by_aggregate[queries.shares_counted(aggregate)]
        values = _converted_from_sets(sets, events, len(buckets))
        if values is None:
            rows = await queries.period_aggregates(client, scope, starts, ends[-1], [aggregate], share_sets)
            values = {index: row[0] for index, row in _by_period(rows).items()}
        by_aggregate[aggregate] = values
    return Results(len(buckets), by_aggregate, dict(zip(states, state_answers, strict=True)), source.label)


def _converted_from_sets(sets: dict[int, tuple[int, int]], events: dict[int | None, Value], count: int
                         ) -> dict[int | None, Value] | None:
    """Converted events per period from the share sets' answer, or None where they cannot tell: where some
    period's events outnumber its shares (a share with two of them, or an event naming no share)."""
    if any(sets.get(index + 1, (0, 0))[1] != events.get(index, 0) for index in range(count)):
        return None
    values: dict[int | None, Value] = {key - 1: converted for key, (converted, _) in sets.items()}
    # Events, unlike shares, add up across periods.
    values[None] = sum(values.values())
    return values


def _by_period(rows: dict[int, tuple[Any, ...]]) -> dict[int | None, tuple[Any, ...]]:
    """Rows keyed by period index, None for the whole range: the queries key the range 0 and periods from 1."""
    return {None if key == 0 else key - 1: row for key, row in rows.items()}


def _active_sessions(client: AsyncClient, scope: Scope, definition: ActiveSessions, ends: list[datetime],
                     grains: Sequence[str], raw: bool) -> Awaitable[list[int]]:
    """From the share sets where whole buckets make up everything before each period end, else (and with `raw`)
    from raw rows."""
    history = plan([(queries.EPOCH, ends[0]), *zip(ends, ends[1:])], GRAINS if raw else grains, raw)
    if history.grains == RAW:
        return queries.active_sessions(client, scope, definition, ends)
    return queries.active_sessions_from_sets(client, scope.workspace_id, definition, ends, history.grains,
                                             history.splits)


def _json(value: Value) -> Value:
    # Costs stay exact decimals, written without exponent or trailing zeros.
    return json_decimal(value) if isinstance(value, Decimal) else value


async def dashboard(
    client: AsyncClient,
    workspace_id: UUID,
    span: TimeRange,
    metrics: Sequence[Metric],
    share_ids: Sequence[str] | None = None,
    customer_keys: Sequence[str] | None = None,
    customer_ids: Sequence[UUID] | None = None,
    grains: Sequence[str] = GRAINS,
) -> tuple[MetricsAnswer, str]:
    """The requested metrics per local period of `span` and over the whole range, and the source that answered.
    `grains` restricts the rollups read (RAW: none), which is how tests prove every source agrees."""
    buckets = periods(span)
    scope = Scope(workspace_id, share_ids, customer_keys, customer_ids)
    results = await _query(client, scope, buckets, _needed([metric.definition for metric in metrics]), grains)
    rows: list[dict[str, Any]] = []
    for index, bucket in enumerate(buckets):
        row: dict[str, Any] = {"timestamp": bucket.start}
        row.update((metric.slug, _json(results.value(metric.definition, index))) for metric in metrics)
        rows.append(row)
    answer = MetricsAnswer(
        periods=rows,
        totals={metric.slug: _json(results.value(metric.definition, None)) for metric in metrics},
        metrics={metric.slug: MetricDescription(metric.slug, metric.display_name, metric.type) for metric in metrics},
    )
    return answer, results.source
