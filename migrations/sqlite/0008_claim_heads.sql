-- The claim reads one row per customer instead of every waiting event.
-- Migration 0005's claim walked pending events in id order and, for each,
-- looked for an earlier pending event of its customer: with a customer's
-- backlog behind an event in flight it read the whole backlog on every
-- claim, and each look-up also read the customer's delivered history (state
-- sorts before id in events_customer_state). With 45,000 events waiting one
-- claim took minutes (issue #10).
--
-- inbox_heads holds, per (connection, customer_key), the id of the oldest
-- pending event (head_id; NULL when the customer has none). Triggers keep it
-- whatever code changes an event, so the invariant does not depend on every
-- writer of `events` knowing about it:
-- * an event becoming pending (stored, replayed, re-queued) lowers head_id
--   to its id when smaller;
-- * an event leaving pending (delivered, dead, …) or deleted only appends
--   its customer to inbox_head_stale (on PostgreSQL this takes no lock on
--   inbox_heads; the same design is kept here so both share the claim).
-- The claim first recomputes head_id for the stale customers (a MIN over
-- events_waiting), then hands out due heads in id order.
CREATE TABLE inbox_heads (
    connection TEXT NOT NULL,
    customer_key TEXT NOT NULL,
    head_id BIGINT,
    PRIMARY KEY (connection, customer_key)
);
CREATE INDEX inbox_heads_order ON inbox_heads (head_id) WHERE head_id IS NOT NULL;

CREATE TABLE inbox_head_stale (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connection TEXT NOT NULL,
    customer_key TEXT NOT NULL
);

-- The repair's MIN per customer, over pending events only (the delivered
-- history is not in it).
DROP INDEX events_customer_state;
CREATE INDEX events_waiting ON events (connection, customer_key, id)
    WHERE state IN ('received', 'retrying', 'processing');
-- 0005's walk in id order over every pending event is gone: one index
-- fewer for every stored webhook and every change of state.
DROP INDEX events_pending;
-- Events without a customer are each their own head.
CREATE INDEX events_keyless ON events (id)
    WHERE customer_key IS NULL AND state IN ('received', 'retrying', 'processing');

INSERT INTO inbox_heads (connection, customer_key, head_id)
SELECT connection, customer_key, MIN(id) FROM events
WHERE customer_key IS NOT NULL AND state IN ('received', 'retrying', 'processing')
GROUP BY connection, customer_key;

CREATE TRIGGER inbox_heads_stored AFTER INSERT ON events
WHEN NEW.customer_key IS NOT NULL AND NEW.state IN ('received', 'retrying', 'processing')
BEGIN
    INSERT INTO inbox_heads (connection, customer_key, head_id)
    VALUES (NEW.connection, NEW.customer_key, NEW.id)
    ON CONFLICT (connection, customer_key) DO UPDATE
    SET head_id = CASE WHEN head_id IS NULL OR excluded.head_id < head_id
                       THEN excluded.head_id ELSE head_id END;
END;

CREATE TRIGGER inbox_heads_requeued AFTER UPDATE OF state ON events
WHEN NEW.customer_key IS NOT NULL
     AND OLD.state NOT IN ('received', 'retrying', 'processing')
     AND NEW.state IN ('received', 'retrying', 'processing')
BEGIN
    INSERT INTO inbox_heads (connection, customer_key, head_id)
    VALUES (NEW.connection, NEW.customer_key, NEW.id)
    ON CONFLICT (connection, customer_key) DO UPDATE
    SET head_id = CASE WHEN head_id IS NULL OR excluded.head_id < head_id
                       THEN excluded.head_id ELSE head_id END;
END;

CREATE TRIGGER inbox_heads_left AFTER UPDATE OF state ON events
WHEN OLD.customer_key IS NOT NULL
     AND OLD.state IN ('received', 'retrying', 'processing')
     AND NEW.state NOT IN ('received', 'retrying', 'processing')
BEGIN
    INSERT INTO inbox_head_stale (connection, customer_key) VALUES (OLD.connection, OLD.customer_key);
END;

CREATE TRIGGER inbox_heads_deleted AFTER DELETE ON events
WHEN OLD.customer_key IS NOT NULL AND OLD.state IN ('received', 'retrying', 'processing')
BEGIN
    INSERT INTO inbox_head_stale (connection, customer_key) VALUES (OLD.connection, OLD.customer_key);
END;
