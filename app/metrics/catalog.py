"""The metrics of the dashboard (CONTRACT.md section 4), one declaration each. The engine in service.py turns
these into SQL; adding a metric is adding a declaration here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["scalar", "currency", "percentage"]

CREATED = "file_share.created"
DOWNLOADED = "file_share.downloaded"
COMPLETED = "file_share.completed"
EXPIRED = "file_share.expired"
PAYMENT_COMPLETED = "file_share.payment_completed"


@dataclass(frozen=True, slots=True)
class Where:
    """A condition on a numeric metadata leaf (dotted path); the leaf must be present and numeric."""

    path: str
    op: Literal["=", ">", ">=", "<", "<="]
    value: float


# --- Aggregates: each becomes one column of the per-period query. ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Count:
    """Events of one name, optionally only those meeting a metadata condition."""

    event: str
    where: Where | None = None


@dataclass(frozen=True, slots=True)
class Sum:
    """The sum of a numeric metadata leaf over events of one name (events without it add nothing)."""

    event: str
    path: str
    where: Where | None = None


@dataclass(frozen=True, slots=True)
class DistinctCustomers:
    """Distinct customers with any event."""


@dataclass(frozen=True, slots=True)
class Cost:
    """The exact sum of `_cost.amount` over every event, whatever its name."""


@dataclass(frozen=True, slots=True)
class Converted:
    """Events of `event` meeting `where` whose share_id has a `payment` event at any time up to now: a payment
    landing after the period still converts the share created in it."""

    event: str
    payment: str
    where: Where | None = None


# --- Derived from other metrics (by slug) or from inline aggregates. -------------------------------------------


@dataclass(frozen=True, slots=True)
class Ratio:
    """numerator / denominator, 0 when the denominator is 0, times `scale` (100 for percentages). Range totals
    are recomputed from the operands' totals, never summed."""

    numerator: Definition | str
    denominator: Definition | str
    scale: float = 1.0


@dataclass(frozen=True, slots=True)
class Difference:
    minuend: Definition | str
    subtrahend: Definition | str


@dataclass(frozen=True, slots=True)
class Running:
    """The running total of another metric from the first period; its range total is the last period's."""

    of: str


# --- Stateful: depends on events before the range. --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActiveSessions:
    """Distinct share_ids with a `created` event before the period's end and no `ended` event before it, however
    long before start_date they were created; the range total is the last period's."""

    created: str
    ended: tuple[str, ...]


Aggregate = Count | Sum | DistinctCustomers | Cost | Converted
Definition = Aggregate | Ratio | Difference | Running | ActiveSessions


@dataclass(frozen=True, slots=True)
class Metric:
    slug: str
    display_name: str
    type: MetricType
    definition: Definition


PAID = Where("price_cents", ">", 0)
FREE = Where("price_cents", "=", 0)

CATALOG: tuple[Metric, ...] = (
    Metric("file_share_sessions", "File share sessions", "scalar", Count(CREATED)),
    Metric("file_share_downloads", "File share downloads", "scalar", Count(DOWNLOADED)),
    Metric("avg_downloads_per_share", "Average downloads per share", "scalar",
           Ratio("file_share_downloads", "file_share_sessions")),
    Metric("active_sessions", "Active sessions", "scalar", ActiveSessions(CREATED, (COMPLETED, EXPIRED))),
    Metric("completed_sessions", "Completed sessions", "scalar", Count(COMPLETED)),
    Metric("expired_sessions", "Expired sessions", "scalar", Count(EXPIRED)),
    Metric("free_file_shares", "Free file shares", "scalar", Count(CREATED, FREE)),
    Metric("paid_file_shares", "Paid file shares", "scalar", Count(CREATED, PAID)),
    Metric("total_data_shared", "Total data shared", "scalar", Sum(DOWNLOADED, "bytes")),
    Metric("cumulative_file_shares", "Cumulative file shares", "scalar", Running("file_share_sessions")),
    Metric("cumulative_downloads", "Cumulative downloads", "scalar", Running("file_share_downloads")),
    Metric("file_share_revenue", "File share revenue", "currency", Sum(PAYMENT_COMPLETED, "amount_cents")),
    Metric("average_share_price", "Average share price", "currency",
           Ratio(Sum(CREATED, "price_cents", PAID), "paid_file_shares")),
    Metric("payment_conversion_rate", "Payment conversion rate", "percentage",
           Ratio(Converted(CREATED, PAYMENT_COMPLETED, PAID), "paid_file_shares", scale=100.0)),
    Metric("file_share_platform_fees", "File share platform fees", "currency",
           Sum(PAYMENT_COMPLETED, "platform_fee_cents")),
    Metric("cumulative_platform_fees", "Cumulative platform fees", "currency", Running("file_share_platform_fees")),
    Metric("costs", "Costs", "currency", Cost()),
    Metric("cumulative_costs", "Cumulative costs", "currency", Running("costs")),
    Metric("active_users", "Active users", "scalar", DistinctCustomers()),
    Metric("cost_per_user", "Cost per user", "currency", Ratio("costs", "active_users")),
    Metric("cashflow", "Cashflow", "currency", Difference("file_share_revenue", "costs")),
)

BY_SLUG: dict[str, Metric] = {metric.slug: metric for metric in CATALOG}
