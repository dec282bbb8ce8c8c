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
--   to its id when smaller (out-of-order commits included);
-- * an event leaving pending (delivered, dead, …) or deleted only appends
--   its customer to inbox_head_stale: no lock is taken on inbox_heads, so
--   transactions finishing several events never deadlock with the inbox.
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
    id BIGSERIAL PRIMARY KEY,
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

-- One statement of the inbox stores a whole batch: one upsert per statement,
-- in key order so that two replicas' batches lock heads in the same order.
CREATE FUNCTION inbox_heads_stored() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbox_heads (connection, customer_key, head_id)
    SELECT connection, customer_key, MIN(id) FROM stored
    WHERE customer_key IS NOT NULL AND state IN ('received', 'retrying', 'processing')
    GROUP BY connection, customer_key
    ORDER BY connection, customer_key
    ON CONFLICT (connection, customer_key) DO UPDATE
    SET head_id = CASE WHEN inbox_heads.head_id IS NULL OR EXCLUDED.head_id < inbox_heads.head_id
                       THEN EXCLUDED.head_id ELSE inbox_heads.head_id END;
    RETURN NULL;
END
$$;
CREATE TRIGGER inbox_heads_stored AFTER INSERT ON events
    REFERENCING NEW TABLE AS stored FOR EACH STATEMENT EXECUTE FUNCTION inbox_heads_stored();

CREATE FUNCTION inbox_heads_requeued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbox_heads (connection, customer_key, head_id)
    VALUES (NEW.connection, NEW.customer_key, NEW.id)
    ON CONFLICT (connection, customer_key) DO UPDATE
    SET head_id = CASE WHEN inbox_heads.head_id IS NULL OR EXCLUDED.head_id < inbox_heads.head_id
                       THEN EXCLUDED.head_id ELSE inbox_heads.head_id END;
    RETURN NULL;
END
$$;
CREATE TRIGGER inbox_heads_requeued AFTER UPDATE OF state ON events FOR EACH ROW
    WHEN (NEW.customer_key IS NOT NULL
          AND OLD.state NOT IN ('received', 'retrying', 'processing')
          AND NEW.state IN ('received', 'retrying', 'processing'))
    EXECUTE FUNCTION inbox_heads_requeued();

CREATE FUNCTION inbox_heads_left() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbox_head_stale (connection, customer_key) VALUES (OLD.connection, OLD.customer_key);
    RETURN NULL;
END
$$;
CREATE TRIGGER inbox_heads_left AFTER UPDATE OF state ON events FOR EACH ROW
    WHEN (OLD.customer_key IS NOT NULL
          AND OLD.state IN ('received', 'retrying', 'processing')
          AND NEW.state NOT IN ('received', 'retrying', 'processing'))
    EXECUTE FUNCTION inbox_heads_left();
CREATE TRIGGER inbox_heads_deleted AFTER DELETE ON events FOR EACH ROW
    WHEN (OLD.customer_key IS NOT NULL AND OLD.state IN ('received', 'retrying', 'processing'))
    EXECUTE FUNCTION inbox_heads_left();
