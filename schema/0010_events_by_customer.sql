-- A customer's usage metrics (app/usage_metrics) read its events of the last 2 x 90 days at most, by
-- customer_key. The `by_customer` projection of 0007 kept them in (workspace, customer, time) order, but in the
-- table's 8,192-row granules: one customer's 1,000 events read one granule of every column in each part,
-- maps included (180k rows in 22 parts at 10M events). As 0009 did for the listing, the order becomes a table
-- of its own with 1,024-row granules, filled by a view and read by name. It is not partitioned: nothing drops
-- its partitions, and fewer parts are fewer granules to read for each customer.
--
-- Like 0009 this runs at start, under the migration lock, before this process serves; an API process of an
-- older version still serving meanwhile would leave its inserts of these minutes out of the backfill.

CREATE TABLE IF NOT EXISTS events_by_customer
(
    workspace_id UUID,
    customer_key String,
    timestamp DateTime64(3, 'UTC'),
    name LowCardinality(String),
    ingested_at DateTime64(3, 'UTC'),
    num Map(LowCardinality(String), Float64),
    str Map(LowCardinality(String), String),
    bool Map(LowCardinality(String), Bool),
    cost_amount Decimal128(12),
    llm_total_tokens UInt64
)
ENGINE = MergeTree
ORDER BY (workspace_id, customer_key, timestamp)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_by_customer_mv TO events_by_customer AS
SELECT workspace_id, customer_key, timestamp, name, ingested_at, num, str, bool, cost_amount, llm_total_tokens
FROM events;

INSERT INTO events_by_customer
SELECT workspace_id, customer_key, timestamp, name, ingested_at, num, str, bool, cost_amount, llm_total_tokens
FROM events FINAL;

ALTER TABLE events DROP PROJECTION IF EXISTS by_customer;
