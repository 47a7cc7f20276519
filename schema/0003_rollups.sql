-- Rollups of `events` for the statistics time series (app/statistics): per workspace, event name and UTC
-- bucket of 1 day, 1 hour and 15 minutes. Every zone's local bucket boundaries fall on the 15-minute UTC grid,
-- so any local period is an exact union of these buckets: whole days and hours where they fit, 15-minute
-- buckets at the :30/:45 edges (the planner in app/statistics/service.py picks them).
--
-- Exact under dedup: only new events reach `events` (ARCHITECTURE.md), and a materialized view sees each
-- inserted block once, so counts and sums are never doubled. Late and back-dated events land in the bucket
-- of their own timestamp, whenever they arrive.
--
-- Two tables per grain:
--   event_stats_*  occurrences and the exact distinct customers (uniqExact: merged buckets stay exact);
--   field_stats_*  one row per numeric metadata leaf (dotted path, as in events.num): how many events carry
--                  it, their Float64 sum, the exact Decimal sum of `_cost.amount`, and a Greenwald-Khanna
--                  quantile state. Long form, not a Map state, because a request reads one or two fields
--                  while an event carries many: the merge cost follows the fields asked for.
-- Quantiles: quantilesGK(200) answers with values that occur in the data, within 1/200 of the rank, and
-- merging states keeps that bound (measured: worst 0.496% for days merged from hourly states; the contract
-- allows 1%). quantilesTDigest keeps Float32 centroids, so a repeated 0.1 comes back as 0.10000000149,
-- outside every rank of the data.
-- The accuracy (200) and the levels are repeated in app/statistics/queries.py (GK_ACCURACY): keep them equal.
-- index_granularity 256: rows are aggregate states, and a request reads one workspace's few hundred or
-- thousand of them; with the default 8,192 it deserialized 20 times more states than it used.

CREATE TABLE IF NOT EXISTS event_stats_1d
(
    workspace_id UUID,
    name LowCardinality(String),
    bucket DateTime('UTC'),
    occurrences SimpleAggregateFunction(sum, UInt64),
    customers AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYear(bucket)
ORDER BY (workspace_id, name, bucket)
SETTINGS index_granularity = 256;

CREATE TABLE IF NOT EXISTS event_stats_1h AS event_stats_1d
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (workspace_id, name, bucket)
SETTINGS index_granularity = 256;

CREATE TABLE IF NOT EXISTS event_stats_15m AS event_stats_1d
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (workspace_id, name, bucket)
SETTINGS index_granularity = 256;

CREATE TABLE IF NOT EXISTS field_stats_1d
(
    workspace_id UUID,
    field LowCardinality(String),
    name LowCardinality(String),
    bucket DateTime('UTC'),
    value_count SimpleAggregateFunction(sum, UInt64),
    value_total SimpleAggregateFunction(sum, Float64),
    -- Only on `_cost.amount` rows: the exact total from events.cost_amount (zero elsewhere).
    exact_total SimpleAggregateFunction(sum, Decimal128(12)),
    value_quantiles AggregateFunction(quantilesGK(200, 0.1, 0.9, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYear(bucket)
ORDER BY (workspace_id, field, name, bucket)
SETTINGS index_granularity = 256;

CREATE TABLE IF NOT EXISTS field_stats_1h AS field_stats_1d
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (workspace_id, field, name, bucket)
SETTINGS index_granularity = 256;

CREATE TABLE IF NOT EXISTS field_stats_15m AS field_stats_1d
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (workspace_id, field, name, bucket)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_stats_1d_mv TO event_stats_1d AS
SELECT workspace_id, name, toStartOfDay(timestamp) AS bucket,
       count() AS occurrences, uniqExactState(customer_key) AS customers
FROM events
GROUP BY workspace_id, name, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_stats_1h_mv TO event_stats_1h AS
SELECT workspace_id, name, toStartOfHour(timestamp) AS bucket,
       count() AS occurrences, uniqExactState(customer_key) AS customers
FROM events
GROUP BY workspace_id, name, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_stats_15m_mv TO event_stats_15m AS
SELECT workspace_id, name, toStartOfFifteenMinutes(timestamp) AS bucket,
       count() AS occurrences, uniqExactState(customer_key) AS customers
FROM events
GROUP BY workspace_id, name, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS field_stats_1d_mv TO field_stats_1d AS
SELECT workspace_id, field, name, toStartOfDay(timestamp) AS bucket,
       count() AS value_count, sum(value) AS value_total,
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))) AS exact_total,
       quantilesGKState(200, 0.1, 0.9, 0.99)(value) AS value_quantiles
FROM events
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS field_stats_1h_mv TO field_stats_1h AS
SELECT workspace_id, field, name, toStartOfHour(timestamp) AS bucket,
       count() AS value_count, sum(value) AS value_total,
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))) AS exact_total,
       quantilesGKState(200, 0.1, 0.9, 0.99)(value) AS value_quantiles
FROM events
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS field_stats_15m_mv TO field_stats_15m AS
SELECT workspace_id, field, name, toStartOfFifteenMinutes(timestamp) AS bucket,
       count() AS value_count, sum(value) AS value_total,
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))) AS exact_total,
       quantilesGKState(200, 0.1, 0.9, 0.99)(value) AS value_quantiles
FROM events
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket;

-- Backfill what `events` held before the views existed. The views come first, so nothing inserted meanwhile
-- is missed; this runs at start, before this process serves, under the migration lock. FINAL: the raw
-- table's second line of defence against a duplicate must not be undone here. Spilling to disk past 1 GB
-- keeps a large table's backfill within memory (10M events: about 3 minutes, else 7.5 GiB and refused).
INSERT INTO event_stats_1d
SELECT workspace_id, name, toStartOfDay(timestamp) AS bucket, count(), uniqExactState(customer_key)
FROM events FINAL
GROUP BY workspace_id, name, bucket
SETTINGS max_bytes_before_external_group_by = 1000000000;

INSERT INTO event_stats_1h
SELECT workspace_id, name, toStartOfHour(timestamp) AS bucket, count(), uniqExactState(customer_key)
FROM events FINAL
GROUP BY workspace_id, name, bucket
SETTINGS max_bytes_before_external_group_by = 1000000000;

INSERT INTO event_stats_15m
SELECT workspace_id, name, toStartOfFifteenMinutes(timestamp) AS bucket, count(), uniqExactState(customer_key)
FROM events FINAL
GROUP BY workspace_id, name, bucket
SETTINGS max_bytes_before_external_group_by = 1000000000;

INSERT INTO field_stats_1d
SELECT workspace_id, field, name, toStartOfDay(timestamp) AS bucket, count(), sum(value),
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))),
       quantilesGKState(200, 0.1, 0.9, 0.99)(value)
FROM events FINAL
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket
SETTINGS max_bytes_before_external_group_by = 1000000000;

INSERT INTO field_stats_1h
SELECT workspace_id, field, name, toStartOfHour(timestamp) AS bucket, count(), sum(value),
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))),
       quantilesGKState(200, 0.1, 0.9, 0.99)(value)
FROM events FINAL
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket
SETTINGS max_bytes_before_external_group_by = 1000000000;

INSERT INTO field_stats_15m
SELECT workspace_id, field, name, toStartOfFifteenMinutes(timestamp) AS bucket, count(), sum(value),
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))),
       quantilesGKState(200, 0.1, 0.9, 0.99)(value)
FROM events FINAL
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket
SETTINGS max_bytes_before_external_group_by = 1000000000;
