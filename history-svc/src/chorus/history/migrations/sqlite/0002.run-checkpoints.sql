-- Durable runs (issue 18): each run's latest checkpoint, the state a new owner continues
-- from after ClaimRun. AppendRunEvents replaces it in the transaction of the events it
-- covers (only the latest is kept). Run.lease_epoch and Run.attempt live in runs.record.
-- Times are integer microseconds since the Unix epoch (UTC).

CREATE TABLE run_checkpoints (
    run_id text PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    checkpoint blob NOT NULL,
    update_time integer NOT NULL
);
