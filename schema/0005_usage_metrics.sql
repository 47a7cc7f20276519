-- Customer usage metrics: one row version per change, folded by ReplacingMergeTree and read with FINAL (a small
-- table). Filter values keep their JSON type (string, number or boolean), so the filters are kept as JSON text.
CREATE TABLE IF NOT EXISTS usage_metrics
(
    workspace_id UUID,
    id UUID,
    name String,
    interval_days UInt8,
    format LowCardinality(String),
    display LowCardinality(String),
    calculation LowCardinality(String),
    property Nullable(String),
    match_events Array(String),
    filters String,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    deleted Bool DEFAULT false,
    version DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (workspace_id, id);
