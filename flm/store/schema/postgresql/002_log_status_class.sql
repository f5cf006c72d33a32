-- 002 on PostgreSQL: an expression in an index is in its own parentheses.
DROP INDEX IF EXISTS request_logs_api_status;
CREATE INDEX request_logs_api_class ON request_logs (api_id, (status / 100), id)
