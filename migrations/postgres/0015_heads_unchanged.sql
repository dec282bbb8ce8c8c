-- A stored or re-queued event lowers its customer's head only when it is
-- older than the head, instead of rewriting the head row with the same value
-- (a new row version, and its index entries, for nearly every webhook under
-- a backlog). A head row that is not updated is still locked by the upsert
-- (ON CONFLICT DO UPDATE locks the row whatever its WHERE says), so the
-- claim's repair and a webhook stored for the same customer still meet on
-- that lock, as migration 0008 describes.
CREATE OR REPLACE FUNCTION inbox_heads_stored() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbox_heads (connection, customer_key, head_id)
    SELECT connection, customer_key, MIN(id) FROM stored
    WHERE customer_key IS NOT NULL AND state IN ('received', 'retrying', 'processing')
    GROUP BY connection, customer_key
    ORDER BY connection, customer_key
    ON CONFLICT (connection, customer_key) DO UPDATE
    SET head_id = EXCLUDED.head_id
    WHERE inbox_heads.head_id IS NULL OR EXCLUDED.head_id < inbox_heads.head_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION inbox_heads_requeued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbox_heads (connection, customer_key, head_id)
    VALUES (NEW.connection, NEW.customer_key, NEW.id)
    ON CONFLICT (connection, customer_key) DO UPDATE
    SET head_id = EXCLUDED.head_id
    WHERE inbox_heads.head_id IS NULL OR EXCLUDED.head_id < inbox_heads.head_id;
    RETURN NULL;
END
$$;
