-- Human in the loop (issue 21): RUN_STATUS_AWAITING_INPUT (6) is an active status, and a
-- waiting run keeps the request it waits for (Run.pending_input, also in runs.record).
-- * runs.pending_input: the readable projection of Run.pending_input (proto3 JSON text;
--   NULL unless the run is AWAITING_INPUT). The record stays the truth.
-- * One active run per conversation now counts AWAITING_INPUT too.
-- * run_events_inputs: RecordRunInput looks up a run's answers (input_received events) by
--   input_id under the write lock; this keeps that read to the answers, not the whole log.

ALTER TABLE runs ADD COLUMN pending_input text;

DROP INDEX runs_one_active_per_conversation;
CREATE UNIQUE INDEX runs_one_active_per_conversation ON runs (conversation_id)
    WHERE status IN (1, 2, 6);

CREATE INDEX run_events_inputs ON run_events (run_id, seq) WHERE kind = 'input_received';
