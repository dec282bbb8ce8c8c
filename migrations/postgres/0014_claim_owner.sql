-- Which process holds the claim of an event or of a held write being
-- flushed (a random id per open store): a process that stalled past its
-- lease may still be working on a row another has taken over since. Its
-- renewals and its outcome are refused unless the claim is still its own
-- (src/store/inbox.rs, `take_sql`; src/targets/journal.rs, `apply_all`;
-- src/store/pending.rs).
ALTER TABLE events ADD COLUMN claimed_by TEXT;
ALTER TABLE pending_writes ADD COLUMN claimed_by TEXT;
