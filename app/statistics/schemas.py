"""The answer of GET /api/events/statistics/timeseries (CONTRACT.md section 3)."""

from datetime import datetime
from decimal import Decimal

import msgspec

# `_cost.amount` totals are Decimals (exact), encoded as JSON numbers; every other value is a float.
Number = float | Decimal


class Stats(msgspec.Struct):
    name: str
    occurrences: int
    customers: int
    totals: dict[str, Number]
    averages: dict[str, float]
    p10: dict[str, float]
    p90: dict[str, float]
    p99: dict[str, float]


class PeriodStats(msgspec.Struct):
    timestamp: datetime
    period_end: datetime
    stats: list[Stats]


class Timeseries(msgspec.Struct):
    periods: list[PeriodStats]
    totals: list[Stats]
