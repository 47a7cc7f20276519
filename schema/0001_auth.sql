-- Workspaces, users, memberships and tokens. Small tables read with FINAL: each change is a new row
-- version, which ReplacingMergeTree folds.
CREATE TABLE IF NOT EXISTS workspaces
(
    id UUID,
    name String,
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY id;

CREATE TABLE IF NOT EXISTS users
(
    id UUID,
    email String,
    name Nullable(String),
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY id;

CREATE TABLE IF NOT EXISTS memberships
(
    workspace_id UUID,
    user_id UUID,
    role LowCardinality(String),
    removed Bool DEFAULT false,
    version DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (workspace_id, user_id);

-- Only the SHA-256 of a token is kept; the plain token is shown once.
CREATE TABLE IF NOT EXISTS tokens
(
    token_hash String,
    kind LowCardinality(String),
    user_id Nullable(UUID),
    workspace_id Nullable(UUID),
    name String,
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY token_hash;
