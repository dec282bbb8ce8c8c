-- Claiming stays cheap however long the history and the backlog. The claim
-- reads pending events in id order through a partial index (delivered
-- history is not in it) and stops at its limit; the old (state,
-- next_attempt_at) index made it sort every due event on each claim
-- (BENCHMARKS.md, "After the claim indexes"). A customer's earlier pending
-- events are found through (customer_key, state, id).
DROP INDEX events_due;
CREATE INDEX events_pending ON events (id) WHERE state IN ('received', 'retrying', 'processing');
CREATE INDEX events_customer_state ON events (connection, customer_key, state, id);
