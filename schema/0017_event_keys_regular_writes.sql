-- event_keys_kv (0016) takes each insert as rows written to RocksDB's memtable, not as a ready-made SST file.
-- ClickHouse's default for EmbeddedRocksDB builds one SST file per insert and ingests it; such a file has no
-- bloom filter (clickhouse_config/*: `rocksdb.block_based_table_options`) until a compaction rewrites it, and
-- ingest makes one a round, so a lookup probed every such file for keys never stored (the new events' keys,
-- most of every lookup) by reading a data block of each: 8,000 absent keys among 10M stored right after a fill
-- of 100 inserts took 650-750 ms, against 34-52 ms this way, measured 2026-12-07. Writes cost more (10M keys
-- in 100 inserts: 34 s against 10, about 2.4 µs a key: some 40 ms for a round's 16k keys, in its view, which
-- runs beside the others).
ALTER TABLE event_keys_kv MODIFY SETTING optimize_for_bulk_insert = 0;
