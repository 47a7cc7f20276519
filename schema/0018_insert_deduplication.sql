-- An insert into `events` feeds 17 views, and nothing makes it atomic across them: a server that dies or
-- refuses mid-insert can leave the events in some tables and not in others (found 2026-12-08 by killing the
-- server under load). The API then sends the same rows again under the same `insert_deduplication_token`
-- with `deduplicate_blocks_in_dependent_materialized_views` (app/events/service.py): each table skips a block
-- it already has and takes one it lacks, so the retry completes the insert without storing anything twice.
-- A MergeTree that is not replicated remembers no blocks unless given a window; 1,000 inserts is minutes of
-- rounds. event_keys_kv (EmbeddedRocksDB) needs none: writing a key twice writes the same value.

ALTER TABLE events MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE events_by_time MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE events_by_customer MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE event_type_stats MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE customer_usage MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE event_stats_1d MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE event_stats_1h MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE event_stats_15m MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE field_stats_1d MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE field_stats_1h MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE field_stats_15m MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE share_sets_1d MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE share_sets_1h MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE share_sets_15m MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE share_field_sets_1d MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE share_field_sets_1h MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE share_field_sets_15m MODIFY SETTING non_replicated_deduplication_window = 1000;
