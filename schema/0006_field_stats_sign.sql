-- The per-field rollups of 0003 gain a `sign` dimension: the sign of the value (-1, 0, 1). A condition
-- comparing a field with zero (a share's `price_cents` = 0 is free, > 0 paid) then reads whole rollup rows,
-- so the metrics dashboard (app/metrics) counts and sums such events from the rollups; the statistics merge
-- the signs back together. Usually one sign per (field, name, bucket), so the tables hardly grow.
--
-- The tables are rebuilt: dropped with their views, created anew, and backfilled from `events`. This runs at
-- start, under the migration lock, before this process serves; an API process of an older version still
-- serving meanwhile would leave its inserts of these minutes out of the rebuilt tables.

DROP VIEW IF EXISTS field_stats_1d_mv;

DROP VIEW IF EXISTS field_stats_1h_mv;

DROP VIEW IF EXISTS field_stats_15m_mv;

DROP TABLE IF EXISTS field_stats_1d;

DROP TABLE IF EXISTS field_stats_1h;

DROP TABLE IF EXISTS field_stats_15m;


CREATE TABLE field_stats_1d
(
    workspace_id UUID,
    field LowCardinality(String),
    name LowCardinality(String),
    bucket DateTime('UTC'),
    sign Int8,
    value_count SimpleAggregateFunction(sum, UInt64),
    value_total SimpleAggregateFunction(sum, Float64),
    -- Only on `_cost.amount` rows: the exact total from events.cost_amount (zero elsewhere).
    exact_total SimpleAggregateFunction(sum, Decimal128(12)),
    value_quantiles AggregateFunction(quantilesGK(200, 0.1, 0.9, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYear(bucket)
ORDER BY (workspace_id, field, name, bucket, sign)
SETTINGS index_granularity = 256;

CREATE TABLE field_stats_1h
(
    workspace_id UUID,
    field LowCardinality(String),
    name LowCardinality(String),
    bucket DateTime('UTC'),
    sign Int8,
    value_count SimpleAggregateFunction(sum, UInt64),
    value_total SimpleAggregateFunction(sum, Float64),
    -- Only on `_cost.amount` rows: the exact total from events.cost_amount (zero elsewhere).
    exact_total SimpleAggregateFunction(sum, Decimal128(12)),
    value_quantiles AggregateFunction(quantilesGK(200, 0.1, 0.9, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (workspace_id, field, name, bucket, sign)
SETTINGS index_granularity = 256;

CREATE TABLE field_stats_15m
(
    workspace_id UUID,
    field LowCardinality(String),
    name LowCardinality(String),
    bucket DateTime('UTC'),
    sign Int8,
    value_count SimpleAggregateFunction(sum, UInt64),
    value_total SimpleAggregateFunction(sum, Float64),
    -- Only on `_cost.amount` rows: the exact total from events.cost_amount (zero elsewhere).
    exact_total SimpleAggregateFunction(sum, Decimal128(12)),
    value_quantiles AggregateFunction(quantilesGK(200, 0.1, 0.9, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (workspace_id, field, name, bucket, sign)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW field_stats_1d_mv TO field_stats_1d AS
SELECT workspace_id, field, name, toStartOfDay(timestamp) AS bucket, sign(value) AS sign,
       count() AS value_count, sum(value) AS value_total,
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))) AS exact_total,
       quantilesGKState(200, 0.1, 0.9, 0.99)(value) AS value_quantiles
FROM events
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket, sign;

CREATE MATERIALIZED VIEW field_stats_1h_mv TO field_stats_1h AS
SELECT workspace_id, field, name, toStartOfHour(timestamp) AS bucket, sign(value) AS sign,
       count() AS value_count, sum(value) AS value_total,
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))) AS exact_total,
       quantilesGKState(200, 0.1, 0.9, 0.99)(value) AS value_quantiles
FROM events
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket, sign;

CREATE MATERIALIZED VIEW field_stats_15m_mv TO field_stats_15m AS
SELECT workspace_id, field, name, toStartOfFifteenMinutes(timestamp) AS bucket, sign(value) AS sign,
       count() AS value_count, sum(value) AS value_total,
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))) AS exact_total,
       quantilesGKState(200, 0.1, 0.9, 0.99)(value) AS value_quantiles
FROM events
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket, sign;

-- Backfill, as in 0003: FINAL keeps the raw table's second line of defence; past 1 GB the GROUP BY spills.
INSERT INTO field_stats_1d
SELECT workspace_id, field, name, toStartOfDay(timestamp) AS bucket, sign(value) AS sign,
       count() AS value_count, sum(value) AS value_total,
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))) AS exact_total,
       quantilesGKState(200, 0.1, 0.9, 0.99)(value) AS value_quantiles
FROM events FINAL
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket, sign
SETTINGS max_bytes_before_external_group_by = 1000000000;

INSERT INTO field_stats_1h
SELECT workspace_id, field, name, toStartOfHour(timestamp) AS bucket, sign(value) AS sign,
       count() AS value_count, sum(value) AS value_total,
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))) AS exact_total,
       quantilesGKState(200, 0.1, 0.9, 0.99)(value) AS value_quantiles
FROM events FINAL
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket, sign
SETTINGS max_bytes_before_external_group_by = 1000000000;

INSERT INTO field_stats_15m
SELECT workspace_id, field, name, toStartOfFifteenMinutes(timestamp) AS bucket, sign(value) AS sign,
       count() AS value_count, sum(value) AS value_total,
       sum(if(field = '_cost.amount', cost_amount, toDecimal128(0, 12))) AS exact_total,
       quantilesGKState(200, 0.1, 0.9, 0.99)(value) AS value_quantiles
FROM events FINAL
ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) AS value
GROUP BY workspace_id, field, name, bucket, sign
SETTINGS max_bytes_before_external_group_by = 1000000000;
