-- The share a file-sharing event belongs to (metadata `share_id`), as a column of its own: the metrics
-- dashboard's share-level metrics (active sessions, payment conversion) and its share filter read a
-- workspace's share events by it, and reading the whole `str` map of each row for it was about a quarter of
-- their time. NULL where the metadata has no string `share_id`, as the map's lookups had it.

ALTER TABLE events ADD COLUMN IF NOT EXISTS share_id Nullable(String)
    MATERIALIZED if(mapContains(str, 'share_id'), str['share_id'], NULL);

ALTER TABLE events MATERIALIZE COLUMN share_id SETTINGS mutations_sync = 1;
