-- The dedup check and parent resolution look up a round's keys ('i:<id>', 'x:<external id>') in `event_keys`.
-- In a MergeTree sorted by key, a lookup reads a granule (8,192 rows) of every part for each key, so keys that
-- do not sort together, such as the UUIDs most producers send as external ids, reach nearly every granule:
-- measured at 20M stored keys, 4,400 random keys read all 20M rows in 0.9-1.1 s, and that grows with the table.
-- EmbeddedRocksDB answers `key IN (...)` with point reads of the keys themselves (4,400 keys: 96 ms, flat with the
-- table). Keys that do sort together were cheaper in the MergeTree (8,000 of them: 29 against 76 ms); a producer's
-- keys cannot be assumed to.
--
-- Writes to a key overwrite it, which is what the ReplacingMergeTree did at merge time. The view is created before
-- the copy, so a key inserted meanwhile is in the new table either way. Like 0009 this runs at start, under the
-- migration lock, before this process serves.

CREATE TABLE IF NOT EXISTS event_keys_kv
(
    workspace_id UUID,
    key String,
    id UUID,
    root_id UUID,
    depth UInt16
)
ENGINE = EmbeddedRocksDB
PRIMARY KEY (workspace_id, key);

CREATE MATERIALIZED VIEW IF NOT EXISTS event_keys_kv_mv TO event_keys_kv AS
SELECT workspace_id, arrayJoin(arrayConcat(['i:' || toString(id)], if(isNull(external_id), [], ['x:' || assumeNotNull(external_id)]))) AS key,
       id, root_id, depth
FROM events;

INSERT INTO event_keys_kv SELECT workspace_id, key, id, root_id, depth FROM event_keys;

DROP VIEW IF EXISTS event_keys_mv;

DROP TABLE IF EXISTS event_keys;
