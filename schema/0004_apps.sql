-- Apps of a workspace. Each change (the database being provisioned) is a new row version, folded by
-- ReplacingMergeTree and read with FINAL. The slug is unique per workspace; the API checks it under a claim.
-- The app's own ClickHouse database is `app_<id hex>` (never a name a user typed); its credentials are
-- returned once and not kept, only the user's name.
CREATE TABLE IF NOT EXISTS apps
(
    workspace_id UUID,
    id UUID,
    slug String,
    name String,
    created_at DateTime64(3, 'UTC'),
    database_name Nullable(String),
    database_user Nullable(String),
    quota_bytes Nullable(UInt64),
    database_created_at Nullable(DateTime64(3, 'UTC')),
    version DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (workspace_id, id);
