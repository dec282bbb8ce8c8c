-- The durable inbox, the sync log, run summaries and the customer mirror.
-- Times are epoch milliseconds; JSON is stored as text (the Any driver's types).
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connection TEXT NOT NULL DEFAULT 'default',
    source TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_id TEXT,
    dedup_key TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    occurred_at BIGINT,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    UNIQUE (connection, source, dedup_key)
);
CREATE INDEX events_due ON events (state, next_attempt_at);

CREATE TABLE sync_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connection TEXT NOT NULL DEFAULT 'default',
    event_row BIGINT NOT NULL,
    mapping TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    customer TEXT,
    request TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    attempt INTEGER NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX sync_log_event ON sync_log (event_row);
CREATE INDEX sync_log_customer ON sync_log (customer);

CREATE TABLE run_summaries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connection TEXT NOT NULL DEFAULT 'default',
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    processed INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL
);

CREATE TABLE customers (
    connection TEXT NOT NULL DEFAULT 'default',
    source TEXT NOT NULL,
    source_id TEXT NOT NULL,
    target TEXT NOT NULL,
    target_id TEXT,
    fields TEXT NOT NULL DEFAULT '{}',
    last_activity BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (connection, source, source_id, target)
);

CREATE TABLE lookups (
    connection TEXT NOT NULL DEFAULT 'default',
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (connection, target, kind, key)
);
