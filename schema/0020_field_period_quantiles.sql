-- The quantiles of a local day that is not a UTC day (every zone's but UTC's and its like) merge 24 hourly
-- states, or 23 hourly and four 15-minute ones for :30 and :45 zones. A state under a few hundred values keeps
-- each value, so that merge reads as many tuples as the day has values: a 30-day New York series took about
-- 200 ms for its quantiles at 10M events, against 30 for UTC days from the daily rollup. No view can keep
-- such days ahead of a request (they depend on the zone asked for), so the statistics keep each one here once
-- it has been asked for and is over: the p10, p90 and p99 of one field and name over [period_start,
-- period_end), merged from the rollups, with the number of values they were merged from
-- (app/statistics/queries.py).
--
-- Kept quantiles answer only while the rollups hold exactly as many values of that field, name and span: the
-- rollups only ever gain values (dedup keeps every event out but its first), so the same count is the same
-- values, and an event stored late into a kept day makes it merge from the rollups again (and be kept anew,
-- the larger count replacing the smaller). A migration that rebuilds field_stats_* must empty this table.

CREATE TABLE IF NOT EXISTS field_period_quantiles
(
    workspace_id UUID,
    field LowCardinality(String),
    name LowCardinality(String),
    period_start DateTime('UTC'),
    period_end DateTime('UTC'),
    value_count UInt64,
    quantiles Array(Float64)
)
ENGINE = ReplacingMergeTree(value_count)
PARTITION BY toYYYYMM(period_start)
ORDER BY (workspace_id, field, name, period_start, period_end)
SETTINGS index_granularity = 256;
