-- Rate-limit windows shared by every `serve` replica on one database
-- (src/targets/limiter.rs): one row per (connection, target), changed under
-- its row lock, so that N processes delivering one location's events send
-- at most its limit in total. `sent` holds the send times (ms since the
-- epoch, oldest first, comma-separated) of the last `requests` calls;
-- `blocked_until` is set when the target said its window is spent; `day`,
-- `used_today` and `day_spent` count the daily budget per UTC day.
CREATE TABLE rate_windows (
    connection TEXT NOT NULL,
    target TEXT NOT NULL,
    sent TEXT NOT NULL DEFAULT '',
    blocked_until BIGINT NOT NULL DEFAULT 0,
    day BIGINT NOT NULL DEFAULT 0,
    used_today BIGINT NOT NULL DEFAULT 0,
    day_spent BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (connection, target)
);
