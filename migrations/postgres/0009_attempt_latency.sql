-- How long each call took, from its departure (after the rate limiter)
-- to its answer, in milliseconds: the console's attempts show it. NULL for
-- decisions that made no call (echo, stale, held, skipped) and for rows
-- written before this column existed.
ALTER TABLE sync_log ADD COLUMN took_ms BIGINT;
