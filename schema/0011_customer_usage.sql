-- The customer list sorted by a usage metric (GET /api/customers?usage_metric=) needs the metric of every
-- customer over the last 7, 30 or 90 days: read from `events`, 850k rows for a 30-day count of two names and
-- 2.6M for a 90-day sum at 10M events. Customers do not send each name every day (about one event per
-- customer, name and day there), so a daily rollup per customer would be nearly as big as the events; per 7
-- and 28 days it is not. So each event is counted three times here: in its UTC day, its 7-day and its 28-day
-- cell (`days`), each cell aligned on the Unix epoch so that a 28-day cell is four 7-day ones and a 7-day cell
-- seven days. A window then reads the raw events up to the next midnight, day cells up to the next 7-day
-- boundary, 7-day cells up to the next 28-day boundary and 28-day cells from there on, and takes back out the
-- events at and after its end (app/usage_metrics/queries.py). Counts and the typed leaves `_cost.amount` and
-- `_llm.total_tokens` only: metrics with filters or other properties read `events`.
--
-- The skip index lets the same query find events ingested after a listing's first page cheaply (a granule's
-- events arrive together, a late one is rare), so every page of a listing stays on the numbers of the first.
--
-- Like 0009 this runs at start, under the migration lock, before this process serves; an API process of an
-- older version still serving meanwhile would leave its inserts of these minutes out of the backfill.

CREATE TABLE IF NOT EXISTS customer_usage
(
    workspace_id UUID,
    name LowCardinality(String),
    days UInt8,
    bucket Date,
    customer_key String,
    events UInt64,
    cost_amount Decimal128(12),
    llm_total_tokens UInt64
)
ENGINE = SummingMergeTree
ORDER BY (workspace_id, name, days, bucket, customer_key)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS customer_usage_mv TO customer_usage AS
SELECT workspace_id, name, arrayJoin([1, 7, 28]) AS days,
       addDays(toDate(0), intDiv(toUInt16(toDate(timestamp)), days) * days) AS bucket, customer_key,
       count() AS events, sum(cost_amount) AS cost_amount, sum(llm_total_tokens) AS llm_total_tokens
FROM events
GROUP BY workspace_id, name, days, bucket, customer_key;

INSERT INTO customer_usage
SELECT workspace_id, name, arrayJoin([1, 7, 28]) AS days,
       addDays(toDate(0), intDiv(toUInt16(toDate(timestamp)), days) * days) AS bucket, customer_key,
       count() AS events, sum(cost_amount) AS cost_amount, sum(llm_total_tokens) AS llm_total_tokens
FROM events FINAL
GROUP BY workspace_id, name, days, bucket, customer_key;

ALTER TABLE events ADD INDEX IF NOT EXISTS ingested ingested_at TYPE minmax GRANULARITY 1;

ALTER TABLE events MATERIALIZE INDEX ingested SETTINGS mutations_sync = 1;
