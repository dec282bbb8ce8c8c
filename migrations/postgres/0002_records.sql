-- What the engine knows of each record on a target (e.g. a Sticky Cards
-- customer's card id), from the answers of its own calls.
CREATE TABLE target_records (
    connection TEXT NOT NULL DEFAULT 'default',
    target TEXT NOT NULL,
    target_id TEXT NOT NULL,
    fields TEXT NOT NULL DEFAULT '{}',
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (connection, target, target_id)
);
