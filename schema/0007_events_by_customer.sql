-- One customer's events without a scan of its workspace: the usage metrics of a customer
-- (app/usage_metrics) read its events of the last 2 x 90 days at most, by customer_key. The table's own order
-- (workspace, name, hour) would read every event of those names in the window; this projection keeps the
-- columns those queries read in (workspace, customer, time) order, and ClickHouse picks it when it reads fewer
-- granules. Built for the rows already stored too, before this process serves.
ALTER TABLE events ADD PROJECTION IF NOT EXISTS by_customer
(
    SELECT workspace_id, customer_key, timestamp, name, ingested_at, num, str, bool, cost_amount, llm_total_tokens
    ORDER BY workspace_id, customer_key, timestamp
);

ALTER TABLE events MATERIALIZE PROJECTION by_customer SETTINGS mutations_sync = 1;
