-- A stored or re-queued event lowers its customer's head only when it is
-- older than the head. The upsert used to rewrite the head row (and both of
-- its indexes) with the same value for every webhook of a customer who
-- already had one waiting, which is nearly every webhook under a backlog:
-- about one page of the write-ahead log per webhook, and 17% of the
-- inbox's pages (BENCHMARKS.md, *The write-ahead log started over*).
DROP TRIGGER inbox_heads_stored;
CREATE TRIGGER inbox_heads_stored AFTER INSERT ON events
WHEN NEW.customer_key IS NOT NULL AND NEW.state IN ('received', 'retrying', 'processing')
BEGIN
    INSERT INTO inbox_heads (connection, customer_key, head_id)
    VALUES (NEW.connection, NEW.customer_key, NEW.id)
    ON CONFLICT (connection, customer_key) DO UPDATE
    SET head_id = excluded.head_id
    WHERE head_id IS NULL OR excluded.head_id < head_id;
END;

DROP TRIGGER inbox_heads_requeued;
CREATE TRIGGER inbox_heads_requeued AFTER UPDATE OF state ON events
WHEN NEW.customer_key IS NOT NULL
     AND OLD.state NOT IN ('received', 'retrying', 'processing')
     AND NEW.state IN ('received', 'retrying', 'processing')
BEGIN
    INSERT INTO inbox_heads (connection, customer_key, head_id)
    VALUES (NEW.connection, NEW.customer_key, NEW.id)
    ON CONFLICT (connection, customer_key) DO UPDATE
    SET head_id = excluded.head_id
    WHERE head_id IS NULL OR excluded.head_id < head_id;
END;
