-- 004 on PostgreSQL: DOUBLE PRECISION times, BIGINT blocks, the class index's expression
-- in parentheses.
CREATE TABLE request_log_spans (
    block       BIGINT PRIMARY KEY,
    min_created DOUBLE PRECISION NOT NULL,
    max_created DOUBLE PRECISION NOT NULL
);
INSERT INTO request_log_spans (block, min_created, max_created)
    SELECT id >> 10, min(created_at), max(created_at) FROM request_logs GROUP BY 1;
DROP INDEX IF EXISTS request_logs_created_at;
CREATE INDEX request_logs_class ON request_logs ((status / 100), id);
CREATE TABLE deleted_apis (
    api_id BIGINT PRIMARY KEY
)
