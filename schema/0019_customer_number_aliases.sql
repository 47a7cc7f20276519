-- A customer given an external id that events had already named ('x:<external id>', numbered) while events
-- sent by its id were numbered too ('c:<id>') has two numbers, in bitmaps already stored. The number of its
-- id's events becomes an alias of its external id's here (app/customers/numbers.py), and every count of
-- distinct customers maps aliases to their canonical number before counting (bitmapTransform, transform), so
-- the customer is one in every metric, as CONTRACT.md section 2 has it.

CREATE TABLE IF NOT EXISTS customer_number_aliases
(
    workspace_id UUID,
    number UInt32,
    canonical UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (workspace_id, number);
