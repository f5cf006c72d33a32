-- Time windows as id bounds (flm/store/spans.py): per block of 1,024 ids (id >> 10), the
-- lowest and highest created_at written to it. Retention and windows search id ranges.
CREATE TABLE request_log_spans (
    block       INTEGER PRIMARY KEY,
    min_created REAL    NOT NULL,
    max_created REAL    NOT NULL
);
INSERT INTO request_log_spans (block, min_created, max_created)
    SELECT id >> 10, min(created_at), max(created_at) FROM request_logs GROUP BY 1;
-- Nothing searches by created_at any more.
DROP INDEX IF EXISTS request_logs_created_at;
-- All APIs' logs filtered by status class or code, newest first, without a sort:
--   WHERE status / 100 = ? [AND +status = ?] AND id < ? ORDER BY id DESC
CREATE INDEX request_logs_class ON request_logs (status / 100, id);
-- APIs deleted whose log rows are still being removed in the background.
CREATE TABLE deleted_apis (
    api_id INTEGER PRIMARY KEY
);
