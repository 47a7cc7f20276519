"""The answers of the metrics dashboard (CONTRACT.md section 4)."""

from typing import Any

import msgspec


class MetricDescription(msgspec.Struct):
    slug: str
    display_name: str
    type: str


class MetricsAnswer(msgspec.Struct):
    # Each period: "timestamp" (its local start as a UTC instant) and one value per requested slug.
    periods: list[dict[str, Any]]
    totals: dict[str, Any]
    metrics: dict[str, MetricDescription]


class IntervalLimit(msgspec.Struct):
    interval: str
    max_days: int


class Limits(msgspec.Struct):
    # The longest range per interval, in local calendar days from start_date to end_date inclusive.
    limits: list[IntervalLimit]
