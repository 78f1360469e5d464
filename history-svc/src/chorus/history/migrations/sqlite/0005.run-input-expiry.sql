-- Human in the loop (issue 21): when a waiting run's request for input expires
-- (Run.pending_input.expire_time, µs since the epoch like the other times), so the
-- orchestrators' expiry sweep is one indexed query (ListRunRecords `input_expire_before`)
-- however many runs wait. NULL unless AWAITING_INPUT.

ALTER TABLE runs ADD COLUMN input_expire_time integer;

UPDATE runs
    SET input_expire_time = CAST(strftime('%s', json_extract(pending_input, '$.expireTime'))
        AS integer) * 1000000
    WHERE status = 6 AND json_extract(pending_input, '$.expireTime') IS NOT NULL;

CREATE INDEX runs_input_expiry ON runs (input_expire_time) WHERE status = 6;
