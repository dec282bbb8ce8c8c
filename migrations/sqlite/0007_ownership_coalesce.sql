-- When each mirrored value last changed, by the occurrence time of the event
-- that changed it (field_times holds the latest event that confirmed it). A
-- field's owner refuses a write from an event older than its last change.
ALTER TABLE mirror ADD COLUMN changed_times TEXT NOT NULL DEFAULT '{}';

-- Writes held back to be coalesced: one row per customer record and
-- operation collects every write until due_at, then goes out as one call.
-- state: waiting (still merging) | flushing (being sent; due_at is then the
-- lease's end) | failed (out of attempts, kept for the operator).
CREATE TABLE pending_writes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connection TEXT NOT NULL DEFAULT 'default',
    target TEXT NOT NULL,
    record_id TEXT NOT NULL,
    op TEXT NOT NULL,
    params TEXT NOT NULL,
    mappings TEXT NOT NULL,
    event_rows TEXT NOT NULL,
    writes BIGINT NOT NULL,
    occurred_at BIGINT,
    first_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at BIGINT NOT NULL
);
-- One open (merging) row per record and operation.
CREATE UNIQUE INDEX pending_writes_open ON pending_writes (connection, target, record_id, op) WHERE state = 'waiting';
CREATE INDEX pending_writes_due ON pending_writes (state, due_at);
