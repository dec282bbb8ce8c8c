-- When the engine last wrote to the record a mirror describes: a webhook
-- that brings back only what it wrote soon after is its echo.
ALTER TABLE mirror ADD COLUMN written_at BIGINT;
-- Delivery order is per customer key ("<scope>:<id>"), across sources.
DROP INDEX events_customer;
CREATE INDEX events_customer_key ON events (connection, customer_key, id);
