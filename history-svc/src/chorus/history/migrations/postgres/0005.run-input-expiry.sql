-- Human in the loop (issue 21): when a waiting run's request for input expires
-- (Run.pending_input.expire_time), so the orchestrators' expiry sweep is one indexed query
-- (ListRunRecords `input_expire_before`) however many runs wait. NULL unless AWAITING_INPUT.

ALTER TABLE runs ADD COLUMN input_expire_time timestamptz;

UPDATE runs SET input_expire_time = (pending_input ->> 'expireTime')::timestamptz
    WHERE status = 6 AND pending_input ? 'expireTime';

CREATE INDEX runs_input_expiry ON runs (input_expire_time) WHERE status = 6;
