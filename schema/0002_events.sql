-- Raw events. Exact dedup happens before the insert (ARCHITECTURE.md), so every row here is new; the
-- ReplacingMergeTree on (workspace, name, hour, dedup_key) is a second line of defence for raw reads.
-- Metadata is kept as sent (ZSTD text) and its leaves are extracted by dotted path into typed maps, so
-- sums, percentiles and filters never parse strings at query time.
CREATE TABLE IF NOT EXISTS events
(
    workspace_id UUID,
    id UUID,
    name LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC'),
    source LowCardinality(String),
    -- One identity per customer, whether the event named it by id or by external id: 'x:<external id>'
    -- once the customer has an external id, else 'c:<customer id>'.
    customer_key String,
    customer_id Nullable(UUID),
    external_customer_id Nullable(String),
    external_id Nullable(String),
    dedup_key String,
    parent_id Nullable(UUID),
    root_id UUID,
    depth UInt16,
    metadata String CODEC(ZSTD(3)),
    num Map(LowCardinality(String), Float64),
    str Map(LowCardinality(String), String),
    bool Map(LowCardinality(String), Bool),
    cost_amount Decimal128(12),
    llm_total_tokens UInt64,
    -- A single event and the children of one are found by id without a scan of the workspace.
    INDEX id_bloom id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX parent_bloom parent_id TYPE bloom_filter(0.01) GRANULARITY 1,
    PROJECTION by_time
    (
        SELECT * ORDER BY workspace_id, timestamp, id
    )
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (workspace_id, name, toStartOfHour(timestamp), dedup_key)
SETTINGS deduplicate_merge_projection_mode = 'rebuild';

-- Every event reachable by its id ('i:<uuid>') and by its external id ('x:<external id>'): the dedup
-- check and parent resolution are point lookups here. Filled by the insert itself.
CREATE TABLE IF NOT EXISTS event_keys
(
    workspace_id UUID,
    key String,
    id UUID,
    root_id UUID,
    depth UInt16
)
ENGINE = ReplacingMergeTree
ORDER BY (workspace_id, key);

CREATE MATERIALIZED VIEW IF NOT EXISTS event_keys_mv TO event_keys AS
SELECT workspace_id, arrayJoin(arrayConcat(['i:' || toString(id)], if(isNull(external_id), [], ['x:' || assumeNotNull(external_id)]))) AS key,
       id, root_id, depth
FROM events;

-- Event types: one row per (workspace, name), kept exact by the database on every insert.
CREATE TABLE IF NOT EXISTS event_type_stats
(
    workspace_id UUID,
    name LowCardinality(String),
    occurrences SimpleAggregateFunction(sum, UInt64),
    first_seen SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    source SimpleAggregateFunction(anyLast, LowCardinality(String))
)
ENGINE = AggregatingMergeTree
ORDER BY (workspace_id, name);

CREATE MATERIALIZED VIEW IF NOT EXISTS event_type_stats_mv TO event_type_stats AS
SELECT workspace_id, name, count() AS occurrences, min(timestamp) AS first_seen, max(timestamp) AS last_seen,
       anyLast(source) AS source
FROM events
GROUP BY workspace_id, name;

CREATE TABLE IF NOT EXISTS event_type_labels
(
    workspace_id UUID,
    name String,
    label String,
    version DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (workspace_id, name);

CREATE TABLE IF NOT EXISTS customers
(
    workspace_id UUID,
    id UUID,
    external_id Nullable(String),
    email Nullable(String),
    name Nullable(String),
    metadata String,
    created_at DateTime64(3, 'UTC'),
    deleted Bool DEFAULT false,
    version DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (workspace_id, id);
