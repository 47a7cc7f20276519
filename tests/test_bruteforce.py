"""Hand-checked cases proving the brute-force reference itself is right."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

try:
    from tests.bruteforce import (
        FILE_SHARE_SLUGS,
        exact_percentile,
        file_share_metrics,
        numeric_at,
        percentile_rank_ok,
        periods,
        timeseries,
    )
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from bruteforce import (  # type: ignore[no-redef]
        FILE_SHARE_SLUGS,
        exact_percentile,
        file_share_metrics,
        numeric_at,
        percentile_rank_ok,
        periods,
        timeseries,
    )

HOUR = timedelta(hours=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def event(name: str, when: datetime, customer: str, **metadata: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "timestamp": when,
        "customer": customer,
        "metadata": metadata,
    }


# --------------------------------------------------------------------------
# periods
# --------------------------------------------------------------------------


def test_new_york_fall_back_day_has_25_hours() -> None:
    buckets = periods(date(2026, 10, 31), date(2026, 11, 2), "day", "America/New_York")
    assert buckets == [
        (utc(2026, 10, 31, 4), utc(2026, 11, 1, 4)),
        (utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)),
        (utc(2026, 11, 2, 5), utc(2026, 11, 3, 5)),
    ]
    assert [end - start for start, end in buckets] == [24 * HOUR, 25 * HOUR, 24 * HOUR]


def test_new_york_spring_forward_day_has_23_hours() -> None:
    [(start, end)] = periods(date(2026, 3, 8), date(2026, 3, 8), "day", "America/New_York")
    assert (start, end) == (utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))


def test_new_york_hourly_fall_back_repeats_the_one_oclock_hour() -> None:
    buckets = periods(date(2026, 11, 1), date(2026, 11, 1), "hour", "America/New_York")
    assert len(buckets) == 25
    assert buckets[0][0] == utc(2026, 11, 1, 4)
    assert buckets[-1][1] == utc(2026, 11, 2, 5)
    assert all(end - start == HOUR for start, end in buckets)
    local_hours = [start.astimezone(ZoneInfo("America/New_York")).hour for start, _ in buckets]
    assert local_hours == [0, 1, 1, *range(2, 24)]


def test_new_york_hourly_spring_forward_skips_two_oclock() -> None:
    buckets = periods(date(2026, 3, 8), date(2026, 3, 8), "hour", "America/New_York")
    assert len(buckets) == 23
    local_hours = [start.astimezone(ZoneInfo("America/New_York")).hour for start, _ in buckets]
    assert local_hours == [0, 1, *range(3, 24)]


def test_kathmandu_hours_start_at_quarter_past_utc_hours() -> None:
    buckets = periods(date(2026, 1, 1), date(2026, 1, 1), "hour", "Asia/Kathmandu")
    assert len(buckets) == 24
    # +05:45: local midnight is 18:15 UTC the day before.
    assert buckets[0] == (utc(2025, 12, 31, 18, 15), utc(2025, 12, 31, 19, 15))
    assert buckets[-1][1] == utc(2026, 1, 1, 18, 15)
    assert all(start.minute == 15 and end - start == HOUR for start, end in buckets)


def test_legacy_alias_asia_calcutta() -> None:
    assert periods(date(2026, 1, 1), date(2026, 1, 1), "day", "Asia/Calcutta") == [
        (utc(2025, 12, 31, 18, 30), utc(2026, 1, 1, 18, 30))
    ]


def test_weeks_start_on_monday() -> None:
    # 2026-01-07 is a Wednesday, 2026-01-12 a Monday.
    assert periods(date(2026, 1, 7), date(2026, 1, 12), "week", "UTC") == [
        (utc(2026, 1, 5), utc(2026, 1, 12)),
        (utc(2026, 1, 12), utc(2026, 1, 19)),
    ]


def test_adelaide_month_spans_the_end_of_dst() -> None:
    # April 2026 starts at +10:30 (ACDT) and ends at +09:30 (ACST): 30 days + 1 hour.
    assert periods(date(2026, 4, 15), date(2026, 4, 20), "month", "Australia/Adelaide") == [
        (utc(2026, 3, 31, 13, 30), utc(2026, 4, 30, 14, 30))
    ]


def test_months_and_years_wrap_around_the_year() -> None:
    assert periods(date(2025, 12, 10), date(2026, 1, 5), "month", "UTC") == [
        (utc(2025, 12, 1), utc(2026, 1, 1)),
        (utc(2026, 1, 1), utc(2026, 2, 1)),
    ]
    assert periods(date(2025, 6, 1), date(2026, 2, 1), "year", "UTC") == [
        (utc(2025, 1, 1), utc(2026, 1, 1)),
        (utc(2026, 1, 1), utc(2027, 1, 1)),
    ]


def test_santiago_day_whose_midnight_does_not_exist() -> None:
    # Chile springs forward at 24:00 on 2026-09-05: 6 September starts at 01:00 -03.
    buckets = periods(date(2026, 9, 5), date(2026, 9, 6), "day", "America/Santiago")
    assert buckets == [
        (utc(2026, 9, 5, 4), utc(2026, 9, 6, 4)),
        (utc(2026, 9, 6, 4), utc(2026, 9, 7, 3)),
    ]
    assert len(periods(date(2026, 9, 6), date(2026, 9, 6), "hour", "America/Santiago")) == 23


def test_lord_howe_half_hour_fall_back() -> None:
    # 2026-04-05 02:00 +11 becomes 01:30 +10:30: the second 01:xx hour lasts 30 minutes.
    buckets = periods(date(2026, 4, 5), date(2026, 4, 5), "hour", "Australia/Lord_Howe")
    assert buckets[0][0] == utc(2026, 4, 4, 13)
    assert buckets[-1][1] == utc(2026, 4, 5, 13, 30)
    assert [end - start for start, end in buckets[:4]] == [HOUR, HOUR, HOUR / 2, HOUR]
    assert len(buckets) == 25


@pytest.mark.parametrize("interval", ["hour", "day", "week", "month", "year"])
@pytest.mark.parametrize(
    "tz", ["UTC", "America/New_York", "Asia/Kathmandu", "Australia/Adelaide", "Europe/London"]
)
def test_buckets_are_contiguous_and_cover_the_dates(interval: str, tz: str) -> None:
    start, end = date(2026, 3, 1), date(2026, 4, 10)
    buckets = periods(start, end, interval, tz)
    assert all(a[1] == b[0] for a, b in zip(buckets, buckets[1:]))
    assert all(s.tzinfo == timezone.utc and s < e for s, e in buckets)
    zone = ZoneInfo(tz)
    assert buckets[0][0].astimezone(zone).date() <= start
    assert buckets[-1][1].astimezone(zone).date() > end
    assert (buckets[-1][1] - timedelta(microseconds=1)).astimezone(zone).date() >= end
    if interval == "hour":
        assert all(e - s <= HOUR for s, e in buckets)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        periods(date(2026, 1, 1), date(2026, 1, 1), "minute", "UTC")
    with pytest.raises(ValueError):
        periods(date(2026, 1, 2), date(2026, 1, 1), "day", "UTC")


# --------------------------------------------------------------------------
# numeric_at and percentiles
# --------------------------------------------------------------------------


def test_numeric_at() -> None:
    metadata = {
        "_cost": {"amount": 0.25, "currency": "usd"},
        "_llm": {"total_tokens": 12},
        "flag": True,
        "text": "3",
        "none": None,
        "a": {"b": {"c": -1}},
    }
    assert numeric_at(metadata, "_cost.amount") == 0.25
    assert numeric_at(metadata, "_llm.total_tokens") == 12.0
    assert numeric_at(metadata, "a.b.c") == -1.0
    for path in ("flag", "text", "none", "a", "a.b", "_cost.currency", "missing", "a.x.c", "text.x"):
        assert numeric_at(metadata, path) is None, path


def test_percentile_rank_ok() -> None:
    values = [float(v) for v in range(1, 101)]
    # q=0.9, n=100: ranks 89..91 → values 89 (touches rank 89) to 92 (touches rank 91).
    assert percentile_rank_ok(values, 0.9, 90.0)
    assert percentile_rank_ok(values, 0.9, 89.0)
    assert percentile_rank_ok(values, 0.9, 92.0)
    assert not percentile_rank_ok(values, 0.9, 88.0)
    assert not percentile_rank_ok(values, 0.9, 93.0)
    assert percentile_rank_ok(list(reversed(values)), 0.9, exact_percentile(values, 0.9))

    small = [1.0, 2.0, 3.0, 4.0, 5.0]
    # Linear interpolation (4.6) and quantileExact's sorted[floor(q*n)] (5) both pass.
    assert percentile_rank_ok(small, 0.9, exact_percentile(small, 0.9))
    assert percentile_rank_ok(small, 0.9, 5.0)
    assert not percentile_rank_ok(small, 0.9, 3.9)
    assert percentile_rank_ok([7.0], 0.99, 7.0)
    assert percentile_rank_ok([], 0.5, 0.0)
    assert not percentile_rank_ok([], 0.5, 1.0)


def test_exact_percentile() -> None:
    assert exact_percentile([3.0, 1.0], 0.1) == pytest.approx(1.2)
    assert exact_percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9) == pytest.approx(4.6)
    assert exact_percentile([], 0.5) == 0.0


# --------------------------------------------------------------------------
# timeseries
# --------------------------------------------------------------------------

ZERO_STATS = {
    "occurrences": 0,
    "customers": 0,
    "totals": {"cost": 0.0, "n.v": 0.0, "flag": 0.0},
    "averages": {"cost": 0.0, "n.v": 0.0, "flag": 0.0},
    "p10": {"cost": 0.0, "n.v": 0.0, "flag": 0.0},
    "p90": {"cost": 0.0, "n.v": 0.0, "flag": 0.0},
    "p99": {"cost": 0.0, "n.v": 0.0, "flag": 0.0},
}
FIELDS = ["cost", "n.v", "flag"]


def api_view(stats: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in stats.items() if key not in ("name", "_values")}


@pytest.fixture
def stat_events() -> list[dict[str, Any]]:
    return [
        event("a", utc(2026, 3, 2, 1), "X", cost=1, n={"v": 10}),
        event("a", utc(2026, 3, 2, 5), "Y", cost=3.0),
        event("a", utc(2026, 3, 2, 9), "X", cost="7", flag=True),
        event("b", utc(2026, 3, 3, 10), "Z", cost=2),
        event("a", utc(2026, 3, 4, 0), "X", cost=100),  # range end is exclusive
        event("b", utc(2026, 3, 1, 23, 59), "Z", cost=100),  # before the range
    ]


def test_timeseries_by_hand(stat_events: list[dict[str, Any]]) -> None:
    result = timeseries(stat_events, date(2026, 3, 2), date(2026, 3, 3), "day", "UTC", None, None, FIELDS)
    day1, day2 = result["periods"]
    assert (day1["timestamp"], day1["period_end"]) == (utc(2026, 3, 2), utc(2026, 3, 3))
    assert [s["name"] for s in day1["stats"]] == ["a", "b"]
    assert [s["name"] for s in day2["stats"]] == ["a", "b"]

    a1 = day1["stats"][0]
    assert (a1["occurrences"], a1["customers"]) == (3, 2)
    # The string "7" and the bool are not numbers: cost averages over 2 events.
    assert a1["totals"] == {"cost": 4.0, "n.v": 10.0, "flag": 0.0}
    assert a1["averages"] == {"cost": 2.0, "n.v": 10.0, "flag": 0.0}
    assert a1["p10"]["cost"] == pytest.approx(1.2)
    assert a1["p90"]["cost"] == pytest.approx(2.8)
    assert a1["p99"]["n.v"] == 10.0
    assert a1["p99"]["flag"] == 0.0
    assert a1["_values"] == {"cost": [1.0, 3.0], "n.v": [10.0], "flag": []}
    assert api_view(day1["stats"][1]) == ZERO_STATS
    assert api_view(day2["stats"][0]) == ZERO_STATS

    b2 = day2["stats"][1]
    assert (b2["occurrences"], b2["customers"]) == (1, 1)
    assert b2["totals"]["cost"] == b2["averages"]["cost"] == b2["p10"]["cost"] == 2.0

    a_total, b_total = result["totals"]
    assert (a_total["name"], a_total["occurrences"], a_total["customers"]) == ("a", 3, 2)
    assert (b_total["name"], b_total["occurrences"], b_total["totals"]["cost"]) == ("b", 1, 2.0)


def test_timeseries_requested_names_always_present(stat_events: list[dict[str, Any]]) -> None:
    result = timeseries(
        stat_events, date(2026, 3, 2), date(2026, 3, 3), "day", "UTC", ["c", "b"], None, FIELDS
    )
    for row in [*result["periods"], {"stats": result["totals"]}]:
        assert [s["name"] for s in row["stats"]] == ["b", "c"]
        assert api_view(row["stats"][1]) == ZERO_STATS
    assert result["totals"][0]["occurrences"] == 1


def test_timeseries_customer_filter(stat_events: list[dict[str, Any]]) -> None:
    result = timeseries(
        stat_events, date(2026, 3, 2), date(2026, 3, 3), "day", "UTC", None, {"Y"}, FIELDS
    )
    assert [[s["name"] for s in p["stats"]] for p in result["periods"]] == [["a"], ["a"]]
    assert result["totals"][0]["totals"]["cost"] == 3.0
    assert result["totals"][0]["customers"] == 1


def test_timeseries_uses_local_buckets() -> None:
    # 23:30 UTC on 2 March is already 3 March in Kolkata.
    events = [event("a", utc(2026, 3, 2, 23, 30), "X")]
    result = timeseries(events, date(2026, 3, 2), date(2026, 3, 3), "day", "Asia/Kolkata", None, None, [])
    assert [p["stats"][0]["occurrences"] for p in result["periods"]] == [0, 1]
    assert result["periods"][0]["stats"][0]["totals"] == {}


# --------------------------------------------------------------------------
# file_share_metrics
# --------------------------------------------------------------------------

NOW = utc(2026, 3, 10)


@pytest.fixture
def share_events() -> list[dict[str, Any]]:
    return [
        # S0: created before the range, never closed: active in every period.
        event("file_share.created", utc(2026, 2, 27), "A", share_id="S0", price_cents=0, size_bytes=1),
        # S1: paid on day 1, its payment lands on day 2, completed on day 2.
        event("file_share.created", utc(2026, 3, 2, 10), "A", share_id="S1", price_cents=500, size_bytes=9),
        event("file_share.downloaded", utc(2026, 3, 2, 11), "B", share_id="S1", bytes=1000),
        event("file_share.downloaded", utc(2026, 3, 3, 9), "B", share_id="S1", bytes=3000),
        event(
            "file_share.payment_completed", utc(2026, 3, 3, 12), "B",
            share_id="S1", amount_cents=500, platform_fee_cents=50,
        ),
        event("file_share.completed", utc(2026, 3, 3, 13), "A", share_id="S1"),
        # S2: free, expires on day 1.
        event(
            "file_share.created", utc(2026, 3, 2, 12), "B",
            share_id="S2", price_cents=0, size_bytes=5, _cost={"amount": 0.25, "currency": "usd"},
        ),
        event("file_share.expired", utc(2026, 3, 2, 20), "B", share_id="S2"),
        # S3: paid after the range but before now: converts, earns no in-range revenue.
        event(
            "file_share.created", utc(2026, 3, 3, 8), "C",
            share_id="S3", price_cents=1000, size_bytes=5, _cost={"amount": 0.5, "currency": "usd"},
        ),
        event(
            "file_share.payment_completed", utc(2026, 3, 5), "E",
            share_id="S3", amount_cents=1000, platform_fee_cents=100,
        ),
        # S4: paid only after now: does not convert.
        event("file_share.created", utc(2026, 3, 3, 9), "C", share_id="S4", price_cents=300, size_bytes=5),
        event(
            "file_share.payment_completed", utc(2026, 3, 11), "C",
            share_id="S4", amount_cents=300, platform_fee_cents=30,
        ),
        # A non-file-share event: counts for costs and active users only.
        event("llm.call", utc(2026, 3, 2, 6), "D", _cost={"amount": 1.5, "currency": "usd"}, _llm={"total_tokens": 9}),
        # After the range.
        event("file_share.downloaded", utc(2026, 3, 4, 1), "B", share_id="S1", bytes=7000),
    ]


def test_file_share_metrics_by_hand(share_events: list[dict[str, Any]]) -> None:
    result = file_share_metrics(share_events, date(2026, 3, 2), date(2026, 3, 3), "day", "UTC", None, None, NOW)
    day1, day2 = result["periods"]
    assert day1 == {
        "timestamp": utc(2026, 3, 2),
        "file_share_sessions": 2,  # S1, S2
        "file_share_downloads": 1,
        "avg_downloads_per_share": 0.5,
        "active_sessions": 2,  # S0, S1 (S2 expired)
        "completed_sessions": 0,
        "expired_sessions": 1,
        "free_file_shares": 1,
        "paid_file_shares": 1,
        "total_data_shared": 1000.0,
        "cumulative_file_shares": 2,
        "cumulative_downloads": 1,
        "file_share_revenue": 0.0,
        "average_share_price": 500.0,
        "payment_conversion_rate": 100.0,  # S1's payment is on day 2
        "file_share_platform_fees": 0.0,
        "cumulative_platform_fees": 0.0,
        "costs": 1.75,
        "cumulative_costs": 1.75,
        "active_users": 3,  # A, B, D
        "cost_per_user": pytest.approx(1.75 / 3),
        "cashflow": -1.75,
    }
    assert day2 == {
        "timestamp": utc(2026, 3, 3),
        "file_share_sessions": 2,  # S3, S4
        "file_share_downloads": 1,
        "avg_downloads_per_share": 0.5,
        "active_sessions": 3,  # S0, S3, S4 (S1 completed)
        "completed_sessions": 1,
        "expired_sessions": 0,
        "free_file_shares": 0,
        "paid_file_shares": 2,
        "total_data_shared": 3000.0,
        "cumulative_file_shares": 4,
        "cumulative_downloads": 2,
        "file_share_revenue": 500.0,
        "average_share_price": 650.0,
        "payment_conversion_rate": 50.0,  # S3 yes, S4 paid after now
        "file_share_platform_fees": 50.0,
        "cumulative_platform_fees": 50.0,
        "costs": 0.5,
        "cumulative_costs": 2.25,
        "active_users": 3,  # A, B, C
        "cost_per_user": pytest.approx(0.5 / 3),
        "cashflow": 499.5,
    }
    assert result["totals"] == {
        "file_share_sessions": 4,
        "file_share_downloads": 2,
        "avg_downloads_per_share": 0.5,
        "active_sessions": 3,
        "completed_sessions": 1,
        "expired_sessions": 1,
        "free_file_shares": 1,
        "paid_file_shares": 3,
        "total_data_shared": 4000.0,
        "cumulative_file_shares": 4,
        "cumulative_downloads": 2,
        "file_share_revenue": 500.0,
        "average_share_price": 600.0,
        "payment_conversion_rate": pytest.approx(200 / 3),
        "file_share_platform_fees": 50.0,
        "cumulative_platform_fees": 50.0,
        "costs": 2.25,
        "cumulative_costs": 2.25,
        "active_users": 4,  # A, B, C, D
        "cost_per_user": pytest.approx(2.25 / 4),
        "cashflow": 497.75,
    }
    assert list(result["totals"]) == list(FILE_SHARE_SLUGS)


def test_file_share_metrics_share_filter(share_events: list[dict[str, Any]]) -> None:
    result = file_share_metrics(
        share_events, date(2026, 3, 2), date(2026, 3, 3), "day", "UTC", {"S1"}, None, NOW
    )
    day1, day2 = result["periods"]
    assert (day1["file_share_sessions"], day1["active_sessions"], day2["active_sessions"]) == (1, 1, 0)
    # Only events carrying S1: no _cost among them, users A and B.
    assert (day1["costs"], day1["active_users"], day1["cost_per_user"]) == (0.0, 2, 0.0)
    assert result["totals"]["costs"] == 0.0
    assert result["totals"]["file_share_revenue"] == 500.0
    assert result["totals"]["payment_conversion_rate"] == 100.0


def test_file_share_metrics_customer_filter_applies_to_payments(
    share_events: list[dict[str, Any]],
) -> None:
    result = file_share_metrics(
        share_events, date(2026, 3, 2), date(2026, 3, 3), "day", "UTC", None, {"C"}, NOW
    )
    day1, day2 = result["periods"]
    assert day1["file_share_sessions"] == 0
    assert day2["paid_file_shares"] == 2
    # S3 was paid by customer E, which the filter drops; S4 was paid after now.
    assert day2["payment_conversion_rate"] == 0.0
    assert (day2["active_sessions"], day2["active_users"], day2["costs"]) == (2, 1, 0.5)


def test_file_share_metrics_local_week_with_no_events() -> None:
    result = file_share_metrics([], date(2026, 3, 4), date(2026, 3, 4), "week", "Europe/Berlin", None, None, NOW)
    [row] = result["periods"]
    assert row["timestamp"] == utc(2026, 3, 1, 23)  # Monday 2 March, 00:00 CET
    assert all(row[slug] == 0 for slug in FILE_SHARE_SLUGS)
    assert result["totals"] == {slug: row[slug] for slug in FILE_SHARE_SLUGS}
