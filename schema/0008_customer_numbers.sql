-- Customers get numbers: dense, per workspace, from 1, never reused (customer_numbers; the API allots them at ingest,
-- app/customers/numbers.py), and every event carries its customer's (events.customer_number). The rollups'
-- distinct customers become Roaring bitmaps of those numbers (groupBitmap): exact like the uniqExact states
-- they replace, and dense numbers fill each bitmap's containers, so merging a month of daily states over 10k
-- customers takes microseconds where hash sets took tens of milliseconds (measured: 143 ms against 8.5 ms for
-- a 30-day daily series at 10M events).
--
-- Existing events are numbered here in order of their customer's first event. Like 0006 this runs at start,
-- under the migration lock, before this process serves; an API process of an older version still serving
-- meanwhile would store events without a number (0) and leave them out of the rebuilt rollups.

CREATE TABLE IF NOT EXISTS customer_numbers
(
    workspace_id UUID,
    customer_key String,
    number UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (workspace_id, customer_key);

ALTER TABLE events ADD COLUMN IF NOT EXISTS customer_number UInt32 AFTER customer_key;

-- One number per customer identity: a customer's events sent by id before it had an external id ('c:<id>')
-- and those under its external id ('x:<external id>') share one.
INSERT INTO customer_numbers
SELECT workspace_id, customer_key, toUInt32(dense_rank() OVER (PARTITION BY workspace_id ORDER BY identity_seen, identity))
FROM (
    SELECT workspace_id, customer_key, identity, min(first_seen) OVER (PARTITION BY workspace_id, identity) AS identity_seen
    FROM (
        SELECT k.workspace_id AS workspace_id, k.customer_key AS customer_key, k.first_seen AS first_seen,
               if(c.external_id IS NULL, k.customer_key, 'x:' || assumeNotNull(c.external_id)) AS identity
        FROM (SELECT workspace_id, customer_key, min(timestamp) AS first_seen FROM events
              GROUP BY workspace_id, customer_key) AS k
        LEFT JOIN (SELECT workspace_id, 'c:' || toString(id) AS key, external_id FROM customers FINAL
                   WHERE NOT deleted AND external_id IS NOT NULL) AS c
        ON c.workspace_id = k.workspace_id AND c.key = k.customer_key
    )
);

-- A mutation resolves no default database: the lookup table is named with the migrated database, which the
-- migration runner binds as {database:String}.
CREATE TABLE customer_numbers_fill ENGINE = Join(ANY, LEFT, workspace_id, customer_key) AS
SELECT workspace_id, customer_key, number FROM customer_numbers;

ALTER TABLE events UPDATE customer_number = joinGet({database:String} || '.customer_numbers_fill', 'number', workspace_id, customer_key)
WHERE customer_number = 0 SETTINGS mutations_sync = 1;

DROP TABLE customer_numbers_fill;

DROP VIEW IF EXISTS event_stats_1d_mv;

DROP VIEW IF EXISTS event_stats_1h_mv;

DROP VIEW IF EXISTS event_stats_15m_mv;

DROP TABLE IF EXISTS event_stats_1d;

DROP TABLE IF EXISTS event_stats_1h;

DROP TABLE IF EXISTS event_stats_15m;

CREATE TABLE event_stats_1d
(
    workspace_id UUID,
    name LowCardinality(String),
    bucket DateTime('UTC'),
    occurrences SimpleAggregateFunction(sum, UInt64),
    customers AggregateFunction(groupBitmap, UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYear(bucket)
ORDER BY (workspace_id, name, bucket)
SETTINGS index_granularity = 256;

CREATE TABLE event_stats_1h
(
    workspace_id UUID,
    name LowCardinality(String),
    bucket DateTime('UTC'),
    occurrences SimpleAggregateFunction(sum, UInt64),
    customers AggregateFunction(groupBitmap, UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (workspace_id, name, bucket)
SETTINGS index_granularity = 256;

CREATE TABLE event_stats_15m
(
    workspace_id UUID,
    name LowCardinality(String),
    bucket DateTime('UTC'),
    occurrences SimpleAggregateFunction(sum, UInt64),
    customers AggregateFunction(groupBitmap, UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (workspace_id, name, bucket)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW event_stats_1d_mv TO event_stats_1d AS
SELECT workspace_id, name, toStartOfDay(timestamp) AS bucket,
       count() AS occurrences, groupBitmapState(customer_number) AS customers
FROM events
GROUP BY workspace_id, name, bucket;

CREATE MATERIALIZED VIEW event_stats_1h_mv TO event_stats_1h AS
SELECT workspace_id, name, toStartOfHour(timestamp) AS bucket,
       count() AS occurrences, groupBitmapState(customer_number) AS customers
FROM events
GROUP BY workspace_id, name, bucket;

CREATE MATERIALIZED VIEW event_stats_15m_mv TO event_stats_15m AS
SELECT workspace_id, name, toStartOfFifteenMinutes(timestamp) AS bucket,
       count() AS occurrences, groupBitmapState(customer_number) AS customers
FROM events
GROUP BY workspace_id, name, bucket;

-- Backfill, as in 0003: FINAL keeps the raw table's second line of defence; past 1 GB the GROUP BY spills.

INSERT INTO event_stats_1d
SELECT workspace_id, name, toStartOfDay(timestamp) AS bucket, count(), groupBitmapState(customer_number)
FROM events FINAL
GROUP BY workspace_id, name, bucket
SETTINGS max_bytes_before_external_group_by = 1000000000;

INSERT INTO event_stats_1h
SELECT workspace_id, name, toStartOfHour(timestamp) AS bucket, count(), groupBitmapState(customer_number)
FROM events FINAL
GROUP BY workspace_id, name, bucket
SETTINGS max_bytes_before_external_group_by = 1000000000;

INSERT INTO event_stats_15m
SELECT workspace_id, name, toStartOfFifteenMinutes(timestamp) AS bucket, count(), groupBitmapState(customer_number)
FROM events FINAL
GROUP BY workspace_id, name, bucket
SETTINGS max_bytes_before_external_group_by = 1000000000;
