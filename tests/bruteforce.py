"""Brute-force reference calculators that API tests compare against.

Everything here is deliberately naive: plain loops over event dicts, no
cleverness, so that a disagreement with the ClickHouse implementation points
at the implementation rather than at this module.

Events are dicts shaped like the API output::

    {"id": str, "name": str, "timestamp": aware datetime, "customer": str,
     "metadata": dict}

All returned timestamps are aware UTC datetimes; callers format them.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

Event = dict[str, Any]
Period = tuple[datetime, datetime]

INTERVALS = ("hour", "day", "week", "month", "year")

# Every zone offset and DST transition in current tzdata falls on a
# 15-minute UTC grid (Nepal +5:45, Chatham +12:45, Lord Howe's 30-minute DST),
# so scanning at this step finds every local hour boundary exactly.
_SCAN_STEP = timedelta(minutes=15)

PERCENTILES = {"p10": 0.10, "p90": 0.90, "p99": 0.99}


# --------------------------------------------------------------------------
# Periods
# --------------------------------------------------------------------------


def _local_midnight_utc(day: date, zone: ZoneInfo) -> datetime:
    # fold=0 (the default) picks the first of two repeated midnights, and for a
    # midnight skipped by DST (e.g. America/Santiago in September) it maps to
    # the transition instant, which is the first real moment of that day.
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(timezone.utc)


def _truncate(day: date, interval: str) -> date:
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    if interval == "year":
        return day.replace(month=1, day=1)
    return day


def _next_start(day: date, interval: str) -> date:
    if interval == "day":
        return day + timedelta(days=1)
    if interval == "week":
        return day + timedelta(days=7)
    if interval == "month":
        return date(day.year + day.month // 12, day.month % 12 + 1, 1)
    if interval == "year":
        return date(day.year + 1, 1, 1)
    raise ValueError(f"no calendar step for interval {interval!r}")


def _hour_key(instant: datetime, zone: ZoneInfo) -> tuple[datetime, timedelta | None]:
    local = instant.astimezone(zone)
    # The offset is part of the key so that the wall-clock hour repeated by a
    # fall-back transition yields two buckets, one per real hour.
    return local.replace(minute=0, second=0, microsecond=0, tzinfo=None), local.utcoffset()


def _hour_periods(start: datetime, end: datetime, zone: ZoneInfo) -> list[Period]:
    if start.timestamp() % _SCAN_STEP.total_seconds():
        raise ValueError(f"{zone.key}: local midnight is off the 15-minute UTC grid")
    boundaries = [start]
    key = _hour_key(start, zone)
    instant = start + _SCAN_STEP
    while instant < end:
        next_key = _hour_key(instant, zone)
        if next_key != key:
            boundaries.append(instant)
            key = next_key
        instant += _SCAN_STEP
    boundaries.append(end)
    return list(zip(boundaries, boundaries[1:]))


def periods(start_date: date, end_date: date, interval: str, tz: str) -> list[Period]:
    """Local calendar buckets of ``tz`` covering local dates start_date..end_date.

    Buckets are [start, end) pairs of aware UTC datetimes, contiguous and in
    order. Week/month/year buckets start at the Monday / 1st / January 1st on
    or before start_date; the last bucket is the one containing end_date.
    Hour buckets are real hours: a 25-hour local day gives 25 buckets (the
    repeated wall-clock hour appears twice), a 23-hour day gives 23.
    """
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval {interval!r}")
    if end_date < start_date:
        raise ValueError("end_date is before start_date")
    zone = ZoneInfo(tz)

    if interval == "hour":
        return _hour_periods(
            _local_midnight_utc(start_date, zone),
            _local_midnight_utc(end_date + timedelta(days=1), zone),
            zone,
        )

    buckets: list[Period] = []
    day = _truncate(start_date, interval)
    while day <= end_date:
        following = _next_start(day, interval)
        buckets.append((_local_midnight_utc(day, zone), _local_midnight_utc(following, zone)))
        day = following
    return buckets


def _bucket_index(buckets: Sequence[Period], instant: datetime) -> int | None:
    """Index of the bucket holding ``instant``, None when outside the range."""
    if instant.tzinfo is None:
        raise ValueError(f"naive event timestamp {instant!r}")
    # Buckets are contiguous, so a bisect on starts is enough; this keeps
    # year-long hourly ranges with many events fast.
    index = bisect_right(buckets, instant, key=lambda bucket: bucket[0]) - 1
    if index < 0 or instant >= buckets[-1][1]:
        return None
    return index


# --------------------------------------------------------------------------
# Metadata and percentiles
# --------------------------------------------------------------------------


def numeric_at(metadata: dict[str, Any], path: str) -> float | None:
    """Value at dotted ``path`` as float when it is an int/float (bools are not numbers)."""
    node: Any = metadata
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node)


def exact_percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default); 0.0 for no values.

    The API may use another exact definition or an approximation; compare
    against it with percentile_rank_ok, not with equality.
    """
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentile_rank_ok(values: list[float], q: float, answer: float, tolerance: float = 0.01) -> bool:
    """Whether ``answer`` is an acceptable q-quantile of ``values`` within ``tolerance`` in rank.

    Rank is measured on the 0..n scale of the empirical CDF, where the i-th
    smallest value (0-based) spans ranks [i, i+1]. ``answer`` must lie between
    the smallest value touching rank floor((q - tolerance) * n) and the largest
    value touching rank ceil((q + tolerance) * n), clamped to the data. This
    admits every common exact definition (nearest rank, ClickHouse's
    quantileExact, linear interpolation) as well as approximations whose rank
    error is within tolerance. No values: the only acceptable answer is 0.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return answer == 0
    # Rounding keeps float noise such as 0.89 * 100 = 88.99999999999999 from
    # shifting a rank by one.
    low_rank = math.floor(round((q - tolerance) * n, 9))
    high_rank = math.ceil(round((q + tolerance) * n, 9))
    low_value = ordered[min(max(low_rank - 1, 0), n - 1)]
    high_value = ordered[min(max(high_rank, 0), n - 1)]
    return low_value <= answer <= high_value


# --------------------------------------------------------------------------
# Timeseries statistics
# --------------------------------------------------------------------------


def _event_stats(name: str, events: Sequence[Event], fields: Sequence[str]) -> dict[str, Any]:
    values: dict[str, list[float]] = {}
    for field in fields:
        found = (numeric_at(event["metadata"], field) for event in events)
        values[field] = sorted(value for value in found if value is not None)

    totals = {field: math.fsum(found) for field, found in values.items()}
    stats: dict[str, Any] = {
        "name": name,
        "occurrences": len(events),
        "customers": len({event["customer"] for event in events}),
        "totals": totals,
        "averages": {
            field: totals[field] / len(found) if found else 0.0 for field, found in values.items()
        },
    }
    for key, q in PERCENTILES.items():
        stats[key] = {field: exact_percentile(found, q) for field, found in values.items()}
    # Not part of the API answer: the raw numbers, so tests can judge the
    # API's approximate percentiles with percentile_rank_ok.
    stats["_values"] = values
    return stats


def timeseries(
    events: Iterable[Event],
    start_date: date,
    end_date: date,
    interval: str,
    tz: str,
    names: list[str] | None,
    customers: set[str] | None,
    fields: list[str],
) -> dict[str, Any]:
    """Reference answer for GET /api/events/statistics/timeseries.

    - Only events with timestamp in [first bucket start, last bucket end) count.
    - ``names``/``customers`` of None mean no filter; an empty collection
      matches nothing.
    - Stats list one entry per name, sorted by name, in every period (zeros
      when empty): every requested name when ``names`` is given, otherwise
      every name with at least one event in the range (after the customer
      filter).
    - For each field, totals/averages/percentiles use only events where the
      field is numeric; averages = total / that count; 0.0 when there is none.
    - Percentiles here are exact (linear interpolation); each stats object
      carries ``_values`` {field: sorted values} for percentile_rank_ok.
    """
    buckets = periods(start_date, end_date, interval, tz)
    wanted = set(names) if names is not None else None

    in_range: list[tuple[int, Event]] = []
    for event in events:
        if wanted is not None and event["name"] not in wanted:
            continue
        if customers is not None and event["customer"] not in customers:
            continue
        index = _bucket_index(buckets, event["timestamp"])
        if index is not None:
            in_range.append((index, event))

    stat_names = sorted(wanted) if wanted is not None else sorted({e["name"] for _, e in in_range})

    def stats_for(selected: list[Event]) -> list[dict[str, Any]]:
        return [
            _event_stats(name, [e for e in selected if e["name"] == name], fields)
            for name in stat_names
        ]

    return {
        "periods": [
            {
                "timestamp": start,
                "period_end": end,
                "stats": stats_for([e for i, e in in_range if i == index]),
            }
            for index, (start, end) in enumerate(buckets)
        ],
        "totals": stats_for([e for _, e in in_range]),
    }


# --------------------------------------------------------------------------
# File-sharing metrics dashboard
# --------------------------------------------------------------------------

CREATED = "file_share.created"
DOWNLOADED = "file_share.downloaded"
COMPLETED = "file_share.completed"
EXPIRED = "file_share.expired"
PAYMENT_COMPLETED = "file_share.payment_completed"

FILE_SHARE_SLUGS = (
    "file_share_sessions",
    "file_share_downloads",
    "avg_downloads_per_share",
    "active_sessions",
    "completed_sessions",
    "expired_sessions",
    "free_file_shares",
    "paid_file_shares",
    "total_data_shared",
    "cumulative_file_shares",
    "cumulative_downloads",
    "file_share_revenue",
    "average_share_price",
    "payment_conversion_rate",
    "file_share_platform_fees",
    "cumulative_platform_fees",
    "costs",
    "cumulative_costs",
    "active_users",
    "cost_per_user",
    "cashflow",
)

# Running totals are summed period by period from the first bucket, and their
# `totals` entry is the last period's value, as is active_sessions'.
_RUNNING = {
    "cumulative_file_shares": "file_share_sessions",
    "cumulative_downloads": "file_share_downloads",
    "cumulative_platform_fees": "file_share_platform_fees",
    "cumulative_costs": "costs",
}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _sum_at(events: Iterable[Event], path: str) -> float:
    return math.fsum(numeric_at(event["metadata"], path) or 0.0 for event in events)


def _price(event: Event) -> float | None:
    return numeric_at(event["metadata"], "price_cents")


def _window_metrics(window: list[Event], paid_share_ids: set[Any]) -> dict[str, Any]:
    """Every metric that depends only on the events inside one window.

    ``paid_share_ids`` are shares with a completed payment up to now, at any
    time, so conversion can credit a payment landing after the window.
    """
    by_name: dict[str, list[Event]] = {}
    for event in window:
        by_name.setdefault(event["name"], []).append(event)
    created = by_name.get(CREATED, [])
    downloads = by_name.get(DOWNLOADED, [])
    payments = by_name.get(PAYMENT_COMPLETED, [])
    # A created event without a numeric price_cents is neither free nor paid.
    paid = [e for e in created if (_price(e) or 0.0) > 0]
    converted = [e for e in paid if e["metadata"].get("share_id") in paid_share_ids]

    revenue = _sum_at(payments, "amount_cents")
    costs = _sum_at(window, "_cost.amount")
    users = len({event["customer"] for event in window})
    return {
        "file_share_sessions": len(created),
        "file_share_downloads": len(downloads),
        "avg_downloads_per_share": _ratio(len(downloads), len(created)),
        "completed_sessions": len(by_name.get(COMPLETED, [])),
        "expired_sessions": len(by_name.get(EXPIRED, [])),
        "free_file_shares": sum(1 for e in created if _price(e) == 0),
        "paid_file_shares": len(paid),
        "total_data_shared": _sum_at(downloads, "bytes"),
        "file_share_revenue": revenue,
        "average_share_price": _ratio(math.fsum(_price(e) or 0.0 for e in paid), len(paid)),
        "payment_conversion_rate": 100.0 * _ratio(len(converted), len(paid)),
        "file_share_platform_fees": _sum_at(payments, "platform_fee_cents"),
        "costs": costs,
        "active_users": users,
        "cost_per_user": _ratio(costs, users),
        # Literally revenue - costs as the contract says, although revenue is
        # in cents and _cost.amount is in dollars.
        "cashflow": revenue - costs,
    }


def _active_sessions(events: Sequence[Event], before: datetime) -> int:
    """Shares created before ``before`` with no completed/expired event before it."""
    created: set[Any] = set()
    ended: set[Any] = set()
    for event in events:
        if event["timestamp"] >= before or "share_id" not in event["metadata"]:
            continue
        if event["name"] == CREATED:
            created.add(event["metadata"]["share_id"])
        elif event["name"] in (COMPLETED, EXPIRED):
            ended.add(event["metadata"]["share_id"])
    return len(created - ended)


def file_share_metrics(
    events: Iterable[Event],
    start_date: date,
    end_date: date,
    interval: str,
    tz: str,
    share_ids: set[str] | None,
    customers: set[str] | None,
    now: datetime,
) -> dict[str, Any]:
    """Reference answer for the file-sharing metrics dashboard.

    ``events`` may include events outside the range: shares created earlier
    still count toward active_sessions, and payments after the range (up to
    ``now``, inclusive) still count toward payment_conversion_rate.

    Filters (None = no filter, applied before anything else, to every event
    including the ones outside the range): ``share_ids`` keeps events whose
    metadata.share_id is in the set, so costs/active_users only see events
    carrying one of those shares; ``customers`` keeps events of those
    customers, so a payment recorded under another customer does not convert
    a share of a filtered customer.

    Counts are ints, everything else floats. ``totals`` recomputes ratios from
    the whole range's numerator and denominator (active_users = distinct
    customers over the range); running totals and active_sessions take the
    last period's value.
    """
    buckets = periods(start_date, end_date, interval, tz)
    kept = [
        event
        for event in events
        if (share_ids is None or event["metadata"].get("share_id") in share_ids)
        and (customers is None or event["customer"] in customers)
    ]
    paid_share_ids = {
        event["metadata"].get("share_id")
        for event in kept
        if event["name"] == PAYMENT_COMPLETED and event["timestamp"] <= now
    } - {None}
    by_bucket: list[list[Event]] = [[] for _ in buckets]
    for event in kept:
        index = _bucket_index(buckets, event["timestamp"])
        if index is not None:
            by_bucket[index].append(event)

    rows: list[dict[str, Any]] = []
    # Starting from int 0 keeps running counts ints and running sums floats.
    running: dict[str, float] = dict.fromkeys(_RUNNING, 0)
    for (start, end), window in zip(buckets, by_bucket):
        metrics = _window_metrics(window, paid_share_ids)
        metrics["active_sessions"] = _active_sessions(kept, end)
        for slug, source in _RUNNING.items():
            running[slug] += metrics[source]
            metrics[slug] = running[slug]
        rows.append({"timestamp": start, **{slug: metrics[slug] for slug in FILE_SHARE_SLUGS}})

    whole = _window_metrics([event for window in by_bucket for event in window], paid_share_ids)
    last = rows[-1]
    for slug in ("active_sessions", *_RUNNING):
        whole[slug] = last[slug]

    return {"periods": rows, "totals": {slug: whole[slug] for slug in FILE_SHARE_SLUGS}}
