-- Claims are shared among connections (src/store/inbox.rs,
-- `claim_due_fairly`): the connections with a customer waiting are found by
-- a skip scan, one probe each, and each one's due heads are read oldest
-- first, without passing over another connection's backlog.
CREATE INDEX inbox_heads_fair ON inbox_heads (connection, head_id) WHERE head_id IS NOT NULL;
