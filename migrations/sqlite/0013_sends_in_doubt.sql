-- Calls of operations that are not idempotent (`idempotent: false`, GHL's
-- notes) about to leave: written and committed before the call, removed
-- with the delivery's journal once its answer is known. A row still here on
-- a later attempt means an earlier attempt may have applied the call
-- without its answer being recorded (a timeout, a crash): it is not sent
-- again (src/targets/mod.rs, `run_action`). `step` names the call within
-- its event: mapping, operation and its rank among that mapping's calls of it.
CREATE TABLE sends_in_doubt (
    event_row BIGINT NOT NULL,
    step TEXT NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (event_row, step)
);
