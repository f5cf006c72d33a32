-- 008 on PostgreSQL: a DOUBLE PRECISION epoch time.
-- A batch of log rows is written with its id, in the same transaction: a batch retried
-- after its commit's answer was lost (PostgreSQL gone at that moment) is found written
-- and not written again. Ids older than a day go with retention.
CREATE TABLE log_batches (
    id         TEXT PRIMARY KEY,
    written_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX log_batches_written_at ON log_batches (written_at);
-- A deleted API keeps its row here a day after its log rows are purged (purged_at): rows
-- of it still buffered then, here or on another node, are not written.
ALTER TABLE deleted_apis ADD COLUMN purged_at DOUBLE PRECISION
