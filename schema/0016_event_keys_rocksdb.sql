-- The dedup check and parent resolution look up a round's keys ('i:<id>', 'x:<external id>') in `event_keys`.
-- In a MergeTree sorted by key, a lookup reads a granule (8,192 rows) of every part for each key, so keys that
-- do not sort together, such as the UUIDs most producers send as external ids, reach nearly every granule:
-- 8,000 random keys read the whole table, 520-690 ms at 10M stored keys and 2.1-2.6 s at 30M (measured
-- 2026-12-03), a cost that grows with the data until it decides ingest. EmbeddedRocksDB answers `key IN (...)`
-- with point reads of the keys themselves: 230 ms at 10M, 0.4-0.64 s at 30M while it still compacted. Its
-- writes cost more (16k keys: 30-43 ms against 17-29), so through the API it only broke even at 6M keys
-- (bench/ingest.py --uuid-keys: 5,155 against 5,081 events/s); keys that sort together were cheaper in the
-- MergeTree (8,000: 29 against 76 ms), but a producer's keys cannot be assumed to.
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
