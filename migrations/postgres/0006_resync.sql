-- Runs of `mapper resync`: the target a run rebuilds, the source whose
-- customers it reads, where they come from (`mirror`, or `import:<file>`),
-- and when it came to an end. A run's snapshots are the `resync` events
-- whose de-duplication key is `<run>/<customer id>`: storing one twice
-- stores it once, which is what lets a run be continued.
CREATE TABLE resync_runs (
    connection TEXT NOT NULL DEFAULT 'default',
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    origin TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    PRIMARY KEY (connection, name)
);
CREATE INDEX resync_runs_open ON resync_runs (connection, target, source, started_at);
