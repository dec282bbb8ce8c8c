-- Delivery order per customer, and the mirror of each source customer.
ALTER TABLE events ADD COLUMN customer_key TEXT;
CREATE INDEX events_customer ON events (connection, source, customer_key, id);

-- Last-known values of each source customer (seed 000 §1.5), field by field,
-- with the occurrence time of the event that set each one, so an older event
-- never overwrites a newer value. Ids on the other side are in `customers`.
CREATE TABLE mirror (
    connection TEXT NOT NULL DEFAULT 'default',
    source TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    fields TEXT NOT NULL DEFAULT '{}',
    field_times TEXT NOT NULL DEFAULT '{}',
    last_activity BIGINT,
    last_event_row BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (connection, source, customer_id)
);
