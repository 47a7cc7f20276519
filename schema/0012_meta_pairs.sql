-- Listings filter by metadata (`meta[status]=500` on GET /api/events, relation ids on GET /api/usage/records).
-- Reading newest first, ClickHouse reads at least one granule of every part, and the filter read the `str` and
-- `num` maps for those: every key and value of every row, twice the work of the same page without a filter.
-- `meta_pairs` holds one 64-bit hash per metadata leaf, of its path, kind (s: string, n: number, b: boolean)
-- and value, so a filter reads only these (app/events/queries.py hashes the filter's pairs the same way).
-- A number hashes as a Float64 with -0 as 0, because the two are equal as numbers.

ALTER TABLE events_by_time ADD COLUMN IF NOT EXISTS meta_pairs Array(UInt64) MATERIALIZED arrayConcat(
    arrayMap((k, v) -> cityHash64(toString(k), 's', v), mapKeys(str), mapValues(str)),
    arrayMap((k, v) -> cityHash64(toString(k), 'n', if(v = 0, toFloat64(0), v)), mapKeys(num), mapValues(num)),
    arrayMap((k, v) -> cityHash64(toString(k), 'b', v), mapKeys(bool), mapValues(bool)));

ALTER TABLE events_by_time MATERIALIZE COLUMN meta_pairs SETTINGS mutations_sync = 1;
