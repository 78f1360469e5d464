-- Durable runs (issue 18): Run.lease_epoch as a column beside the record, so that
-- AppendRunEventBatches can check the lease fence inside one SQL statement (its common
-- case: a batch that continues its run where the stored log ends) instead of a
-- transaction of four round trips. The record stays the truth: every write of the record
-- writes this column too. Rows written before this migration hold 0 here until their next
-- record write; a fenced batch for such a row misses the one-statement path and takes the
-- transaction, which reads the epoch from the record.

ALTER TABLE runs ADD COLUMN lease_epoch bigint NOT NULL DEFAULT 0;
