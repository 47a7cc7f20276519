from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from app.customers.schemas import Customer
from app.events.schemas import EventName

MetricName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
# A dotted metadata path; its shape is checked in service.check_definition.
PropertyPath = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
IntervalDays = Literal[7, 30, 90]
Format = Literal["numeric", "currency"]
Display = Literal["number", "sparkline"]
Calculation = Literal["count", "sum"]
Operator = Literal["eq", "ne", "gt", "gte", "lt", "lte"]
FilterValue = bool | int | float | str


class EventMatcher(msgspec.Struct, forbid_unknown_fields=True):
    name: EventName


class MetricFilter(msgspec.Struct, forbid_unknown_fields=True):
    property: PropertyPath
    operator: Operator
    value: FilterValue


Matchers = Annotated[list[EventMatcher], msgspec.Meta(min_length=1, max_length=50)]
Filters = Annotated[list[MetricFilter], msgspec.Meta(max_length=50)]


class UsageMetricCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: MetricName
    interval_days: IntervalDays
    match_events: Matchers
    format: Format = "numeric"
    display: Display = "number"
    calculation: Calculation = "count"
    property: PropertyPath | None = None
    filters: Filters = []


class UsageMetricPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: MetricName | msgspec.UnsetType = msgspec.UNSET
    interval_days: IntervalDays | msgspec.UnsetType = msgspec.UNSET
    match_events: Matchers | msgspec.UnsetType = msgspec.UNSET
    format: Format | msgspec.UnsetType = msgspec.UNSET
    display: Display | msgspec.UnsetType = msgspec.UNSET
    calculation: Calculation | msgspec.UnsetType = msgspec.UNSET
    property: PropertyPath | None | msgspec.UnsetType = msgspec.UNSET
    filters: Filters | msgspec.UnsetType = msgspec.UNSET


class UsageMetric(msgspec.Struct):
    id: UUID
    name: str
    interval_days: int
    format: Format
    display: Display
    calculation: Calculation
    property: str | None
    match_events: list[EventMatcher]
    filters: list[MetricFilter]
    created_at: datetime
    updated_at: datetime


class SparklinePoint(msgspec.Struct):
    date: date
    value: int | float


class CustomerUsageMetric(msgspec.Struct):
    id: UUID
    name: str
    format: Format
    display: Display
    value: int | float
    previous_value: int | float
    change_percent: float | None
    sparkline: list[SparklinePoint] | None


class UsageColumn(msgspec.Struct):
    """The usage-metric column of a customer row: what the list shows and sorts by."""

    id: UUID
    name: str
    format: Format
    value: int | float


class CustomerWithUsage(Customer):
    usage_metric: UsageColumn


class CustomerUsagePage(msgspec.Struct):
    items: list[CustomerWithUsage]
    cursor: str | None
