-- Durable runs (issue 18): each run's latest checkpoint, the state a new owner continues
-- from after ClaimRun. AppendRunEvents replaces it in the transaction of the events it
-- covers (only the latest is kept). Run.lease_epoch and Run.attempt live in runs.record.

CREATE TABLE run_checkpoints (
    run_id uuid PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    -- RunCheckpoint.seq: the last event seq the checkpoint covers.
    seq bigint NOT NULL,
    -- The whole serialized chorus.v1.RunCheckpoint (team_state at most 16 MiB).
    checkpoint bytea NOT NULL,
    update_time timestamptz NOT NULL
);
